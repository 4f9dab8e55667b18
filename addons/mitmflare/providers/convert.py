"""Which client requests an upstream of the other format can serve, and the conversion for
each: Anthropic Messages ⇄ OpenAI Chat Completions (:mod:`.messages_to_chat`,
:mod:`.chat_to_messages`) and OpenAI Responses → Anthropic Messages
(:mod:`.responses_to_messages`).

Every function takes the client's path (query string allowed) and its parsed JSON body; the
router and the recorder call nothing else of the conversion modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import http

from . import chat_to_messages, made_here, messages_to_chat, responses_to_messages
from .presets import ANTHROPIC, OPENAI

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
    return CHAT if wire == OPENAI else MESSAGES


def convert_request(client_path: str, body: dict[str, Any], model: str) -> dict[str, Any]:
    """The request body for the other format's upstream, asking for ``model``."""
    path = _path(client_path)
    if path == MESSAGES:
        return messages_to_chat.request_to_chat(body, model)
    if path == RESPONSES:
        return responses_to_messages.request_to_messages(body, model)
    return chat_to_messages.request_to_messages(body, model)


def convert_answer(response: http.Response, client_path: str, body: dict[str, Any] | None,
                   model: str) -> None:
    """Rewrite a whole (not streamed) upstream answer in place into the client's format:
    error bodies (status kept), a re-sent event stream, or a JSON answer. Answers mitmflare
    made itself (:func:`.made_here`) are in the client's format already and stay."""
    path = _path(client_path)
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
        response.content = feed(raw) + feed(b"")
        return
    elif path == RESPONSES:
        response.content = responses_to_messages.message_to_response(raw, model, body)
    else:
        response.content = chat_to_messages.message_to_completion(raw, model, body)
    response.headers["content-type"] = "application/json"


def stream_converter(client_path: str, body: dict[str, Any] | None,
                     model: str) -> Callable[[bytes], bytes]:
    """``feed(chunk) -> bytes``: the upstream's event stream, chunk by chunk, in the client's
    format; ``feed(b"")`` at the end of the stream closes it."""
    path = _path(client_path)
    if path == MESSAGES:
        return messages_to_chat.StreamConverter(model).feed
    if path == RESPONSES:
        return responses_to_messages.ResponsesStreamConverter(model, body).feed
    options = (body or {}).get("stream_options")
    include = isinstance(options, dict) and options.get("include_usage") is True
    return chat_to_messages.ChatStreamConverter(model, include, body).feed
