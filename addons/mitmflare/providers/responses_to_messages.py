"""Serving an OpenAI Responses API client (``POST /v1/responses``) from an Anthropic Messages
upstream.

Request: :func:`request_to_messages` (the Responses body is read as the Chat Completions body
it stands for, :func:`responses_to_chat`, then converted by :mod:`.chat_to_messages`).
Answers: :func:`message_to_response` (JSON), :class:`ResponsesStreamConverter` (SSE, event by
event); errors as :func:`.chat_to_messages.error_to_openai` (the same OpenAI error shape).

Wire facts, by the API's own field names (OpenAI API reference "Create a model response",
"The response object" and "Streaming events"; ``shared/reference/upstream-apis.md`` section
4c): request ``instructions``, ``input`` (a string, or items: ``message {role, content}`` with
parts ``input_text`` / ``input_image {image_url}`` / ``input_file {file_data}`` /
``output_text``, ``function_call {call_id, name, arguments}``, ``function_call_output
{call_id, output}``), ``tools[] {type: function, name, description, parameters}``,
``tool_choice`` (``auto`` / ``none`` / ``required`` / ``{type: function, name}``),
``parallel_tool_calls``, ``text.format`` (``json_schema {name, schema}`` / ``json_object``),
``reasoning.effort``, ``max_output_tokens``, ``temperature``, ``top_p``, ``stream``; the
response object ``{id, object: response, created_at, status, incomplete_details {reason},
output[], usage {input_tokens, input_tokens_details {cached_tokens}, output_tokens,
output_tokens_details {reasoning_tokens}, total_tokens}}``, output items ``message`` (content
``output_text {text, annotations}``) and ``function_call {id, call_id, name, arguments}``;
stream events ``response.created``, ``response.in_progress``, ``response.output_item.added`` /
``.done``, ``response.content_part.added`` / ``.done``, ``response.output_text.delta`` /
``.done``, ``response.function_call_arguments.delta`` / ``.done``, ``response.completed`` /
``response.incomplete``, ``error``, each with a ``sequence_number``.

Not mapped: ``previous_response_id`` and ``conversation`` (the upstream keeps no state: the
client must send the whole conversation), built-in tools (web search, file search, …),
reasoning items (thinking is not answered), ``store``, ``include``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .chat_to_messages import (
    JSON_TOOL,
    AnthropicStream,
    error_to_openai,
    json_answer,
    json_unwrap,
    usage_to_openai,
)
from .chat_to_messages import request_to_messages as chat_request_to_messages
from .wire import json_object, text

INCOMPLETE = {"max_tokens": "max_output_tokens", "model_context_window_exceeded":
              "max_output_tokens", "refusal": "content_filter"}
"""Anthropic ``stop_reason`` → Responses ``incomplete_details.reason`` (others: completed)."""


# -- request ----------------------------------------------------------------------------------
def responses_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions body a Responses ``body`` stands for (messages, tools, options)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    for item in given if isinstance(given, list) else []:
        if isinstance(item, dict):
            message = _item_message(item)
            if message is not None:
                messages.append(message)
    out: dict[str, Any] = {"messages": messages}
    for key in ("temperature", "top_p", "parallel_tool_calls", "stream", "user",
                "safety_identifier", "tool_choice"):
        if key in body:
            out[key] = body[key]
    if "max_output_tokens" in body:
        out["max_completion_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and "effort" in reasoning:
        out["reasoning_effort"] = reasoning["effort"]
    out["tools"] = [{"type": "function", "function": {
        k: tool[k] for k in ("name", "description", "parameters") if k in tool}}
        for tool in body.get("tools") or [] if isinstance(tool, dict)
        and tool.get("type") == "function"]
    fmt = body.get("text", {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        out["response_format"] = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "description", "schema") if k in fmt}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    return out


def _item_message(item: dict[str, Any]) -> dict[str, Any] | None:
    kind = item.get("type", "message")
    if kind == "message":
        return {"role": item.get("role"), "content": item.get("content")}
    if kind == "function_call":
        return {"role": "assistant", "tool_calls": [{
            "id": item.get("call_id"), "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")}}]}
    if kind == "function_call_output":
        return {"role": "tool", "tool_call_id": item.get("call_id"),
                "content": item.get("output")}
    return None  # reasoning items, item references, built-in tool calls


def request_to_messages(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic Messages body for a Responses ``body``, asking for ``model``."""
    return chat_request_to_messages(responses_to_chat(body), model)


