"""One attempt of a client request on one account, for the router and failover alike.

* :func:`route`: choose the account (or take the one given), wait for a cooling one or a
  free slot when allowed, refresh its OAuth token, and rewrite the flow for it: URL,
  credentials, body (the account's model; converted Anthropic ⇄ OpenAI when the formats
  differ). mitmproxy sends the first attempt; :func:`resend` sends a failover's.
* :func:`convert_stream` / :func:`convert_whole`: the answer back into the client's format.
* :func:`release`: give back the account's slot.

The conversions between the Anthropic and OpenAI formats (:mod:`.convert`) are called only
from here. Runs on the event loop; waiting happens only in :func:`route` (holding a request)
and :func:`resend` (the upstream's answer).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import httpx
from mitmproxy import http

from ..providers import codex, error_response, made_here, retarget, upstream_headers
from ..providers.convert import convert_answer, convert_request, stream_converter, upstream_path
from ..providers.presets import CODEX
from ..providers.wire import header
from ..proxy_state import FlowContext, ProxyState
from ..routing.pool import AVAILABLE, COOLING_DOWN, Account
from ..routing.ratelimits import parse_limits
from .fallbacks import fall_back

log = logging.getLogger("mitmflare")

QUEUE_MARGIN_S = 0.05  # after a cooldown ends, before the held request is sent
HOP_HEADERS = ("host", "content-length", "connection", "transfer-encoding", "keep-alive")
DROP_RESPONSE_HEADERS = ("content-length", "transfer-encoding", "connection", "content-encoding",
                         "keep-alive")
SSE = "text/event-stream"


async def route(proxy: ProxyState, flow: http.HTTPFlow, fc: FlowContext,
                account: Account | None = None) -> bool:
    """Send ``flow`` with ``account`` (chosen here when None): rewrite its URL and
    credentials, refreshing an OAuth token that is about to expire first. Returns False
    when no account is usable. When no account can serve the model now, a configured
    fallback model is served (:mod:`.fallbacks`); else it waits for a token refresh, and,
    when every account that could serve is cooling down and the soonest is free again
    within ``flare_queue_s`` of the request's arrival, until then, or while they are at
    their ``max_concurrent``, until a slot is free (at most that long; instead of
    answering 429)."""
    while True:
        if account is None:
            account = proxy.choose(fc) or fall_back(proxy, fc)
            if account is None:
                wait = _queue_wait(proxy, fc)
                if wait is None:
                    return False
                await proxy.slots.wait(wait)  # sooner when a slot is given back
                continue
        if proxy.oauth and proxy.oauth.needs_refresh(account, time.time()) \
                and not await proxy.oauth.refresh(account):
            fc.excluded.add(account.name)
            fc.skipped[account.name] = "refresh_failed: its OAuth token could not be " \
                                       "refreshed (see the proxy's log)"
            account = None
            continue
        secret = proxy.secret(account)
        if secret is None:
            fc.excluded.add(account.name)
            fc.skipped[account.name] = "no_credential: it has no credential in force"
            account = None
            continue
        _prepare(proxy, flow, fc, account, secret)
        return True


def _queue_wait(proxy: ProxyState, fc: FlowContext) -> float | None:
    """Seconds to hold ``fc``'s request until the soonest cooling account that could
    serve it is free (one it already failed on for a rate limit counts, and is tried
    again), or, when none is but one is at its ``max_concurrent``, until ``flare_queue_s``
    after the request came (the wait ends sooner when a slot is given back); None when
    neither comes before then."""
    now = time.time()
    deadline = fc.started + proxy.queue_s
    frees = [(free_at(a, fc.model, now), a) for a in proxy.pool.for_client(
                fc.wire_format, fc.convertible, fc.family)
             if a.serves(fc.model) and (fc.family is None or a.in_family(fc.family))
             and a.status(now) in (AVAILABLE, COOLING_DOWN) and a.name not in fc.skipped]
    full = any(at <= now and a.full() and a.name not in fc.excluded for at, a in frees)
    frees = [(at, a) for at, a in frees if now < at <= deadline]
    if not frees:
        if not full or deadline <= now:
            return None
        if not any(n.startswith("waited for a free slot") for n in fc.notes):
            fc.notes.append("waited for a free slot (max_concurrent)")
        return deadline - now
    at, account = min(frees, key=lambda f: f[0])
    fc.excluded.discard(account.name)
    fc.notes.append(f"held {at - now:.1f} s for {account.name} (all cooling down)")
    return at - now + QUEUE_MARGIN_S


def attempt_account(fc: FlowContext) -> Account:
    """The account of ``fc``'s current attempt: failover runs only after one was sent.
    Raises RuntimeError otherwise (a bug: the router answers that flow itself)."""
    if fc.account is None:
        raise RuntimeError(f"flow {fc.flow_id}: failover without an account")
    return fc.account


def attempt_response(flow: http.HTTPFlow) -> http.Response:
    """The answer of the current attempt: failover runs only once there is one. Raises
    RuntimeError otherwise."""
    if flow.response is None:
        raise RuntimeError(f"flow {flow.id}: failover without an answer")
    return flow.response


def free_at(account: Account, model: str | None, now: float) -> float:
    """When ``account`` can take a request for ``model`` again (epoch s; ``now`` if it can)."""
    at = account.state.cooldown_until
    if model:
        at = max(at, account.state.model_cooldowns.get(model, 0.0))
    return at if at > now else now


def _prepare(proxy: ProxyState, flow: http.HTTPFlow, fc: FlowContext, account: Account,
             secret: str) -> None:
    """Rewrite ``flow`` for ``account``: its upstream, path, body and credential; the slot
    of the previous attempt is given back and one on ``account`` taken."""
    now = time.time()
    release(proxy, fc)
    request = flow.request
    cfg = account.config
    scheme, host, port, prefix = account.target
    host_header = retarget(request, scheme, host, port)
    fc.converted = fc.wire_format != account.wire
    path = upstream_path(account.wire) if fc.converted else fc.path
    if cfg.preset.versioned_base and path.startswith("/v1/"):
        path = path[3:]  # the base URL carries the version (e.g. …/api/v1)
    request.path = prefix + path
    fc.upstream_model = cfg.upstream_model(fc.model) if fc.model else None
    _set_body(request, fc, account.wire)
    upstream_headers(request.headers, host_header, account.wire, cfg.credential_kind,
                     cfg.auth_style, secret, fc.converted)
    if account.wire == CODEX:
        request.headers.fields = tuple(
            f for f in request.headers.fields if f[0].lower() not in codex.DROPPED_HEADERS
        ) + tuple(codex.request_headers(secret, fc.client_session))
    fc.account = account
    fc.attempt_started = now
    fc.attempt_mono = time.monotonic()
    account.state.in_flight += 1
    account.state.requests += 1
    account.state.last_used = now
    flow.metadata["mitmflare.account"] = account.name


def _set_body(request: http.Request, fc: FlowContext, wire: str) -> None:
    """The body for the account speaking ``wire``: converted to its format, or with the model the
    account maps to, or the client's own bytes (the common case: nothing is parsed again or
    re-encoded; also when ``json`` cannot read the body, which routing read: the upstream
    refuses it, see :mod:`..providers.routing_body`)."""
    rewrite = fc.body_source is not None and (
        fc.converted or bool(fc.upstream_model and fc.body_model != fc.upstream_model))
    exact = fc.request_json() if rewrite else None
    if exact is not None and fc.converted:
        request.content = json.dumps(convert_request(fc.path, exact, fc.upstream_model or "",
                                                     wire, fc.client_session),
                                     separators=(",", ":")).encode()
    elif exact is not None:
        request.content = json.dumps({**exact, "model": fc.upstream_model},
                                     separators=(",", ":")).encode()
    elif request.raw_content is not fc.raw_body:
        request.raw_content = fc.raw_body


def release(proxy: ProxyState, fc: FlowContext) -> None:
    """Give back the account's slot the request held (see :mod:`.concurrency`)."""
    if fc.account is not None:
        fc.account.state.in_flight -= 1
        proxy.slots.freed()


