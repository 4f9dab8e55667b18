"""End to end: ``flare_pool_headers`` puts the pool's headroom in the unified rate-limit headers
Claude Code's statusline reads, and ``mitmflare statusline`` prints it from ``/health``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Proxy, accounts_yaml

A, B = "sk-ant-oat01-POOL-A", "sk-ant-oat01-POOL-B"
KEY = "sk-ant-api03-POOL-K"
T0 = int(time.time()) + 3600  # resets are relative to this: an hour of slack for slow runs
EXPIRES = "2099-01-01T00:00:00Z"
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}
MITMFLARE = Path(sys.executable).with_name("mitmflare")


def unified(u5: float, reset5: int, u7: float, reset7: int, status5: str = "allowed") -> dict:
    """The headers a subscription account sends (``upstream-apis.md`` section 1b)."""
    p = "anthropic-ratelimit-unified-"
    return {p + "status": status5, p + "5h-status": status5, p + "5h-utilization": str(u5),
            p + "5h-reset": str(reset5), p + "7d-status": "allowed",
            p + "7d-utilization": str(u7), p + "7d-reset": str(reset7),
            p + "representative-claim": "five_hour", p + "reset": str(reset5),
            p + "fallback-percentage": "0.5"}


A_HEADERS = unified(0.8, T0 + 3600, 0.5, T0 + 5 * 86400)
B_HEADERS = unified(0.2, T0 + 7200, 0.7, T0 + 6 * 86400)


def yaml(url: str) -> str:
    return accounts_yaml(url, *({"name": name, "oauth": {"access_token": token,
                                                         "refresh_token": token + "-r",
                                                         "expires_at": EXPIRES}}
                                for name, token in (("pool-a", A), ("pool-b", B))),
                         {"name": "key", "api_key": KEY, "priority": 5})


@pytest.fixture(scope="module")
def pooled(sim_server, tmp_path_factory) -> Iterator[Proxy]:
    p = Proxy(tmp_path_factory.mktemp("pool"), yaml(sim_server.url),
              {"flare_pool_headers": "true", "flare_strategy": "round-robin"}, None).start()
    yield p
    p.stop()


def script_both(sim, n: int = 1) -> None:
    for _ in range(n):
        sim.script(A, {"headers": A_HEADERS})
        sim.script(B, {"headers": B_HEADERS})


def test_answers_carry_the_pools_windows_and_the_accounts_own_move_aside(sim, pooled):
    script_both(sim)
    first = httpx.post(pooled.url + "/v1/messages", json=BODY, headers={"x-api-key": "c"})
    assert first.status_code == 200 and sim.credentials_seen() == [A]
    h = first.headers
    # only pool-a has reported: pool-b's windows count as 0
    assert h["anthropic-ratelimit-unified-5h-utilization"] == "0.4"
    assert h["x-mitmflare-account"] == "pool-a"
    assert h["x-mitmflare-account-unified-5h-utilization"] == "0.8"
    assert h["x-mitmflare-account-unified-fallback-percentage"] == "0.5"
    assert "anthropic-ratelimit-unified-fallback-percentage" not in h
    second = httpx.post(pooled.url + "/v1/messages", json=BODY, headers={"x-api-key": "c"})
    h = second.headers
    assert sim.credentials_seen() == [A, B] and h["x-mitmflare-account"] == "pool-b"
    assert h["x-mitmflare-account-unified-5h-utilization"] == "0.2"
    assert h["anthropic-ratelimit-unified-5h-utilization"] == "0.5"  # mean of 0.8 and 0.2
    assert h["anthropic-ratelimit-unified-5h-reset"] == str(T0 + 3600)  # the soonest
    assert h["anthropic-ratelimit-unified-7d-utilization"] == "0.6"
    assert h["anthropic-ratelimit-unified-7d-reset"] == str(T0 + 5 * 86400)
    assert h["anthropic-ratelimit-unified-representative-claim"] == "seven_day"
    assert h["anthropic-ratelimit-unified-reset"] == str(T0 + 5 * 86400)
    assert h["anthropic-ratelimit-unified-status"] == "allowed"
    assert len(h.get_list("anthropic-ratelimit-unified-5h-utilization")) == 1


def test_a_streamed_answer_carries_them_too(sim, pooled):
    script_both(sim)
    with httpx.stream("POST", pooled.url + "/v1/messages", json={**BODY, "stream": True},
                      headers={"x-api-key": "c"}) as r:
        body = b"".join(r.iter_raw())
        assert r.headers["anthropic-ratelimit-unified-5h-utilization"] == "0.5"
        assert r.headers["x-mitmflare-account"] in ("pool-a", "pool-b")
    assert b"message_stop" in body


def test_health_and_the_statusline_command_show_the_pool(sim, pooled):
    script_both(sim, 2)
    session = "7c1a6f0e-statusline"
    turn = {**BODY, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]}
    for _ in range(2):
        served = httpx.post(pooled.url + "/v1/messages", json=turn,
                            headers={"x-api-key": "c", "x-claude-code-session-id": session})
    account = served.headers["x-mitmflare-account"]
    health = httpx.get(f"{pooled.url}/health", params={"session": session}).json()
    assert health["serving_account"] == account
    five = health["pool"]["windows"]["5h"]
    assert (five["utilization"], five["reset"], five["accounts"]) == (0.5, T0 + 3600, 2)
    deadline = time.time() + 10  # the writer process counts the spend a moment later
    while health["spent_today_usd"] == 0 and time.time() < deadline:
        time.sleep(0.2)
        health = httpx.get(f"{pooled.url}/health").json()
    assert health["spent_today_usd"] > 0
    stdin = json.dumps({"session_id": session, "model": {"display_name": "Sonnet"},
                        "rate_limits": {"five_hour": {"used_percentage": 1}}})
    done = subprocess.run([str(MITMFLARE), "statusline"], input=stdin, capture_output=True,
                          text=True, timeout=60, env={"ANTHROPIC_BASE_URL": pooled.url,
                                                      "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    reset = time.strftime("%H:%M", time.localtime(T0 + 3600))
    assert done.stdout.startswith(f"pool 5h 50 % (resets {reset}) · 7d 60 % · on {account} · $")
    assert done.stdout.rstrip().endswith(" today")


def test_the_proxys_own_429_says_the_pool_is_exhausted(sim, proxy):
    p = proxy(yaml(sim.url), flare_pool_headers="true", flare_queue_s="0")
    for token in (A, B):
        sim.script(token, {"status": 429, "headers": {
            **unified(1.01, T0 + 600, 0.5, T0 + 5 * 86400, "rejected"), "retry-after": "600"}})
    sim.script(KEY, {"status": 429, "headers": {"retry-after": "900"}})
    answer = httpx.post(p.url + "/v1/messages", json=BODY, headers={"x-api-key": "c"})
    assert answer.status_code == 429
    assert sorted(sim.credentials_seen()) == sorted([A, B, KEY])
    h = answer.headers
    assert h["anthropic-ratelimit-unified-status"] == "rejected"
    assert h["anthropic-ratelimit-unified-5h-status"] == "rejected"
    assert h["anthropic-ratelimit-unified-5h-utilization"] == "1.0"
    assert h["anthropic-ratelimit-unified-reset"] == str(T0 + 600)
    assert "x-mitmflare-account" not in h


def test_without_the_option_the_accounts_headers_pass_as_they_came(sim, proxy):
    p = proxy(yaml(sim.url))
    script_both(sim)
    h = httpx.post(p.url + "/v1/messages", json=BODY, headers={"x-api-key": "c"}).headers
    assert h["anthropic-ratelimit-unified-5h-utilization"] == "0.8"
    assert "x-mitmflare-account" not in h and "pool" in p.health()
