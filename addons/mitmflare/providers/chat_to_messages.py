"""Serving an OpenAI Chat Completions client from an Anthropic Messages upstream.

Request: :func:`request_to_messages` (``POST /v1/chat/completions`` body → ``POST /v1/messages``
body). Answers: :func:`message_to_completion` (JSON), :class:`ChatStreamConverter` (SSE, event
by event), :func:`error_to_openai` (error bodies; the status is kept, so a 429 stays a 429).
:class:`AnthropicEvents` reads an Anthropic event stream incrementally (also used by
:mod:`.responses_to_messages`).

Wire facts, by the APIs' own field names. OpenAI Chat Completions (API reference "Create chat
completion" and "The chat completion chunk object"): ``messages[].role`` ``system`` /
``developer`` / ``user`` / ``assistant`` / ``tool``; ``content`` a string or parts ``text``,
``image_url {url}``, ``file {file_data}``; ``assistant.tool_calls[] {id, type: function,
function {name, arguments}}``; ``tool.tool_call_id``; ``tools[] {type: function, function
{name, description, parameters}}``; ``tool_choice`` ``none`` / ``auto`` / ``required`` /
``{type: function, function {name}}``; ``parallel_tool_calls``; ``response_format``
``{type: json_schema, json_schema {name, schema}}`` / ``{type: json_object}``; ``stop``;
``max_completion_tokens`` (``max_tokens`` deprecated); ``temperature`` (0 to 2); ``top_p``;
``reasoning_effort``; ``user`` / ``safety_identifier``; ``stream_options.include_usage``;
answers ``choices[].message`` / ``.delta``, ``finish_reason`` ``stop`` / ``length`` /
``tool_calls`` / ``content_filter``, ``usage {prompt_tokens, completion_tokens, total_tokens,
prompt_tokens_details {cached_tokens}}``, ``data: [DONE]``. Anthropic Messages (API reference
"Messages" and "Streaming Messages"): ``system``, ``messages[]`` of ``user`` / ``assistant``
with blocks ``text``, ``image {source {type: base64|url}}``, ``document``, ``tool_use {id,
name, input}``, ``tool_result {tool_use_id, content, is_error}``; ``tools[] {name,
description, input_schema}``; ``tool_choice {type: auto|any|tool|none, name,
disable_parallel_tool_use}``; ``stop_sequences``; ``max_tokens`` (required); ``temperature``
(0 to 1); ``thinking {type: enabled, budget_tokens}`` (at least 1024, below ``max_tokens``; not
with ``temperature``/``top_k`` changes or a forced tool); ``metadata.user_id``; stop reasons
``end_turn``, ``max_tokens``, ``stop_sequence``, ``tool_use``, ``pause_turn``, ``refusal``,
``model_context_window_exceeded``; events ``message_start``, ``content_block_start`` /
``_delta`` (``text_delta``, ``input_json_delta``, ``thinking_delta``) / ``_stop``,
``message_delta``, ``message_stop``, ``ping``, ``error``
(``shared/reference/upstream-apis.md`` sections 2 and 4).

Choices where the formats differ: ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS`
(LiteLLM's ``DEFAULT_ANTHROPIC_CHAT_MAX_TOKENS``); ``temperature`` above 1 is capped at 1;
``reasoning_effort`` picks a thinking budget from :data:`THINKING_BUDGETS` (LiteLLM's
``DEFAULT_REASONING_EFFORT_*_THINKING_BUDGET``); ``response_format`` becomes a tool the model
must call (:data:`JSON_TOOL`), whose input is answered as the message content. Thinking is
answered as ``reasoning_content`` (as DeepSeek and LiteLLM do). Not mapped: ``n`` (one choice
only), ``logprobs``, ``seed``, penalties, audio.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .sse import split_events
from .wire import count, json_object, obj, text

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` when the client sets no limit (Anthropic requires one)."""
THINKING_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
"""``reasoning_effort`` → ``thinking.budget_tokens``; ``none`` and ``minimal`` think not at all
(Anthropic's smallest budget is 1024)."""
MIN_THINKING_BUDGET = 1024
JSON_TOOL = "json_response"
"""Name of the tool that carries a ``response_format`` answer."""
WRAPPED = "value"  # property holding a non-object JSON schema's answer (tool input is an object)

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
                  "max_tokens": "length", "model_context_window_exceeded": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter"}
