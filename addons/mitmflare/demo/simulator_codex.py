"""The simulated upstream's Codex mode: the ChatGPT OAuth token endpoint and the Codex
backend's Responses endpoint, as :mod:`..providers.codex` describes them. Never used against
real traffic.

* ``GET /codex/oauth/authorize``: answers the code as JSON, as if the user approved.
* ``POST /codex/oauth/token``: a form ``grant_type=authorization_code`` (PKCE checked) or a
  JSON refresh (rotation: a refresh token dies on use; a used or unknown one gets ``401
  {"error": {"code": "refresh_token_reused"}}``). Tokens are JWTs (unsigned) whose claim
  ``https://api.openai.com/auth`` names the ChatGPT account, as the real ones do.
* ``POST /backend-api/codex/responses``: requires ``stream: true`` and ``store: false``,
  ``instructions``, no ``max_output_tokens`` / ``temperature`` / ``top_p`` (400 ``{"detail":
  …}``); with ``oauth_enforce`` also a live access token, the ``chatgpt-account-id`` its token
  names, ``originator`` and ``OpenAI-Beta``. It streams Responses events (text, or scripted
  ``tool_calls`` as function calls) with ``x-codex-primary-*`` / ``-secondary-*`` headers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
import urllib.parse
import uuid
from typing import Any

AUTHORIZE_PATH = "/codex/oauth/authorize"
TOKEN_PATH = "/codex/oauth/token"
RESPONSES_PATH = "/backend-api/codex/responses"
ACCOUNT = "acct-sim-chatgpt"
AUTH_CLAIM = "https://api.openai.com/auth"
REFUSED = ("max_output_tokens", "temperature", "top_p")
WINDOW_PERCENT_PER_REQUEST = 2.0  # how much of the 5-hour window one request uses, %


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT carrying ``claims`` (what the proxy reads of a token)."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sim"


def issue_tokens(sim, expires_in: float | None = None, account: str = ACCOUNT) -> dict[str, Any]:
    """A new valid Codex pair of ``sim`` (a :class:`.simulator.SimulatedUpstream`)."""
    lifetime = sim.oauth_expires_in if expires_in is None else expires_in
    exp = time.time() + lifetime
    claim = {AUTH_CLAIM: {"chatgpt_account_id": account, "chatgpt_plan_type": "pro"}}
    access = jwt({"exp": int(exp), "jti": uuid.uuid4().hex, **claim})
    refresh = f"rt_sim{next(sim._ids)}_{uuid.uuid4().hex}"
    sim._refresh_tokens.add(refresh)
    sim._access_tokens[access] = exp
    return {"access_token": access, "refresh_token": refresh, "expires_in": lifetime,
            "id_token": jwt({"email": "sim@example.com", **claim}), "token_type": "Bearer"}


async def token(sim, raw: bytes, headers: dict[str, str], send) -> None:
    """The token endpoint (see the module)."""
    from .simulator import _send_json

    form = headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
    try:
        body = dict(urllib.parse.parse_qsl(raw.decode())) if form else json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        body = {}
    body = body if isinstance(body, dict) else {}
    sim.token_requests.append({**body, "_form": form})
    grant = body.get("grant_type")
    if grant == "refresh_token" and not form:
        if body.get("refresh_token") in sim._refresh_tokens:
            sim._refresh_tokens.discard(body["refresh_token"])
            await _send_json(send, 200, issue_tokens(sim))
            return
        await _send_json(send, 401, {"error": {"code": "refresh_token_reused",
                                               "message": "refresh token already used"}})
        return
    if grant == "authorization_code" and form and body.get("code") in sim._codes:
        challenge = sim._codes.pop(body["code"])
        digest = hashlib.sha256(str(body.get("code_verifier", "")).encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == challenge:
            await _send_json(send, 200, issue_tokens(sim))
            return
    await _send_json(send, 400, {"error": "invalid_grant"})


def problem(sim, headers: dict[str, str], body: Any, credential: str | None,
            ) -> tuple[int, dict[str, Any]] | None:
    """(status, error body) for a request the Codex endpoint refuses, else None."""
    if sim.oauth_enforce:
        if sim._access_tokens.get(credential or "", 0) <= time.time():
            return 401, {"error": {"message": "Your authentication token has expired.",
                                   "type": "invalid_request_error", "code": "token_expired"}}
        if headers.get("chatgpt-account-id") != ACCOUNT or not headers.get("originator") \
                or "responses=experimental" not in headers.get("openai-beta", ""):
            return 403, {"detail": "missing chatgpt-account-id, originator or OpenAI-Beta"}
    if not isinstance(body, dict):
        return 400, {"detail": "Invalid JSON body"}
    if body.get("stream") is not True:
        return 400, {"detail": "Stream must be set to true"}
    if body.get("store") is not False:
        return 400, {"detail": "Store must be set to false"}
    if not isinstance(body.get("instructions"), str):
        return 400, {"detail": "Instructions are required"}
    for key in REFUSED:
        if key in body:
            return 400, {"detail": f"Unsupported parameter: {key}"}
    return None


def window_headers(sim, credential: str) -> dict[str, str]:
    """``x-codex-*`` headers: the 5-hour window grows by :data:`WINDOW_PERCENT_PER_REQUEST`
    per request of ``credential``'s account, the weekly one by a tenth of that."""
    now = time.time()
    start, used = sim._codex_used.get(credential, (now, 0.0))
    used += WINDOW_PERCENT_PER_REQUEST
    sim._codex_used[credential] = (start, used)
    return {"x-codex-primary-used-percent": f"{min(used, 100.0):.1f}",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-at": str(int(start + 5 * 3600)),
            "x-codex-secondary-used-percent": f"{min(used / 10, 100.0):.1f}",
            "x-codex-secondary-window-minutes": "10080",
            "x-codex-secondary-reset-at": str(int(start + 7 * 86400))}