# -- answers ----------------------------------------------------------------------------------
def usage_to_responses(usage: Any) -> dict[str, Any]:
    """Responses ``usage`` from an Anthropic one (input tokens include cache reads and writes,
    as OpenAI counts them)."""
    chat = usage_to_openai(usage)
    return {"input_tokens": chat["prompt_tokens"],
            "input_tokens_details": chat["prompt_tokens_details"],
            "output_tokens": chat["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": chat["total_tokens"]}


def response_object(response_id: str, model: str, request: dict[str, Any],
                    output: list[dict[str, Any]], stop_reason: Any, usage: Any,
                    created: int) -> dict[str, Any]:
    """The Responses ``response`` object; ``stop_reason`` None means still in progress."""
    reason = INCOMPLETE.get(stop_reason) if isinstance(stop_reason, str) else None
    status = "in_progress" if stop_reason is None else "incomplete" if reason else "completed"
    return {"id": response_id, "object": "response", "created_at": created, "status": status,
            "error": None, "incomplete_details": {"reason": reason} if reason else None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"), "model": model,
            "output": output, "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None, "temperature": request.get("temperature"),
            "top_p": request.get("top_p"), "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [], "text": request.get("text") or {
                "format": {"type": "text"}},
            "usage": usage_to_responses(usage) if stop_reason is not None else None,
            "metadata": request.get("metadata") or {}}


def _message_item(item_id: str, said: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [_text_part(said)] if status == "completed" else []}


def _text_part(said: str) -> dict[str, Any]:
    return {"type": "output_text", "text": said, "annotations": [], "logprobs": []}


def _call_item(call_id: str, name: str, arguments: str, status: str = "completed",
               ) -> dict[str, Any]:
    return {"id": f"fc_{call_id}", "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": arguments}


def message_to_response(body: bytes, model: str, request: dict[str, Any] | None = None) -> bytes:
    """A Responses ``response`` object (JSON bytes) from an Anthropic Message body. ``model``
    names the upstream model when the body does not; ``request`` is the client's Responses
    body. A body that is not a Message becomes an error body."""
    data = json_object(body)
    if data is None or not isinstance(data.get("content"), list):
        return error_to_openai(502, body)
    request = request or {}
    unwrap = json_unwrap(responses_to_chat(request))
    response_id = f"resp_{data.get('id') or uuid.uuid4().hex}"
    output: list[dict[str, Any]] = []
    for block in data["content"]:
        if not isinstance(block, dict):
            continue
        kind, item_id = block.get("type"), f"msg_{response_id[5:]}_{len(output)}"
        if kind == "text" and isinstance(block.get("text"), str):
            output.append(_message_item(item_id, block["text"]))
        elif kind == "tool_use" and unwrap is not None and block.get("name") == JSON_TOOL:
            output.append(_message_item(item_id, json_answer(block.get("input"), unwrap)))
        elif kind == "tool_use":
            output.append(_call_item(str(block.get("id") or uuid.uuid4().hex),
                                     str(block.get("name") or ""),
                                     json.dumps(block.get("input") or {})))
    return json.dumps(response_object(
        response_id, text(data.get("model")) or model, request, output,
        data.get("stop_reason") or "end_turn", data.get("usage"), int(time.time()))).encode()


