"""End to end: answers with thinking blocks reach the client byte for byte.

A thinking block's ``signature`` covers its text: a client replays the block in the next turn
and the API refuses anything changed ("Invalid signature in thinking block"), so a proxy that
re-serialises a stream (whitespace, key order, escapes, a re-encoded UTF-8 character) breaks
the conversation. The simulated upstream keeps the bytes it sent for each answer, by its
``request-id``; the client's bytes (httpx ``iter_raw``: the body as it came off the wire,
nothing decoded) must equal them, whatever the proxy keeps for itself (stream copy, payload
capture)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from conftest import Proxy, accounts_yaml

KEY_A, KEY_B = "sk-ant-api03-PASS-A", "sk-ant-api03-PASS-B"
SIGNATURE = base64.b64encode(bytes(range(256)) * 2).decode()  # opaque, like the real ones
REDACTED = base64.b64encode(b"\x00redacted thinking\xff" * 20).decode()
BLOCKS = [
    {"type": "thinking", "thinking": "Der Nutzer fragt nach dem Wetter \u2013 prüfen wir 🌦 "
                                     "\"Paris\" \\ zuerst.\n\tDann antworten.",
     "signature": SIGNATURE},
    {"type": "redacted_thinking", "data": REDACTED},
    {"type": "text", "text": "Laut Bericht: 18 °C, leichter Regen ☂.",
     "citations": [{"type": "char_location", "cited_text": "18 °C, Regen",
                    "document_index": 0, "document_title": "Météo", "start_char_index": 0,
                    "end_char_index": 12}]},
    {"type": "tool_use", "id": "toolu_01PASS", "name": "get_weather",
     "input": {"city": "Paris", "units": "celsius", "days": [1, 2], "note": "ü €"}},
]
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 512},
        "messages": [{"role": "user", "content": "Wie ist das Wetter in Paris?"}]}
CONFIGS = {
    "no-copy": {"flare_stream_copy_kb": "0"},
    "copy-cut": {"flare_stream_copy_kb": "1"},  # the copy ends inside the stream
    "payloads": {"flare_payloads": "all", "flare_payload_max_kb": "1"},
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def passing(request, sim_server, tmp_path_factory) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp(request.param)
    p = Proxy(folder, accounts_yaml(sim_server.url, {"name": "key-a", "api_key": KEY_A},
                                    {"name": "key-b", "api_key": KEY_B, "priority": 1}),
              CONFIGS[request.param], None).start()
    yield p
    p.stop()


def raw_answer(p: Proxy, body: dict) -> tuple[int, str, bytes]:
    """(status, the upstream's request-id, the body bytes exactly as received)."""
    with httpx.stream("POST", p.url + "/v1/messages", json=body, timeout=30,
                      headers={"x-api-key": "client", "accept-encoding": "gzip, br"}) as r:
        data = b"".join(r.iter_raw())
        return r.status_code, r.headers["request-id"], data


@pytest.mark.parametrize("chunk_bytes", [None, 7])
def test_a_stream_with_thinking_reaches_the_client_byte_for_byte(sim, passing, chunk_bytes):
    sim.script(KEY_A, {"blocks": BLOCKS, "chunk_bytes": chunk_bytes})
    status, request_id, data = raw_answer(passing, BODY)
    assert status == 200
    sent = sim.sent[request_id]
    assert b"signature_delta" in sent and b"citations_delta" in sent \
        and b"input_json_delta" in sent and b"redacted_thinking" in sent
    assert "🌦".encode() in sent  # raw UTF-8, which chunk_bytes cuts inside characters
    assert len(sent) > 2048  # longer than the copy and payload limits above
    assert data == sent


def test_a_non_streamed_answer_with_thinking_is_byte_for_byte(sim, passing):
    sim.script(KEY_A, {"blocks": BLOCKS})
    status, request_id, data = raw_answer(passing, {**BODY, "stream": False})
    assert status == 200
    assert data == sim.sent[request_id]


def test_a_stream_resent_after_failover_is_byte_for_byte(sim, passing):
    """The proxy re-sends the request itself (a client that does not retry): the second
    account's stream reaches the client in one piece, still the upstream's own bytes."""
    sim.script(KEY_A, {"status": 429})  # windowless: fails over, no cooldown for key-a
    sim.script(KEY_B, {"blocks": BLOCKS, "chunk_bytes": 5})
    status, request_id, data = raw_answer(passing, BODY)
    assert status == 200
    assert sim.credentials_seen()[-2:] == [KEY_A, KEY_B]
    assert data == sim.sent[request_id]


def test_the_sdk_returns_the_thinking_block_with_its_signature(sim, passing):
    sim.script(KEY_A, {"blocks": BLOCKS, "chunk_bytes": 11})
    client = anthropic.Anthropic(base_url=passing.url, api_key="client", max_retries=0)
    body = {k: v for k, v in BODY.items() if k != "stream"}
    with client.messages.stream(**body) as stream:
        message = stream.get_final_message()
    thinking, redacted, text, tool = message.content
    assert thinking.type == "thinking" and thinking.signature == SIGNATURE
    assert thinking.thinking == BLOCKS[0]["thinking"]
    assert redacted.type == "redacted_thinking" and redacted.data == REDACTED
    assert text.text == BLOCKS[2]["text"]
    assert [c.cited_text for c in text.citations] == ["18 °C, Regen"]
    assert tool.type == "tool_use" and tool.input == BLOCKS[3]["input"]
    assert message.stop_reason == "tool_use"
    # the next turn replays the blocks as received: the upstream sees them unchanged
    follow = [{"role": "user", "content": "Wie ist das Wetter in Paris?"},
              {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                for b in message.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id,
                                            "content": "18 °C"}]}]
    client.messages.create(**{**body, "messages": follow})
    replayed = sim.requests[-1].body["messages"][1]["content"]
    assert replayed[0]["signature"] == SIGNATURE and replayed[0]["thinking"] == \
        BLOCKS[0]["thinking"]
    assert replayed[1]["data"] == REDACTED
