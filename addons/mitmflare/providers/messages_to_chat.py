"""Serving an Anthropic Messages client from an OpenAI Chat Completions upstream.

Request: :func:`request_to_chat` (``POST /v1/messages`` body → ``POST …/chat/completions``
body). Answers: :func:`completion_to_message` (JSON), :class:`StreamConverter` (SSE, chunk by
chunk), :func:`error_to_anthropic` (error bodies; the status is kept, so a 429 stays a 429 and
failover still works).

Wire facts: Anthropic Messages API and streaming events (``message_start``,
``content_block_start/delta/stop`` with ``text_delta`` / ``input_json_delta``,
``message_delta``, ``message_stop``, ``error``), OpenAI Chat Completions API and its chunk
stream (``choices[].delta.content`` / ``.tool_calls[]`` with ``index``, ``finish_reason``, a
final ``usage`` chunk with ``stream_options.include_usage``, ``data: [DONE]``); both as
documented by the providers (``shared/reference/upstream-apis.md`` section 4).

Mapped: system prompt (text or blocks), text, images (base64 and URL), tools, ``tool_choice``,
``tool_use`` / ``tool_result`` blocks (ids kept), ``stop_sequences``, ``temperature``,
``top_p``, ``max_tokens``, ``metadata.user_id`` → ``user``, ``stream`` (with
``include_usage``). Dropped: thinking blocks and the ``thinking`` option (OpenAI-compatible
upstreams have no common field for them), ``cache_control``, documents, server tools.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from mitmproxy import http

from . import made_here
from .wire import count, json_object, obj, text

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
               504: "api_error", 529: "overloaded_error"}


# -- request ----------------------------------------------------------------------------------
def request_to_chat(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Chat Completions body for an Anthropic Messages ``body``, asking for ``model``."""
    messages: list[dict[str, Any]] = []
    system = joined_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            messages += _convert_message(message)
    out: dict[str, Any] = {"model": model, "messages": messages}
    for key in ("max_tokens", "temperature", "top_p"):
        if isinstance(body.get(key), int | float) and not isinstance(body.get(key), bool):
            out[key] = body[key]
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and stops:
        out["stop"] = [s for s in stops if isinstance(s, str)]
    metadata = body.get("metadata")
    user = text(metadata.get("user_id")) if isinstance(metadata, dict) else None
    if user:
        out["user"] = user
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = [_convert_tool(t) for t in body.get("tools") or [] if isinstance(t, dict)]
    tools = [t for t in tools if t]
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "auto":
                out["tool_choice"] = "auto"
            elif kind == "any":
                out["tool_choice"] = "required"
            elif kind == "none":
                out["tool_choice"] = "none"
            elif kind == "tool" and isinstance(choice.get("name"), str):
                out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    return out


def joined_text(content: Any, separator: str = "\n\n") -> str:
    """The text of a string, or of a list of blocks or parts with ``text`` (joined with
    ``separator``); "" for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return separator.join(b["text"] for b in content
                              if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _convert_message(message: dict[str, Any]) -> list[dict[str, Any]]:
    role = message.get("role")
    content = message.get("content")
    if role not in ("user", "assistant"):
        return []
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        return []
    blocks = [b for b in content if isinstance(b, dict)]
    if role == "assistant":
        said = "".join(b["text"] for b in blocks if b.get("type") == "text"
                       and isinstance(b.get("text"), str))
        calls = [{"id": str(b.get("id") or f"call_{uuid.uuid4().hex[:12]}"), "type": "function",
                  "function": {"name": str(b.get("name") or ""),
                               "arguments": json.dumps(b.get("input") or {})}}
                 for b in blocks if b.get("type") == "tool_use"]
        out: dict[str, Any] = {"role": "assistant", "content": said or None}
        if calls:
            out["tool_calls"] = calls
        return [out] if said or calls else []
    # user: tool results become `tool` messages, which must follow the assistant's tool calls
    results: list[dict[str, Any]] = [{"role": "tool", "tool_call_id": str(b.get("tool_use_id") or ""),
                "content": _tool_result_text(b)}
               for b in blocks if b.get("type") == "tool_result"]
    parts = [p for p in (_user_part(b) for b in blocks) if p]
    if parts and all(p["type"] == "text" for p in parts):
        results.append({"role": "user", "content": "".join(p["text"] for p in parts)})
    elif parts:
        results.append({"role": "user", "content": parts})
    return results


def _tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    result = content if isinstance(content, str) else joined_text(content)
    return f"Error: {result}" if block.get("is_error") is True else result


def _user_part(block: dict[str, Any]) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return {"type": "text", "text": block["text"]}
    if kind == "image" and isinstance(block.get("source"), dict):
        source = block["source"]
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        elif source.get("type") == "url":
            url = str(source.get("url") or "")
        else:
            return None
        return {"type": "image_url", "image_url": {"url": url}}
    return None


def _convert_tool(tool: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
        return None  # server tools (web search, …) have no OpenAI equivalent
    function = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


# -- answers ----------------------------------------------------------------------------------
def usage_to_anthropic(usage: Any) -> dict[str, int]:
    """Anthropic ``usage`` from an OpenAI one: uncached input, output, cache reads (tokens)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = count(usage.get("prompt_tokens")) or 0
    details = usage.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return {"input_tokens": max(prompt - (cached or 0), 0),
            "output_tokens": count(usage.get("completion_tokens")) or 0,
            "cache_read_input_tokens": cached or 0, "cache_creation_input_tokens": 0}


