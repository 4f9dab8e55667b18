"""Anthropic Messages ⇄ OpenAI Chat Completions conversion, and model mapping."""

from __future__ import annotations

import json

import pytest

from mitmflare.providers.messages_to_chat import (
    StreamConverter,
    completion_to_message,
    error_to_anthropic,
    request_to_chat,
)
from mitmflare.providers.presets import family, map_model
from mitmflare.providers.sse import UsageTap


def test_request_maps_system_tools_images_and_tool_results():
    body = {
        "model": "claude-sonnet-4-5", "max_tokens": 100, "temperature": 0.2, "top_p": 0.9,
        "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}, "stream": True,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Use tools."}],
        "thinking": {"type": "enabled", "budget_tokens": 1000},
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {
            "type": "object", "properties": {"city": {"type": "string"}}}},
                  {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "18 C"}]},
                {"type": "text", "text": "Thanks"}]},
        ]}
    out = request_to_chat(body, "glm-4.6")
    assert out["model"] == "glm-4.6" and out["max_tokens"] == 100
    assert (out["temperature"], out["top_p"], out["stop"], out["user"]) == (0.2, 0.9, ["END"], "u-1")
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert "thinking" not in out
    system, user, assistant, tool, thanks = out["messages"]
    assert system == {"role": "system", "content": "Be brief.\n\nUse tools."}
    assert user["content"][1] == {"type": "image_url",
                                  "image_url": {"url": "data:image/png;base64,iVBOR"}}
    assert user["content"][2]["image_url"]["url"] == "https://x/y.png"
    assert assistant["content"] == "Checking."
    assert assistant["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"}
    assert thanks == {"role": "user", "content": "Thanks"}
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather"]
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}})])
def test_tool_choice(choice, expected):
    body = {"messages": [], "tools": [{"name": "f", "input_schema": {}}], "tool_choice": choice}
    assert request_to_chat(body, "m")["tool_choice"] == expected


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                              ("tool_calls", "tool_use"),
                                              ("content_filter", "refusal")])
def test_completion_becomes_a_message_with_mapped_stop_reason_and_usage(finish, stop):
    completion = {"id": "c1", "model": "glm-4.6", "choices": [{"finish_reason": finish, "message": {
        "content": "Hi", "tool_calls": [{"id": "call_9", "type": "function", "function": {
            "name": "f", "arguments": '{"a": 1}'}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7,
                  "prompt_tokens_details": {"cached_tokens": 40}}}
    message = json.loads(completion_to_message(json.dumps(completion).encode(), "x"))
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["stop_reason"] == stop and message["model"] == "glm-4.6"
    assert message["content"] == [{"type": "text", "text": "Hi"},
                                  {"type": "tool_use", "id": "call_9", "name": "f",
                                   "input": {"a": 1}}]
    assert message["usage"] == {"input_tokens": 60, "output_tokens": 7,
                                "cache_read_input_tokens": 40, "cache_creation_input_tokens": 0}


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limit_error"), (400, "invalid_request_error"),
                                              (401, "authentication_error"),
                                              (503, "overloaded_error"), (500, "api_error")])
def test_errors_keep_their_status_and_get_the_anthropic_type(status, kind):
    body = json.dumps({"error": {"message": "nope", "type": "x", "code": "y"}}).encode()
    error = json.loads(error_to_anthropic(status, body))
    assert error == {"type": "error", "error": {"type": kind, "message": "nope"}}


def chunk(**fields) -> bytes:
    return f"data: {json.dumps({'id': 'c1', 'model': 'glm-4.6', **fields})}\n\n".encode()


def events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_stream_converts_each_chunk_at_once_text_then_tool_call():
    conv = StreamConverter("fallback")
    first = conv.feed(chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]))
    assert [e["type"] for e in events(first)] == ["message_start", "content_block_start",
                                                   "content_block_delta"]
    assert events(first)[0]["message"]["model"] == "glm-4.6"
    # a chunk split in the middle produces nothing until its line is complete
    second = chunk(choices=[{"index": 0, "delta": {"content": "lo"}}])
    assert conv.feed(second[:20]) == b""
    assert events(conv.feed(second[20:]))[0]["delta"] == {"type": "text_delta", "text": "lo"}
    call = conv.feed(chunk(choices=[{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "f", "arguments": '{"a"'}}]}}]))
    assert [e["type"] for e in events(call)] == ["content_block_stop", "content_block_start",
                                                  "content_block_delta"]
    assert events(call)[1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f",
                                                "input": {}}
    more = conv.feed(chunk(choices=[{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ': 1}'}}]}}]))
    assert events(more)[0]["delta"] == {"type": "input_json_delta", "partial_json": ": 1}"}
    conv.feed(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
    conv.feed(chunk(choices=[], usage={"prompt_tokens": 30, "completion_tokens": 9}))
    end = events(conv.feed(b"data: [DONE]\n\n"))
    assert [e["type"] for e in end] == ["content_block_stop", "message_delta", "message_stop"]
    assert end[1]["delta"]["stop_reason"] == "tool_use"
    assert end[1]["usage"]["input_tokens"] == 30 and end[1]["usage"]["output_tokens"] == 9
    assert conv.feed(b"") == b""


def test_converted_stream_reads_as_anthropic_usage():
    conv = StreamConverter("m")
    raw = conv.feed(chunk(choices=[{"index": 0, "delta": {"content": "x"}}]) +
                    chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "length"}]) +
                    chunk(choices=[], usage={"prompt_tokens": 12, "completion_tokens": 3,
                                             "prompt_tokens_details": {"cached_tokens": 2}}))
    raw += conv.feed(b"")  # the upstream closed without [DONE]: finished all the same
    tap = UsageTap("anthropic")
    tap.feed(raw)
    assert (tap.usage.input_tokens, tap.usage.output_tokens,
            tap.usage.cache_read_input_tokens) == (10, 3, 2)
    assert events(raw)[-2]["delta"]["stop_reason"] == "max_tokens"


def test_stream_cut_before_finishing_ends_with_an_error_event():
    conv = StreamConverter("m")
    raw = conv.feed(chunk(choices=[{"index": 0, "delta": {"content": "x"}}])) + conv.feed(b"")
    assert events(raw)[-1]["type"] == "error"
    error = StreamConverter("m").feed(b'data: {"error": {"message": "quota", "type": "x"}}\n\n')
    assert events(error)[-1] == {"type": "error", "error": {"type": "x", "message": "quota"}}


@pytest.mark.parametrize(("model", "expected"), [
    ("claude-sonnet-4-5", "glm-4.6"), ("claude-3-5-haiku-20241022", "glm-4.5-air"),
    ("claude-opus-4-8", "glm-4.6"), ("claude-sonnet-4-5-exact", "exact-target"),
    ("glm-4.5-air", "glm-4.5-air"), ("gpt-4o", None)])
def test_model_mapping_exact_first_then_family(model, expected):
    models = {"opus": "glm-4.6", "sonnet": "glm-4.6", "haiku": "glm-4.5-air",
              "claude-sonnet-4-5-exact": "exact-target"}
    assert map_model(models, None, model) == expected
    assert map_model(models, "fallback", "gpt-4o") == "fallback"
    assert map_model(None, None, model) == model
    assert family("gpt-4-sonnet") is None