async def resend(proxy: ProxyState, client: httpx.AsyncClient | None, flow: http.HTTPFlow,
                 fc: FlowContext) -> None:
    """Send the (already re-routed) request again with ``client`` and put the whole answer
    in ``flow.response`` (a stream arrives in one piece); within the per-attempt timeouts
    (:mod:`.timeouts`). An unreachable upstream: a 502 in the client's format."""
    request, account = flow.request, attempt_account(fc)
    headers = [(k, v) for k, v in request.headers.items(multi=True)
               if k.lower() not in HOP_HEADERS]
    fc.limits = None
    connect, answer, stream_answer, idle = proxy.timeouts
    wait = max(stream_answer, idle) if fc.stream else answer
    try:
        if client is None:  # not running (yet, or any more)
            raise httpx.ConnectError("mitmflare is not running")
        up = await client.request(request.method, request.url, headers=headers,
                                  content=request.raw_content or b"",
                                  timeout=httpx.Timeout(wait, connect=connect))
    except httpx.HTTPError as exc:
        log.warning("failover to %s: %s", account.name, exc)
        flow.response = error_response(fc.wire_format, 502, "unavailable",
                                       f"mitmflare: upstream of {account.name} "
                                       f"unreachable: {type(exc).__name__}")
        return
    now = time.time()
    out = [(k.encode(), v.encode()) for k, v in up.headers.multi_items()
           if k.lower() not in DROP_RESPONSE_HEADERS]
    flow.response = http.Response.make(up.status_code, up.content, out)
    fc.limits = parse_limits(account.wire, flow.response.headers, now)
    proxy.learn(account, fc.limits, now)


