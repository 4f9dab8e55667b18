"""Serving a Chat Completions client (and, through :mod:`.messages_to_chat`, an Anthropic
Messages client) from a Responses upstream: the Codex endpoint, which answers only streams.

Request: :func:`chat_to_responses` (a Chat Completions body → a Responses body). Answers:
:class:`ResponsesChatStream` (a Responses event stream → a ``chat.completion.chunk`` stream,
event by event), :func:`final_response` (the response object a whole Responses stream ends
with) and :func:`response_to_completion` (that object → a ``chat.completion``).

Wire facts: the field and event names of :mod:`.responses_to_messages` (OpenAI API reference
"Create a model response", "The response object", "Streaming events") and of
:mod:`.chat_to_messages` (Chat Completions and its chunk stream).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .messages_to_chat import joined_text
from .sse import split_events
from .wire import count, json_object, obj, text


# -- request ----------------------------------------------------------------------------------
def chat_to_responses(body: dict[str, Any]) -> dict[str, Any]:
    """The Responses body a Chat Completions ``body`` stands for: system and developer
    messages as ``instructions``, the others as input items (text, images, files, function
    calls and their outputs), function tools, ``tool_choice``, ``parallel_tool_calls``,
    ``response_format`` as ``text.format``, ``reasoning_effort`` as ``reasoning.effort``,
    ``max_completion_tokens`` / ``max_tokens`` as ``max_output_tokens``, ``temperature``,
    ``top_p``, ``stream``."""
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            said = _text_of(message.get("content"))
            if said:
                instructions.append(said)
        elif role == "tool":
            items.append({"type": "function_call_output",
                          "call_id": str(message.get("tool_call_id") or ""),
                          "output": _text_of(message.get("content"))})
        elif role == "assistant":
            said = _text_of(message.get("content"))
            if said:
                items.append({"type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": said}]})
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    arguments = function.get("arguments")
                    items.append({"type": "function_call", "call_id": str(call.get("id") or ""),
                                  "name": str(function.get("name") or ""),
                                  "arguments": arguments if isinstance(arguments, str)
                                  else json.dumps(arguments or {})})
        elif role == "user":
            parts = _user_parts(message.get("content"))
            if parts:
                items.append({"type": "message", "role": "user", "content": parts})
    out: dict[str, Any] = {"instructions": "\n\n".join(instructions), "input": items}
    for key in ("temperature", "top_p", "parallel_tool_calls", "stream", "user"):
        if key in body:
            out[key] = body[key]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if count(limit):
        out["max_output_tokens"] = limit
    if isinstance(body.get("reasoning_effort"), str):
        out["reasoning"] = {"effort": body["reasoning_effort"]}
    tools = [_tool(t) for t in body.get("tools") or [] if isinstance(t, dict)]
    if any(tools):
        out["tools"] = [t for t in tools if t]
        choice = body.get("tool_choice")
        if choice in ("auto", "none", "required"):
            out["tool_choice"] = choice
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            out["tool_choice"] = {"type": "function", "name": choice["function"].get("name")}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and \
            isinstance(fmt.get("json_schema"), dict):
        out["text"] = {"format": {"type": "json_schema", **fmt["json_schema"]}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["text"] = {"format": {"type": "json_object"}}
    return out


def _text_of(content: Any) -> str:
    return joined_text(content, "")


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}] if content else []
    parts = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "input_text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                parts.append({"type": "input_image", "image_url": url})
        elif kind == "file" and isinstance(part.get("file"), dict):
            parts.append({"type": "input_file", **{k: v for k, v in part["file"].items()
                                                   if k in ("file_data", "filename", "file_id")}})
    return parts


def _tool(tool: dict[str, Any]) -> dict[str, Any] | None:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        return None
    out = {"type": "function", "name": function.get("name"),
           "parameters": function.get("parameters") or {"type": "object", "properties": {}}}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    if isinstance(function.get("strict"), bool):
        out["strict"] = function["strict"]
    return out


# -- answers ----------------------------------------------------------------------------------
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def usage_to_chat(usage: Any) -> dict[str, Any]:
    """Chat Completions ``usage`` from a Responses one (tokens; cached input kept in
    ``prompt_tokens_details.cached_tokens``)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = count(usage.get("input_tokens")) or 0
    output = count(usage.get("output_tokens")) or 0
    details = usage.get("input_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else None
    out_details = usage.get("output_tokens_details")
    reasoning = count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) \
        else None
    return {"prompt_tokens": prompt, "completion_tokens": output,
            "total_tokens": count(usage.get("total_tokens")) or prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached or 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning or 0}}


def finish_reason(response: dict[str, Any], called: bool) -> str:
    """A Responses object's end as a Chat ``finish_reason``."""
    if called:
        return "tool_calls"
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if reason == "max_output_tokens":
        return "length"
    return "content_filter" if reason == "content_filter" else "stop"


