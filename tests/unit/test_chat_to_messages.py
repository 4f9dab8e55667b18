"""OpenAI Chat Completions / Responses → Anthropic Messages conversion and back (pure
functions), and a property test that sends random requests, answers and streams through
both directions (messages_to_chat and chat_to_messages) and compares what both formats
share."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mitmflare.providers import chat_to_messages as c2m
from mitmflare.providers import messages_to_chat as m2c
from mitmflare.providers import responses_to_messages as r2m
from mitmflare.providers.sse import UsageTap

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


# -- requests ---------------------------------------------------------------------------------
def test_request_maps_roles_parts_images_tools_and_results():
    body = {
        "model": "gpt-4.1", "temperature": 1.7, "top_p": 0.9, "stop": "END", "user": "u-1",
        "max_completion_tokens": 300, "stream": True, "parallel_tool_calls": False,
        "tools": [WEATHER, {"type": "custom", "custom": {"name": "grammar"}}],
        "tool_choice": "required",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4A"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBER"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_2",
             "content": [{"type": "text", "text": "25 C"}]},
            {"role": "user", "content": "Thanks"}]}
    out = c2m.request_to_messages(body, "claude-sonnet-4-5")
    assert out["model"] == "claude-sonnet-4-5" and out["max_tokens"] == 300
    assert out["system"] == [{"type": "text", "text": "Be brief."},
                             {"type": "text", "text": "Use tools."}]
    assert (out["temperature"], out["top_p"], out["stop_sequences"]) == (1.0, 0.9, ["END"])
    assert out["metadata"] == {"user_id": "u-1"} and out["stream"] is True
    user, assistant, results = out["messages"]
    assert user["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": "/9j/4A"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": "JVBER"}}]
    assert assistant == {"role": "assistant", "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]}
    # parallel tool results and the user's next words: one user turn, results first
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C"},
        {"type": "tool_result", "tool_use_id": "call_2",
         "content": [{"type": "text", "text": "25 C"}]},
        {"type": "text", "text": "Thanks"}]}
    assert out["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                             "input_schema": WEATHER["function"]["parameters"]}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_max_tokens_has_a_documented_default_and_the_deprecated_field_counts():
    base = {"messages": [{"role": "user", "content": "hi"}]}
    assert c2m.request_to_messages(base, "m")["max_tokens"] == c2m.DEFAULT_MAX_TOKENS == 4096
    assert c2m.request_to_messages({**base, "max_tokens": 7}, "m")["max_tokens"] == 7


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"})])
def test_tool_choice(choice, expected):
    body = {"messages": [], "tools": [WEATHER], "tool_choice": choice}
    assert c2m.request_to_messages(body, "m")["tool_choice"] == expected


def test_json_schema_becomes_a_forced_tool_and_its_input_the_content():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {"messages": [{"role": "user", "content": "where?"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}}
    out = c2m.request_to_messages(body, "m")
    assert out["tools"] == [{"name": c2m.JSON_TOOL, "description": "Answer as place.",
                             "input_schema": schema}]
    assert out["tool_choice"] == {"type": "tool", "name": c2m.JSON_TOOL}
    message = {"id": "msg_1", "model": "claude-x", "stop_reason": "tool_use", "content": [
        {"type": "text", "text": "Here it is:"},
        {"type": "tool_use", "id": "toolu_1", "name": c2m.JSON_TOOL, "input": {"city": "Oslo"}}],
        "usage": {"input_tokens": 5, "output_tokens": 2}}
    done = json.loads(c2m.message_to_completion(json.dumps(message).encode(), "m", body))
    choice = done["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"city": "Oslo"}
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    # with other tools the model may call them: the JSON tool is offered, not forced
    out = c2m.request_to_messages({**body, "tools": [WEATHER]}, "m")
    assert [t["name"] for t in out["tools"]] == ["get_weather", c2m.JSON_TOOL]
    assert "tool_choice" not in out


def test_a_schema_whose_root_is_not_an_object_is_wrapped_and_unwrapped():
    body = {"messages": [{"role": "user", "content": "list"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "xs", "schema": {
            "type": "array", "items": {"type": "integer"}}}}}
    tool = c2m.request_to_messages(body, "m")["tools"][0]
    assert tool["input_schema"]["properties"][c2m.WRAPPED]["type"] == "array"
    message = {"content": [{"type": "tool_use", "id": "t", "name": c2m.JSON_TOOL,
                            "input": {c2m.WRAPPED: [1, 2]}}], "stop_reason": "tool_use"}
    done = json.loads(c2m.message_to_completion(json.dumps(message).encode(), "m", body))
    assert json.loads(done["choices"][0]["message"]["content"]) == [1, 2]
    events = anthropic_stream(message)
    conv = c2m.ChatStreamConverter("m", True, body)
    assert chat_text(b"".join(conv.feed(e) for e in events) + conv.feed(b"")) == "[1, 2]"


@pytest.mark.parametrize(("effort", "limit", "expected_budget", "max_tokens"), [
    ("low", None, 1024, 4096 + 1024), ("high", None, 4096, 4096 + 4096),
    ("medium", 3000, 2048, 3000), ("high", 3000, 2999, 3000), ("high", 1000, None, 1000),
    ("minimal", None, None, 4096), ("none", None, None, 4096)])
def test_reasoning_effort_becomes_a_thinking_budget_below_max_tokens(
        effort, limit, expected_budget, max_tokens):
    body = {"messages": [{"role": "user", "content": "think"}], "reasoning_effort": effort,
            "temperature": 0.3}
    if limit:
        body["max_completion_tokens"] = limit
    out = c2m.request_to_messages(body, "m")
    assert out["max_tokens"] == max_tokens
    if expected_budget is None:
        assert "thinking" not in out and out["temperature"] == 0.3
    else:
        assert out["thinking"] == {"type": "enabled", "budget_tokens": expected_budget}
        assert "temperature" not in out  # Anthropic refuses it with thinking


def test_no_thinking_with_a_forced_tool_or_in_a_tool_loop():
    forced = {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high",
              "tools": [WEATHER], "tool_choice": "required"}
    assert "thinking" not in c2m.request_to_messages(forced, "m")
    loop = {"reasoning_effort": "high", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]}
    assert "thinking" not in c2m.request_to_messages(loop, "m")


# -- answers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    ("model_context_window_exceeded", "length")])
def test_message_becomes_a_completion_with_usage_and_mapped_finish_reason(stop, finish):
    message = {"id": "msg_9", "model": "claude-sonnet-4-5-20250929", "stop_reason": stop,
               "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                           {"type": "text", "text": "Hi"},
                           {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
               "usage": {"input_tokens": 10, "cache_read_input_tokens": 100,
                         "cache_creation_input_tokens": 50, "output_tokens": 7}}
    done = json.loads(c2m.message_to_completion(json.dumps(message).encode(), "x"))
    assert done["object"] == "chat.completion" and done["id"] == "chatcmpl-msg_9"
    assert done["model"] == "claude-sonnet-4-5-20250929"
    msg = done["choices"][0]["message"]
    assert (msg["content"], msg["reasoning_content"]) == ("Hi", "hm")
    assert msg["tool_calls"] == [{"id": "toolu_1", "type": "function",
                                  "function": {"name": "f", "arguments": '{"a": 1}'}}]
    assert done["choices"][0]["finish_reason"] == finish
    assert done["usage"] == {"prompt_tokens": 160, "completion_tokens": 7, "total_tokens": 167,
                             "prompt_tokens_details": {"cached_tokens": 100,
                                                       "cache_write_tokens": 50}}


@pytest.mark.parametrize(("status", "kind", "o_type", "code"), [
    (429, "rate_limit_error", "rate_limit_error", "rate_limit_exceeded"),
    (400, "invalid_request_error", "invalid_request_error", None),
    (529, "overloaded_error", "server_error", "server_is_overloaded"),
    (401, "authentication_error", "invalid_request_error", "invalid_api_key"),
    (500, "api_error", "server_error", None)])
def test_errors_keep_their_message_and_take_the_openai_shape(status, kind, o_type, code):
    body = json.dumps({"type": "error", "error": {"type": kind, "message": "nope"}}).encode()
    assert json.loads(c2m.error_to_openai(status, body)) == {"error": {
        "message": "nope", "type": o_type, "param": None, "code": code}}
    assert json.loads(c2m.error_to_openai(status, b"<html>bad gateway</html>"))["error"][
        "message"] == "<html>bad gateway</html>"


# -- streams ----------------------------------------------------------------------------------
def sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def anthropic_stream(message: dict, pieces: int = 2) -> list[bytes]:
    """An Anthropic event stream for ``message``: one event per list item, texts and tool
    inputs split into ``pieces`` deltas."""
    usage = message.get("usage") or {"input_tokens": 3, "output_tokens": 2}
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**usage, "output_tokens": 1}}
    out = [sse({"type": "message_start", "message": start}), sse({"type": "ping"})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            whole, first, kind, key = block["text"], {"type": "text", "text": ""}, \
                "text_delta", "text"
        else:
            whole, first, kind, key = json.dumps(block["input"]), {**block, "input": {}}, \
                "input_json_delta", "partial_json"
        out.append(sse({"type": "content_block_start", "index": index, "content_block": first}))
        step = max(1, -(-len(whole) // pieces))
        for at in range(0, len(whole), step):
            out.append(sse({"type": "content_block_delta", "index": index,
                            "delta": {"type": kind, key: whole[at:at + step]}}))
        out.append(sse({"type": "content_block_stop", "index": index}))
    out.append(sse({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                       "stop_sequence": None},
                    "usage": {"output_tokens": usage.get("output_tokens", 0)}}))
    out.append(sse({"type": "message_stop"}))
    return out


def data_of(raw: bytes) -> list:
    out = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: "):
            out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


def chat_text(raw: bytes) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in data_of(raw)
                   if isinstance(c, dict) and c.get("choices"))


def test_stream_converts_event_by_event_with_tool_call_deltas_and_usage_chunk():
    message = {"id": "msg_1", "model": "claude-x", "stop_reason": "tool_use",
               "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 9},
               "content": [{"type": "text", "text": "Let me look."},
                           {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"q": 1}},
                           {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}]}
    events = anthropic_stream(message)
    conv = c2m.ChatStreamConverter("fallback", include_usage=True)
    first = data_of(conv.feed(events[0]))
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first[0]["model"] == "claude-x" and first[0]["usage"] is None
    # an event split in the middle gives nothing until it is complete
    assert conv.feed(events[2][:15]) == b""
    out = conv.feed(events[2][15:])  # content_block_start (text): nothing to say yet
    for event in events[3:]:
        out += conv.feed(event)
    chunks = data_of(out)
    assert chunks[-1] == "[DONE]"
    usage = chunks[-2]
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 14
    assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[:-2]
             if "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0] == {"index": 0, "id": "toolu_a", "type": "function",
                        "function": {"name": "f", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 0) == '{"q": 1}'
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 1) == "{}"
    assert chat_text(out) == "Let me look."
    assert conv.feed(b"") == b""


def test_stream_without_include_usage_has_no_usage_fields():
    message = {"stop_reason": "end_turn", "content": [{"type": "text", "text": "hi"}]}
    conv = c2m.ChatStreamConverter("m", include_usage=False)
    raw = b"".join(conv.feed(e) for e in anthropic_stream(message)) + conv.feed(b"")
    chunks = [c for c in data_of(raw) if c != "[DONE]"]
    assert all("usage" not in c for c in chunks) and data_of(raw)[-1] == "[DONE]"


def test_stream_errors_and_cut_streams_end_with_an_openai_error_chunk():
    conv = c2m.ChatStreamConverter("m")
    raw = conv.feed(anthropic_stream({"stop_reason": "end_turn", "content": [
        {"type": "text", "text": "x"}]})[0])
    raw += conv.feed(sse({"type": "error", "error": {"type": "overloaded_error",
                                                     "message": "Overloaded"}}))
    assert data_of(raw)[-1] == {"error": {"message": "Overloaded", "type": "server_error",
                                          "param": None, "code": "server_is_overloaded"}}
    assert conv.feed(b"data: more\n\n") == b""
    cut = c2m.ChatStreamConverter("m")
    raw = cut.feed(anthropic_stream({"stop_reason": "end_turn", "content": [
        {"type": "text", "text": "x"}]})[0]) + cut.feed(b"")
    assert "error" in data_of(raw)[-1]


def test_the_usage_tap_reads_the_converted_chat_stream():
    message = {"stop_reason": "end_turn", "content": [{"type": "text", "text": "hi"}],
               "usage": {"input_tokens": 10, "cache_read_input_tokens": 5,
                         "cache_creation_input_tokens": 3, "output_tokens": 4}}
    conv = c2m.ChatStreamConverter("m")
    tap = UsageTap("openai")
    tap.feed(b"".join(conv.feed(e) for e in anthropic_stream(message)))
    assert (tap.usage.input_tokens, tap.usage.cache_read_input_tokens,
            tap.usage.cache_creation_input_tokens, tap.usage.output_tokens) == (10, 5, 3, 4)


# -- Responses API ----------------------------------------------------------------------------
def test_responses_request_maps_instructions_items_tools_and_format():
    body = {"model": "gpt-4.1", "instructions": "Be brief.", "max_output_tokens": 200,
            "reasoning": {"effort": "low"}, "tool_choice": {"type": "function", "name": "f"},
            "tools": [{"type": "function", "name": "f", "description": "F",
                       "parameters": {"type": "object", "properties": {}}},
                      {"type": "web_search"}],
            "input": [
                {"role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBOR"}]},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "done"},
                {"type": "reasoning", "id": "rs_1", "summary": []}]}
    out = r2m.request_to_messages(body, "claude-x")
    assert out["system"] == [{"type": "text", "text": "Be brief."}]
    assert out["max_tokens"] == 200 and "thinking" not in out  # forced tool: no thinking
    assert out["tools"] == [{"name": "f", "description": "F",
                             "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "tool", "name": "f"}
    user, assistant, result = out["messages"]
    assert user["content"][1]["source"] == {"type": "base64", "media_type": "image/png",
                                            "data": "iVBOR"}
    assert assistant["content"] == [{"type": "tool_use", "id": "call_1", "name": "f",
                                     "input": {}}]
    assert result["content"] == [{"type": "tool_result", "tool_use_id": "call_1",
                                  "content": "done"}]
    plain = r2m.request_to_messages({"input": "hi", "text": {"format": {
        "type": "json_schema", "name": "p", "schema": {"type": "object"}}}}, "m")
    assert plain["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert plain["tool_choice"] == {"type": "tool", "name": c2m.JSON_TOOL}


def test_message_becomes_a_response_object():
    message = {"id": "msg_1", "model": "claude-x", "stop_reason": "max_tokens",
               "content": [{"type": "text", "text": "Hi"},
                           {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
               "usage": {"input_tokens": 10, "cache_read_input_tokens": 2, "output_tokens": 3}}
    response = json.loads(r2m.message_to_response(json.dumps(message).encode(), "m",
                                                   {"instructions": "x"}))
    assert (response["object"], response["status"], response["model"]) == (
        "response", "incomplete", "claude-x")
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    text, call = response["output"]
    assert text["type"] == "message" and text["content"][0]["text"] == "Hi"
    assert (call["type"], call["call_id"], call["name"], json.loads(call["arguments"])) == (
        "function_call", "toolu_1", "f", {"a": 1})
    assert response["usage"]["input_tokens"] == 12
    assert response["usage"]["input_tokens_details"]["cached_tokens"] == 2


def responses_events(raw: bytes) -> list[dict]:
    return [d for d in data_of(raw) if isinstance(d, dict)]


def test_responses_stream_events_carry_deltas_and_end_with_the_whole_response():
    message = {"id": "msg_7", "model": "claude-x", "stop_reason": "tool_use",
               "usage": {"input_tokens": 4, "output_tokens": 6},
               "content": [{"type": "text", "text": "Calling."},
                           {"type": "tool_use", "id": "toolu_1", "name": "f",
                            "input": {"city": "Paris"}}]}
    conv = r2m.ResponsesStreamConverter("m", {"tools": []})
    pieces = [conv.feed(e) for e in anthropic_stream(message)]
    assert [e["type"] for e in responses_events(pieces[0])] == [
        "response.created", "response.in_progress"]
    events = responses_events(b"".join(pieces) + conv.feed(b""))
    kinds = [e["type"] for e in events]
    assert kinds[2:6] == ["response.output_item.added", "response.content_part.added",
                          "response.output_text.delta", "response.output_text.delta"]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    args = "".join(e["delta"] for e in events
                   if e["type"] == "response.function_call_arguments.delta")
    assert (text, json.loads(args)) == ("Calling.", {"city": "Paris"})
    done = events[-1]["response"]
    assert [i["type"] for i in done["output"]] == ["message", "function_call"]
    assert done["output"][1]["arguments"] == args and done["usage"]["output_tokens"] == 6
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1]


def test_responses_stream_error_event():
    conv = r2m.ResponsesStreamConverter("m")
    raw = conv.feed(sse({"type": "error", "error": {"type": "rate_limit_error",
                                                    "message": "slow down"}}))
    assert responses_events(raw) == [{"type": "error", "code": "rate_limit_exceeded",
                                      "message": "slow down", "param": None,
                                      "sequence_number": 0}]


# -- round trips (property) -------------------------------------------------------------------
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=12).filter(lambda s: s.strip() == s and s.strip())
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | \
    st.floats(allow_nan=False, allow_infinity=False) | words
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(names, inner, max_size=3), max_leaves=8)
inputs = st.dictionaries(names, values, max_size=4)
schemas = st.builds(lambda props, extra: {"type": "object", "properties": props, **extra},
                    st.dictionaries(names, st.dictionaries(names, values, max_size=3),
                                    max_size=3),
                    st.dictionaries(st.sampled_from(["required", "description", "$defs"]),
                                    values, max_size=2))
images = st.one_of(
    st.builds(lambda t, d: {"type": "image", "source": {"type": "base64", "media_type": t,
                                                        "data": d}},
              st.sampled_from(["image/png", "image/jpeg", "image/webp"]),
              st.from_regex(r"[A-Za-z0-9+/]{4,20}", fullmatch=True)),
    st.builds(lambda p: {"type": "image", "source": {"type": "url", "url": f"https://x/{p}"}},
              names))


@st.composite
def anthropic_requests(draw) -> dict:
    tools = draw(st.lists(st.builds(lambda n, d, s: {"name": n, "description": d,
                                                     "input_schema": s}, names, words, schemas),
                          max_size=3, unique_by=lambda t: t["name"]))
    turns: list[dict] = []
    pending: list[str] = []  # tool_use ids the next user turn answers
    ids = iter(f"toolu_{i}" for i in range(1000))
    for _ in range(draw(st.integers(1, 4))):
        user = [{"type": "tool_result", "tool_use_id": i, "content": draw(words)}
                for i in pending]
        user += draw(st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, words),
                                        images), min_size=0 if pending else 1, max_size=3))
        turns.append({"role": "user", "content": user})
        said = draw(st.lists(words, max_size=2))
        calls = [{"type": "tool_use", "id": next(ids), "name": draw(st.sampled_from(
            [t["name"] for t in tools])), "input": draw(inputs)}
            for _ in range(draw(st.integers(0, 2) if tools else st.just(0)))]
        assistant = [{"type": "text", "text": t} for t in said] + calls
        if not assistant:
            assistant = [{"type": "text", "text": "ok"}]
        turns.append({"role": "assistant", "content": assistant})
        pending = [c["id"] for c in calls]
    last = [{"type": "tool_result", "tool_use_id": i, "content": draw(words)} for i in pending]
    turns.append({"role": "user", "content": last or [{"type": "text", "text": draw(words)}]})
    body = {"model": "claude-x", "max_tokens": draw(st.integers(1, 64000)), "messages": turns,
            "system": draw(words), "stream": draw(st.booleans())}
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        body["top_p"] = draw(st.floats(0.01, 1))
    if draw(st.booleans()):
        body["stop_sequences"] = draw(st.lists(words, min_size=1, max_size=3))
    if draw(st.booleans()):
        body["metadata"] = {"user_id": draw(names)}
    if tools:
        body["tools"] = tools
        kind = draw(st.sampled_from(["auto", "any", "none", "tool", None]))
        if kind is not None:
            choice = {"type": kind}
            if kind == "tool":
                choice["name"] = draw(st.sampled_from([t["name"] for t in tools]))
            if kind != "none" and draw(st.booleans()):
                choice["disable_parallel_tool_use"] = True
            body["tool_choice"] = choice
    return body


def shared_anthropic(body: dict) -> dict:
    """What both formats carry of an Anthropic request, in one spelling: adjacent text blocks
    joined (Chat Completions has one string where it can), the system as one text."""
    system = body.get("system")
    if isinstance(system, list):
        system = "\n\n".join(b["text"] for b in system)
    turns = []
    for turn in body["messages"]:
        blocks: list[dict] = []
        for block in turn["content"]:
            if block["type"] == "tool_result" and isinstance(block.get("content"), list):
                block = {**block, "content": "".join(b["text"] for b in block["content"])}
            if block["type"] == "text" and blocks and blocks[-1]["type"] == "text":
                blocks[-1] = {"type": "text", "text": blocks[-1]["text"] + block["text"]}
            else:
                blocks.append(block)
        turns.append({"role": turn["role"], "content": blocks})
    keys = ("model", "max_tokens", "temperature", "top_p", "stop_sequences", "metadata",
            "tools", "tool_choice")
    return {"system": system, "messages": turns, "stream": body.get("stream") is True,
            **{k: body[k] for k in keys if k in body}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_requests())
def test_anthropic_request_survives_chat_and_back(body):
    chat = m2c.request_to_chat(body, "gpt-x")
    back = c2m.request_to_messages(json.loads(json.dumps(chat)), "claude-x")
    assert shared_anthropic(back) == shared_anthropic(body)


@st.composite
def chat_requests(draw) -> dict:
    tools = draw(st.lists(st.builds(lambda n, d, s: {"type": "function", "function": {
        "name": n, "description": d, "parameters": s}}, names, words, schemas),
        max_size=3, unique_by=lambda t: t["function"]["name"]))
    messages: list[dict] = [{"role": "system", "content": draw(words)}]
    ids = iter(f"call_{i}" for i in range(1000))
    for _ in range(draw(st.integers(1, 4))):
        parts = draw(st.lists(st.one_of(
            st.builds(lambda t: {"type": "text", "text": t}, words),
            st.builds(lambda u: {"type": "image_url", "image_url": {"url": f"https://x/{u}"}},
                      names)), min_size=1, max_size=3))
        messages.append({"role": "user", "content": parts if draw(st.booleans())
                         else "".join(p.get("text", "") for p in parts) or "x"})
        calls = [{"id": next(ids), "type": "function", "function": {
            "name": draw(st.sampled_from([t["function"]["name"] for t in tools])),
            "arguments": json.dumps(draw(inputs))}}
            for _ in range(draw(st.integers(0, 2) if tools else st.just(0)))]
        assistant: dict = {"role": "assistant", "content": draw(words)
                           if not calls or draw(st.booleans()) else None}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": draw(words)}
                     for c in calls]
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": draw(words)})
    body = {"model": "gpt-x", "messages": messages, "max_completion_tokens":
            draw(st.integers(1, 64000)), "stream": draw(st.booleans())}
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        body["stop"] = draw(st.lists(words, min_size=1, max_size=3))
    if draw(st.booleans()):
        body["user"] = draw(names)
    if tools:
        body["tools"] = tools
        body["tool_choice"] = draw(st.sampled_from(
            ["auto", "required", "none", {"type": "function", "function": {
                "name": tools[0]["function"]["name"]}}]))
        if draw(st.booleans()) and body["tool_choice"] != "none":
            body["parallel_tool_calls"] = False
    return body


def shared_chat(body: dict) -> dict:
    """What both formats carry of a Chat Completions request, in one spelling: user content
    as parts with adjacent texts joined, arguments as objects, no content as ``None``."""
    messages = []
    for message in body["messages"]:
        message = dict(message)
        content = message.get("content")
        if message["role"] == "user":
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            joined: list[dict] = []
            for part in parts:
                if part["type"] == "text" and joined and joined[-1]["type"] == "text":
                    joined[-1] = {"type": "text", "text": joined[-1]["text"] + part["text"]}
                else:
                    joined.append(part)
            message["content"] = joined
        elif message["role"] == "assistant":
            message["content"] = content or None
            if message.get("tool_calls"):
                message["tool_calls"] = [{**c, "function": {
                    **c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                    for c in message["tool_calls"]]
        messages.append(message)
    keys = ("temperature", "stop", "user", "tools", "tool_choice", "parallel_tool_calls")
    return {"messages": messages, "max": body.get("max_completion_tokens") or
            body.get("max_tokens"), "stream": body.get("stream") is True,
            **{k: body[k] for k in keys if k in body}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests())
def test_chat_request_survives_anthropic_and_back(body):
    messages = c2m.request_to_messages(body, "claude-x")
    back = m2c.request_to_chat(json.loads(json.dumps(messages)), "gpt-x")
    back.pop("stream_options", None)
    assert shared_chat(back) == shared_chat(body)


@st.composite
def anthropic_messages(draw) -> dict:
    calls = [{"type": "tool_use", "id": f"toolu_{i}", "name": draw(names), "input": draw(inputs)}
             for i in range(draw(st.integers(0, 3)))]
    said = draw(st.lists(words, max_size=2))
    stop = "tool_use" if calls else draw(st.sampled_from(["end_turn", "max_tokens", "refusal"]))
    return {"id": "msg_x", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": t} for t in said] + calls,
            "stop_reason": stop, "usage": {
                "input_tokens": draw(st.integers(0, 10**6)),
                "cache_read_input_tokens": draw(st.integers(0, 10**6)),
                "cache_creation_input_tokens": draw(st.integers(0, 10**6)),
                "output_tokens": draw(st.integers(0, 10**5))}}


def shared_message(message: dict) -> dict:
    """Text joined, tool calls with their inputs, stop reason, and the token counts both
    formats have (Chat Completions has no cache writes: they count as input)."""
    usage = message["usage"]
    return {"text": "".join(b["text"] for b in message["content"] if b["type"] == "text"),
            "calls": [(b["id"], b["name"], b["input"]) for b in message["content"]
                      if b["type"] == "tool_use"],
            "stop": message["stop_reason"],
            "usage": (usage["input_tokens"] + usage.get("cache_creation_input_tokens", 0),
                      usage.get("cache_read_input_tokens", 0), usage["output_tokens"])}


@settings(max_examples=150, deadline=None)
@given(anthropic_messages())
def test_anthropic_answer_survives_chat_and_back(message):
    completion = c2m.message_to_completion(json.dumps(message).encode(), "m")
    back = json.loads(m2c.completion_to_message(completion, "m"))
    assert shared_message(back) == shared_message(message)


def read_anthropic_stream(raw: bytes) -> dict:
    """The message an Anthropic event stream describes."""
    blocks: dict[int, dict] = {}
    message: dict = {}
    for event in data_of(raw):
        kind = event["type"]
        if kind == "message_start":
            message = {**event["message"], "usage": dict(event["message"]["usage"])}
        elif kind == "content_block_start":
            blocks[event["index"]] = {**event["content_block"], "_json": ""}
        elif kind == "content_block_delta":
            delta = event["delta"]
            block = blocks[event["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                block["_json"] += delta["partial_json"]
        elif kind == "message_delta":
            message["stop_reason"] = event["delta"]["stop_reason"]
            message["usage"].update(event["usage"])
    content = []
    for index in sorted(blocks):
        block = blocks[index]
        if block["type"] == "tool_use":
            block["input"] = json.loads(block["_json"] or "{}")
        block.pop("_json")
        content.append(block)
    return {**message, "content": content}


def split(raw: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, 12)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


@settings(max_examples=100, deadline=None)
@given(anthropic_messages(), st.integers(1, 4), st.randoms(use_true_random=False))
def test_anthropic_stream_survives_chat_chunks_and_back_in_any_split(message, pieces, rng):
    there = c2m.ChatStreamConverter("m", include_usage=True)
    back = m2c.StreamConverter("m")
    raw = b""
    for chunk in split(b"".join(anthropic_stream(message, pieces)), rng):
        converted = there.feed(chunk)
        if converted:  # an empty chunk would end the second stream
            raw += back.feed(converted)
    raw += back.feed(there.feed(b"")) + back.feed(b"")
    assert shared_message(read_anthropic_stream(raw)) == shared_message(message)


def chat_stream(completion: dict, pieces: int) -> bytes:
    """A Chat Completions chunk stream (with the usage chunk) for a ``chat.completion``."""
    base = {"id": completion["id"], "object": "chat.completion.chunk", "model": "gpt-x"}
    message, out = completion["choices"][0]["message"], []

    def chunk(delta: dict, finish: str | None = None) -> None:
        out.append(c2m.sse_data({**base, "choices": [{"index": 0, "delta": delta,
                                                      "finish_reason": finish}]}))

    chunk({"role": "assistant", "content": ""})
    said = message["content"] or ""
    step = max(1, -(-len(said) // pieces))
    for at in range(0, len(said), step):
        chunk({"content": said[at:at + step]})
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                               "function": {"name": call["function"]["name"], "arguments": ""}}]})
        step = max(1, -(-len(arguments) // pieces))
        for at in range(0, len(arguments), step):
            chunk({"tool_calls": [{"index": index,
                                   "function": {"arguments": arguments[at:at + step]}}]})
    chunk({}, completion["choices"][0]["finish_reason"])
    out.append(c2m.sse_data({**base, "choices": [], "usage": completion["usage"]}))
    return b"".join(out) + b"data: [DONE]\n\n"


def read_chat_stream(raw: bytes) -> dict:
    """(text, calls, finish_reason, usage) a chunk stream describes."""
    said, calls, finish, usage = "", {}, None, None
    for data in data_of(raw):
        if data == "[DONE]":
            break
        usage = data.get("usage") or usage
        for choice in data["choices"]:
            said += choice["delta"].get("content") or ""
            finish = choice["finish_reason"] or finish
            for call in choice["delta"].get("tool_calls") or []:
                known = calls.setdefault(call["index"], {"id": None, "name": None, "args": ""})
                known["id"] = call.get("id") or known["id"]
                known["name"] = call.get("function", {}).get("name") or known["name"]
                known["args"] += call.get("function", {}).get("arguments") or ""
    return {"text": said, "finish": finish, "calls": [
        (c["id"], c["name"], json.loads(c["args"])) for _, c in sorted(calls.items())],
        "usage": (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"],
                  usage["completion_tokens"])}


@settings(max_examples=100, deadline=None)
@given(anthropic_messages(), st.integers(1, 4), st.randoms(use_true_random=False))
def test_chat_stream_survives_anthropic_events_and_back_in_any_split(message, pieces, rng):
    completion = json.loads(c2m.message_to_completion(json.dumps(message).encode(), "m"))
    there = m2c.StreamConverter("m")
    back = c2m.ChatStreamConverter("m", include_usage=True)
    raw = b""
    for chunk in split(chat_stream(completion, pieces), rng):
        converted = there.feed(chunk)
        if converted:
            raw += back.feed(converted)
    raw += back.feed(there.feed(b"")) + back.feed(b"")
    assert read_chat_stream(raw) == read_chat_stream(chat_stream(completion, 1))