class ResponsesStreamConverter(AnthropicStream):
    """Turns an Anthropic event stream into a Responses event stream, incrementally (see
    :class:`.chat_to_messages.AnthropicStream`).

    Each Anthropic ``text`` block becomes a ``message`` output item, each ``tool_use`` block a
    ``function_call`` item (the ``response_format`` tool's input: a message's text); thinking
    is left out. The item's text or arguments are kept until its ``.done`` events and the
    terminal ``response.completed`` (or ``response.incomplete``), which carry them whole. An
    upstream ``error`` event, or a stream cut short, ends it with an ``error`` event."""

    prefix = "resp_"

    def __init__(self, model: str, request: dict[str, Any] | None = None) -> None:
        super().__init__(model)
        self.request = request or {}
        self.unwrap = json_unwrap(responses_to_chat(self.request))
        self._seq = 0
        self._output: dict[int, dict[str, Any]] = {}  # output index -> finished item
        self._open: dict[int, dict[str, Any]] = {}  # Anthropic index -> item being streamed
        self._parts: dict[int, list[str]] = {}      # Anthropic index -> its text or arguments

    def _emit(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(
            data, separators=(",", ":")).encode() + b"\n\n"

    def _response(self) -> dict[str, Any]:
        return response_object(self._id, self.model, self.request,
                               [self._output[i] for i in sorted(self._output)],
                               self._stop, self._usage, self._created)

    def _begin(self) -> bytes:
        response = self._response()
        return self._emit("response.created", response=response) + \
            self._emit("response.in_progress", response=response)

    def _error(self, error: dict[str, Any]) -> bytes:
        body = self._openai_error(error)
        return self._emit("error", code=body["code"] or body["type"], message=body["message"],
                          param=None)

    def _block_start(self, index: int, block: dict[str, Any]) -> bytes:
        kind = block.get("type")
        where = len(self._output) + len(self._open)
        if kind == "text" or (kind == "tool_use" and self.unwrap is not None
                              and block.get("name") == JSON_TOOL):
            item = _message_item(f"msg_{self._id[5:]}_{where}", "", "in_progress")
            item["_json"] = kind == "tool_use"
        elif kind == "tool_use":
            item = _call_item(str(block.get("id") or uuid.uuid4().hex),
                              str(block.get("name") or ""), "", "in_progress")
        else:
            return b""  # thinking and server-tool blocks are not answered
        item["_index"] = where
        self._open[index] = item
        self._parts[index] = []
        out = self._emit("response.output_item.added", output_index=where, item=_public(item))
        if item["type"] == "message":
            out += self._emit("response.content_part.added", item_id=item["id"],
                              output_index=where, content_index=0, part=_text_part(""))
            if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
                self._parts[index].append(block["text"])
                out += self._text(item, block["text"])
        return out

    def _text(self, item: dict[str, Any], piece: str) -> bytes:
        return self._emit("response.output_text.delta", item_id=item["id"],
                          output_index=item["_index"], content_index=0, delta=piece, logprobs=[])

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        item = self._open.get(index)
        if item is None:
            return b""
        kind = delta.get("type")
        piece = delta.get("text") if kind == "text_delta" else \
            delta.get("partial_json") if kind == "input_json_delta" else None
        if not isinstance(piece, str) or not piece:
            return b""
        self._parts[index].append(piece)
        if item["type"] == "function_call":
            return self._emit("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=item["_index"], delta=piece)
        if item["_json"] and self.unwrap:  # the answer is inside {"value": …}: sent whole
            return b""
        return self._text(item, piece)

    def _block_stop(self, index: int) -> bytes:
        item = self._open.pop(index, None)
        if item is None:
            return b""
        parts = self._parts.pop(index)
        where, out = item["_index"], b""
        if item["type"] == "function_call":
            arguments = "".join(parts)
            if not arguments:  # no argument at all: an empty object, as a JSON text
                arguments = "{}"
                out += self._emit("response.function_call_arguments.delta", item_id=item["id"],
                                  output_index=where, delta=arguments)
            out += self._emit("response.function_call_arguments.done", item_id=item["id"],
                              output_index=where, name=item["name"], arguments=arguments)
            done = _call_item(item["call_id"], item["name"], arguments)
        else:
            said = "".join(parts)
            if item["_json"] and self.unwrap:
                said = json_answer(json_object(said), True)
                out += self._text(item, said)
            out += self._emit("response.output_text.done", item_id=item["id"],
                              output_index=where, content_index=0, text=said, logprobs=[])
            out += self._emit("response.content_part.done", item_id=item["id"],
                              output_index=where, content_index=0, part=_text_part(said))
            done = _message_item(item["id"], said)
        self._output[where] = done
        return out + self._emit("response.output_item.done", output_index=where, item=done)

    def _finish(self) -> bytes:
        out = b"".join(self._block_stop(index) for index in list(self._open))
        response = self._response()
        kind = "response.completed" if response["status"] == "completed" else \
            "response.incomplete"
        return out + self._emit(kind, response=response)


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """An output item without the converter's own bookkeeping keys."""
    return {k: v for k, v in item.items() if not k.startswith("_")}
