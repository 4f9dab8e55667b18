"""``mitmflare run --workers 2``: two mitmdump workers behind a real HAProxy on one port, one
pool through a private redis-server; a rolling restart (``mitmflare run --reload``) under load
from SDK clients with their default retries fails no request, and every answered request has
exactly one row."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx
import pytest

from conftest import accounts_yaml, free_port, wait_for

MITMFLARE = Path(sys.executable).with_name("mitmflare")
MSG = [{"role": "user", "content": "hello"}]


class Run:
    """A running ``mitmflare run --workers 2`` in its own folder."""

    def __init__(self, folder: Path, proc: subprocess.Popen, port: int) -> None:
        self.folder, self.proc, self.port = folder, proc, port
        self.url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return (self.folder / "run.log").read_text()

    def rows(self, sql: str) -> list[tuple]:
        import sqlite3
        db = self.folder / "mitmflare.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def run(sim_server, tmp_path_factory) -> Iterator[Run]:
    for tool in ("haproxy", "redis-server"):
        if shutil.which(tool) is None:
            pytest.skip(f"--workers tests need {tool} (apt-get install {tool})")
    folder = tmp_path_factory.mktemp("workers")
    (folder / "config").mkdir()
    (folder / "config" / "accounts.yaml").write_text(accounts_yaml(
        sim_server.url, {"name": "key-a", "api_key": "sk-ant-api03-AAA"},
        {"name": "key-b", "api_key": "sk-ant-api03-BBB"}))
    port = free_port()
    env = {**os.environ, "MITMFLARE_PORT": str(port),
           "MITMFLARE_DASHBOARD_PORT": str(free_port())}
    env.pop("MITMFLARE_REDIS_URL", None)  # the private redis-server
    proc = subprocess.Popen([str(MITMFLARE), "run", "--workers", "2", "--set",
                             "flare_retry_delay_ms=50", "--set", "flow_detail=0"],
                            cwd=folder, env=env, stdout=(folder / "run.log").open("ab"),
                            stderr=subprocess.STDOUT)
    started = Run(folder, proc, port)
    try:
        wait_for(lambda: "Ready:" in started.log() or proc.poll() is not None, timeout=90)
        assert proc.poll() is None, started.log()
        yield started
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_workers_serve_one_port(run):
    workers = {httpx.get(run.url + "/health", timeout=5).json()["worker"] for _ in range(8)}
    assert len(workers) == 2  # HAProxy spreads requests over both
    for _ in range(4):
        answer = httpx.post(run.url + "/v1/messages", headers={"x-api-key": "client"}, timeout=30,
                            json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": MSG})
        assert answer.status_code == 200
    assert httpx.get(run.url + "/health", timeout=5).json()["shared_state"] == "ok"


def test_a_rolling_restart_under_load_fails_no_request(run):
    stop = threading.Event()

    def client_loop(_: int) -> tuple[list[str], list[str]]:
        client = anthropic.Anthropic(base_url=run.url, api_key="client")  # default retries
        answered, failures = [], []
        while not stop.is_set():
            session = uuid.uuid4().hex
            try:
                client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG,
                                       extra_headers={"x-claude-code-session-id": session})
                answered.append(session)
            except anthropic.APIError as error:
                failures.append(repr(error))
        return answered, failures

    before = {httpx.get(run.url + "/health", timeout=5).json()["worker"] for _ in range(6)}
    with ThreadPoolExecutor(6) as pool:
        results = [pool.submit(client_loop, i) for i in range(6)]
        try:  # the clients stop however this ends (else the pool waits for them forever)
            time.sleep(1.0)
            reload = subprocess.run([str(MITMFLARE), "run", "--reload"], cwd=run.folder,
                                    capture_output=True, text=True, timeout=30)
            assert reload.returncode == 0, reload.stderr
            wait_for(lambda: "Rolling restart done" in run.log(), timeout=180)
            time.sleep(1.0)
        finally:
            stop.set()
        outcomes = [r.result() for r in results]
    answered = [s for done, _ in outcomes for s in done]
    failures = [f for _, fs in outcomes for f in fs]
    assert failures == [] and len(answered) > 50
    after = {httpx.get(run.url + "/health", timeout=5).json()["worker"] for _ in range(6)}
    assert len(after) == 2 and not before & after  # both workers are new processes
    wanted = set(answered)

    def one_row_each() -> bool:
        counts = dict(run.rows("select client_session, count(*) from requests "
                               "where client_session is not null group by 1"))
        return all(counts.get(s) == 1 for s in wanted) and \
            all(n == 1 for s, n in counts.items() if s in wanted)
    wait_for(one_row_each, timeout=30)
