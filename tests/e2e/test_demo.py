"""End to end: ``mitmflare run --demo`` as a newcomer meets it: one demo per folder, every port
checked first, the demo's own traffic served with access keys required."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import MITMDUMP, free_port
from mitmflare.cli.ports import bind_error

MITMFLARE = MITMDUMP.with_name("mitmflare")


def port_pair() -> int:
    """A free port whose +10 is free too (the demo's OpenAI listener)."""
    while True:
        port = free_port()
        if port + 10 < 65536 and bind_error("127.0.0.1", port + 10) is None:
            return port


def demo_env(port: int, **more: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MITMFLARE_ACCOUNTS", "MITMFLARE_DB", "MITMFLARE_STATE", "MITMFLARE_HOST")}
    ports = {"MITMFLARE_PORT": port, "MITMFLARE_DASHBOARD_PORT": free_port(),
             "MITMFLARE_SIM_PORT": free_port(), **more}
    return {**env, **{k: str(v) for k, v in ports.items()}}


def run_demo(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """A ``mitmflare run --demo`` expected to stop by itself (refused)."""
    return subprocess.run([str(MITMFLARE), "run", "--demo", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)


@dataclass
class Demo:
    folder: Path
    env: dict[str, str]
    proc: subprocess.Popen
    log: Path

    def port(self, name: str) -> int:
        return int(self.env[name])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    """One demo, access keys required, its output in ``run.log`` (not a pipe: the proxy logs
    a line per request)."""
    folder = tmp_path_factory.mktemp("demo")
    env = demo_env(port_pair())
    log = folder / "run.log"
    proc = subprocess.Popen([str(MITMFLARE), "run", "--demo", "--set",
                             "flare_require_access_keys=true"], cwd=folder, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    running = Demo(folder, env, proc, log)
    deadline = time.time() + 90
    while "Ready:" not in log.read_text():
        assert time.time() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.2)
    yield running
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_a_second_demo_from_the_same_folder_is_refused_naming_the_first(demo):
    accounts = demo.folder / ".demo" / "accounts.yaml"
    before = (accounts.read_text(), accounts.stat().st_mtime_ns)
    done = run_demo(demo.folder, demo_env(port_pair()))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"refusing to start: a demo from this folder is already running "
                           f"(pid {demo.proc.pid}: proxy {demo.port('MITMFLARE_PORT')}, ")
    assert f"dashboard {demo.port('MITMFLARE_DASHBOARD_PORT')}" in line
    assert (accounts.read_text(), accounts.stat().st_mtime_ns) == before


def test_a_lock_left_by_a_dead_demo_is_taken_over(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / ".demo").mkdir()
    (tmp_path / ".demo" / "run.lock").write_text(f'{{"pid": {gone.pid}, "ports": {{}}}}')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_demo(tmp_path, demo_env(port_pair(),
                                           MITMFLARE_SIM_PORT=taken.getsockname()[1]))
    assert done.returncode == 1  # past the lock, stopped by the next check
    assert done.stderr.startswith("simulated upstream (MITMFLARE_SIM_PORT): port ")
    assert "already running" not in done.stderr


def test_every_port_is_checked_and_one_given_twice_is_named(tmp_path):
    port = port_pair()
    done = run_demo(tmp_path, demo_env(port, MITMFLARE_DASHBOARD_PORT=port + 10))
    assert done.returncode == 1 and "Errno" not in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"dashboard (MITMFLARE_DASHBOARD_PORT): port {port + 10} is already given to the OpenAI "
        f"listener (MITMFLARE_PORT+10); choose another port"]
    assert not (tmp_path / ".demo" / "accounts.yaml").exists()


def test_the_demo_traffic_is_served_with_access_keys_required(demo):
    db = demo.folder / ".demo" / "mitmflare.db"
    deadline = time.time() + 60
    served: list = []
    while not served:
        assert time.time() < deadline, demo.log.read_text()[-3000:]
        time.sleep(0.5)
        served = rows(db, "select user from requests where status = 200")
    assert {row[0] for row in served} == {"demo"}
    assert "401" not in " ".join(line for line in demo.log.read_text().splitlines()
                                 if "demo request failed" in line)


def rows(db: Path, sql: str) -> list:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