def convert_stream(flow: http.HTTPFlow, fc: FlowContext) -> None:
    """A converted attempt's streamed (SSE) answer: convert each piece into the client's
    format as it passes (``flow.response.stream``; the recorder wraps it to read the usage
    first, as the upstream counts it). Nothing for other answers, nor for a Codex stream the
    client did not ask to stream (kept whole, answered as JSON by :func:`convert_whole`)."""
    response, account = flow.response, fc.account
    if not fc.converted or response is None or account is None \
            or response.status_code >= 400 \
            or not (header(response.headers, b"content-type") or "").startswith(SSE) \
            or (account.wire == CODEX and not fc.stream):
        return
    convert = stream_converter(fc.path, fc.request_json(), fc.upstream_model or fc.model or "",
                               account.wire)
    if convert is None:  # already in the client's format (a Responses client served by Codex)
        return
    feed: Callable[[bytes], bytes] = convert

    def converted(chunk: bytes) -> list[bytes]:
        out = feed(chunk)  # b"" at the end of the stream closes the conversion
        # Never hand mitmproxy an empty chunk: HTTP/1.1 chunked encoding would send it
        # as the terminating zero-length chunk and end the client's body early.
        return [out] if out else []

    response.headers.pop("content-length", None)
    response.stream = converted


def convert_whole(flow: http.HTTPFlow, fc: FlowContext) -> None:
    """A converted attempt's whole answer (not streamed, not made by mitmflare): kept as the
    upstream sent it (``fc.upstream_body``, for the row's usage) and converted into the
    client's format."""
    response = flow.response
    if fc.converted and response is not None and not response.stream \
            and not made_here(response):
        fc.upstream_body = response.content
        fc.upstream_sse = response.headers.get("content-type", "").startswith(SSE)
        convert_answer(response, fc.path, fc.request_json(), fc.upstream_model or fc.model or "",
                       fc.account.wire if fc.account else "")
