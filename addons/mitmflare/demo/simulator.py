"""A simulated upstream that speaks the Anthropic and OpenAI wire formats, for tests and
``./scripts/run --demo``. Never used against real traffic.

Endpoints: ``POST /v1/messages`` (JSON and SSE), ``POST /v1/messages/count_tokens``,
``POST /v1/chat/completions`` (JSON and SSE, final usage chunk with
``stream_options.include_usage``), ``POST /v1/responses`` (JSON and SSE), ``GET /v1/models``.
Formats follow ``shared/reference/upstream-apis.md`` section 4.

Each request's credential (``x-api-key`` or ``Authorization: Bearer``) selects a queue of
scripted answers (:meth:`SimulatedUpstream.script`); with none queued it answers successfully.
A scripted answer is a dict: ``status``, ``headers``, ``body`` (JSON error body),
``usage`` (Anthropic-style token counts for a success), ``error_event`` (an SSE error sent
after the first text delta), ``delay_s`` (before answering), ``stall_after`` (silent for an hour
after that many SSE events), ``blocks`` (the answer's content blocks instead of the reply
words, Anthropic Messages only: ``thinking`` with its ``signature``, ``redacted_thinking``,
``text`` with ``citations``, ``tool_use`` with its ``input``; streamed as the real API does,
with ``thinking_delta``, ``signature_delta``, ``citations_delta`` and ``input_json_delta``
events), ``chunk_bytes`` (send a stream in pieces of that many bytes, cut anywhere, also
inside an event or a UTF-8 character), ``tool_calls`` (``[{"id", "name", "arguments":
{...}}]``: the answer calls these tools instead of saying the reply words; Messages and Chat
Completions, JSON and SSE), ``finish_reason`` / ``stop_reason`` (the stop reason in that API's
terms). The bytes of each answer's body are kept by its ``request-id`` header
(:attr:`SimulatedUpstream.sent`, the latest 200).

Prompt caches: a Messages request with ``cache_control`` reads and writes a per-credential
prompt cache with TTLs (:mod:`.prompt_caches`), and its usage says so (input, cache read,
cache creation with the 5m / 1h split); a scripted ``usage`` still wins.

OAuth: ``GET /oauth/authorize`` (answers the code as JSON, as if the user approved) and
``POST /v1/oauth/token`` with PKCE checks and real rotation (a refresh token dies on use).
With ``oauth_enforce`` on, OAuth requests need a live issued access token and the OAuth beta.

Codex mode (:mod:`.simulator_codex`): ``/codex/oauth/authorize``, ``/codex/oauth/token`` and
the Codex backend's ``POST /backend-api/codex/responses`` with its ``x-codex-*`` headers.

Run alone: ``python -m mitmflare.demo.simulator --port 9099 [--chunk-delay-ms 50] [--chaos 0.1]
[--windows [--enforce-windows] [--window-scale 60]] [--ttl-scale 60] [--forget-requests]``.
Control over HTTP: ``POST /_sim/script`` ``{"credential": "...", "answers": [...]}``,
``POST /_sim/overage`` ``{"credential": "...", "mode": "allowed" | "out_of_credits"}``,
``GET /_sim/requests``, ``GET /_sim/sent?id=…``, ``POST /_sim/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import random
import socket
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from . import simulator_codex as codex
from .prompt_caches import PromptCaches

REPLY_WORDS = ["This", "is", "a", "simulated", "answer", "from", "the", "mitmflare", "test", "upstream", "."]
FIVE_HOURS_S = 5 * 3600
WINDOW_TOKENS = 400_000  # a simulated 5-hour window's tokens (the 7-day window: ten times that)
DEFAULT_USAGE = {"input_tokens": 25, "output_tokens": len(REPLY_WORDS),
                 "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
SENT_KEPT = 200  # answers whose body bytes are kept (SimulatedUpstream.sent)


@dataclass
class SeenRequest:
    """One request as the simulated upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    credential: str | None
    at: float = field(default_factory=time.time)


