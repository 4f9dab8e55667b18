"""Addon: picks an account for every client request and sends the request with its credentials.

Hot path (``request``/``responseheaders``): account selection, header rewriting and reading the
rate-limit headers. No I/O happens here. Each attempt is made by :mod:`.attempt`; failures are
handled by :mod:`.failover`, whose ``response`` hook runs just before this one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time

from mitmproxy import ctx, http
from mitmproxy import flow as mitmproxy_flow
from mitmproxy.utils import asyncio_utils

from ..config.option_types import decimal, whole
from ..providers import (
    detect_route,
    error_response,
    redact_credentials,
    strip_client_credentials,
)
from ..providers.convert import convertible
from ..providers.presets import ANTHROPIC, OPENAI
from ..providers.request_info import inspect_request, model_problem
from ..providers.wire import header
from ..proxy_state import FlowContext, ProxyState
from ..routing.cache_affinity import CacheContext, cache_ttl, conversation_key, parent_key
from ..routing.classify import TRANSIENT, TRANSIENT_COOLDOWN_S, Verdict
from ..routing.ratelimits import parse_limits
from ..routing.selection import STRATEGIES
from ..routing.unconvertible import refusal as unconvertible
from . import attempt
from .access import Refusal, keep_to_user_providers, presented_key
from .concurrency import in_flight
from .failover import no_account_response
from .fallbacks import HEADER as FALLBACK_HEADER
from .guard import ROUTED, take_placeholder
from .oauth_clients import keep_for_claude_code

log = logging.getLogger("mitmflare")

TICK_S = 1.0
RETRY_MEMORY_S = 120.0  # how long a failed request's tried accounts are remembered for its retry
RETRY_COUNT_HEADER = "x-stainless-retry-count"
CLIENT_PATH = "mitmflare.path"            # flow.metadata: the client's own path (for replays)
USER = "mitmflare.user"                   # flow.metadata: the user its access key named
REPLAY_ACCOUNT = "mitmflare.replay_account"  # flow.metadata: account a replay must use


class Router:
    """Selection, credentials, rate-limit learning (attempts: :mod:`.attempt`)."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self._ticker: asyncio.Task | None = None
        self._retry_exclusions: dict[bytes, tuple[set[str], float, bool]] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option("flare_strategy", str, "session",
                          "Account selection: session (sticky for flare_session_hours), "
                          "round-robin, least-requests or weighted.", choices=STRATEGIES)
        loader.add_option("flare_session_hours", str, "5",
                          "Hours (a decimal number > 0) the session strategy keeps using one "
                          "account.")
        loader.add_option("flare_headroom", str, "0.95",
                          "Utilization (a decimal number in (0, 1]) at which an account counts "
                          "as near its limit and is chosen only when nothing better is free.")
        loader.add_option("flare_queue_s", int, 10,
                          "When every account is cooling down and one is free again within "
                          "this many seconds of a request's arrival, hold the request until "
                          "then instead of answering 429 (0: never hold).")
        loader.add_option("flare_max_cooldown_s", int, 6 * 3600,
                          "Upper bound (s) for a cooldown taken from rate-limit headers.")
        loader.add_option("flare_cache_ttl_scale", str, "1",
                          "For benchmarks and tests only: prompt-cache TTLs (5 min, 1 h) last "
                          "this many times less (a decimal number > 0), to match a simulated "
                          "upstream whose time runs faster.")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        max_cooldown_s = whole("flare_max_cooldown_s", o.flare_max_cooldown_s, 1)
        self.proxy.session_hours = decimal("flare_session_hours", o.flare_session_hours, 0)
        self.proxy.headroom = decimal("flare_headroom", o.flare_headroom, 0, 1)
        self.proxy.cache_ttl_scale = decimal("flare_cache_ttl_scale", o.flare_cache_ttl_scale, 0)
        self.proxy.strategy = o.flare_strategy
        self.proxy.max_cooldown_s = float(max_cooldown_s)
        self.proxy.queue_s = float(whole("flare_queue_s", o.flare_queue_s, 0))

    def running(self) -> None:
        self._ticker = asyncio_utils.create_task(self._tick(), name="mitmflare: router tick", keep_ref=True)

    def done(self) -> None:
        if self._ticker:
            self._ticker.cancel()

    # -- hooks ------------------------------------------------------------------------------
    async def request(self, flow: http.HTTPFlow) -> None:
        """Fail closed: the client's credentials go first, and any unexpected exception is
        answered here (500 in the wire format's error shape) instead of letting the raw request
        through. Takes the guard's placeholder answer away and marks the flow routed (see
        :mod:`.guard`) only once it is done with it."""
        presented = presented_key(flow.request.headers)
        strip_client_credentials(flow.request.headers)  # at once: nothing below can leak them
        if not take_placeholder(flow):
            return
        try:
            await self._request(flow, presented)
        except Exception as exc:
            self._internal_error(flow, exc)
        flow.metadata[ROUTED] = True

    async def _request(self, flow: http.HTTPFlow, presented: str | None) -> None:
        request = flow.request
        replay = bool(flow.is_replay)
        if replay:  # a replayed flow goes through the router again, from the client's path
            request.path = flow.metadata.get(CLIENT_PATH, request.path)
        client_path = flow.metadata[CLIENT_PATH] = request.path
        wire_format, full_path, compat = detect_route(flow)
        if full_path != client_path:
            request.path = full_path
        path = full_path.split("?", 1)[0]
        fc = FlowContext(wire_format=wire_format or "", started=time.time(), path=full_path,
                         client_session=None, model=None, user_agent=None, flow_id=flow.id,
                         replay=replay)
        fc.row_id = flow.id if not replay else f"{flow.id}~replay-{int(fc.started * 1000)}"
        self.proxy.flows[flow.id] = fc
        unfit = unfit_request(request)
        if unfit is not None:  # answered here: never sent, so never charged to an account
            status, fc.error = unfit
            flow.response = error_response(wire_format, status, "invalid_request", fc.error)
            return
        access = self.proxy.access
        user, refusal = access.authenticate(presented) if access else (None, None)
        if replay and refusal is not None:  # its key was removed when it was first sent
            user, refusal = self._replayed_user(flow, user, refusal)
        if user is not None and refusal is None:
            flow.metadata[USER] = user.name
        fc.user = user.name if user else None
        if refusal is None and wire_format is None:
            fc.error = "no API format is known for this path"
            flow.response = error_response(None, 404, "not_found",
                                           f"mitmflare: no API format is known for {path}")
            return
        if refusal is None and wire_format is not None:
            info = inspect_request(wire_format, request)
            fc.client_session, fc.model, fc.stream = info.client_session, info.model, info.stream
            fc.raw_body, fc.body_source = request.raw_content or b"", info.source
            fc.body_model = info.body_model
            ttl = cache_ttl(info.body) / self.proxy.cache_ttl_scale \
                if wire_format == ANTHROPIC else 0.0  # cache_control
            if ttl:
                fc.cache = CacheContext(
                    conversation_key(fc.client_session, info.body, info.agent), ttl,
                    parent_key(fc.client_session, info.agent, info.parent_agent))
            fc.convertible = convertible(wire_format, path)
            if compat and fc.model and "/" in fc.model:  # e.g. openai/gpt-4.1
                fc.family, fc.model = fc.model.split("/", 1)
            problem = model_problem(path, request.method, info.body,
                                    user is not None and user.allowed_models is not None)
            info.body = None  # the parsed body goes now (fc.request_json() when needed)
            refusal = Refusal(400, "invalid_request", problem) if problem else \
                access.authorize(user, fc.model, fc.started) if access else None
            if refusal is None and user is not None and user.max_concurrent is not None \
                    and not await self.proxy.slots.take_user(user, flow.id,
                                                            fc.started + self.proxy.queue_s):
                refusal = Refusal(429, "rate_limit", f"mitmflare: user {user.name} has "
                                  f"{in_flight(user.max_concurrent)}, its limit "
                                  f"(max_concurrent); retry when one has finished", 1)
        if refusal is not None:
            fc.error = refusal.message
            extra = {"retry-after": str(refusal.retry_after)} if refusal.retry_after else None
            flow.response = error_response(wire_format, refusal.status, refusal.kind,
                                           refusal.message, extra)
            if refusal.status == 401 and access is not None:  # counted, not each a row
                access.refused(flow, fc)
            return
        fc.user_agent = header(request.headers, b"user-agent")
        fc.excluded, fc.had_transient = self._excluded_for_retry(flow)
        refused = keep_for_claude_code(self.proxy, fc, request.headers) \
            or keep_to_user_providers(self.proxy, fc, user)
        if refused is not None:
            fc.error = refused
            flow.response = error_response(wire_format, 403, "permission", refused)
            return
        if wire_format == OPENAI and fc.convertible:
            candidates = [a for a in self.proxy.pool.for_client(wire_format, True, fc.family)
                          if a.serves(fc.model) and a.name not in fc.excluded
                          and (fc.family is None or a.in_family(fc.family))]
            refused = unconvertible(candidates, path, fc.request_json(), fc.excluded,
                                   fc.skipped)
            if refused is not None:
                fc.error = refused
                flow.response = error_response(wire_format, 400, "invalid_request", refused)
                return
        pinned = flow.metadata.get(REPLAY_ACCOUNT) if replay else None
        if not await attempt.route(self.proxy, flow, fc,
                                   self.proxy.pool.get(pinned) if pinned else None):
            flow.response = no_account_response(self.proxy, fc)

    def _replayed_user(self, flow: http.HTTPFlow, user, refusal):
        """A replay (mitmweb, ``flare.replay``) is authorised as the user of the original
        request, if that user still exists and is enabled; else the refusal stands."""
        name = flow.metadata.get(USER)
        prior = next((u for u in self.proxy.users.values() if u.name == name), None)
        if prior is None or prior.disabled:
            return user, refusal
        return prior, None

    def _internal_error(self, flow: http.HTTPFlow, exc: Exception) -> None:
        """Answer a flow whose routing raised: 500 ``api_error`` in the wire format's shape, the
        traceback logged once, and the row recorded with the error. Nothing is sent upstream."""
        log.error("mitmflare could not route flow %s", flow.id, exc_info=exc)
        fc = self.proxy.flows.get(flow.id)
        if fc is None:
            fc = FlowContext(wire_format="", started=time.time(), path=flow.request.path,
                             client_session=None, model=None, user_agent=None, flow_id=flow.id)
            self.proxy.flows[flow.id] = fc
        attempt.release(self.proxy, fc)
        fc.account = None
        fc.error = f"internal_error: {type(exc).__name__}"
        flow.metadata.pop("mitmflare.account", None)
        strip_client_credentials(flow.request.headers)
        flow.response = error_response(
            fc.wire_format or None, 500, "internal",
            f"mitmflare could not route this request ({type(exc).__name__}); it was not sent "
            f"upstream. Flow id {flow.id} (see the proxy's log).")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        fc = self.proxy.flows.get(flow.id)
        response = flow.response
        if fc is None or fc.account is None or response is None:
            return
        now = time.time()
        redact_credentials(flow.request.headers, fc.account.name)
        fc.ttfb = now
        if fc.asked_model is not None:
            response.headers[FALLBACK_HEADER] = fc.model or ""
        fc.account.state.last_date = (header(response.headers, b"date"), now)  # clock skew
        fc.limits = parse_limits(fc.account.wire, response.headers, now)
        self.proxy.learn(fc.account, fc.limits, now)
        attempt.convert_stream(flow, fc)

    def response(self, flow: http.HTTPFlow) -> None:
        """After :class:`.failover.Failover` judged the answer (``fc.verdict``): the
        conversation's prompt cache, the fallback header, the answer in the client's format,
        the accounts a client's retry should avoid, and the slot given back."""
        fc = self.proxy.flows.get(flow.id)
        if fc is None or fc.account is None:
            return
        verdict = fc.verdict
        if verdict is not None and verdict.action == "ok" and fc.account is not None:
            now = time.time()
            self.proxy.affinity.served(fc.cache.conversation, fc.account.name, fc.cache.ttl_s,
                                      now)
            if self.proxy.shared is not None:  # every process keeps the conversation here
                self.proxy.shared.served(fc.cache.conversation, fc.account.name,
                                        fc.cache.ttl_s, now)
        if fc.asked_model is not None and flow.response is not None:
            flow.response.headers[FALLBACK_HEADER] = fc.model or ""
        attempt.convert_whole(flow, fc)
        if verdict is not None and verdict.action != "ok" and fc.account is not None:
            self._remember_for_retry(flow, fc)
        if len(fc.attempts) > 1:  # re-sent: the last account's credential is in the flow again
            redact_credentials(flow.request.headers, fc.account.name)
        attempt.release(self.proxy, fc)

    def error(self, flow: http.HTTPFlow) -> None:
        fc = self.proxy.flows.get(flow.id)
        if fc is None or fc.account is None:
            return
        redact_credentials(flow.request.headers, fc.account.name)
        if fc.timed_out:  # the row says which limit (see .timeouts)
            flow.error = mitmproxy_flow.Error(f"{fc.timed_out}: mitmflare closed the upstream "
                                              f"connection")
        elif flow.response is None and fc.ttfb is None \
                and not _client_left(flow):
            now = time.time()
            server = flow.server_conn
            if server.error or server.timestamp_tcp_setup is None:
                # The upstream could not be reached: the account's (its address, its network).
                self.proxy.apply(fc.account, Verdict(TRANSIENT, "connect_error",
                                                    cooldown_until=now + TRANSIENT_COOLDOWN_S),
                                fc.model, None, now)
            else:  # it dropped the connection before answering: maybe the request's doing
                self.proxy.count_error(fc.account, Verdict(
                    TRANSIENT, "upstream_closed", cooldown_until=now + TRANSIENT_COOLDOWN_S),
                    fc.model, None, now)
        attempt.release(self.proxy, fc)

    # -- retries by the client itself -------------------------------------------------------
    def _remember_for_retry(self, flow: http.HTTPFlow, fc: FlowContext) -> None:
        if RETRY_COUNT_HEADER not in flow.request.headers:
            return
        now = time.time()
        if len(self._retry_exclusions) > 1000:
            self._retry_exclusions = {k: v for k, v in self._retry_exclusions.items()
                                      if v[1] > now}
        tried = {a["account"] for a in fc.attempts} | fc.excluded
        usable = {a.name for a in self.proxy.pool.available(fc.wire_format, now, fc.convertible,
                                                            fc.family)}
        if usable <= tried:  # nothing left to steer to: the retry starts over on every account
            self._retry_exclusions.pop(_digest(flow), None)
            return
        self._retry_exclusions[_digest(flow)] = (tried, now + RETRY_MEMORY_S, fc.had_transient)

    def _excluded_for_retry(self, flow: http.HTTPFlow) -> tuple[set[str], bool]:
        """(accounts the client's earlier try of this request failed on, whether one of those
        failures was a transient error) for a client's own retry, else (empty, False)."""
        if not self._retry_exclusions:
            return set(), False
        count = flow.request.headers.get(RETRY_COUNT_HEADER, "0")
        if count in ("", "0"):
            return set(), False
        tried, expires, transient = self._retry_exclusions.get(_digest(flow), (set(), 0.0, False))
        return (set(tried), transient) if expires > time.time() else (set(), False)

    # -- periodic work ----------------------------------------------------------------------
    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick(time.time())
            except Exception:
                log.exception("mitmflare ticker")

    def tick(self, now: float) -> None:
        """Return accounts whose cooldown has passed and refresh the `accounts` table."""
        for account in self.proxy.pool.accounts.values():
            self.proxy.record(account, account.state.recovered(now))
        self.proxy.snapshot_accounts()


