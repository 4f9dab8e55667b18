"""Users and operator commands through Redis, across hosts: two mitmdump workers on one real
Redis that share neither ``flare_state`` nor the accounts file (as on two hosts). A
``mitmflare users …`` or ``accounts pause/resume/reset`` run against either host's files with
``--redis`` reaches both workers within 2 s."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Proxy, accounts_yaml, rejected_5h, start_all, stop_all, wait_for

MITMFLARE = Path(sys.executable).with_name("mitmflare")
A, B = "sk-ant-api03-AAA", "sk-ant-api03-BBB"
MSG = [{"role": "user", "content": "hello"}]
# the first user's key, made on host one before the workers start (host two never had it)
FIRST: dict[str, str] = {}


def cli(*args: str, cwd: Path, redis: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(MITMFLARE), *args, "--redis", redis], capture_output=True,
                          text=True, cwd=cwd, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def key_of(done: subprocess.CompletedProcess) -> str:
    found = re.search(r"mfk_[0-9a-f]{64}", done.stdout)
    assert found, done.stdout
    return found.group(0)


@pytest.fixture(scope="module")
def hosts(sim_server, redis_server, tmp_path_factory) -> Iterator[list[Proxy]]:
    yaml = accounts_yaml(sim_server.url, {"name": "key-a", "api_key": A},
                         {"name": "key-b", "api_key": B})
    folders = [tmp_path_factory.mktemp(f"host{i}") for i in (1, 2)]
    FIRST["key"] = key_of(cli("users", "add", "bob", "--state",
                              str(folders[0] / "mitmflare-state.db"), cwd=folders[0],
                              redis=redis_server.url))
    started = start_all([Proxy(folder, yaml, {"flare_redis": redis_server.url,
                                              "flare_require_access_keys": "true"}, None)
                         for folder in folders])
    wait_for(lambda: all(health(p, FIRST["key"]).get("shared_state") == "ok" for p in started),
             timeout=20)
    yield started
    stop_all(started)


def ask(p: Proxy, key: str) -> httpx.Response:
    return httpx.post(p.url + "/v1/messages", timeout=30, headers={"x-api-key": key},
                      json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": MSG})


def health(p: Proxy, key: str) -> dict:
    return httpx.get(p.url + "/health", headers={"x-api-key": key}, timeout=5).json()


def everywhere(hosts: list[Proxy], check, started: float) -> None:
    """``check(worker)`` becomes true on every worker within 2 s of ``started``."""
    for p in hosts:
        wait_for(lambda p=p: check(p), timeout=10, interval=0.05)
    assert time.monotonic() - started < 2.5  # 2 s, plus this loaded machine's polling


def test_a_user_added_on_one_host_before_start_is_known_on_the_other(hosts):
    for p in hosts:  # host two's flare_state has no users at all
        assert ask(p, FIRST["key"]).status_code == 200


def test_users_add_and_disable_on_either_host_reach_every_worker(hosts, redis_server):
    one, two = hosts
    added = time.monotonic()
    key = key_of(cli("users", "add", "alice", "--state", str(one.state), cwd=one.tmp,
                     redis=redis_server.url))
    everywhere(hosts, lambda p: ask(p, key).status_code == 200, added)
    listed = cli("users", "list", "--json", "--state", str(two.state), cwd=two.tmp,
                 redis=redis_server.url)
    assert {"alice", "bob"} <= set(re.findall(r'"name": "(\w+)"', listed.stdout))
    disabled = time.monotonic()  # from host two, whose flare_state never had alice
    cli("users", "disable", "alice", "--state", str(two.state), cwd=two.tmp,
        redis=redis_server.url)
    everywhere(hosts, lambda p: ask(p, key).status_code == 401, disabled)
    assert "disabled" in ask(one, key).text
    removed = time.monotonic()
    cli("users", "remove", "bob", "--state", str(two.state), cwd=two.tmp,
        redis=redis_server.url)
    # host one still has bob in its own flare_state: the newer removal wins
    everywhere(hosts, lambda p: ask(p, FIRST["key"]).status_code == 401, removed)


def test_accounts_pause_and_resume_on_one_host_reach_every_worker(hosts, redis_server):
    one, two = hosts
    key = key_of(cli("users", "add", "carol", "--state", str(one.state), cwd=one.tmp,
                     redis=redis_server.url))
    wait_for(lambda: all(ask(p, key).status_code == 200 for p in hosts), timeout=10)
    paused = time.monotonic()
    cli("accounts", "pause", "key-a", "--accounts", str(one.accounts), "--state",
        str(one.state), cwd=one.tmp, redis=redis_server.url)
    everywhere(hosts, lambda p: health(p, key)["accounts"]["available"] == 1, paused)
    assert "paused" not in one.accounts.read_text()  # through Redis, not the files
    for p in hosts:
        assert ask(p, key).status_code == 200
    resumed = time.monotonic()
    cli("accounts", "resume", "key-a", "--accounts", str(two.accounts), "--state",
        str(two.state), cwd=two.tmp, redis=redis_server.url)
    everywhere(hosts, lambda p: health(p, key)["accounts"]["available"] == 2, resumed)


def test_accounts_reset_on_one_host_reaches_every_worker_once(hosts, redis_server, sim):
    one, two = hosts
    key = key_of(cli("users", "add", "dave", "--state", str(one.state), cwd=one.tmp,
                     redis=redis_server.url))
    wait_for(lambda: all(ask(p, key).status_code == 200 for p in hosts), timeout=10)
    sim.script(A, rejected_5h(reset_in=600))
    sim.script(B, rejected_5h(reset_in=600))
    ask(one, key)  # both accounts cool down, on both workers
    for p in hosts:
        wait_for(lambda p=p: health(p, key)["accounts"]["cooling_down"] == 2, timeout=5)
    sim.reset()
    reset = time.monotonic()
    cli("accounts", "reset", "key-a", "--state", str(two.state), cwd=two.tmp,
        redis=redis_server.url)
    everywhere(hosts, lambda p: health(p, key)["accounts"]["cooling_down"] == 1, reset)
    for p in hosts:
        assert ask(p, key).status_code == 200
    for p in hosts:  # host two got it from its flare_state and through Redis: applied once
        wait_for(lambda p=p: "account key-a: resumed" in p.log_text(), timeout=5)
    time.sleep(1.5)  # host two's next flare_state poll
    assert two.log_text().count("account key-a: resumed") == 1
