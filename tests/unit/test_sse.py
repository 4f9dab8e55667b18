"""The SSE usage tap: any chunking, both line-end styles, every provider format."""

from __future__ import annotations

import json

import pytest

from mitmflare.demo.simulator import _anthropic_events, _chat_events, _responses_events
from mitmflare.providers.sse import UsageTap

USAGE = {"input_tokens": 30, "output_tokens": 11, "cache_read_input_tokens": 500,
         "cache_creation_input_tokens": 70,
         "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 50}}


def feed(tap: UsageTap, data: bytes, size: int) -> UsageTap:
    for i in range(0, len(data), size):
        tap.feed(data[i:i + size])
    return tap


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
@pytest.mark.parametrize("crlf", [False, True])
def test_anthropic_stream_usage_with_any_chunking(size, crlf):
    data = b"".join(_anthropic_events("claude-x", USAGE, {}))
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    tap = feed(UsageTap("anthropic"), data, size)
    u = tap.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens) == (30, 11, 500)
    assert (u.cache_creation_input_tokens, u.cache_creation_5m_input_tokens,
            u.cache_creation_1h_input_tokens) == (70, 20, 50)
    assert tap.model == "claude-x" and tap.error is None


def test_message_delta_overrides_cumulative_fields():
    tap = UsageTap("anthropic")
    start = {"type": "message_start", "message": {"model": "m", "usage": {
        "input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 0}}}
    delta = {"type": "message_delta", "usage": {"output_tokens": 99, "input_tokens": 12}}
    tap.feed(f"event: message_start\ndata: {json.dumps(start)}\n\n".encode())
    tap.feed(f"event: message_delta\ndata: {json.dumps(delta)}\n\n".encode())
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (12, 99)


def test_anthropic_error_event():
    events = _anthropic_events("m", USAGE, {"error_event": {"type": "overloaded_error",
                                                            "message": "Overloaded"}})
    tap = feed(UsageTap("anthropic"), b"".join(events), 5)
    assert tap.error_type == "overloaded_error" and tap.usage.input_tokens == 30


def test_openai_chat_final_usage_chunk_moves_cached_tokens_out_of_input():
    data = b"".join(_chat_events("gpt-4o", USAGE, True, {}))
    tap = feed(UsageTap("openai"), data, 3)
    u = tap.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.output_tokens) == (30, 500, 11)
    assert tap.model == "gpt-4o"


def test_openai_chat_without_usage_chunk_reports_nothing():
    tap = feed(UsageTap("openai"), b"".join(_chat_events("gpt-4o", USAGE, False, {})), 50)
    assert tap.usage.input_tokens is None and tap.model is None


def test_openai_responses_completed_event():
    tap = feed(UsageTap("openai"), b"".join(_responses_events("gpt-5", USAGE)), 13)
    assert (tap.usage.input_tokens, tap.usage.cache_read_input_tokens,
            tap.usage.output_tokens) == (30, 500, 11)
    assert tap.model == "gpt-5"


def test_garbage_is_ignored():
    tap = UsageTap("anthropic")
    tap.feed(b"event: message_start\ndata: {not json\n\n: comment\n\nevent: ping\ndata: {}\n\n")
    assert tap.usage.input_tokens is None and tap.events == 3
