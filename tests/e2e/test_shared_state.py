"""Two mitmdump workers on one real Redis serve one pool: a rate limit one learns the other
honours, a conversation stays on one account whichever worker gets it, an operator's reset
reaches both, and a Redis outage changes nothing for clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from conftest import Proxy, accounts_yaml, free_port, rejected_5h, start_all, stop_all

A, B = "sk-ant-api03-AAA", "sk-ant-api03-BBB"
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def workers(sim_server, redis_server, tmp_path_factory) -> Iterator[tuple[Proxy, Proxy]]:
    """Two workers, round-robin (without sharing, requests would alternate accounts)."""
    yaml = accounts_yaml(sim_server.url, {"name": "key-a", "api_key": A},
                         {"name": "key-b", "api_key": B})
    started = start_all([Proxy(tmp_path_factory.mktemp(f"worker{i}"), yaml,
                               {"flare_redis": redis_server.url, "flare_strategy": "round-robin"},
                               None) for i in (1, 2)])
    yield started[0], started[1]
    stop_all(started)


def ask(p: Proxy, **body) -> httpx.Response:
    return httpx.post(p.url + "/v1/messages", headers={"x-api-key": "client"}, timeout=30,
                      json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": MSG,
                            **body})


def wait_for(check, timeout: float = 10.0) -> float:
    """Seconds until ``check()`` is true (polled every 5 ms)."""
    start = time.perf_counter()
    while not check():
        assert time.perf_counter() - start < timeout
        time.sleep(0.005)
    return time.perf_counter() - start


def cooling(p: Proxy) -> int:
    return p.health()["accounts"]["cooling_down"]


def test_a_rate_limit_one_worker_meets_the_other_honours(sim, workers):
    one, two = workers
    wait_for(lambda: one.health()["shared_state"] == two.health()["shared_state"] == "ok")
    sim.script(A, rejected_5h(reset_in=60))
    for _ in range(2):  # round-robin reaches key-a within two requests
        assert ask(one).status_code == 200
    assert sim.credentials_seen().count(A) == 1  # the 429, then failed over to key-b
    took = wait_for(lambda: cooling(two) == 1, timeout=2)
    assert took < 1.0  # propagated (typically a few ms; see scripts/bench for the numbers)
    sim.reset()
    for _ in range(4):
        assert ask(two).status_code == 200
    assert sim.credentials_seen() == [B] * 4  # worker two never tried the cooling account
    assert "state from worker" in two.log_text()


def test_an_operators_reset_on_one_worker_reaches_the_other(sim, workers):
    one, two = workers
    from mitmflare.storage import operator_commands
    if cooling(one) == 0:
        sim.script(A, rejected_5h(reset_in=60))
        ask(one), ask(one)
    wait_for(lambda: cooling(two) == 1, timeout=2)
    operator_commands.queue_reset(str(one.state), "key-a")  # what `accounts reset` does
    wait_for(lambda: cooling(one) == 0 and cooling(two) == 0, timeout=5)


def test_a_conversation_stays_on_one_account_whichever_worker_gets_it(sim, workers):
    one, two = workers
    sim.reset()
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    for i in range(6):
        turns = [*MSG, {"role": "assistant", "content": "ok"},
                 {"role": "user", "content": f"turn {i}"}] if i else MSG
        assert ask((one, two)[i % 2], system=system, messages=turns).status_code == 200
        time.sleep(0.05)  # the answer's visit reaches the other worker
    assert len(set(sim.credentials_seen())) == 1


def test_a_redis_outage_changes_nothing_for_clients_and_state_converges(sim, workers,
                                                                         redis_server):
    one, two = workers
    redis_server.stop()
    wait_for(lambda: one.health()["shared_state"].startswith("down since"), timeout=10)
    sim.reset()
    for p in (one, two, one, two):
        assert ask(p).status_code == 200
    assert cooling(one) == cooling(two) == 0
    sim.script(B, rejected_5h(reset_in=60))  # learned by worker one while Redis is away
    ask(one), ask(one)
    wait_for(lambda: cooling(one) == 1)
    assert cooling(two) == 0
    redis_server.start()
    wait_for(lambda: cooling(two) == 1, timeout=10)  # resynchronised on reconnection
    assert two.health()["shared_state"] == "ok"
    assert "client" not in sim.credentials_seen()



def test_an_expiring_subscription_token_is_refreshed_once_across_workers(sim, redis_server,
                                                                        tmp_path):
    from .test_oauth import oauth_yaml
    sim.oauth_enforce = True
    pair = sim.issue_tokens(expires_in=60)  # inside the refresh buffer: refreshed before use
    yaml = oauth_yaml(sim, pair, 60)
    pool = []
    try:
        for i in (1, 2):  # separate flare_state files, as on two hosts
            folder = tmp_path / f"host{i}"
            folder.mkdir()
            pool.append(Proxy(folder, yaml, {
                "flare_redis": redis_server.url,
                "flare_oauth_token_url": f"{sim.url}/v1/oauth/token"}, None).start())
        wait_for(lambda: all(p.health()["shared_state"] == "ok" for p in pool))

        async def burst() -> list:
            clients = [anthropic.AsyncAnthropic(base_url=p.url, api_key="client",
                                                max_retries=0) for p in pool]
            return await asyncio.gather(*[clients[i % 2].messages.create(
                model="claude-sonnet-4-6", max_tokens=5, messages=MSG) for i in range(20)])

        assert len(asyncio.run(burst())) == 20
        assert len(sim.token_requests) == 1  # one refresh for both hosts
        assert len({r.credential for r in sim.requests}) == 1  # both use the new pair
        assert all(p.health()["accounts"]["available"] == 1 for p in pool)  # none needs login
    finally:
        for p in pool:
            p.stop()


def test_doctor_checks_the_shared_redis(redis_server, tmp_path):
    from typer.testing import CliRunner

    from mitmflare.cli import app
    env = {"MITMFLARE_ACCOUNTS": str(tmp_path / "accounts.yaml"),
           "MITMFLARE_DB": str(tmp_path / "a.db"), "MITMFLARE_STATE": str(tmp_path / "s.db")}
    good = CliRunner().invoke(app, ["doctor", "--redis", redis_server.url], env=env)
    assert "OK    redis: redis://127.0.0.1:" in good.output and "round trip" in good.output
    assert "OK    redis memory policy: noeviction" in good.output
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    bad = CliRunner().invoke(app, ["doctor", "--redis", dead], env=env)
    assert "FAIL  redis: redis://:***@127.0.0.1:" in bad.output and bad.exit_code == 1
    assert "hunter2" not in bad.output
