"""End to end: a hung upstream never holds requests: per-attempt limits for the answer's
headers (streamed and not) and for silence inside a stream; the hung account cools briefly and
the retry goes elsewhere. Each test has its own mitmdump with 1 s limits."""

from __future__ import annotations

import time

import anthropic
import pytest

from conftest import Proxy, accounts_yaml

A, B = "sk-ant-api03-AAA-hang", "sk-ant-api03-BBB-hang"
MSG = [{"role": "user", "content": "hi"}]
MODEL = "claude-sonnet-4-6"


LIMITS = {"flare_headers_timeout_s": "1", "flare_stream_headers_timeout_s": "1",
          "flare_stream_idle_timeout_s": "1"}


@pytest.fixture
def hung(sim, proxy) -> Proxy:
    return proxy(accounts_yaml(sim.url, {"name": "key-a", "api_key": A},
                               {"name": "key-b", "api_key": B, "priority": 1}), **LIMITS)


def client(p: Proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url, api_key="client-key", max_retries=2, timeout=30)


def cooldown_reason(p: Proxy, reason: str) -> dict:
    return p.wait_rows(1, f"select * from account_events where event = 'cooldown' and "
                          f"reason = '{reason}'")[-1]


def test_no_headers_in_time_fails_over_and_cools_the_hung_account(sim, hung):
    sim.script(A, {"delay_s": 30})
    started = time.monotonic()
    message = client(hung).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    took = time.monotonic() - started
    assert message.content[0].text and 1 < took < 10
    assert [r.credential for r in sim.requests] == [A, B]
    event = cooldown_reason(hung, "upstream_timeout")
    assert event["account"] == "key-a"
    rows = hung.wait_rows(2)
    assert rows[0]["error"].startswith("upstream_timeout") and rows[0]["account"] == "key-a"
    assert rows[1]["status"] == 200 and rows[1]["account"] == "key-b"


def test_a_stream_whose_headers_never_come_goes_elsewhere(sim, hung):
    sim.script(A, {"delay_s": 30})
    with client(hung).messages.stream(model=MODEL, max_tokens=5, messages=MSG) as stream:
        text = "".join(stream.text_stream)
    assert text
    assert [r.credential for r in sim.requests] == [A, B]


def test_a_stream_that_falls_silent_ends_and_the_row_says_why(sim, hung):
    sim.script(A, {"stall_after": 3})
    started = time.monotonic()
    with pytest.raises(Exception, match=r"incomplete|closed|terminated"), \
            client(hung).messages.stream(model=MODEL, max_tokens=5, messages=MSG) as stream:
        for _ in stream.text_stream:
            pass
    assert time.monotonic() - started < 10
    event = cooldown_reason(hung, "upstream_idle_timeout")
    assert event["account"] == "key-a"
    row = hung.wait_rows(1, "select * from requests where error like 'upstream_idle_timeout%'")[0]
    assert row["account"] == "key-a" and row["status"] == 200 and row["streamed"] == 1
