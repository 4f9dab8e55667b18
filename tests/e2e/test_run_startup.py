"""``mitmflare run`` (``./scripts/run``) passes each option to mitmdump once, and says the proxy
is ready only once mitmflare itself answers on the listener."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import MITMDUMP, free_port
from mitmflare.cli import ports
from mitmflare.cli.startup import merge_sets

BIN = MITMDUMP.parent


def start(tmp: Path, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "MITMFLARE_PORT": str(port), "MITMFLARE_DASHBOARD_PORT": str(free_port()),
           "MITMFLARE_ACCOUNTS": str(tmp / "accounts.yaml"), "MITMFLARE_DB": str(tmp / "m.db"),
           "MITMFLARE_STATE": str(tmp / "state.db")}
    proc = subprocess.Popen([str(BIN / "mitmflare"), "run", *args], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, port


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)[1]


def test_an_option_given_twice_is_refused_with_one_line(tmp_path):
    proc, _ = start(tmp_path, "--set", "flare_strategy=weighted", "--set",
                    "flare_strategy=round-robin")
    err = proc.communicate(timeout=90)[1]
    assert proc.returncode == 1
    assert err.strip().splitlines() == [
        "refusing to start: --set flare_strategy is given twice; give it once"]


def test_the_users_set_replaces_runs_own_and_ready_means_mitmflare_answers(tmp_path):
    other = tmp_path / "other.db"
    proc, port = start(tmp_path, "--set", f"flare_db={other}")
    try:
        deadline = time.time() + 60
        lines: list[str] = []
        while not any(line.startswith("Ready:") for line in lines):
            assert time.time() < deadline and proc.poll() is None, lines
            lines.append(proc.stderr.readline())
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/messages", headers={"x-api-key": "k"},
                            json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []})
        assert answer.status_code == 404 and answer.json()["type"] == "error"  # no account yet
        assert (tmp_path / "accounts.yaml").stat().st_mode & 0o777 == 0o600  # created private
        deadline = time.time() + 10
        while not other.exists():
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        stop(proc)


def test_a_proxy_that_cannot_start_stops_everything(tmp_path):
    proc, _ = start(tmp_path, "--set", "flare_strategy=bogus")
    err = proc.communicate(timeout=90)[1]
    assert proc.returncode == 1
    assert "mitmflare did not start: the proxy exited with status 1" in err
    assert "Ready:" not in err


def test_merge_sets_keeps_other_arguments_in_order():
    merged, rest = merge_sets({"flare_db": "a.db", "flow_detail": "1"},
                              ["--web", "--set", "flare_db=b.db", "--set=flare_x", "-v"])
    assert merged == {"flare_db": "b.db", "flow_detail": "1", "flare_x": "true"}
    assert rest == ["--web", "-v"]


def test_a_port_left_in_time_wait_by_a_stopped_run_counts_as_free():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server closes first: its end waits in TIME-WAIT on the port
        assert client.recv(1) == b""
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # TIME-WAIT is there: a bind without SO_REUSEADDR fails
    assert ports.bind_error("127.0.0.1", port) is None
    assert ports.clashes([("proxy (MITMFLARE_PORT)", "127.0.0.1", port)]) == []


def test_a_listening_port_and_a_port_given_twice_are_named():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        free = free_port()
        lines = ports.clashes([("proxy (MITMFLARE_PORT)", "127.0.0.1", taken),
                               ("OpenAI listener (MITMFLARE_PORT+10)", "127.0.0.1", free),
                               ("dashboard (MITMFLARE_DASHBOARD_PORT)", "127.0.0.1", free)])
    assert lines == [
        f"proxy (MITMFLARE_PORT): port {taken} on 127.0.0.1 is not free (Address already in "
        f"use); stop what uses it or choose another port",
        f"dashboard (MITMFLARE_DASHBOARD_PORT): port {free} is already given to the OpenAI "
        f"listener (MITMFLARE_PORT+10); choose another port"]
