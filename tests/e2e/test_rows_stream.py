"""Rows through a Redis Stream: two mitmdump workers on one real Redis append their rows, one
``mitmflare writer`` writes them into one database, each exactly once, naming its worker; a
writer killed with SIGKILL under load and started again loses nothing, and meanwhile
``/health`` raises the alarm."""

from __future__ import annotations

import shutil
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

from conftest import Proxy, RedisServer, accounts_yaml, wait_for

MITMFLARE = Path(sys.executable).with_name("mitmflare")
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("rows-stream tests need redis-server (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def workers(sim_server, redis_server, tmp_path_factory) -> Iterator[list[Proxy]]:
    yaml = accounts_yaml(sim_server.url, {"name": "key-a", "api_key": "sk-ant-api03-AAA"},
                         {"name": "key-b", "api_key": "sk-ant-api03-BBB"})
    started = [Proxy(tmp_path_factory.mktemp(f"worker{i}"), yaml,
                     {"flare_redis": redis_server.url}, None).start() for i in (1, 2)]
    yield started
    for p in started:
        p.stop()


class Writer:
    """``mitmflare writer`` as a process, writing into ``db``."""

    def __init__(self, folder: Path, url: str) -> None:
        self.folder, self.url = folder, url
        self.db = folder / "central.db"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Writer:
        self.proc = subprocess.Popen(
            [str(MITMFLARE), "writer", "--redis", self.url, "--db", str(self.db), "--state",
             str(self.folder / "central-state.db")], cwd=self.folder,
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
        wait_for(lambda: len(writer.sessions()) > 20, timeout=20)
        writer.proc.kill()  # SIGKILL: whatever it read and had not acknowledged is pending
        writer.proc.wait()
        alarm = wait_for(lambda: workers[0].health()["rows_stream"]["state"]
                         .startswith("no writer since"), timeout=15)
        assert alarm
        assert workers[0].health()["status"] == "degraded"
        writer.start()
        wait_for(lambda: len(writer.sessions()) > 0 and
                 workers[0].health()["rows_stream"]["state"] == "ok", timeout=20)
        stop.set()
        sessions = {s for r in results for s in r.result()}
    assert len(sessions) > 40
    wait_for(lambda: exactly_once(writer, sessions), timeout=30)
    assert sum(writer.sessions().values()) == len(sessions)  # no duplicate anywhere
