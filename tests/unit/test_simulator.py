"""The simulated upstream's usage windows as the demo runs them (opt-in): an OAuth token's
5-hour window stops at 100 %, is then answered with the real upstream's 429, and resets."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from mitmflare.demo.simulator import SimulatedUpstream

TOKEN = "sk-ant-oat01-window"
WINDOW_S = 3.0
BIG = {"model": "claude-sonnet-4-6", "max_tokens": 2600,  # ~104k tokens of a 400k window
       "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def limited() -> Iterator[SimulatedUpstream]:
    sim = SimulatedUpstream(windows=True, enforce_windows=True, window_scale=5 * 3600 / WINDOW_S)
    sim.start()
    yield sim
    sim.stop()


def send(sim: SimulatedUpstream, credential: str = TOKEN) -> httpx.Response:
    return httpx.post(sim.url + "/v1/messages", json=BIG, timeout=5,
                      headers={"authorization": f"Bearer {credential}"})


def test_a_used_up_window_is_capped_rejected_with_real_headers_and_resets(limited):
    utilizations = []
    answer = send(limited)
    while answer.status_code == 200:
        utilizations.append(float(answer.headers["anthropic-ratelimit-unified-5h-utilization"]))
        assert len(utilizations) < 10, utilizations
        answer = send(limited)
    assert utilizations == sorted(utilizations) and utilizations[-1] == 1.0
    assert answer.status_code == 429
    headers = answer.headers
    assert (headers["anthropic-ratelimit-unified-status"],
            headers["anthropic-ratelimit-unified-5h-status"],
            headers["anthropic-ratelimit-unified-5h-utilization"],
            headers["anthropic-ratelimit-unified-5h-surpassed-threshold"],
            headers["anthropic-ratelimit-unified-representative-claim"],
            headers["x-should-retry"]) == ("rejected", "rejected", "1.0000", "1.0", "five_hour",
                                           "true")
    reset = int(headers["anthropic-ratelimit-unified-5h-reset"])
    assert headers["anthropic-ratelimit-unified-reset"] == str(reset)
    assert 0 < int(headers["retry-after"]) <= WINDOW_S + 1
    assert answer.json() == {"type": "error", "error": {"type": "rate_limit_error",
                                                        "message": "rate limit exceeded"}}
    assert send(limited).status_code == 429  # stays rejected until the reset
    assert send(limited, "sk-ant-oat01-other").status_code == 200  # per token
    time.sleep(max(0.0, reset - time.time()) + 0.05)
    fresh = send(limited)
    assert fresh.status_code == 200
    assert float(fresh.headers["anthropic-ratelimit-unified-5h-utilization"]) < 0.5
    assert int(fresh.headers["anthropic-ratelimit-unified-5h-reset"]) > reset


def test_without_the_option_windows_grow_past_100_percent_as_before():
    sim = SimulatedUpstream(windows=True)
    sim.start()
    try:
        last = [send(sim) for _ in range(5)][-1]
    finally:
        sim.stop()
    assert last.status_code == 200
    assert float(last.headers["anthropic-ratelimit-unified-5h-utilization"]) > 1.0


def test_a_request_can_ask_for_a_long_thinking_stream_held_open_and_read_back_its_bytes():
    """What ``scripts/bench --sizes`` relies on: ``x-sim-answer`` shapes the answer (2,000
    events of thinking, signature, text and tool use; a stream held open with pings), and
    ``/_sim/sent`` gives back the exact bytes sent; ``forget_requests`` keeps no bodies."""
    sim = SimulatedUpstream(forget_requests=True)
    sim.start()
    body = {**BIG, "stream": True}
    try:
        answer = httpx.post(sim.url + "/v1/messages", json=body, timeout=10, headers={
            "x-api-key": "k", "x-sim-answer": '{"thinking_events": 2000, "event_delay_ms": 0}'})
        sent = httpx.get(sim.url + "/_sim/sent",
                         params={"id": answer.headers["request-id"]}).content
        start = time.monotonic()
        held = httpx.post(sim.url + "/v1/messages", json=body, timeout=10,
                          headers={"x-api-key": "k", "x-sim-answer": '{"hold_s": 1.2}'})
        held_s = time.monotonic() - start
    finally:
        sim.stop()
    events = answer.content.split(b"\n\n")[:-1]
    assert len(events) == 2000 and answer.content == sent
    kinds = [e.split(b"\n", 1)[0] for e in events]
    assert kinds[:3] == [b"event: message_start", b"event: ping", b"event: content_block_start"]
    assert b'"signature_delta"' in answer.content and b'"input_json_delta"' in answer.content
    assert kinds[-1] == b"event: message_stop"
    assert held_s >= 1.2 and held.content.count(b"event: ping") >= 3  # its own, then 2 held
    assert sim.requests == []
