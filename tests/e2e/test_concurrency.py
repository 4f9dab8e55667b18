"""End to end: ``max_concurrent`` per account and per user, with the simulator's delayed
answers: over a cap a request goes to another account, or waits up to ``flare_queue_s`` for a
slot, else gets a 429; every way a request ends gives its slots back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import Proxy, accounts_yaml

A, B = "sk-ant-api03-CONC-A", "sk-ant-api03-CONC-B"
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}
MITMFLARE = Path(sys.executable).with_name("mitmflare")
QUEUE_S = 1


def add_user(state: Path, name: str, *options: str) -> str:
    done = subprocess.run([str(MITMFLARE), "users", "add", name, *options, "--state", str(state)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stdout.splitlines() if line.startswith("mfk_"))


@pytest.fixture(scope="module")
def capped(sim_server, tmp_path_factory) -> Iterator[tuple[Proxy, dict[str, str]]]:
    p = Proxy(tmp_path_factory.mktemp("caps"),
              accounts_yaml(sim_server.url, {"name": "a", "api_key": A, "max_concurrent": 1},
                            {"name": "b", "api_key": B, "max_concurrent": 1, "priority": 1}),
              {"flare_queue_s": str(QUEUE_S), "flare_stream_idle_timeout_s": "1",
               "flare_require_access_keys": "true"}, None)
    keys = {"alice": add_user(p.state, "alice", "--max-concurrent", "1"),
            "bob": add_user(p.state, "bob")}
    p.start()
    yield p, keys
    p.stop()


def post(p: Proxy, key: str, timeout: float = 30, body: dict | None = None
         ) -> tuple[int, dict, float]:
    """(status, JSON body, seconds taken) of one request sent with access key ``key``."""
    started = time.monotonic()
    r = httpx.post(p.url + "/v1/messages", json=body or BODY, headers={"x-api-key": key},
                   timeout=timeout)
    return r.status_code, r.json(), time.monotonic() - started


def staggered(p: Proxy, keys: list[str], gap: float = 0.25) -> list[tuple[int, dict, float]]:
    """Send one request per key, ``gap`` s apart, all in flight together; their results."""
    with ThreadPoolExecutor(len(keys)) as pool:
        futures: list[Future] = []
        for key in keys:
            futures.append(pool.submit(post, p, key))
            time.sleep(gap)
        return [f.result() for f in futures]


def in_flight(p: Proxy, key: str) -> dict:
    return httpx.get(p.url + "/health", headers={"x-api-key": key}).json()["in_flight"]


def test_an_account_at_its_cap_passes_the_request_to_another(sim, capped):
    p, keys = capped
    sim.script(A, {"delay_s": 1.0})
    sim.script(B, {"delay_s": 1.0})
    (s1, _, _), (s2, _, _) = staggered(p, [keys["bob"], keys["bob"]])
    assert (s1, s2) == (200, 200)
    assert sim.credentials_seen() == [A, B]  # a was full: b took the second (not waiting)


def test_with_every_account_full_a_request_waits_for_a_slot(sim, capped):
    p, keys = capped
    sim.script(A, {"delay_s": 0.8})
    sim.script(B, {"delay_s": 0.8})
    results = staggered(p, [keys["bob"]] * 3, gap=0.2)
    assert [s for s, _, _ in results] == [200, 200, 200]
    assert results[2][2] > 0.25  # it waited for a's slot (given back after 0.8 s)
    assert sim.credentials_seen() == [A, B, A]


def test_past_flare_queue_s_the_answer_is_a_429_naming_the_cap(sim, capped):
    p, keys = capped
    sim.script(A, {"delay_s": 3})
    sim.script(B, {"delay_s": 3})
    (s1, _, _), (s2, _, _), (s3, body, t3) = staggered(p, [keys["bob"]] * 3, gap=0.2)
    assert (s1, s2, s3) == (200, 200, 429)
    assert body["error"]["type"] == "rate_limit_error"
    assert "max_concurrent" in body["error"]["message"]
    assert "a (1 request in flight" in body["error"]["message"]
    assert QUEUE_S - 0.1 < t3 < QUEUE_S + 1.5


def test_a_users_cap_holds_only_that_user(sim, capped):
    p, keys = capped
    sim.script(A, {"delay_s": 2})
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, p, keys["alice"])
        time.sleep(0.3)
        second = pool.submit(post, p, keys["alice"])
        other = pool.submit(post, p, keys["bob"])
        status, body, took = second.result()
        assert status == 429 and "user alice has 1 request in flight" in \
            body["error"]["message"]
        assert QUEUE_S - 0.1 < took < QUEUE_S + 1.5
        assert other.result()[0] == 200 and first.result()[0] == 200


def settled(p: Proxy, key: str) -> dict:
    """``in_flight`` of /health once it is zero (or after 10 s)."""
    deadline = time.time() + 10
    while in_flight(p, key) != {"accounts": 0, "users": 0} and time.time() < deadline:
        time.sleep(0.1)
    return in_flight(p, key)


def test_every_way_a_request_ends_gives_its_slots_back(sim, capped):
    p, keys = capped
    alice = keys["alice"]
    # the client leaves while the upstream is still thinking (alice holds her one slot)
    sim.script(A, {"delay_s": 2}, {"delay_s": 2})
    for key in (alice, keys["bob"]):
        with pytest.raises(httpx.ReadTimeout):
            post(p, key, timeout=0.4)
    # an error answered as is, a limit failed over, a stream, mitmflare's own refusal
    sim.script(A, {"status": 400}, {"status": 429})
    assert post(p, alice)[0] == 400
    assert post(p, alice)[0] == 200
    with httpx.stream("POST", p.url + "/v1/messages", json={**BODY, "stream": True},
                      headers={"x-api-key": alice}) as r:
        assert r.status_code == 200 and b"message_stop" in r.read()
    assert httpx.post(p.url + "/v1/messages", json=BODY,
                      headers={"x-api-key": "mfk_" + "0" * 64}).status_code == 401
    assert settled(p, alice) == {"accounts": 0, "users": 0}
    # nothing leaked: alice and bob are served at once, side by side, on a and b
    sim.script(A, {"delay_s": 0.5})
    sim.script(B, {"delay_s": 0.5})
    results = staggered(p, [alice, keys["bob"]], gap=0.1)
    assert [s for s, _, _ in results] == [200, 200]
    assert sorted(sim.credentials_seen()[-2:]) == [A, B]
    # the upstream falls silent mid-stream: mitmflare ends it after the idle timeout
    sim.script(A, {"stall_after": 3})
    with httpx.stream("POST", p.url + "/v1/messages", json={**BODY, "stream": True},
                      headers={"x-api-key": alice}, timeout=30) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            r.read()
    assert settled(p, alice) == {"accounts": 0, "users": 0}