class SimulatedUpstream:
    """ASGI app plus a helper to serve it on 127.0.0.1 in a background thread.

    ``chunk_delay_s``: pause between SSE events, s. ``chaos``: share (0..1) of unscripted
    requests answered with a rate limit or an overload, for demos. ``windows``: rate-limit
    headers on every answer (:meth:`_window_headers`). ``enforce_windows`` (opt-in, for the
    demo): an OAuth token's 5-hour window stops at 100 % and its requests get the 429 a used-up
    window gets (:meth:`_rejection`) until the window resets. ``window_scale``: windows last
    that many times less than their real length (60: a 5-hour window lasts 5 minutes).
    ``caches``: the per-credential prompt caches (:class:`.PromptCaches`), whose TTLs last
    ``ttl_scale`` times less (a proxy in front needs ``flare_cache_ttl_scale`` set alike).
    ``overage``: credential -> ``allowed`` (once its 5-hour window is used up it answers from
    extra usage: 200 with ``unified-status: rejected`` and ``overage-status: allowed``) or a
    disabled reason such as ``out_of_credits`` (``overage-status: rejected`` with that reason
    on every answer). ``forget_requests``: keep no :class:`SeenRequest` (benchmarks sending
    large bodies).
    """

    def __init__(self, chunk_delay_s: float = 0.0, chaos: float = 0.0,
                 windows: bool = False, enforce_windows: bool = False,
                 window_scale: float = 1.0, forget_requests: bool = False,
                 ttl_scale: float = 1.0) -> None:
        self.chunk_delay_s = chunk_delay_s
        self.forget_requests = forget_requests
        self.chaos = chaos
        self.windows = windows
        self.enforce_windows = enforce_windows
        self.window_scale = window_scale
        self._used: dict[str, tuple[float, int]] = {}  # credential -> (window start, tokens)
        self.caches = PromptCaches(ttl_scale)
        self.overage: dict[str, str] = {}
        self.requests: list[SeenRequest] = []
        self.sent: OrderedDict[str, bytes] = OrderedDict()  # request-id -> body bytes sent
        self._scripts: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self.url = ""
        # OAuth: refresh token -> live; access token -> expiry (epoch s); code -> PKCE challenge
        self.oauth_expires_in = 28800
        self.oauth_enforce = False
        self.token_requests: list[dict[str, Any]] = []
        self._refresh_tokens: set[str] = set()
        self._access_tokens: dict[str, float] = {}
        self._codes: dict[str, str] = {}
        self._codex_used: dict[str, tuple[float, float]] = {}  # token -> (start, % used)

    # -- scripting --------------------------------------------------------------------------
    def script(self, credential: str, *answers: dict[str, Any]) -> None:
        """Queue ``answers`` for requests sent with ``credential`` (used in order, once each)."""
        self._scripts[credential].extend(answers)

    def reset(self) -> None:
        self.requests.clear()
        self.sent.clear()
        self._used.clear()
        self.caches.clear()
        self.overage.clear()
        self.caches.ttl_scale = 1.0
        self.windows = False
        self.enforce_windows = False
        self.window_scale = 1.0
        self._scripts.clear()
        self.token_requests.clear()
        self._refresh_tokens.clear()
        self._access_tokens.clear()
        self._codes.clear()
        self._codex_used.clear()
        self.oauth_enforce = False
        self.oauth_expires_in = 28800

    def issue_tokens(self, expires_in: float | None = None) -> dict[str, Any]:
        """A new valid OAuth pair, as the token endpoint would answer it."""
        n = next(self._ids)
        access, refresh = f"sk-ant-oat01-sim{n}-{uuid.uuid4().hex}", f"sk-ant-ort01-sim{n}-{uuid.uuid4().hex}"
        lifetime = self.oauth_expires_in if expires_in is None else expires_in
        self._refresh_tokens.add(refresh)
        self._access_tokens[access] = time.time() + lifetime
        return {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                "expires_in": lifetime, "scope": "user:inference user:profile",
                "organization": {"uuid": str(uuid.uuid4()), "name": "Sim Org"},
                "account": {"uuid": str(uuid.uuid4()), "email_address": "sim@example.com"}}

    def revoke_access(self, access_token: str) -> None:
        self._access_tokens.pop(access_token, None)

    def credentials_seen(self, path_prefix: str = "/v1/") -> list[str | None]:
        return [r.credential for r in self.requests if r.path.startswith(path_prefix)]

    # -- serving ----------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0, certfile: str | None = None) -> str:
        """Serve in a daemon thread; returns the base URL (``http://127.0.0.1:PORT``, or
        ``https://`` with ``certfile``, a PEM file with the key and the certificate)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # no Nagle: small SSE events go out at once (accepted sockets inherit this on Linux)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        config = uvicorn.Config(self, log_level="warning", lifespan="off", access_log=False,
                                ssl_certfile=certfile)
        self._server = uvicorn.Server(config)
        thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                  daemon=True, name="simulated-upstream")
        thread.start()
        deadline = time.time() + 10
        while not self._server.started and time.time() < deadline:
            time.sleep(0.01)
        self.url = f"{'https' if certfile else 'http'}://{host}:{sock.getsockname()[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(parts)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            body = None
        path = scope["path"]
        if path.startswith("/_sim/"):
            query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode()))
            await self._control(path, body, send, query)
            return
        if path in ("/oauth/authorize", codex.AUTHORIZE_PATH):
            await self._authorize(scope, send)
            return
        if path == "/v1/oauth/token":
            await self._token(body if isinstance(body, dict) else {}, send)
            return
        if path == codex.TOKEN_PATH:
            await codex.token(self, raw, headers, send)
            return
        credential = headers.get("x-api-key")
        if credential is None and headers.get("authorization", "").startswith("Bearer "):
            credential = headers["authorization"][7:]
        if not self.forget_requests:
            self.requests.append(SeenRequest(scope["method"], path, headers, body, credential))
        if path == codex.RESPONSES_PATH:
            await self._codex(headers, body, credential or "", send)
            return
        rejected = self._oauth_rejection(credential, headers)
        if not rejected and raw and body is None and scope["method"] == "POST":
            # an API refuses a body it cannot read as JSON before anything else (not UTF-8,
            # bad grammar), whatever its account's state
            await _send_json(send, 400, _error_body(path, 400))
            return
        answer: dict[str, Any] = {"status": 401, "body": rejected} if rejected else \
            self._next_answer(credential, headers.get("x-sim-answer"))
        if answer.get("delay_s"):
            await asyncio.sleep(answer["delay_s"])
        if answer.get("status", 200) >= 400:
            await _send_json(send, answer["status"], answer.get("body") or
                             _error_body(path, answer["status"]), answer.get("headers"))
            return
        await self._success(path, body if isinstance(body, dict) else {}, answer, send,
                            credential or "")

    async def _codex(self, headers: dict[str, str], body: Any, credential: str, send) -> None:
        """The Codex backend's Responses endpoint (see :mod:`.simulator_codex`)."""
        refused = codex.problem(self, headers, body, credential)
        answer: dict[str, Any] = {"status": refused[0], "body": refused[1]} if refused else \
            self._next_answer(credential)
        if answer.get("delay_s"):
            await asyncio.sleep(answer["delay_s"])
        if answer.get("status", 200) >= 400:
            await _send_json(send, answer["status"], answer.get("body") or
                             _error_body("/v1/responses", answer["status"]), answer.get("headers"))
            return
        usage = {**DEFAULT_USAGE, **answer.get("usage", {})}
        out = {"request-id": f"req_sim{next(self._ids)}", **codex.window_headers(self, credential),
               **answer.get("headers", {})}
        events = codex.events(body.get("model", "gpt-5"), usage, answer, REPLY_WORDS)
        self._keep(out, b"".join(events))
        await self._stream(send, out, _pieces(events, answer.get("chunk_bytes")),
                           answer.get("stall_after"))

    def _next_answer(self, credential: str | None, asked: str | None = None) -> dict[str, Any]:
        queue = self._scripts.get(credential or "")
        if queue:
            return queue.popleft()
        if asked:  # the request's x-sim-answer header (benchmarks)
            try:
                answer = json.loads(asked)
            except ValueError:
                answer = None
            if isinstance(answer, dict):
                return answer
        if self.enforce_windows and (credential or "").startswith("sk-ant-oat"):
            rejection = self._rejection(credential or "")
            if rejection is not None:
                return rejection
        if self.chaos and random.random() < self.chaos:
            if random.random() < 0.5:
                return {"status": 529}
            reset = int(time.time()) + random.randint(5, 30)
            return {"status": 429, "headers": {
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-5h-status": "rejected",
                "anthropic-ratelimit-unified-5h-reset": str(reset),
                "anthropic-ratelimit-unified-5h-utilization": "1.01",
                "anthropic-ratelimit-unified-reset": str(reset),
                "retry-after": str(reset - int(time.time()))}}
        return {}

    # -- OAuth --------------------------------------------------------------------------------
    def _oauth_rejection(self, credential: str | None, headers: dict[str, str]) -> dict | None:
        """The 401 body for a bad OAuth request when enforcement is on, else None."""
        if not self.oauth_enforce or credential is None or not credential.startswith("sk-ant-oat"):
            return None
        if "oauth-2025-04-20" not in headers.get("anthropic-beta", ""):
            message = "OAuth authentication is currently not supported."
        elif self._access_tokens.get(credential, 0) <= time.time():
            message = "OAuth token has expired."
        else:
            return None
        return {"type": "error", "error": {"type": "authentication_error", "message": message}}

    async def _authorize(self, scope: dict, send) -> None:
        """Stands in for the user approving access in a browser: answers the code as JSON."""
        query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode()))
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            await _send_json(send, 400, {"error": "invalid_request"})
            return
        code = f"code-{uuid.uuid4().hex}"
        self._codes[code] = query["code_challenge"]
        await _send_json(send, 200, {"code": code, "state": query.get("state", "")})

    async def _token(self, body: dict, send) -> None:
        self.token_requests.append(body)
        grant = body.get("grant_type")
        if grant == "refresh_token" and body.get("refresh_token") in self._refresh_tokens:
            self._refresh_tokens.discard(body["refresh_token"])  # rotation: single use
            await _send_json(send, 200, self.issue_tokens())
            return
        if grant == "authorization_code" and body.get("code") in self._codes:
            challenge = self._codes.pop(body["code"])
            digest = hashlib.sha256(str(body.get("code_verifier", "")).encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == challenge:
                await _send_json(send, 200, self.issue_tokens())
                return
        await _send_json(send, 400, {"error": "invalid_grant",
                                     "error_description": "Invalid or expired grant"})

    def _varied_usage(self, body: dict) -> dict:
        """In chaos (demo) mode, plausible varying token counts instead of fixed ones."""
        if not self.chaos:
            return {}
        size = len(json.dumps(body.get("messages", body.get("input", ""))))
        return {"input_tokens": 20 + size // 4, "output_tokens": random.randint(11, 600),
                "cache_read_input_tokens": random.choice([0, 0, 1800, 12000, 40000]),
                "cache_creation_input_tokens": random.choice([0, 0, 0, 2500])}

    async def _control(self, path: str, body: Any, send, query: dict[str, str]) -> None:
        if path == "/_sim/script" and isinstance(body, dict):
            self.script(body.get("credential", ""), *body.get("answers", []))
            await _send_json(send, 200, {"ok": True})
        elif path == "/_sim/requests":
            await _send_json(send, 200, [r.__dict__ for r in self.requests])
        elif path == "/_sim/overage" and isinstance(body, dict):
            self.overage[str(body.get("credential"))] = str(body.get("mode"))
            await _send_json(send, 200, {"ok": True})
        elif path == "/_sim/sent":
            await _send_bytes(send, self.sent.get(query.get("id", ""), b""))
        elif path == "/_sim/reset":
            self.reset()
            await _send_json(send, 200, {"ok": True})
        else:
            await _send_json(send, 404, {"error": "unknown control path"})

    # -- successful answers -----------------------------------------------------------------
    async def _success(self, path: str, body: dict, answer: dict, send,
                       credential: str = "") -> None:
        cached = self.caches.usage(credential, body, time.time()) \
            if path.startswith("/v1/messages") and not path.startswith("/v1/messages/count") \
            else None
        usage = {**DEFAULT_USAGE, **self._varied_usage(body), **(cached or {}),
                 **answer.get("usage", {})}
        model = body.get("model", "claude-sonnet-4-6")
        headers = {"request-id": f"req_sim{next(self._ids)}",
                   **(self._window_headers(credential, body, usage) if self.windows else {}),
                   **answer.get("headers", {})}
        stream = body.get("stream") is True
        if path.startswith("/v1/messages/count_tokens"):
            await _send_json(send, 200, {"input_tokens": usage["input_tokens"]}, headers)
        elif path.startswith("/v1/messages"):
            if stream:
                events = _anthropic_events(model, usage, answer)
                self._keep(headers, b"".join(events))
                await self._stream(send, headers, _pieces(events, answer.get("chunk_bytes")),
                                   answer.get("stall_after"), answer.get("event_delay_ms"),
                                   answer.get("hold_s"))
            else:
                message = _anthropic_message(model, usage, answer)
                self._keep(headers, json.dumps(message).encode())
                await _send_json(send, 200, message, headers)
        elif path.startswith("/v1/chat/completions"):
            include = (body.get("stream_options") or {}).get("include_usage") is True
            if stream:
                await self._stream(send, headers, _chat_events(model, usage, include, answer))
            else:
                await _send_json(send, 200, _chat_completion(model, usage, answer), headers)
        elif path.startswith("/v1/responses"):
            if stream:
                await self._stream(send, headers, _responses_events(model, usage))
            else:
                await _send_json(send, 200, _response_object(model, usage), headers)
        elif path.startswith("/v1/models"):
            await _send_json(send, 200, {"data": [{"id": "claude-sonnet-4-6", "type": "model"}],
                                         "object": "list"}, headers)
        else:
            await _send_json(send, 404, _error_body(path, 404), headers)

    def _keep(self, headers: dict[str, str], body: bytes) -> None:
        """Remember the body bytes of the answer with ``headers``' ``request-id``."""
        self.sent[headers["request-id"]] = body
        while len(self.sent) > SENT_KEPT:
            self.sent.popitem(last=False)

    def _window(self, credential: str, now: float) -> tuple[float, int]:
        """(start, tokens used) of ``credential``'s 5-hour window, a new one once it ended."""
        start, used = self._used.get(credential, (now, 0))
        if now >= int(start + FIVE_HOURS_S / self.window_scale):  # its reset header's time
            start, used = now, 0
        return start, used

    def _unified(self, start: float, used: int, status: str) -> dict[str, str]:
        """The ``anthropic-ratelimit-unified-*`` headers for a window of ``used`` tokens."""
        u5, u7 = used / WINDOW_TOKENS, used / (10 * WINDOW_TOKENS)
        reset5 = int(start + FIVE_HOURS_S / self.window_scale)
        reset7 = int(start + 7 * 86400 / self.window_scale)
        return {"anthropic-ratelimit-unified-status": status,
                "anthropic-ratelimit-unified-5h-status": status,
                "anthropic-ratelimit-unified-5h-utilization": f"{u5:.4f}",
                "anthropic-ratelimit-unified-5h-reset": str(reset5),
                "anthropic-ratelimit-unified-7d-status": "allowed",
                "anthropic-ratelimit-unified-7d-utilization": f"{u7:.4f}",
                "anthropic-ratelimit-unified-7d-reset": str(reset7),
                "anthropic-ratelimit-unified-representative-claim": "five_hour",
                "anthropic-ratelimit-unified-reset": str(reset5)}

    def _rejection(self, credential: str) -> dict[str, Any] | None:
        """The 429 for an OAuth token whose 5-hour window is used up (``enforce_windows``),
        as captured from the real upstream (``shared/reference/upstream-apis.md`` 1b: status
        ``rejected``, ``surpassed-threshold``, ``retry-after`` until the reset,
        ``x-should-retry: true``, a ``rate_limit_error`` body); None while it has room."""
        now = time.time()
        start, used = self._window(credential, now)
        if used < WINDOW_TOKENS or self.overage.get(credential) == "allowed":
            return None
        headers = {**self._unified(start, used, "rejected"), **self._overage_headers(credential)}
        reset = int(headers["anthropic-ratelimit-unified-reset"])
        return {"status": 429, "headers": {
            **headers, "anthropic-ratelimit-unified-5h-surpassed-threshold": "1.0",
            "retry-after": str(max(1, reset - int(now))), "x-should-retry": "true"},
            "body": {"type": "error", "error": {"type": "rate_limit_error",
                                                "message": "rate limit exceeded"}}}

    def _window_headers(self, credential: str, body: dict, usage: dict) -> dict[str, str]:
        """Limit headers as a real upstream sends them with every answer (``windows`` mode):
        unified 5h / 7d windows for OAuth tokens (``sk-ant-oat…``), whose utilization grows
        with the tokens used (5h: 400k tokens, 7d: 4M; with ``enforce_windows`` the 5-hour
        window stops at 100 %); standard request/token buckets for API keys. Header names
        from ``shared/reference/upstream-apis.md`` section 1."""
        now = time.time()
        start, used = self._window(credential, now)
        used += usage["input_tokens"] + usage["output_tokens"] + body.get("max_tokens", 0) * 40
        if self.enforce_windows:
            used = min(used, WINDOW_TOKENS)
        self._used[credential] = (start, used)
        if credential.startswith("sk-ant-oat"):
            status = "rejected" if used >= WINDOW_TOKENS else \
                "allowed_warning" if used >= 0.8 * WINDOW_TOKENS else "allowed"
            return {**self._unified(start, used, status), **self._overage_headers(credential)}
        if credential.startswith("sk-ant-api"):
            reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 60))
            return {"anthropic-ratelimit-requests-limit": "1000",
                    "anthropic-ratelimit-requests-remaining": str(max(0, 1000 - used // 1000)),
                    "anthropic-ratelimit-requests-reset": reset,
                    "anthropic-ratelimit-tokens-limit": "2000000",
                    "anthropic-ratelimit-tokens-remaining": str(max(0, 2_000_000 - used)),
                    "anthropic-ratelimit-tokens-reset": reset}
        return {}

    def _overage_headers(self, credential: str) -> dict[str, str]:
        """``anthropic-ratelimit-unified-overage-*`` for a credential with an ``overage``
        setting (header names and values: ``shared/reference/upstream-apis.md`` section 1)."""
        mode = self.overage.get(credential)
        if mode is None:
            return {}
        if mode != "allowed":
            return {"anthropic-ratelimit-unified-overage-status": "rejected",
                    "anthropic-ratelimit-unified-overage-disabled-reason": mode}
        month_end = time.mktime(time.strptime(time.strftime("%Y-%m", time.gmtime()), "%Y-%m")) \
            + 32 * 86400
        return {"anthropic-ratelimit-unified-overage-status": "allowed",
                "anthropic-ratelimit-unified-overage-reset": str(int(month_end))}

    async def _stream(self, send, headers: dict[str, str], events: list[bytes],
                      stall_after: int | None = None, event_delay_ms: float | None = None,
                      hold_s: float | None = None) -> None:
        """Send ``events`` as an SSE answer; with ``stall_after`` (a scripted answer's key),
        fall silent for an hour after that many events (a hung upstream, for timeouts); with
        ``event_delay_ms``, that pause between events instead of the simulator's; with
        ``hold_s``, a ``ping`` event every second for that long after the first event."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": _headers({"content-type": "text/event-stream",
                                         "cache-control": "no-cache", **headers})})
        delay = self.chunk_delay_s if event_delay_ms is None else event_delay_ms / 1000
        for i, event in enumerate(events):
            if i == stall_after:
                await asyncio.sleep(3600)
            if i and delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if i == 0 and hold_s:
                end = time.monotonic() + hold_s
                while (left := end - time.monotonic()) > 0:
                    await asyncio.sleep(min(1.0, left))
                    await send({"type": "http.response.body", "more_body": True,
                                "body": _sse("ping", {"type": "ping"})})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _sse(event: str | None, data: Any) -> bytes:
    """One SSE event; non-ASCII text stays raw UTF-8, as the real APIs send it."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


def _anthropic_usage(usage: dict) -> dict:
    out = {k: usage.get(k, 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                        "cache_read_input_tokens", "output_tokens")}
    if "cache_creation" in usage:
        out["cache_creation"] = usage["cache_creation"]
    return out


def _scripted_blocks(answer: dict) -> list[dict] | None:
    """The content blocks a scripted answer asks for: its ``blocks``, or its ``tool_calls``
    as ``tool_use`` blocks; None for the reply words."""
    calls = answer.get("tool_calls")
    return answer.get("blocks") or ([{"type": "tool_use", "id": c["id"], "name": c["name"],
                                      "input": c["arguments"]} for c in calls] if calls else None)


def _anthropic_message(model: str, usage: dict, answer: dict | None = None) -> dict:
    """A Messages answer: the reply words as one text block, or the scripted blocks (see
    :func:`_scripted_blocks`); ``stop_reason`` the scripted one, else ``tool_use`` when a
    block is a ``tool_use`` block, else ``end_turn``."""
    answer = answer or {}
    content = _scripted_blocks(answer) or [{"type": "text", "text": " ".join(REPLY_WORDS)}]
    tool = any(b.get("type") == "tool_use" for b in content)
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": model, "content": content,
            "stop_reason": answer.get("stop_reason") or ("tool_use" if tool else "end_turn"),
            "stop_sequence": None, "usage": _anthropic_usage(usage)}


def _halves(value: str) -> list[str]:
    """``value`` in two pieces (a delta arrives in several events on the real API)."""
    half = max(1, len(value) // 2)
    return [value[:half], value[half:]] if len(value) > 1 else [value]


def _block_events(index: int, block: dict) -> list[bytes]:
    """The ``content_block_start`` / ``_delta`` / ``_stop`` events of one scripted content
    block, shaped as the Messages streaming docs show them (``upstream-apis.md`` section 4a):
    a thinking block starts empty, then ``thinking_delta`` pieces and one ``signature_delta``;
    a redacted_thinking block comes whole in its start event; a text block's citations come
    as ``citations_delta`` events before its ``text_delta`` pieces; a tool_use block starts
    with ``input: {}`` and its input arrives as ``input_json_delta`` pieces of partial JSON."""
    kind = block.get("type")

    def delta(d: dict) -> bytes:
        return _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                            "delta": d})

    start: dict[str, Any]
    if kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        thinking = block.get("thinking", "")  # a list: the pieces as they are sent
        deltas = [delta({"type": "thinking_delta", "thinking": piece}) for piece in
                  (thinking if isinstance(thinking, list) else _halves(thinking))]
        deltas.append(delta({"type": "signature_delta", "signature": block["signature"]}))
    elif kind == "tool_use":
        start = {**block, "input": {}}
        deltas = [delta({"type": "input_json_delta", "partial_json": piece})
                  for piece in _halves(json.dumps(block.get("input", {})))]
    elif kind == "text":
        start = {"type": "text", "text": ""}
        deltas = [delta({"type": "citations_delta", "citation": c})
                  for c in block.get("citations") or []]
        deltas += [delta({"type": "text_delta", "text": piece})
                   for piece in _halves(block.get("text", ""))]
    else:  # redacted_thinking, server tool blocks: whole in the start event
        start, deltas = block, []
    return [_sse("content_block_start", {"type": "content_block_start", "index": index,
                                         "content_block": start}),
            *deltas, _sse("content_block_stop", {"type": "content_block_stop", "index": index})]


