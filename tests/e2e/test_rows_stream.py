"""Rows through a Redis Stream: two mitmdump workers on one real Redis append their rows, one
``mitmflare writer`` writes them into one database, each exactly once, naming its worker; a
writer killed with SIGKILL under load and started again loses nothing, and meanwhile
``/health`` raises the alarm."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import Proxy, accounts_yaml, start_all, stop_all, wait_for

MITMFLARE = Path(sys.executable).with_name("mitmflare")
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def workers(sim_server, redis_server, tmp_path_factory) -> Iterator[list[Proxy]]:
    yaml = accounts_yaml(sim_server.url, {"name": "key-a", "api_key": "sk-ant-api03-AAA"},
                         {"name": "key-b", "api_key": "sk-ant-api03-BBB"})
    started = start_all([Proxy(tmp_path_factory.mktemp(f"worker{i}"), yaml,
                               {"flare_redis": redis_server.url}, None) for i in (1, 2)])
    yield started
    stop_all(started)


class Writer:
    """``mitmflare writer`` as a process, writing into ``db``."""

    def __init__(self, folder: Path, url: str, *options: str) -> None:
        self.folder, self.url, self.options = folder, url, options
        self.db = folder / "central.db"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Writer:
        self.proc = subprocess.Popen(
            [str(MITMFLARE), "writer", "--redis", self.url, "--db", str(self.db), "--state",
             str(self.folder / "central-state.db"), *self.options], cwd=self.folder,
            stdout=(self.folder / "writer.log").open("ab"), stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def sessions(self) -> dict[str, int]:
        if not self.db.exists():
            return {}
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return dict(conn.execute("select client_session, count(*) from requests "
                                     "group by 1"))
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()

    def workers(self) -> set[str]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return {w for (w,) in conn.execute("select distinct worker from requests")}
        finally:
            conn.close()


@pytest.fixture
def writer(redis_server, tmp_path) -> Iterator[Writer]:
    started = Writer(tmp_path, redis_server.url).start()
    yield started
    started.stop()


def ask(p: Proxy, session: str) -> int:
    return httpx.post(p.url + "/v1/messages", timeout=30,
                      headers={"x-api-key": "client", "x-claude-code-session-id": session},
                      json={"model": "claude-sonnet-4-6", "max_tokens": 5,
                            "messages": MSG}).status_code


def exactly_once(writer: Writer, sessions: set[str]) -> bool:
    counts = writer.sessions()
    return all(counts.get(s) == 1 for s in sessions)


def test_rows_of_two_workers_reach_one_database_once(workers, writer):
    sessions = set()
    for i in range(30):
        session = uuid.uuid4().hex
        assert ask(workers[i % 2], session) == 200
        sessions.add(session)
    wait_for(lambda: exactly_once(writer, sessions), timeout=20)
    assert writer.workers() >= {w.health()["worker"] for w in workers}
    for w in workers:  # the workers' own databases got no requests rows
        assert w.query("select id from requests") == []
    health = workers[0].health()
    assert health["rows_stream"]["state"] == "ok" and health["rows_stream"]["lost"] == 0
    wait_for(lambda: workers[1].health()["rows_stream"]["backlog"] == 0, timeout=10)


def test_a_writer_killed_and_started_again_loses_nothing(workers, writer):
    stop = threading.Event()

    def client_loop(i: int) -> list[str]:
        done = []
        while not stop.is_set():
            session = uuid.uuid4().hex
            assert ask(workers[i % 2], session) == 200
            done.append(session)
        return done

    with ThreadPoolExecutor(4) as pool:
        results = [pool.submit(client_loop, i) for i in range(4)]
        try:  # the clients stop however this ends (else the pool waits for them forever)
            wait_for(lambda: len(writer.sessions()) > 20, timeout=20)
            writer.proc.kill()  # SIGKILL: whatever it read and had not acknowledged is pending
            writer.proc.wait()
            def alarmed() -> bool:  # one reading: a lease that lapsed for a moment under
                health = workers[0].health()  # load before the kill may show first
                return (health["rows_stream"]["state"].startswith("no writer since")
                        and health["status"] == "degraded")

            assert wait_for(alarmed, timeout=15)
            writer.start()
            wait_for(lambda: len(writer.sessions()) > 0 and
                     workers[0].health()["rows_stream"]["state"] == "ok", timeout=20)
        finally:
            stop.set()
        sessions = {s for r in results for s in r.result()}
    assert len(sessions) > 40
    wait_for(lambda: exactly_once(writer, sessions), timeout=30)
    assert sum(writer.sessions().values()) == len(sessions)  # no duplicate anywhere


def test_the_writer_keeps_the_proxies_retention_and_request_log(workers, redis_server,
                                                                tmp_path):
    central = Writer(tmp_path, redis_server.url, "--retention-days", "1", "--request-log")
    central.start()
    try:
        session = uuid.uuid4().hex
        assert ask(workers[0], session) == 200
        wait_for(lambda: central.sessions().get(session) == 1, timeout=20)
        wait_for(lambda: "claude-sonnet-4-6 200" in (tmp_path / "writer.log").read_text(),
                 timeout=10)  # the request log line
    finally:
        central.stop()
    conn = sqlite3.connect(central.db)  # a row from 10 days ago: past the retention
    with conn:
        conn.execute("create temp table old as select * from requests where client_session = ?",
                     [session])
        conn.execute("update old set id = 'old', client_session = 'old', "
                     "started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 days')")
        conn.execute("insert into requests select * from old")
    conn.close()
    assert central.sessions().get("old") == 1
    central.start()  # prunes at start, then hourly
    try:
        wait_for(lambda: "old" not in central.sessions(), timeout=20)
        assert central.sessions().get(session) == 1
    finally:
        central.stop()


@pytest.fixture(scope="module")
def keyed(sim_server, redis_server, tmp_path_factory) -> Iterator[tuple[list[Proxy], str, Path]]:
    """(two workers requiring access keys and sharing one accounts file and one state
    database, as `mitmflare run --workers` runs them; alice's key; the folder), with a writer."""
    import re
    folder = tmp_path_factory.mktemp("keyed")
    accounts, state = folder / "accounts.yaml", folder / "state.db"
    yaml = accounts_yaml(sim_server.url, {"name": "key-a", "api_key": "sk-ant-api03-AAA"},
                         {"name": "key-b", "api_key": "sk-ant-api03-BBB"})
    accounts.write_text(yaml)
    added = subprocess.run([str(MITMFLARE), "users", "add", "alice", "--daily-cap", "0.000001",
                            "--state", str(state)],
                           capture_output=True, text=True, cwd=folder, timeout=60)
    key = re.search(r"mfk_[0-9a-f]{64}", added.stdout + added.stderr)
    assert key, added.stdout + added.stderr
    writer = Writer(folder, redis_server.url).start()
    options = {"flare_redis": redis_server.url, "flare_accounts": str(accounts),
               "flare_state": str(state), "flare_require_access_keys": "true"}
    started = [Proxy(tmp_path_factory.mktemp(f"keyed{i}"), yaml, options, None).start()
               for i in (1, 2)]
    yield started, key.group(0), folder
    for p in started:
        p.stop()
    writer.stop()


def keyed_ask(p: Proxy, key: str) -> httpx.Response:
    return httpx.post(p.url + "/v1/messages", timeout=30, headers={"x-api-key": key},
                      json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": MSG})


def test_a_users_daily_cap_crossed_on_one_worker_holds_on_the_other(keyed):
    (one, two), key, _ = keyed
    assert keyed_ask(one, key).status_code == 200  # under the cap until this one is recorded

    def spent(p: Proxy) -> float:
        return httpx.get(p.url + "/health", headers={"x-api-key": key},
                         timeout=5).json()["spent_today_usd"]
    wait_for(lambda: spent(two) > 0, timeout=10)  # worker two never served alice
    refused = keyed_ask(two, key)
    assert refused.status_code == 429 and "cap" in refused.text


def test_operator_commands_reach_every_worker_within_2_s(keyed):
    import time
    workers, key, folder = keyed
    accounts = str(folder / "accounts.yaml")
    done = subprocess.run([str(MITMFLARE), "accounts", "pause", "key-a", "--accounts", accounts],
                          capture_output=True, text=True, cwd=folder, timeout=60)
    assert done.returncode == 0, done.stderr
    paused = time.monotonic()
    for p in workers:
        wait_for(lambda p=p: httpx.get(p.url + "/health", headers={"x-api-key": key}, timeout=5)
                 .json()["accounts"]["available"] == 1, timeout=10, interval=0.05)
    assert time.monotonic() - paused < 2.5  # 2 s, plus this loaded machine's polling
    subprocess.run([str(MITMFLARE), "accounts", "resume", "key-a", "--accounts", accounts],
                   check=True, capture_output=True, cwd=folder, timeout=60)
    done = subprocess.run([str(MITMFLARE), "users", "disable", "alice", "--state",
                           str(folder / "state.db")],
                          capture_output=True, text=True, cwd=folder, timeout=60)
    assert done.returncode == 0, done.stderr
    disabled = time.monotonic()
    for p in workers:
        wait_for(lambda p=p: keyed_ask(p, key).status_code == 401, timeout=10, interval=0.05)
    assert time.monotonic() - disabled < 2.5
