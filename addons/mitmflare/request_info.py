"""What the proxy reads from a client request body: the model, the client conversation, and
(OpenAI Chat Completions only) the opt-in that makes a stream report usage.

Facts: ``shared/reference/upstream-apis.md`` section 8 (Claude Code's
``X-Claude-Code-Session-Id`` header and the ``metadata.user_id`` JSON string, or the older
``user_<hex>_account_<uuid>_session_<uuid>`` form) and 4b (``stream_options.include_usage``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from .wire import MAX_TEXT, content, header, json_object, text

SESSION_HEADER = b"x-claude-code-session-id"
_LEGACY_SESSION = re.compile(r"_session_([A-Za-z0-9-]+)$")


@dataclass
class RequestInfo:
    """``model`` and ``client_session`` are None when the request does not say; ``body`` when
    the body is not a JSON object."""

    model: str | None = None
    client_session: str | None = None
    stream: bool = False
    body: dict[str, Any] | None = None  # the JSON object body, parsed


def inspect_request(provider: str, request: http.Request) -> RequestInfo:
    """Read the request. For an OpenAI streamed chat completion without
    ``stream_options.include_usage`` the body is rewritten to ask for the final usage chunk
    (without it the stream carries no usage at all)."""
    info = RequestInfo(client_session=text(header(request.headers, SESSION_HEADER)))
    body = info.body = _json_body(request)
    if body is None:
        return info
    info.model = text(body.get("model"))
    info.stream = body.get("stream") is True
    if info.client_session is None:
        info.client_session = _session_from_metadata(body.get("metadata"))
    if (provider == "openai" and info.stream and request.path.startswith("/v1/chat/completions")):
        options = body.get("stream_options")
        if not isinstance(options, dict) or options.get("include_usage") is not True:
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}
            request.content = json.dumps(body, separators=(",", ":")).encode()
    return info


def _json_body(request: http.Request) -> dict[str, Any] | None:
    if not request.raw_content or request.data.method.upper() != b"POST":
        return None
    return json_object(content(request, strict=False))


def _session_from_metadata(metadata: Any) -> str | None:
    if not isinstance(metadata, dict):
        return None
    user_id = metadata.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id.startswith("{"):
        return text((json_object(user_id) or {}).get("session_id"))
    match = _LEGACY_SESSION.search(user_id)
    return match.group(1)[:MAX_TEXT] if match else None
