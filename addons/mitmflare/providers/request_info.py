"""What the proxy reads from a client request body: the model, the client conversation, and
(OpenAI Chat Completions only) the opt-in that makes a stream report usage.

Facts: ``shared/reference/upstream-apis.md`` section 8 (Claude Code's
``X-Claude-Code-Session-Id`` header and the ``metadata.user_id`` JSON string, or the older
``user_<hex>_account_<uuid>_session_<uuid>`` form; sub-agents' ``x-claude-code-agent-id`` and
``x-claude-code-parent-agent-id``, Claude Code 2.1.330) and 4b
(``stream_options.include_usage``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from .routing_body import routing_body
from .wire import MAX_TEXT, content, headers_named, json_object, text

SESSION_HEADER = b"x-claude-code-session-id"
AGENT_HEADER = b"x-claude-code-agent-id"          # a Claude Code sub-agent's own id
PARENT_AGENT_HEADER = b"x-claude-code-parent-agent-id"  # the agent that started it
_READ_HEADERS = frozenset((SESSION_HEADER, AGENT_HEADER, PARENT_AGENT_HEADER,
                           b"content-encoding"))
MODEL_REQUIRED = ("/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions")
"""Endpoints whose API requires a string ``model`` (Anthropic Messages and token counting,
OpenAI Chat Completions; ``upstream-apis.md`` sections 2 and 4)."""
MODEL_BEARING = (*MODEL_REQUIRED, "/v1/responses", "/v1/completions", "/v1/embeddings")
"""Endpoints whose ``model`` says what the request spends (the OpenAI Responses API may take
its model from a stored prompt instead)."""
_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
               list: "an array", dict: "an object"}
_LEGACY_SESSION = re.compile(r"_session_([A-Za-z0-9-]+)$")


@dataclass
class RequestInfo:
    """``model`` and ``client_session`` are None when the request does not say; ``body`` when
    the body is not a JSON object. ``agent`` / ``parent_agent``: a Claude Code sub-agent's id
    and its parent agent's (None for the main conversation, or when not sent). ``body`` is
    the body abridged to what routing reads (:func:`.routing_body.routing_body`: the top-level
    scalars, ``system``, the blocks' ``cache_control``, the first user turn, the latest turns);
    whoever keeps the request beyond routing keeps
    ``source`` (the decoded body bytes, the very object mitmproxy holds when the body has no
    ``content-encoding``) and parses it again when it must re-encode it
    (:func:`parse_source`). ``body_model``: the body's ``model`` when a string, uncut."""

    model: str | None = None
    client_session: str | None = None
    agent: str | None = None
    parent_agent: str | None = None
    stream: bool = False
    body: dict[str, Any] | None = None  # the JSON object body, abridged for routing
    source: bytes | None = None         # the bytes ``body`` was parsed from
    body_model: str | None = None


def inspect_request(wire_format: str, request: http.Request) -> RequestInfo:
    """Read the request. For an OpenAI streamed chat completion without
    ``stream_options.include_usage`` the body is rewritten to ask for the final usage chunk
    (without it the stream carries no usage at all)."""
    found = headers_named(request.headers, _READ_HEADERS)
    info = RequestInfo(client_session=text(found.get(SESSION_HEADER)),
                       agent=text(found.get(AGENT_HEADER)),
                       parent_agent=text(found.get(PARENT_AGENT_HEADER)))
    if not request.raw_content or request.data.method.upper() != b"POST":
        return info
    info.source = content(request, strict=False, encoded=b"content-encoding" in found)
    body = info.body = routing_body(info.source)
    if body is None:
        info.source = None
        return info
    model = body.get("model")
    info.body_model = model if isinstance(model, str) else None
    info.model = text(model)
    info.stream = body.get("stream") is True
    if info.client_session is None:
        info.client_session = _session_from_metadata(body.get("metadata"))
    if (wire_format == "openai" and info.stream and request.path.startswith("/v1/chat/completions")):
        options = body.get("stream_options")
        if not isinstance(options, dict) or options.get("include_usage") is not True:
            exact = parse_source(info.source)  # re-encoded: every value as sent
            if exact is not None:  # (None: json cannot read it, see .routing_body: as sent)
                exact["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                           "include_usage": True}
                request.content = json.dumps(exact, separators=(",", ":")).encode()
                info.source = content(request, strict=False)
    return info


def parse_source(source: bytes | None) -> dict[str, Any] | None:
    """The JSON object in a request's decoded body bytes (:attr:`RequestInfo.source`), every
    value exact (:func:`.wire.json_object`), for re-encoding it: conversion, a model rewrite."""
    return json_object(source)


def model_problem(path: str, method: str, body: dict[str, Any] | None,
                  restricted: bool) -> str | None:
    """Why a request's ``model`` is unfit (one line for a 400 ``invalid_request_error``), or
    None. Only POSTs to :data:`MODEL_BEARING` paths (``path`` without its query) are judged:
    a ``model`` that is present but not a non-empty string is unfit; a missing one (or a body
    that is not a JSON object) is unfit where the API requires it (:data:`MODEL_REQUIRED`) or
    when the user may use some models only (``restricted``): the restriction could not be
    checked, and the upstream would pick a model."""
    if method != "POST" or path not in MODEL_BEARING:
        return None
    if body is None or "model" not in body:
        if path in MODEL_REQUIRED or restricted:
            what = "the body is not a JSON object" if body is None else "it has none"
            return f"mitmflare: this request needs a `model` (a string naming a model); {what}"
        return None
    model = body["model"]
    if isinstance(model, str) and model:
        return None
    got = "an empty string" if isinstance(model, str) else _JSON_TYPES.get(type(model), "?")
    return f"mitmflare: `model` must be a string naming a model, not {got}"


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
