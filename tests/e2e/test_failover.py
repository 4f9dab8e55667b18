"""End to end: each row of the failure classification, through a real mitmdump."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from conftest import accounts_yaml, rejected_5h, wait_for

A, B = "sk-ant-api03-AAA", "sk-ant-api03-BBB"
MSG = [{"role": "user", "content": "hello"}]
MODEL = "claude-sonnet-4-6"


def two_keys(sim) -> str:
    return accounts_yaml(sim.url, {"name": "key-a", "api_key": A},
                         {"name": "key-b", "api_key": B, "priority": 1})


def client(p, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url, api_key="sk-ant-api03-CLIENT", max_retries=retries)


def ask(p, model: str = MODEL, retries: int = 0):
    return client(p, retries).messages.create(model=model, max_tokens=5, messages=MSG)


def attempts(p, count: int) -> list[tuple]:
    rows = p.wait_rows(count, "select * from attempts order by id")
    return [(r["account"], r["status"], r["reason"]) for r in rows]


def events(p, count: int) -> list[dict]:
    return p.wait_rows(count, "select * from account_events order by id")


def test_account_wide_429_cools_down_until_reset_then_recovers(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, rejected_5h(reset_in=3))
    assert ask(p).content  # the client never sees the 429
    assert sim.credentials_seen() == [A, B]
    assert attempts(p, 2) == [("key-a", 429, "rate_limited_5h"), ("key-b", 200, None)]
    (row,) = p.wait_rows(1)
    assert row["account"] == "key-b" and row["attempts"] == 2 and row["failover"] == 1
    (cooldown,) = events(p, 1)
    assert cooldown["event"] == "cooldown" and cooldown["account"] == "key-a"
    assert '"5h"' in cooldown["headers"]
    assert p.health()["accounts"]["cooling_down"] == 1
    ask(p)
    assert sim.credentials_seen()[-1] == B
    wait_for(lambda: p.health()["accounts"]["cooling_down"] == 0, timeout=4.5)  # the reset
    ask(p)  # preferred account is back: the session strategy returns to it
    assert sim.credentials_seen()[-1] == A
    assert [e["event"] for e in events(p, 2)] == ["cooldown", "recovered"]


def test_api_key_429_with_retry_after(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": 429, "headers": {"retry-after": "30",
                                              "anthropic-ratelimit-requests-remaining": "0"}})
    ask(p)
    assert sim.credentials_seen() == [A, B]
    account = p.wait_rows(1, "select * from accounts where name='key-a' and status='cooling_down'")[0]
    assert account["cooldown_reason"] == "rate_limited"


def test_model_scoped_429_fails_over_without_benching(sim, proxy):
    p = proxy(two_keys(sim))
    reset = str(int(time.time() + 3600))
    sim.script(A, {"status": 429, "headers": {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-representative-claim": "seven_day_overage_included",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d_oi-status": "rejected",
        "anthropic-ratelimit-unified-7d_oi-reset": reset}})
    ask(p, model="claude-opus-4-8")
    ask(p, model="claude-opus-4-8")  # that model stays off key-a
    ask(p, model=MODEL)              # other models still use key-a
    assert sim.credentials_seen() == [A, B, B, A]
    assert p.health()["accounts"]["available"] == 2
    assert [e["event"] for e in events(p, 1)] == ["model_cooldown"]


def test_windowless_429_fails_over_without_cooldown(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": 429, "headers": {"x-should-retry": "true"}})
    ask(p)
    ask(p)
    assert sim.credentials_seen() == [A, B, A]
    assert attempts(p, 3)[0] == ("key-a", 429, "windowless_429")
    assert p.query("select * from account_events") == []


def test_429_without_usable_time_backs_off_exponentially(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": 429, "headers": {"anthropic-ratelimit-unified-status": "rejected"}})
    ask(p)
    (event,) = events(p, 1)
    assert event["reason"] == "rate_limited_no_reset"
    cooldown = p.wait_rows(1, "select cooldown_until from accounts where name='key-a' "
                              "and cooldown_until is not null")[0]["cooldown_until"]
    started = p.query("select started_at from requests")[0]["started_at"]
    assert 29 < _seconds_between(started, cooldown) < 32  # the first step is 30 s


def test_overloaded_retries_same_account_once_then_fails_over(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": 529}, {"status": 529})
    ask(p)
    assert sim.credentials_seen() == [A, A, B]
    assert [a[:2] for a in attempts(p, 3)] == [("key-a", 529), ("key-a", 529), ("key-b", 200)]
    cooldown = p.wait_rows(1, "select * from account_events")[0]
    until = _seconds_between(cooldown["at"], cooldown["until"])
    assert 5 <= until <= 15  # short, never hours


def test_transient_500_succeeds_on_same_account_retry(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": 500})
    ask(p)
    assert sim.credentials_seen() == [A, A]
    assert p.query("select * from account_events") == []


def test_401_marks_needs_reauth_and_fails_over(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": 401})
    ask(p)
    ask(p)
    assert sim.credentials_seen() == [A, B, B]
    assert [e["event"] for e in events(p, 1)] == ["needs_reauth"]
    assert p.health()["accounts"]["available"] == 1


@pytest.mark.parametrize("status", [400, 404, 413])
def test_client_errors_are_returned_untouched(sim, proxy, status):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": status, "body": {"type": "error", "error": {
        "type": "invalid_request_error", "message": "bad thing"}}})
    with pytest.raises(anthropic.APIStatusError) as info:
        ask(p)
    assert info.value.status_code == status and info.value.body["error"]["message"] == "bad thing"
    assert sim.credentials_seen() == [A]
    (row,) = p.wait_rows(1)
    assert row["error"] == f"{status} invalid_request_error: bad thing"


def test_openai_insufficient_quota_benches_account(sim, proxy):
    yaml = accounts_yaml(sim.url, {"name": "oa1", "provider": "openai", "api_key": "sk-1"},
                         {"name": "oa2", "provider": "openai", "api_key": "sk-2"})
    p = proxy(yaml, modes=["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"])
    sim.script("sk-1", {"status": 429, "body": {"error": {
        "message": "You exceeded your current quota", "type": "insufficient_quota",
        "param": None, "code": "insufficient_quota"}}})
    oa = openai.OpenAI(base_url=p.url + "/v1", api_key="sk-client", max_retries=0)
    oa.chat.completions.create(model="gpt-4o", messages=MSG)
    oa.chat.completions.create(model="gpt-4o", messages=MSG)
    assert sim.credentials_seen() == ["sk-1", "sk-2", "sk-2"]
    account = p.wait_rows(1, "select * from accounts where name='oa1' and status='benched'")[0]
    assert account["cooldown_until"] is None  # not a timed cooldown: an operator resumes it


def test_mid_stream_rate_limit_error_updates_account_state(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"error_event": {"type": "rate_limit_error", "message": "slow down"}})
    with pytest.raises(anthropic.APIStatusError), \
            client(p).messages.stream(model=MODEL, max_tokens=5, messages=MSG) as s:
        for _ in s.text_stream:
            pass
    (event,) = events(p, 1)
    assert event["account"] == "key-a" and event["event"] == "cooldown"
    ask(p)
    assert sim.credentials_seen()[-1] == B


def test_all_accounts_limited_answers_429_with_soonest_reset(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, rejected_5h(reset_in=600))
    sim.script(B, rejected_5h(reset_in=120))
    response = httpx.post(p.url + "/v1/messages", headers={"x-api-key": "sk-ant-api03-CLIENT"},
                          json={"model": MODEL, "max_tokens": 5, "messages": MSG})
    assert response.status_code == 429
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "key-b is free again" in body["error"]["message"]
    assert 110 <= int(response.headers["retry-after"]) <= 121
    assert response.headers["x-should-retry"] == "false"
    # a storm: further requests are answered by the proxy without touching the upstream
    for _ in range(5):
        assert httpx.post(p.url + "/v1/messages", json={"model": MODEL, "messages": MSG},
                          headers={"x-api-key": "x"}).status_code == 429
    assert sim.credentials_seen() == [A, B]


def test_cooldown_survives_restart(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, rejected_5h(reset_in=600))
    ask(p)
    p.wait_rows(1, "select * from account_events")
    p.restart()
    assert p.health()["accounts"]["cooling_down"] == 1
    ask(p)
    assert sim.credentials_seen() == [A, B, B]


def test_streamed_failover_with_sdk_retry_keeps_streaming(sim, proxy):
    p = proxy(two_keys(sim))
    sim.chunk_delay_s = 0.1
    sim.script(A, rejected_5h(reset_in=600))
    arrivals = []
    start = time.monotonic()
    with client(p, retries=2).messages.stream(model=MODEL, max_tokens=5, messages=MSG) as s:
        for _ in s.text_stream:
            arrivals.append(time.monotonic() - start)
    assert sim.credentials_seen() == [A, B]
    assert sim.requests[1].headers["x-stainless-retry-count"] == "1"
    assert len(arrivals) == 11 and arrivals[-1] - arrivals[0] > 0.8  # incremental, not bunched
    rows = p.wait_rows(2)
    assert [(r["account"], r["status"]) for r in rows] == [("key-a", 529), ("key-b", 200)]
    assert "key-a answered 429 (rate_limited_5h)" in rows[0]["error"]
    assert rows[1]["streamed"] == 1 and rows[1]["output_tokens"] == 11


def test_streamed_failover_answer_is_a_retryable_overloaded_error(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, rejected_5h(reset_in=600))
    response = httpx.post(p.url + "/v1/messages",
                          headers={"x-api-key": "k", "x-stainless-retry-count": "0"},
                          json={"model": MODEL, "max_tokens": 5, "stream": True, "messages": MSG})
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"
    assert response.headers["x-should-retry"] == "true"
    assert response.headers["retry-after-ms"] == "1" and "retry-after" not in response.headers


def test_openai_sdk_streamed_windowless_429_retry_goes_elsewhere(sim, proxy):
    yaml = accounts_yaml(sim.url, {"name": "oa1", "provider": "openai", "api_key": "sk-1"},
                         {"name": "oa2", "provider": "openai", "api_key": "sk-2", "priority": 1})
    p = proxy(yaml, modes=["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"])
    sim.script("sk-1", {"status": 429})
    oa = openai.OpenAI(base_url=p.url + "/v1", api_key="sk-client", max_retries=2)
    chunks = list(oa.chat.completions.create(model="gpt-4o", messages=MSG, stream=True))
    assert chunks and sim.credentials_seen() == ["sk-1", "sk-2"]


def test_streamed_failover_for_client_without_retries_is_resent_by_proxy(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, rejected_5h(reset_in=600))
    with httpx.stream("POST", p.url + "/v1/messages", headers={"x-api-key": "k"},
                      json={"model": MODEL, "max_tokens": 5, "stream": True,
                            "messages": MSG}) as r:
        body = r.read()
    assert r.status_code == 200 and body.count(b"text_delta") == 11
    assert sim.credentials_seen() == [A, B]
    (row,) = p.wait_rows(1)
    assert row["account"] == "key-b" and row["output_tokens"] == 11 and row["failover"] == 1


def _seconds_between(a: str, b: str) -> float:
    from datetime import datetime
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def test_account_near_its_limit_is_used_only_when_nothing_better_is_free(sim, proxy):
    p = proxy(two_keys(sim))
    reset = str(int(time.time() + 3600))
    sim.script(A, {"headers": {"anthropic-ratelimit-unified-status": "allowed",
                               "anthropic-ratelimit-unified-5h-utilization": "0.97",
                               "anthropic-ratelimit-unified-5h-reset": reset}})
    ask(p)
    ask(p)  # key-a is at 97 % of its 5-hour window: key-b takes over before any 429
    assert sim.credentials_seen() == [A, B]
    limits = p.wait_rows(1, "select limits from accounts where name='key-a' and limits is not null")
    assert '"utilization": 0.97' in limits[0]["limits"]


def test_a_short_all_cooling_gap_is_held_instead_of_answered_429(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": 429, "headers": {"retry-after": "3"}})
    sim.script(B, {"status": 429, "headers": {"retry-after": "2"}})
    started = time.monotonic()
    message = ask(p)
    waited = time.monotonic() - started
    assert message.content and 1.5 < waited < 6
    assert sim.credentials_seen() == [A, B, B]  # held until key-b's 2 s were over
    (row,) = p.wait_rows(1)
    assert row["status"] == 200 and row["account"] == "key-b"


def test_a_long_all_cooling_gap_is_answered_at_once_without_a_retry(sim, proxy):
    p = proxy(two_keys(sim), flare_queue_s="1")
    sim.script(A, {"status": 429, "headers": {"retry-after": "3"}})
    sim.script(B, {"status": 429, "headers": {"retry-after": "2"}})
    response = httpx.post(p.url + "/v1/messages", json={"model": MODEL, "max_tokens": 5,
                                                        "messages": MSG})
    assert response.status_code == 429 and response.headers["x-should-retry"] == "false"
    assert response.headers["retry-after"] in ("2", "3")
