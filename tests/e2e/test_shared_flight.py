"""In-flight counts and the round-robin position across processes: two mitmdump workers on
one real Redis that share no ``flare_state`` (as on two hosts). Round-robin rotates across
both; ``least-requests`` and ``max_concurrent`` count the other worker's requests in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Proxy, accounts_yaml, start_all, stop_all, wait_for

A, B, C = "sk-ant-api03-FLY-A", "sk-ant-api03-FLY-B", "sk-ant-api03-FLY-C"
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}


def pair(sim_server, redis_server, tmp_path_factory, strategy: str,
         *accounts: dict) -> list[Proxy]:
    yaml = accounts_yaml(sim_server.url, *accounts)
    started = start_all([Proxy(tmp_path_factory.mktemp(f"{strategy}{i}"), yaml,
                               {"flare_redis": redis_server.url, "flare_strategy": strategy,
                                "flare_queue_s": "0"}, None) for i in (1, 2)])
    wait_for(lambda: all(p.health()["shared_state"] == "ok" for p in started), timeout=20)
    return started


@pytest.fixture(scope="module")
def rotating(sim_server, redis_server, tmp_path_factory) -> Iterator[list[Proxy]]:
    started = pair(sim_server, redis_server, tmp_path_factory, "round-robin",
                   {"name": "a", "api_key": A}, {"name": "b", "api_key": B},
                   {"name": "c", "api_key": C})
    yield started
    stop_all(started)


@pytest.fixture(scope="module", params=["capped", "uncapped"])
def least(request, sim_server, redis_server, tmp_path_factory) -> Iterator[list[Proxy]]:
    cap = {"max_concurrent": 1} if request.param == "capped" else {}
    started = pair(sim_server, redis_server, tmp_path_factory, "least-requests",
                   {"name": "a", "api_key": A, **cap}, {"name": "b", "api_key": B})
    yield started
    stop_all(started)


def post(p: Proxy) -> int:
    return httpx.post(p.url + "/v1/messages", json=BODY, headers={"x-api-key": "client"},
                      timeout=30).status_code


def test_round_robin_rotates_across_workers(sim, rotating):
    one, two = rotating
    for i in range(12):  # alternating workers; alone, each would send a, a, b, b, c, c …
        assert post((one, two)[i % 2]) == 200
        time.sleep(0.2)  # the pick reaches the other worker (FLIGHT_S plus a hop)
    seen = sim.credentials_seen()
    assert sorted(seen) == sorted([A, B, C] * 4)  # even
    assert all(seen[i] != seen[i + 1] for i in range(len(seen) - 1))  # in turn, never twice


def held(p: Proxy) -> int:
    return p.health()["in_flight"]["elsewhere"]


def test_least_requests_and_max_concurrent_count_the_other_workers_requests(sim, least):
    """Each worker has served a and b once (a tie: a, first in the file, next); worker one
    holds a request on a: by a's cap of 1, or by least-requests, worker two sends to b."""
    one, two = least
    for p in (one, two, one, two):  # each: a, then b
        assert post(p) == 200
    sim.reset()
    sim.script(A, {"delay_s": 2.0})
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, one)  # worker one: a (a and b served once each there)
        wait_for(lambda: held(two) == 1, timeout=5, interval=0.02)
        assert post(two) == 200  # alone, worker two would send this to a as well
        assert slow.result() == 200
    assert sim.credentials_seen() == [A, B]
    wait_for(lambda: held(two) == 0, timeout=5, interval=0.02)