"""Anthropic ``stop_reason`` → OpenAI ``finish_reason``."""
ERROR_TYPES = {"invalid_request_error": ("invalid_request_error", None),
               "authentication_error": ("invalid_request_error", "invalid_api_key"),
               "permission_error": ("invalid_request_error", "permission_denied"),
               "not_found_error": ("invalid_request_error", "model_not_found"),
               "request_too_large": ("invalid_request_error", "request_too_large"),
               "billing_error": ("insufficient_quota", "insufficient_quota"),
               "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
               "overloaded_error": ("server_error", "server_is_overloaded"),
               "timeout_error": ("server_error", "timeout"),
               "api_error": ("server_error", None)}
"""Anthropic ``error.type`` → OpenAI (``error.type``, ``error.code``)."""
STATUS_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                 402: "billing_error", 403: "permission_error", 404: "not_found_error",
                 413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error",
                 529: "overloaded_error"}


# -- request ----------------------------------------------------------------------------------
def request_to_messages(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic Messages body for a Chat Completions ``body``, asking for ``model``."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system += [b for b in _blocks(message.get("content")) if b["type"] == "text"]
        elif role == "user":
            _append(turns, "user", _blocks(message.get("content")))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message)])
    _tidy_prefill(turns)
    out: dict[str, Any] = {"model": model, "messages": turns,
                           "max_tokens": _max_tokens(body) or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = system
    for key in ("temperature", "top_p"):
        if _number(body.get(key)) is not None:
            out[key] = min(float(body[key]), 1.0) if key == "temperature" else body[key]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [s for s in stops if isinstance(s, str) and s.strip()]
    if stops:
        out["stop_sequences"] = stops
    user = text(body.get("user")) or text(body.get("safety_identifier"))
    if user:
        out["metadata"] = {"user_id": user}
    if body.get("stream") is True:
        out["stream"] = True
    _tools(body, out)
    _thinking(body, out)
    return out


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if type(value) is int and value > 0:
            return value
    return None


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add ``blocks`` as a turn of ``role``, joining a previous turn of the same role (tool
    results and the user's next words form one user turn, tool results first)."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] += blocks
    else:
        turns.append({"role": role, "content": blocks})


def _tidy_prefill(turns: list[dict[str, Any]]) -> None:
    """A last assistant turn is a prefill, whose text may not end with white space."""
    if turns and turns[-1]["role"] == "assistant":
        last = turns[-1]["content"][-1]
        if last["type"] == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                turns[-1]["content"].pop()
                if not turns[-1]["content"]:
                    turns.pop()


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Anthropic content blocks for a message's ``content`` (a string or parts); empty text
    is left out (Anthropic refuses empty text blocks)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content if isinstance(content, list) else []:
        block = _part(part) if isinstance(part, dict) else None
        if block is not None:
            blocks.append(block)
    return blocks


def _part(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text"):
        value = part.get("text")
        return {"type": "text", "text": value} if isinstance(value, str) and value else None
    if kind == "refusal" and isinstance(part.get("refusal"), str) and part["refusal"]:
        return {"type": "text", "text": part["refusal"]}
    if kind in ("image_url", "input_image"):
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        source = _source(url) if isinstance(url, str) else None
        return {"type": "image", "source": source} if source else None
    if kind in ("file", "input_file"):
        file = part.get("file")
        data = (file if isinstance(file, dict) else part).get("file_data")
        source = _source(data) if isinstance(data, str) else None
        if source and source["type"] == "base64":
            return {"type": "document", "source": source}
    return None


def _source(url: str) -> dict[str, Any] | None:
    """Anthropic ``source`` for a URL: ``data:<type>;base64,<data>`` → base64, http(s) → url."""
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if encoding == "base64" and data:
            return {"type": "base64", "media_type": media_type or "image/png", "data": data}
        return None
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    return None


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _blocks(message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            blocks.append({"type": "tool_use", "id": str(call.get("id") or _tool_id()),
                           "name": function["name"], "input": _arguments(function.get("arguments"))})
    return blocks


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result",
                              "tool_use_id": str(message.get("tool_call_id") or "")}
    if isinstance(content, str):
        if content:
            result["content"] = content
    else:
        blocks = [b for b in _blocks(content) if b["type"] in ("text", "image")]
        if blocks:
            result["content"] = blocks
    return result


def _arguments(raw: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` (a JSON string) as the ``input`` object Anthropic needs."""
    if isinstance(raw, dict):
        return raw
    parsed = json_object(raw) if isinstance(raw, str) else None
    return parsed if parsed is not None else {}


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = []
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type", "function") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str):
            continue  # custom and built-in tools have no Anthropic equivalent
        converted = {"name": function["name"], "input_schema": _object_schema(
            function.get("parameters"))}
        if isinstance(function.get("description"), str):
            converted["description"] = function["description"]
        tools.append(converted)
    choice = _tool_choice(body.get("tool_choice"))
    json_tool = json_schema_tool(body)
    if json_tool is not None:
        tools.append(json_tool)
        if len(tools) == 1 or choice == {"type": "none"}:  # nothing else to call: force it
            choice = {"type": "tool", "name": JSON_TOOL}
    if not tools:
        return
    out["tools"] = tools
    if body.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice:
        out["tool_choice"] = choice


def _object_schema(schema: Any) -> dict[str, Any]:
    if isinstance(schema, dict) and schema:
        return schema if "type" in schema else {"type": "object", **schema}
    return {"type": "object", "properties": {}}


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict):
        function = choice.get("function")
        name = (function if isinstance(function, dict) else choice).get("name")
        if isinstance(name, str):
            return {"type": "tool", "name": name}
    return None


def json_format(body: dict[str, Any]) -> tuple[dict[str, Any], bool, str] | None:
    """(tool input schema, wrapped?, description) for a request's ``response_format``
    (``json_schema`` or ``json_object``), or None. A schema whose root is not an object is
    wrapped as the property :data:`WRAPPED` (a tool's input must be an object)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object"}, False, "Answer with a JSON object."
    spec = fmt.get("json_schema")
    if fmt.get("type") != "json_schema" or not isinstance(spec, dict):
        return None
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        schema = {"type": "object"}
    description = str(spec.get("description") or f"Answer as {spec.get('name') or 'JSON'}.")
    if schema.get("type") == "object":
        return schema, False, description
    return {"type": "object", "properties": {WRAPPED: schema}, "required": [WRAPPED]}, True, \
        description


def json_schema_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The Anthropic tool standing for a request's ``response_format`` (see
    :func:`json_format`), or None."""
    found = json_format(body)
    if found is None:
        return None
    schema, _, description = found
    return {"name": JSON_TOOL, "description": description, "input_schema": schema}


def json_unwrap(body: dict[str, Any]) -> bool | None:
    """None when the request has no ``response_format`` tool; else whether its answer is
    wrapped in :data:`WRAPPED` (see :func:`json_format`)."""
    found = json_format(body)
    return None if found is None else found[1]


def _thinking(body: dict[str, Any], out: dict[str, Any]) -> None:
    """``reasoning_effort`` → ``thinking``: the budget from :data:`THINKING_BUDGETS`, kept
    below ``max_tokens`` (raised when the client set no limit); off when it cannot reach 1024,
    with a forced tool, or in a tool loop whose earlier thinking the client could not send
    back. Thinking takes ``temperature`` and ``top_p`` away (Anthropic refuses them)."""
    effort = body.get("reasoning_effort")
    budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None or out.get("tool_choice", {}).get("type") in ("any", "tool"):
        return
    turns = out["messages"]
    if turns and turns[-1]["role"] == "user" and any(
            b["type"] == "tool_result" for b in turns[-1]["content"]):
        return  # Anthropic wants the signed thinking block before the tool_use back
    if _max_tokens(body) is None:
        out["max_tokens"] = DEFAULT_MAX_TOKENS + budget
    budget = min(budget, out["max_tokens"] - 1)
    if budget < MIN_THINKING_BUDGET:
        return
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    out.pop("temperature", None)
    out.pop("top_p", None)


# -- answers ----------------------------------------------------------------------------------
def usage_to_openai(usage: Any) -> dict[str, Any]:
    """OpenAI ``usage`` from an Anthropic one: prompt tokens include the cache reads and writes
    (``prompt_tokens_details.cached_tokens`` / ``cache_write_tokens``), as OpenAI counts."""
    usage = usage if isinstance(usage, dict) else {}
    read = count(usage.get("cache_read_input_tokens")) or 0
    written = count(usage.get("cache_creation_input_tokens")) or 0
    prompt = (count(usage.get("input_tokens")) or 0) + read + written
    output = count(usage.get("output_tokens")) or 0
    return {"prompt_tokens": prompt, "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written}}


def message_to_completion(body: bytes, model: str, request: dict[str, Any] | None = None) -> bytes:
    """A ``chat.completion`` (JSON bytes) from an Anthropic Message body. ``model`` names the
    upstream model when the body does not; ``request`` is the client's Chat Completions body
    (for its ``response_format``). A body that is not a Message becomes an error body."""
    data = json_object(body)
    if data is None or not isinstance(data.get("content"), list):
        return error_to_openai(502, body)
    unwrap = json_unwrap(request or {})
    said, thought, calls = [], [], []
    for block in data["content"]:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            said.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thought.append(block["thinking"])
        elif kind == "tool_use" and unwrap is not None and block.get("name") == JSON_TOOL:
            said = [json_answer(block.get("input"), unwrap)]  # the answer, not its preamble
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id") or _tool_id()), "type": "function",
                          "function": {"name": str(block.get("name") or ""),
                                       "arguments": json.dumps(block.get("input") or {})}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(said) or None,
                               "refusal": None, "annotations": []}
    if calls:
        message["tool_calls"] = calls
    if thought:
        message["reasoning_content"] = "".join(thought)
    return json.dumps({
        "id": f"chatcmpl-{data.get('id') or uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": text(data.get("model")) or model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(data.get("stop_reason"), bool(calls))}],
        "usage": usage_to_openai(data.get("usage")), "system_fingerprint": None,
    }).encode()


def finish_reason(stop_reason: Any, called: bool) -> str:
    """The OpenAI ``finish_reason`` for an Anthropic ``stop_reason`` (:data:`FINISH_REASONS`);
    a ``tool_use`` stop whose only call was the ``response_format`` tool is a plain stop."""
    reason = FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    return "stop" if reason == "tool_calls" and not called else reason


def json_answer(value: Any, unwrap: bool) -> str:
    """The ``response_format`` tool's input as the JSON text the client asked for."""
    if unwrap and isinstance(value, dict):
        value = value.get(WRAPPED)
    return json.dumps(value if value is not None else {})


def error_to_openai(status: int, body: bytes) -> bytes:
    """An OpenAI error body ``{"error": {"message", "type", "param", "code"}}`` for an upstream
    error answer of ``status``; the type follows the Anthropic ``error.type`` (else the
    status): ``rate_limit_error`` → ``rate_limit_error`` / ``rate_limit_exceeded``, …"""
    data = json_object(body) or {}
    error = obj(data.get("error"))
    message = str(error.get("message") or "") or \
        body[:300].decode("utf-8", "replace") or f"upstream answered {status}"
    kind = error["type"] if error.get("type") in ERROR_TYPES else \
        STATUS_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    o_type, code = ERROR_TYPES[kind]
    return json.dumps({"error": {"message": message, "type": o_type, "param": None,
                                 "code": code}}).encode()


def _tool_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# -- streams ----------------------------------------------------------------------------------
class AnthropicEvents:
    """Incremental reader of an Anthropic event stream: :meth:`feed` returns the ``data``
    objects of the events completed by the bytes given (``event:`` names are repeated in
    ``data.type``); a partial event waits for its end. ``\\n`` or ``\\r\\n`` line ends."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        blocks, self._buf = split_events(self._buf + chunk)
        events = []
        for block in blocks:
            data = b"\n".join(line[5:].strip() for line in block.split(b"\n")
                              if line.startswith(b"data:"))
            event = json_object(data)
            if event is not None:
                events.append(event)
        return events

    def rest(self) -> list[dict[str, Any]]:
        """The last event when the stream ended without its blank line."""
        return self.feed(b"\n\n") if self._buf.strip() else []


def sse_data(data: Any) -> bytes:
    """One data-only SSE event (the Chat Completions stream's form)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return b"data: " + payload.encode() + b"\n\n"


class AnthropicStream:
    """Base of the converters of an Anthropic event stream into an OpenAI one: :meth:`feed`
    returns the converted events for every complete upstream event in the bytes given (a
    partial event waits for its end); ``feed(b"")`` at the end of the stream closes it.

    It keeps the message's id (``<prefix><Anthropic id>``), model, stop reason and usage
    (``message_start``, then the cumulative ``message_delta``); subclasses say what each event
    becomes: :meth:`_begin`, :meth:`_block_start`, :meth:`_block_delta`, :meth:`_block_stop`,
    :meth:`_error`, :meth:`_finish`. A stream that ends before ``message_delta`` gave a stop
    reason ends with :meth:`_error`."""

    prefix = ""

    def __init__(self, model: str) -> None:
        self.model = model
        self._events = AnthropicEvents()
        self._id = f"{self.prefix}{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._started = self._finished = False
        self._stop: str | None = None  # Anthropic stop_reason
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> bytes:
        if self._finished:
            return b""
        events = self._events.feed(chunk) if chunk else self._events.rest()
        out = []
        for event in events:
            out.append(self._event(event))
            if self._finished:
                return b"".join(out)
        if not chunk:
            out.append(self._end())
        return b"".join(out)

    def _event(self, event: dict[str, Any]) -> bytes:
        kind = event.get("type")
        if kind == "message_start":
            message = obj(event.get("message"))
            self.model = text(message.get("model")) or self.model
            if isinstance(message.get("id"), str):
                self._id = f"{self.prefix}{message['id']}"
            self._usage.update(message.get("usage") or {})
            self._started = True
            return self._begin()
        if kind == "error":
            self._finished = True
            return self._error(obj(event.get("error")))
        if not self._started:
            return b""
        if kind in ("content_block_start", "content_block_delta", "content_block_stop"):
            index = event.get("index")
            if not isinstance(index, int):
                return b""
            if kind == "content_block_start":
                block = event.get("content_block")
                return self._block_start(index, block if isinstance(block, dict) else {})
            if kind == "content_block_delta":
                delta = event.get("delta")
                return self._block_delta(index, delta if isinstance(delta, dict) else {})
            return self._block_stop(index)
        if kind == "message_delta":
            delta = obj(event.get("delta"))
            self._stop = str(delta.get("stop_reason") or "end_turn")
            if isinstance(event.get("usage"), dict):
                self._usage.update({k: v for k, v in event["usage"].items() if v is not None})
            return b""
        if kind == "message_stop":
            return self._end()
        return b""  # ping and event types added later

    def _end(self) -> bytes:
        self._finished = True
        if self._stop is None:
            return self._error({"type": "api_error",
                                "message": "the upstream stream ended before it finished"})
        return self._finish()

    @staticmethod
    def _openai_error(error: dict[str, Any]) -> dict[str, Any]:
        """An Anthropic stream's ``error`` object as an OpenAI ``error`` object."""
        return json.loads(error_to_openai(500, json.dumps({"error": error}).encode()))["error"]

    def _begin(self) -> bytes:
        raise NotImplementedError

    def _block_start(self, index: int, block: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _block_stop(self, index: int) -> bytes:
        raise NotImplementedError

    def _error(self, error: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _finish(self) -> bytes:
        raise NotImplementedError


class ChatStreamConverter(AnthropicStream):
    """Turns an Anthropic event stream into a ``chat.completion.chunk`` stream, incrementally
    (see :class:`AnthropicStream`).

    ``include_usage``: every chunk has ``usage: null`` and a last chunk with empty
    ``choices`` carries the usage, before ``data: [DONE]`` (``stream_options.include_usage``).
    ``request``: the client's body (its ``response_format`` tool's input is streamed as
    content). An upstream ``error`` event becomes an OpenAI error chunk (no ``[DONE]``); a
    stream cut short ends with one too."""

    prefix = "chatcmpl-"

    def __init__(self, model: str, include_usage: bool = True,
                 request: dict[str, Any] | None = None) -> None:
        super().__init__(model)
        self.include_usage = include_usage
        self.unwrap = json_unwrap(request or {})
        self._blocks: dict[int, tuple[str, int]] = {}  # Anthropic index -> (kind, tool index)
        self._tools = 0
        self._json: dict[int, list[str]] = {}  # wrapped response_format answers, by index

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        data: dict[str, Any] = {"id": self._id, "object": "chat.completion.chunk",
                                "created": self._created, "model": self.model,
                                "system_fingerprint": None,
                                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}]}
        if self.include_usage:
            data["usage"] = None
        return sse_data(data)

    def _begin(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def _error(self, error: dict[str, Any]) -> bytes:
        return sse_data({"error": self._openai_error(error)})

    def _block_start(self, index: int, block: dict[str, Any]) -> bytes:
        kind = block.get("type")
        if kind == "tool_use" and self.unwrap is not None and block.get("name") == JSON_TOOL:
            self._blocks[index] = ("json", 0)
            if self.unwrap:
                self._json[index] = []
            return b""
        if kind == "tool_use":
            tool = self._tools
            self._tools += 1
            self._blocks[index] = ("tool", tool)
            return self._chunk({"tool_calls": [{
                "index": tool, "id": str(block.get("id") or _tool_id()), "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": ""}}]})
        self._blocks[index] = (str(kind), 0)
        if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            return self._chunk({"content": block["text"]})
        return b""

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        block, tool = self._blocks.get(index, ("", 0))
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            return self._chunk({"content": delta["text"]})
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            return self._chunk({"reasoning_content": delta["thinking"]})
        if kind != "input_json_delta" or not isinstance(delta.get("partial_json"), str) \
                or not delta["partial_json"]:
            return b""
        piece = delta["partial_json"]
        if block == "json":
            if index in self._json:
                self._json[index].append(piece)
                return b""
            return self._chunk({"content": piece})
        if block in ("tool", "tool+"):
            self._blocks[index] = ("tool+", tool)  # its arguments are no longer empty
            return self._chunk({"tool_calls": [{"index": tool, "function": {"arguments": piece}}]})
        return b""

    def _block_stop(self, index: int) -> bytes:
        block, tool = self._blocks.get(index, ("", 0))
        if block == "tool":  # no argument at all: an empty object, as a JSON text
            return self._chunk({"tool_calls": [{"index": tool, "function": {"arguments": "{}"}}]})
        if index in self._json:
            value = json_object("".join(self._json.pop(index)))
            return self._chunk({"content": json_answer(value, True)})
        return b""

    def _finish(self) -> bytes:
        out = [self._chunk({}, finish_reason(self._stop, self._tools > 0))]
        if self.include_usage:
            out.append(sse_data({"id": self._id, "object": "chat.completion.chunk",
                                 "created": self._created, "model": self.model,
                                 "system_fingerprint": None, "choices": [],
                                 "usage": usage_to_openai(self._usage)}))
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)