def _long_thinking(events: int) -> list[dict]:
    """Content blocks whose stream (:func:`_anthropic_events`) has about ``events`` events:
    a thinking block of ``events - 15`` deltas and its signature, a text block and a tool use
    (a long extended-thinking answer, for benchmarks)."""
    deltas = max(events - 15, 1)
    return [{"type": "thinking", "signature": "EqQBCkYIBRgCKkD" + "x" * 300,
             "thinking": [f"Step {i}: consider the {i % 7}th case of the problem, ünïcödé. "
                          for i in range(deltas)]},
            {"type": "text", "text": "Here is the plan, then the edit."},
            {"type": "tool_use", "id": "toolu_bench01", "name": "Edit",
             "input": {"file_path": "/src/app.py", "old_string": "a = 1", "new_string": "a = 2"}}]


def _anthropic_events(model: str, usage: dict, answer: dict) -> list[bytes]:
    start_usage = {**_anthropic_usage(usage), "output_tokens": 1}
    if answer.get("thinking_events"):
        answer = {**answer, "blocks": _long_thinking(int(answer["thinking_events"]))}
    blocks = _scripted_blocks(answer)
    final = _anthropic_message(model, usage, answer)
    message = {**final, "content": [], "stop_reason": None, "usage": start_usage}
    events = [_sse("message_start", {"type": "message_start", "message": message})]
    if blocks:
        events.append(_sse("ping", {"type": "ping"}))
        for index, block in enumerate(blocks):
            events += _block_events(index, block)
        return [*events, _sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": final["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]}}),
            _sse("message_stop", {"type": "message_stop"})]
    events += [_sse("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}),
               _sse("ping", {"type": "ping"})]
    for i, word in enumerate(REPLY_WORDS):
        events.append(_sse("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}}))
        if i == 0 and answer.get("error_event"):
            events.append(_sse("error", {"type": "error", "error": answer["error_event"]}))
            return events
    events += [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
               _sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": final["stop_reason"],
                                                "stop_sequence": None},
                                      "usage": {"output_tokens": usage["output_tokens"]}}),
               _sse("message_stop", {"type": "message_stop"})]
    return events