def completion_to_message(body: bytes, model: str) -> bytes:
    """An Anthropic Message (JSON bytes) from a Chat Completion body. ``model`` names the
    upstream model when the body does not. A body that is not a completion becomes an
    ``api_error`` body."""
    data = json_object(body) or {}
    choices = data.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return error_to_anthropic(502, body)
    choice = choices[0]
    message = obj(choice.get("message"))
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            content.append({"type": "tool_use", "id": str(call.get("id") or _tool_id()),
                            "name": str(function.get("name") or ""),
                            "input": _arguments(function.get("arguments"))})
    return json.dumps({
        "id": f"msg_{data.get('id') or uuid.uuid4().hex}", "type": "message",
        "role": "assistant", "model": text(data.get("model")) or model, "content": content,
        "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None, "usage": usage_to_anthropic(data.get("usage")),
    }).encode()


def answer_to_anthropic(response: http.Response, model: str) -> None:
    """Rewrite a whole (not streamed) upstream answer in place for an Anthropic client: error
    bodies, a re-sent event stream, or a chat completion. Answers mitmflare made itself
    (``x-mitmflare-error``) are in the client's format already and stay as they are."""
    if made_here(response):
        return
    body = response.content or b""
    if response.status_code >= 400:
        response.content = error_to_anthropic(response.status_code, body)
        response.headers["content-type"] = "application/json"
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        converter = StreamConverter(model)
        response.content = converter.feed(body) + converter.feed(b"")
    else:
        response.content = completion_to_message(body, model)
        response.headers["content-type"] = "application/json"


def error_to_anthropic(status: int, body: bytes) -> bytes:
    """An Anthropic error body for an upstream error answer of ``status``; the type follows
    the status (429 → ``rate_limit_error``, 529/503 → ``overloaded_error``, …)."""
    data = json_object(body) or {}
    error = data.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("code") or "upstream error")
    elif isinstance(error, str):
        message = error
    else:
        message = body[:300].decode("utf-8", "replace") or f"upstream answered {status}"
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    parsed = json_object(raw) if isinstance(raw, str) else None
    return parsed if parsed is not None else {}


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class StreamConverter:
    """Turns a Chat Completions chunk stream into Anthropic stream events, incrementally:
    :meth:`feed` returns the events for every complete upstream event in the bytes given (a
    partial line waits for its end); ``feed(b"")`` at the end of the stream closes it.

    Usage comes from the final usage chunk and is reported in ``message_delta``; a stream
    that ends without ``finish_reason`` ends with an ``error`` event."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._buf = b""
        self._started = False
        self._finished = False
        self._index = -1            # current content block index
        self._block: str | None = None  # "text" or "tool:<openai index>"
        self._stop_reason: str | None = None
        self._usage: dict[str, int] = {}

    def feed(self, chunk: bytes) -> bytes:
        if self._finished:
            return b""
        if not chunk:
            return self._finish(end_of_stream=True)
        buf = self._buf + chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out = []
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                out.append(self._finish())
                break
            event = json_object(data)
            if event is not None:
                out.append(self._chunk(event))
        return b"".join(out)

    def _chunk(self, event: dict[str, Any]) -> bytes:
        out = [] if self._started else [self._start(event)]
        if isinstance(event.get("error"), dict):
            error = event["error"]
            out.append(_event("error", {"type": "error", "error": {
                "type": "api_error" if not error.get("type") else str(error["type"]),
                "message": str(error.get("message") or "upstream stream error")}}))
            self._finished = True
            return b"".join(out)
        if isinstance(event.get("usage"), dict):
            self._usage = usage_to_anthropic(event["usage"])
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = obj(choice.get("delta"))
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                out.append(self._open("text", {"type": "text", "text": ""}))
                out.append(_event("content_block_delta", {
                    "type": "content_block_delta", "index": self._index,
                    "delta": {"type": "text_delta", "text": piece}}))
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    out.append(self._tool_call(call))
            if choice.get("finish_reason"):
                self._stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return b"".join(out)

    def _start(self, event: dict[str, Any]) -> bytes:
        self._started = True
        self.model = text(event.get("model")) or self.model
        return _event("message_start", {"type": "message_start", "message": {
            "id": f"msg_{event.get('id') or uuid.uuid4().hex}", "type": "message",
            "role": "assistant", "model": self.model, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def _open(self, block: str, content_block: dict[str, Any]) -> bytes:
        """Start a content block unless it is the current one (closing the current first)."""
        if self._block == block:
            return b""
        out = self._close()
        self._index += 1
        self._block = block
        return out + _event("content_block_start", {"type": "content_block_start",
                                                    "index": self._index,
                                                    "content_block": content_block})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        function = obj(call.get("function"))
        key = f"tool:{call.get('index', 0)}"
        out = self._open(key, {"type": "tool_use", "id": str(call.get("id") or _tool_id()),
                               "name": str(function.get("name") or ""), "input": {}})
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += _event("content_block_delta", {
                "type": "content_block_delta", "index": self._index,
                "delta": {"type": "input_json_delta", "partial_json": arguments}})
        return out

    def _finish(self, end_of_stream: bool = False) -> bytes:
        self._finished = True
        out = [] if self._started else [self._start({})]
        out.append(self._close())
        if self._stop_reason is None and end_of_stream:
            out.append(_event("error", {"type": "error", "error": {
                "type": "api_error", "message": "the upstream stream ended before it finished"}}))
            return b"".join(out)
        usage = self._usage or {"output_tokens": 0}
        out.append(_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None},
            "usage": usage}))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)