def final_response(stream: bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the response object of a whole Responses event stream's terminal event, the error
    of its ``error`` event or failed response); (None, an error) when it has neither."""
    events, _ = split_events(stream + b"\n\n")
    for block in reversed(events):
        event = _event_data(block)
        kind = event.get("type")
        if kind in TERMINAL and isinstance(event.get("response"), dict):
            response = event["response"]
            error = response.get("error") if kind == "response.failed" else None
            return response, error if isinstance(error, dict) else None
        if kind == "error":
            return None, event.get("error") if isinstance(event.get("error"), dict) else event
    return None, {"type": "server_error", "message": "the upstream stream ended before it "
                                                     "finished"}


def response_to_completion(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``chat.completion`` from a Responses object: its output text as the message's
    content, its function calls as ``tool_calls`` (reasoning items left out)."""
    said: list[str] = []
    calls = []
    for item in response.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            said += [p["text"] for p in item.get("content") or []
                     if isinstance(p, dict) and isinstance(p.get("text"), str)]
        elif item.get("type") == "function_call":
            calls.append({"id": str(item.get("call_id") or item.get("id") or ""),
                          "type": "function",
                          "function": {"name": str(item.get("name") or ""),
                                       "arguments": str(item.get("arguments") or "{}")}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(said) or None}
    if calls:
        message["tool_calls"] = calls
    return {"id": f"chatcmpl-{response.get('id') or uuid.uuid4().hex}",
            "object": "chat.completion", "created": int(response.get("created_at") or
                                                        time.time()),
            "model": text(response.get("model")) or model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason(response, bool(calls))}],
            "usage": usage_to_chat(response.get("usage"))}


def _event_data(block: bytes) -> dict[str, Any]:
    data = b"\n".join(line[5:].lstrip() for line in block.split(b"\n")
                      if line.startswith(b"data:"))
    return json_object(data) or {}


class ResponsesChatStream:
    """Turns a Responses event stream into a ``chat.completion.chunk`` stream ending with
    ``data: [DONE]``, incrementally: :meth:`feed` returns the chunks for every complete event
    in the bytes given; ``feed(b"")`` at the end of the stream closes it.

    Text deltas become ``content`` deltas; each function call item a ``tool_calls`` entry
    (its own ``index``) whose arguments follow as deltas; the terminal event gives the
    ``finish_reason`` and (``include_usage``) a usage chunk. An ``error`` event, a failed
    response or a stream cut short ends it with an ``error`` chunk."""

    def __init__(self, model: str, include_usage: bool = True) -> None:
        self.model = model
        self.include_usage = include_usage
        self._buf = b""
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._role_sent = self._finished = False
        self._calls: dict[int, int] = {}  # output index -> tool call index

    def feed(self, chunk: bytes) -> bytes:
        if self._finished:
            return b""
        if not chunk:
            self._finished = True
            return _error_chunk({"type": "server_error",
                                 "message": "the upstream stream ended before it finished"})
        events, self._buf = split_events(self._buf + chunk)
        out = []
        for block in events:
            out.append(self._event(_event_data(block)))
            if self._finished:
                break
        return b"".join(out)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return _data({"id": self._id, "object": "chat.completion.chunk",
                      "created": self._created, "model": self.model,
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                   "logprobs": None}]})

    def _event(self, event: dict[str, Any]) -> bytes:
        kind = event.get("type")
        if kind == "response.created" and isinstance(event.get("response"), dict):
            created = event["response"]
            self.model = text(created.get("model")) or self.model
            if isinstance(created.get("id"), str):
                self._id = f"chatcmpl-{created['id']}"
            return b""
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            return self._chunk({"content": event["delta"]})
        if kind == "response.output_item.added" and isinstance(event.get("item"), dict) \
                and event["item"].get("type") == "function_call":
            item, where = event["item"], event.get("output_index")
            self._calls[where if isinstance(where, int) else len(self._calls)] = len(self._calls)
            return self._chunk({"tool_calls": [{
                "index": len(self._calls) - 1, "id": str(item.get("call_id") or ""),
                "type": "function", "function": {"name": str(item.get("name") or ""),
                                                 "arguments": ""}}]})
        if kind == "response.function_call_arguments.delta" and \
                isinstance(event.get("delta"), str) and event.get("output_index") in self._calls:
            return self._chunk({"tool_calls": [{"index": self._calls[event["output_index"]],
                                                "function": {"arguments": event["delta"]}}]})
        if kind in TERMINAL:
            return self._finish(obj(event.get("response")), kind)
        if kind == "error":
            self._finished = True
            error = event.get("error")
            return _error_chunk(error if isinstance(error, dict) else event)
        return b""

    def _finish(self, response: dict[str, Any], kind: str) -> bytes:
        self._finished = True
        if kind == "response.failed":
            error = response.get("error")
            return _error_chunk(error if isinstance(error, dict) else {})
        out = self._chunk({}, finish_reason(response, bool(self._calls)))
        if self.include_usage:
            out += _data({"id": self._id, "object": "chat.completion.chunk",
                          "created": self._created, "model": self.model, "choices": [],
                          "usage": usage_to_chat(response.get("usage"))})
        return out + b"data: [DONE]\n\n"


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _error_chunk(error: dict[str, Any]) -> bytes:
    return _data({"error": {"message": str(error.get("message") or "upstream stream error"),
                            "type": str(error.get("type") or "server_error"),
                            "param": None, "code": error.get("code")}})