def events(model: str, usage: dict[str, int], answer: dict[str, Any], words: list[str],
           ) -> list[bytes]:
    """The Responses event stream of one answer: the reply ``words`` as a message, or the
    scripted ``tool_calls`` as function call items; ``response.completed`` with the usage."""
    from .simulator import _sse

    seq = itertools.count()
    response_id = f"resp_{uuid.uuid4().hex[:20]}"

    def event(kind: str, **fields: Any) -> bytes:
        return _sse(kind, {"type": kind, **fields, "sequence_number": next(seq)})

    cached = usage.get("cache_read_input_tokens", 0)
    base = {"id": response_id, "object": "response", "created_at": int(time.time()),
            "model": model, "status": "in_progress", "output": [], "usage": None}
    out = [event("response.created", response=base), event("response.in_progress", response=base)]
    items = []
    for index, call in enumerate(answer.get("tool_calls") or []):
        arguments = json.dumps(call["arguments"])
        item = {"type": "function_call", "id": f"fc_{index}", "call_id": call["id"],
                "name": call["name"], "arguments": "", "status": "in_progress"}
        out.append(event("response.output_item.added", output_index=index, item=item))
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            out.append(event("response.function_call_arguments.delta", item_id=item["id"],
                             output_index=index, delta=piece))
        done = {**item, "arguments": arguments, "status": "completed"}
        out += [event("response.function_call_arguments.done", item_id=item["id"],
                      output_index=index, arguments=arguments),
                event("response.output_item.done", output_index=index, item=done)]
        items.append(done)
    if not items:
        where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
        said = " ".join(words)
        message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": said, "annotations": []}]}
        out += [event("response.output_item.added", output_index=0,
                      item={**message, "status": "in_progress", "content": []}),
                event("response.content_part.added", **where,
                      part={"type": "output_text", "text": "", "annotations": []})]
        for i, word in enumerate(words):
            out.append(event("response.output_text.delta", **where,
                             delta=word if i == 0 else " " + word))
        out += [event("response.output_text.done", **where, text=said),
                event("response.content_part.done", **where, part=message["content"][0]),
                event("response.output_item.done", output_index=0, item=message)]
        items.append(message)
    total_in = usage["input_tokens"] + cached
    done = {**base, "status": "completed", "output": items, "usage": {
        "input_tokens": total_in, "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": total_in + usage["output_tokens"]}}
    return [*out, event("response.completed", response=done)]