def _pieces(events: list[bytes], size: int | None) -> list[bytes]:
    """``events`` as they go on the wire: one piece per event, or with ``size`` pieces of that
    many bytes, cut anywhere (inside an event, a line or a UTF-8 character)."""
    if not size:
        return events
    data = b"".join(events)
    return [data[i:i + size] for i in range(0, len(data), size)]


def _openai_usage(usage: dict) -> dict:
    cached = usage.get("cache_read_input_tokens", 0)
    prompt = usage["input_tokens"] + cached
    return {"prompt_tokens": prompt, "completion_tokens": usage["output_tokens"],
            "total_tokens": prompt + usage["output_tokens"],
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _chat_completion(model: str, usage: dict, answer: dict) -> dict:
    """A chat completion: the reply words, or the scripted ``tool_calls`` (each
    ``{"id", "name", "arguments": {...}}``) with ``finish_reason: tool_calls``."""
    calls = answer.get("tool_calls")
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else
                               " ".join(REPLY_WORDS)}
    if calls:
        message["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
            "name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in calls]
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": answer.get("finish_reason") or
                         ("tool_calls" if calls else "stop"), "logprobs": None,
                         "message": message}],
            "usage": _openai_usage(usage)}


def _chat_events(model: str, usage: dict, include_usage: bool, answer: dict) -> list[bytes]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}
    extra = {"usage": None} if include_usage else {}
    events = []
    for i, word in enumerate(REPLY_WORDS):
        delta = {"content": word if i == 0 else " " + word}
        if i == 0:
            delta["role"] = "assistant"
        events.append(_sse(None, {**base, **extra, "choices": [
            {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]}))
        if i == 0 and answer.get("error_event"):
            events.append(_sse(None, {"error": answer["error_event"]}))
            return events
    for index, call in enumerate(answer.get("tool_calls") or []):
        arguments = json.dumps(call["arguments"])
        half = len(arguments) // 2  # arguments arrive in pieces, as real streams send them
        events.append(_sse(None, {**base, **extra, "choices": [{"index": 0, "delta": {
            "tool_calls": [{"index": index, "id": call["id"], "type": "function",
                            "function": {"name": call["name"], "arguments": arguments[:half]}}]},
            "finish_reason": None}]}))
        events.append(_sse(None, {**base, **extra, "choices": [{"index": 0, "delta": {
            "tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]},
            "finish_reason": None}]}))
    finish = answer.get("finish_reason") or ("tool_calls" if answer.get("tool_calls") else "stop")
    events.append(_sse(None, {**base, **extra, "choices": [
        {"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None}]}))
    if include_usage:
        events.append(_sse(None, {**base, "choices": [], "usage": _openai_usage(usage)}))
    events.append(_sse(None, "[DONE]"))
    return events


def _response_object(model: str, usage: dict, status: str = "completed") -> dict:
    cached = usage.get("cache_read_input_tokens", 0)
    return {"id": f"resp_{uuid.uuid4().hex[:20]}", "object": "response", "status": status,
            "created_at": int(time.time()), "model": model,
            "output": [{"type": "message", "id": "msg_1", "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": " ".join(REPLY_WORDS),
                                     "annotations": []}]}],
            "usage": {"input_tokens": usage["input_tokens"] + cached,
                      "input_tokens_details": {"cached_tokens": cached},
                      "output_tokens": usage["output_tokens"],
                      "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": usage["input_tokens"] + cached + usage["output_tokens"]}}


def _responses_events(model: str, usage: dict) -> list[bytes]:
    seq = itertools.count()
    done = _response_object(model, usage)
    item = {**done["output"][0], "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    created = {**done, "status": "in_progress", "output": [], "usage": None}

    def event(kind: str, **fields: Any) -> bytes:
        return _sse(kind, {"type": kind, **fields, "sequence_number": next(seq)})

    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events = [event("response.created", response=created),
              event("response.output_item.added", output_index=0, item=item),
              event("response.content_part.added", **where, part=part)]
    for i, word in enumerate(REPLY_WORDS):
        events.append(event("response.output_text.delta", **where,
                            delta=word if i == 0 else " " + word, logprobs=[]))
    text = done["output"][0]["content"][0]
    events += [event("response.output_text.done", **where, text=text["text"], logprobs=[]),
               event("response.content_part.done", **where, part=text),
               event("response.output_item.done", output_index=0, item=done["output"][0]),
               event("response.completed", response=done)]
    return events


def _error_body(path: str, status: int) -> dict:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 429: "rate_limit_error", 500: "api_error",
             529: "overloaded_error"}
    kind = kinds.get(status, "api_error")
    if path.startswith("/v1/messages"):
        return {"type": "error", "error": {"type": kind, "message": f"simulated {kind}"}}
    return {"error": {"message": f"simulated {kind}", "type": kind, "param": None, "code": None}}


def _headers(headers: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]


async def _send_bytes(send, data: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": _headers({"content-type": "application/octet-stream"})})
    await send({"type": "http.response.body", "body": data})


async def _send_json(send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": _headers({"content-type": "application/json", **(headers or {})})})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9099)
    parser.add_argument("--chunk-delay-ms", type=float, default=40.0)
    parser.add_argument("--chaos", type=float, default=0.0,
                        help="share of requests answered with a 429 or 529 (0..1)")
    parser.add_argument("--windows", action="store_true",
                        help="send rate-limit headers (unified windows for OAuth tokens)")
    parser.add_argument("--enforce-windows", action="store_true",
                        help="answer 429 once an OAuth token's 5-hour window is used up, "
                             "until it resets")
    parser.add_argument("--window-scale", type=float, default=1.0,
                        help="windows last this many times less (60: 5 h become 5 min)")
    parser.add_argument("--forget-requests", action="store_true",
                        help="keep no record of the requests (benchmarks with large bodies)")
    parser.add_argument("--ttl-scale", type=float, default=1.0,
                        help="prompt-cache TTLs last this many times less (60: 5 min become "
                             "5 s); give the proxy the same flare_cache_ttl_scale")
    args = parser.parse_args()
    if args.window_scale <= 0 or args.ttl_scale <= 0:
        parser.error("--window-scale and --ttl-scale must be positive")
    sim = SimulatedUpstream(args.chunk_delay_ms / 1000.0, args.chaos, args.windows,
                            args.enforce_windows, args.window_scale, args.forget_requests,
                            args.ttl_scale)
    print(f"simulated upstream on {sim.start(args.host, args.port)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sim.stop()


if __name__ == "__main__":
    main()