API_METHODS = ("GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS")
"""Methods the Anthropic and OpenAI APIs use (``upstream-apis.md``); others are refused here."""
_API_METHODS = frozenset(m.encode() for m in API_METHODS)
_HTTP_VERSIONS = frozenset((b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"))
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""What a header name may hold (RFC 9110 section 5.6.2, ``tchar``)."""
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""What a header value may not hold (RFC 9110 section 5.5): CR, LF (mitmproxy joins a folded
header's lines with CRLF), NUL and the other controls except tab."""


def unfit_request(request: http.Request) -> tuple[int, str] | None:
    """(status, message) when ``request`` cannot be an API request and is answered locally,
    before any account is chosen, else None: a method the APIs do not use (e.g. ``PRI``, the
    HTTP/2 connection preface sent to an HTTP/1 listener, or ``CONNECT``/``TRACE``) → 405;
    a target that is not a path (``*``, absolute- or authority-form) or a protocol upgrade
    (``Upgrade: h2c``, WebSocket) → 400; a header whose name is not a token (``x-api-key ``)
    or whose value holds a control character (a bare CR, a folded line, NUL) → 400, without
    echoing it. The point: nothing a client sends may reach an upstream in a form that makes
    the proxy fail there and blame the account, or that a lenient server reads differently
    (a smuggled header, a credential under another spelling). Reads the raw request (this
    runs on every request: ~1 µs)."""
    data = request.data
    if data.method not in _API_METHODS:
        return 405, f"mitmflare: method {request.method[:20]!r} is not used by the API"
    if not data.path.startswith(b"/") or (data.authority and data.http_version != b"HTTP/2.0"):
        return 400, "mitmflare: the request target must be a path (origin form)"
    fields = data.headers.fields
    names = [f[0] for f in fields]
    if b"\nupgrade\n" in b"\n" + b"\n".join(names).lower() + b"\n" \
            or data.http_version not in _HTTP_VERSIONS:
        return 400, "mitmflare: protocol upgrades and other HTTP versions are not supported"
    if b"".join(names).translate(None, TOKEN_CHARS) \
            or CONTROL.search(b"".join(f[1] for f in fields)):
        return 400, ("mitmflare: malformed header field (a name that is not a token, or a "
                     "control character such as a bare CR, LF or NUL in a value, e.g. a folded "
                     "header)")
    return None


def _digest(flow: http.HTTPFlow) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(flow.request.path.encode())
    h.update(flow.request.raw_content or b"")
    return h.digest()


def _client_left(flow: http.HTTPFlow) -> bool:
    """True when the flow ended because the client went away (mitmproxy's "Client
    disconnected." error, or a closed client connection): no fault of the account."""
    return (not flow.client_conn.connected
            or (flow.error is not None and flow.error.msg.startswith("Client disconnected")))
