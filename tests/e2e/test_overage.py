"""End to end: overage (extra usage) only by choice. Subscription accounts whose 5-hour
window the simulated upstream has used up answer from extra usage when it is allowed
(``unified-status: rejected`` with ``overage-status: allowed``), and mitmflare uses that only
as each account's ``overage`` setting says."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import accounts_yaml, rejected_5h, wait_for

A, B = "sk-ant-oat01-OVER-A", "sk-ant-oat01-OVER-B"
EXPIRES = "2099-01-01T00:00:00Z"
BIG = {"model": "claude-sonnet-4-6", "max_tokens": 2600,  # ~104k of a 400k-token window
       "messages": [{"role": "user", "content": "hi"}]}
ASK = {"model": "claude-sonnet-4-6", "max_tokens": 5,
       "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def windows(sim):
    """The simulator with enforced 5-hour windows lasting 10 minutes."""
    sim.windows, sim.enforce_windows, sim.window_scale = True, True, 30.0
    return sim


def spend_window(sim, token: str) -> None:
    """Use up ``token``'s 5-hour window by asking the simulator directly."""
    for _ in range(5):
        httpx.post(sim.url + "/v1/messages", json=BIG, timeout=10,
                   headers={"authorization": f"Bearer {token}"})


def start(proxy, sim, a: dict | None = None, b: dict | None = None):
    return proxy(accounts_yaml(sim.url, *(
        {"name": name, "oauth": {"access_token": token, "refresh_token": token + "-r",
                                 "expires_at": EXPIRES}, **(extra or {})}
        for name, token, extra in (("a", A, a), ("b", B, b)))), flare_strategy="round-robin")


def ask(p) -> httpx.Response:
    return httpx.post(p.url + "/v1/messages", json=ASK, timeout=30,
                      headers={"x-api-key": "client"})


def served_by(sim, count: int) -> list[str]:
    return ["a" if r.credential == A else "b" for r in sim.requests[-count:]]


def test_last_resort_uses_overage_only_when_no_plan_can_serve(windows, proxy):
    sim = windows
    spend_window(sim, A)
    sim.overage[A] = "allowed"
    p = start(proxy, sim)  # overage: last_resort is the default
    assert ask(p).status_code == 200  # round-robin starts on a: served from its overage
    assert sim.requests[-1].credential == A
    for _ in range(4):
        assert ask(p).status_code == 200
    assert served_by(sim, 4) == ["b"] * 4  # b serves from its plan: a waits
    spend_window(sim, B)  # b has no overage: its window's 429 cools it
    for _ in range(3):
        assert ask(p).status_code == 200
    assert served_by(sim, 2) == ["a", "a"]
    rows = p.wait_rows(8, "select account, overage from requests where status = 200 "
                          "order by started_at")
    assert [(r["account"], r["overage"]) for r in rows[:5]] == [("a", 1)] + [("b", 0)] * 4
    assert rows[-1] == {"account": "a", "overage": 1}


def test_never_waits_for_the_window_instead_of_overage(windows, proxy):
    sim = windows
    spend_window(sim, A)
    sim.overage[A] = "allowed"
    p = start(proxy, sim, a={"overage": "never"})
    assert ask(p).status_code == 200  # the first answer is how mitmflare learns the plan is spent
    events = p.wait_rows(1, "select account, reason from account_events where event = 'cooldown'")
    assert events[0] == {"account": "a", "reason": "plan_spent (overage: never)"}
    for _ in range(3):
        assert ask(p).status_code == 200
    assert served_by(sim, 3) == ["b"] * 3
    spend_window(sim, B)
    seen = len(sim.requests)
    answer = ask(p)
    assert answer.status_code == 429  # b is limited and a may not use its extra usage
    assert A not in {r.credential for r in sim.requests[seen:]}
    assert "plan_spent (overage: never)" in answer.json()["error"]["message"]


def test_allowed_serves_from_overage_like_from_the_plan(windows, proxy):
    sim = windows
    spend_window(sim, A)
    sim.overage[A] = "allowed"
    p = start(proxy, sim, a={"overage": "allowed"})
    for _ in range(6):
        assert ask(p).status_code == 200
    assert set(served_by(sim, 4)) == {"a", "b"}  # round-robin keeps rotating


def test_the_monthly_overage_cap_stops_it(windows, proxy):
    sim = windows
    spend_window(sim, A)
    spend_window(sim, B)
    sim.overage[A] = "allowed"
    p = start(proxy, sim, a={"overage_cap_usd": 0.0001})
    assert ask(p).status_code == 200  # b is limited: a serves from overage ($0.0002)
    event = wait_for(lambda: p.query("select reason from account_events where account = 'a' "
                                     "and event = 'cooldown'"), timeout=20)
    assert event[0]["reason"].startswith("plan_spent (overage cap $0.0001 reached")
    assert ask(p).status_code == 429


def test_a_spent_overage_pool_never_benches_an_account_whose_plan_is_fine(windows, proxy):
    sim = windows
    sim.overage[A] = "out_of_credits"  # every answer of a says its extra usage is spent
    p = start(proxy, sim)
    for _ in range(4):
        assert ask(p).status_code == 200
    assert sorted(served_by(sim, 4)) == ["a", "a", "b", "b"]
    reset = str(int(time.time()) + 40000)  # a 429 about overage alone, hours from its reset
    sim.script(A, {"status": 429, "headers": {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": reset,
        "anthropic-ratelimit-unified-representative-claim": "overage",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": "0.2",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "out_of_credits"}})
    for _ in range(4):
        assert ask(p).status_code == 200
    # a is not benched: no account cooldown, and the model backs off for 30 s, not until the
    # overage reset 11 hours away
    (event,) = p.wait_rows(1, "select event, until from account_events where account = 'a'")
    assert event["event"] == "model_cooldown"
    assert time.mktime(time.strptime(event["until"][:19], "%Y-%m-%dT%H:%M:%S")) - \
        time.mktime(time.gmtime()) < 60
    accounts = {r["name"]: r for r in p.wait_rows(
        2, "select name, status, cooldown_until from accounts")}
    assert accounts["a"]["status"] == "available" and accounts["a"]["cooldown_until"] is None


def test_a_plan_rejection_still_cools_the_account(sim, proxy):
    p = start(proxy, sim)
    sim.script(A, rejected_5h(600))
    for _ in range(3):
        assert ask(p).status_code == 200
    assert served_by(sim, 2) == ["b", "b"]
