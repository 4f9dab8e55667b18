"""Which client requests an upstream of the other format can serve, and the conversion for
each: Anthropic Messages ⇄ OpenAI Chat Completions (:mod:`.messages_to_chat`,
:mod:`.chat_to_messages`), OpenAI Responses → Anthropic Messages
(:mod:`.responses_to_messages`), and every one of the three to the Codex endpoint (a
streamed Responses API, :mod:`.codex`): Responses passed through with the body Codex
wants, Chat Completions through :mod:`.responses_to_chat`, Anthropic Messages through Chat
Completions (:mod:`.messages_to_chat`, then :mod:`.responses_to_chat`).

Every function takes the client's path (query string allowed), its parsed JSON body and the
upstream's wire format; the router and the recorder call nothing else of the conversion
modules.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from . import (
    chat_to_messages,
    codex,
    made_here,
    messages_to_chat,
    responses_to_chat,
    responses_to_messages,
)
from .presets import ANTHROPIC, CODEX, OPENAI
from .wire import json_object, obj

MESSAGES, CHAT, RESPONSES = "/v1/messages", "/v1/chat/completions", "/v1/responses"
CONVERTIBLE = {ANTHROPIC: (MESSAGES,), OPENAI: (CHAT, RESPONSES)}
"""Client format → the paths whose requests an upstream of the other format can serve."""
SSE = "text/event-stream"


def _path(client_path: str) -> str:
    return client_path.split("?", 1)[0]


def convertible(client: str | None, client_path: str) -> bool:
    """True when a request of the ``client`` format to ``client_path`` can be converted."""
    return _path(client_path) in CONVERTIBLE.get(client or "", ())


def upstream_path(wire: str) -> str:
    """The path a converted request takes at an upstream speaking ``wire``."""
    return RESPONSES if wire == CODEX else CHAT if wire == OPENAI else MESSAGES


def convert_request(client_path: str, body: dict[str, Any], model: str, wire: str = "",
                    session: str | None = None) -> dict[str, Any]:
    """The request body for an upstream speaking ``wire`` (default: the other format's),
    asking for ``model``; ``session``: the client's conversation (Codex's prompt cache key)."""
    path = _path(client_path)
    if wire == CODEX:
        if path != RESPONSES:
            chat = messages_to_chat.request_to_chat(body, model) if path == MESSAGES else body
            body = responses_to_chat.chat_to_responses(chat)
        return codex.request_body(body, model, session)
    if path == MESSAGES:
        return messages_to_chat.request_to_chat(body, model)
    if path == RESPONSES:
        return responses_to_messages.request_to_messages(body, model)
    return chat_to_messages.request_to_messages(body, model)


def convert_answer(response: http.Response, client_path: str, body: dict[str, Any] | None,
                   model: str, wire: str = "") -> None:
    """Rewrite a whole (not streamed) upstream answer in place into the client's format:
    error bodies (status kept), a re-sent event stream, or a JSON answer. Answers mitmflare
    made itself (:func:`.made_here`) are in the client's format already and stay."""
    path = _path(client_path)
    if wire == CODEX:
        if not made_here(response):
            _codex_answer(response, path, body, model)
        return
    if path == MESSAGES:
        messages_to_chat.answer_to_anthropic(response, model)
        return
    if made_here(response):
        return
    raw = response.content or b""
    if response.status_code >= 400:
        response.content = chat_to_messages.error_to_openai(response.status_code, raw)
    elif response.headers.get("content-type", "").startswith(SSE):
        feed = stream_converter(client_path, body, model)
        if feed is not None:  # (None only for a Codex upstream, handled above)
            response.content = feed(raw) + feed(b"")
        return
    elif path == RESPONSES:
        response.content = responses_to_messages.message_to_response(raw, model, body)
    else:
        response.content = chat_to_messages.message_to_completion(raw, model, body)
    response.headers["content-type"] = "application/json"


def stream_converter(client_path: str, body: dict[str, Any] | None, model: str,
                     wire: str = "") -> Callable[[bytes], bytes] | None:
    """``feed(chunk) -> bytes``: the upstream's event stream, chunk by chunk, in the client's
    format; ``feed(b"")`` at the end of the stream closes it. None: the stream is already in
    the client's format (a Responses client served by Codex)."""
    path = _path(client_path)
    if wire == CODEX:
        if path == RESPONSES:
            return None
        chat = responses_to_chat.ResponsesChatStream(model, _include_usage(body) or
                                                      path == MESSAGES).feed
        return chat if path == CHAT else _chained(chat, messages_to_chat.StreamConverter(
            model).feed)
    if path == MESSAGES:
        return messages_to_chat.StreamConverter(model).feed
    if path == RESPONSES:
        return responses_to_messages.ResponsesStreamConverter(model, body).feed
    return chat_to_messages.ChatStreamConverter(model, _include_usage(body), body).feed


def _include_usage(body: dict[str, Any] | None) -> bool:
    options = (body or {}).get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _chained(first: Callable[[bytes], bytes],
             second: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """``feed`` of two stream conversions one after the other (``b""`` closes both)."""
    def feed(chunk: bytes) -> bytes:
        middle = first(chunk)
        if chunk:
            return second(middle) if middle else b""
        return (second(middle) if middle else b"") + second(b"")
    return feed


def _codex_answer(response: http.Response, path: str, body: dict[str, Any] | None,
                  model: str) -> None:
    """:func:`convert_answer` for a Codex upstream: its error bodies in the client's error
    shape; its event stream re-sent in the client's format to a streaming client, else the
    JSON answer the stream ended with (a failed or cut stream: 502 with its error)."""
    raw = response.content or b""
    if response.status_code >= 400:
        response.content = messages_to_chat.error_to_anthropic(response.status_code, raw) \
            if path == MESSAGES else codex_error_to_openai(response.status_code, raw)
        response.headers["content-type"] = "application/json"
        return
    if (body or {}).get("stream") is True:
        feed = stream_converter(path, body, model, CODEX)
        if feed is not None:
            response.content = feed(raw) + feed(b"")
        return
    final, error = responses_to_chat.final_response(raw)
    if final is None or error is not None:
        response.status_code = 502
        error = error or {}
        message = f"upstream stream failed: {error.get('message') or error.get('code') or ''}"
        response.content = messages_to_chat.error_to_anthropic(
            502, json.dumps({"error": {"message": message}}).encode()) if path == MESSAGES else \
            codex_error_to_openai(502, json.dumps({"error": {**error, "message": message}}).encode())
    elif path == RESPONSES:
        response.content = json.dumps(final).encode()
    else:
        completion = responses_to_chat.response_to_completion(final, model)
        response.content = json.dumps(completion).encode()
        if path == MESSAGES:
            response.content = messages_to_chat.completion_to_message(response.content, model)
    response.headers["content-type"] = "application/json"


def codex_error_to_openai(status: int, raw: bytes) -> bytes:
    """An OpenAI error body from a Codex error answer: ``{"error": {…}}`` kept (with
    ``message``, ``type``, ``param``, ``code``), a ``{"detail": "…"}`` or other body as its
    message."""
    data = json_object(raw) or {}
    error = obj(data.get("error"))
    message = error.get("message") or data.get("detail") or \
        raw[:300].decode("utf-8", "replace") or f"upstream answered {status}"
    kind = error.get("type") or ("server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {**error, "message": str(message), "type": kind,
                                 "param": error.get("param"), "code": error.get("code")}}).encode()
