"""The README's `./scripts/run`: its help, and failing fast (one line, no traceback) on what
would otherwise start a half-working setup."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import httpx
from datasette_auth_passwords.utils import hash_password

from conftest import MITMDUMP, ROOT, free_port

BIN = MITMDUMP.parent


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "scripts" / "run"), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **env})


def test_help_documents_flags_and_environment_first():
    done = run("--help")
    assert done.returncode == 0
    for word in ("--demo", "--web", "MITMFLARE_PORT", "MITMFLARE_DASHBOARD_PORT",
                 "MITMFLARE_WEB_PORT", "MITMFLARE_HOST", "MITMFLARE_DASHBOARD_HASH"):
        assert word in done.stdout


def test_taken_ports_fail_fast_with_one_line_each():
    with socket.socket() as proxy_port, socket.socket() as dashboard_port:
        proxy_port.bind(("127.0.0.1", 0))
        dashboard_port.bind(("127.0.0.1", 0))
        done = run("--web", MITMFLARE_PORT=str(proxy_port.getsockname()[1]),
                   MITMFLARE_DASHBOARD_PORT=str(dashboard_port.getsockname()[1]),
                   MITMFLARE_WEB_PORT=str(free_port()))
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "is not free" in line]
    assert len(lines) == 2 and "Traceback" not in done.stderr
    assert lines[0].startswith("proxy (MITMFLARE_PORT)")
    assert lines[1].startswith("dashboard (MITMFLARE_DASHBOARD_PORT)")


def test_beyond_loopback_needs_access_keys_or_an_explicit_flag():
    done = run(MITMFLARE_HOST="0.0.0.0", MITMFLARE_PORT=str(free_port()),
               MITMFLARE_DASHBOARD_PORT=str(free_port()))
    assert done.returncode == 1 and "refusing to listen on 0.0.0.0 without access keys" in done.stderr


def test_dashboard_beyond_loopback_needs_a_password():
    done = run("--set", "flare_require_access_keys=true", MITMFLARE_HOST="0.0.0.0",
               MITMFLARE_PORT=str(free_port()), MITMFLARE_DASHBOARD_PORT=str(free_port()),
               MITMFLARE_DASHBOARD_HASH="")
    assert done.returncode == 1
    assert "refusing to serve the dashboard beyond 127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr


def dockerfile_entry() -> tuple[list[str], dict[str, str]]:
    """The image's CMD and its ENV settings, read from the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    block = re.search(r"^ENV (.*?)\n\n", text, re.M | re.S).group(1).replace("\\\n", " ")
    env = dict(pair.split("=", 1) for pair in block.split() if "=" in pair)
    return cmd, env


def test_the_container_entry_command_runs_as_a_plain_process(tmp_path):
    cmd, image_env = dockerfile_entry()
    assert cmd[:2] == ["mitmflare", "run"] and image_env["MITMFLARE_HOST"] == "0.0.0.0"
    port, ds_port = free_port(), free_port()
    env = {**os.environ, **image_env, "MITMFLARE_PORT": str(port),
           "MITMFLARE_DASHBOARD_PORT": str(ds_port),
           "MITMFLARE_ACCOUNTS": str(tmp_path / "config" / "accounts.yaml"),
           "MITMFLARE_DB": str(tmp_path / "data" / "mitmflare.db"),
           "MITMFLARE_STATE": str(tmp_path / "data" / "mitmflare-state.db"),
           "MITMFLARE_DASHBOARD_HASH": hash_password("secret")}
    (tmp_path / "data").mkdir()
    proc = subprocess.Popen([str(BIN / cmd[0]), *cmd[1:]], cwd=tmp_path / "data", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = wait_http(f"http://127.0.0.1:{port}/health")
        assert health.json() == {"status": "degraded"}  # keys required: no account data
        wait_http(f"http://127.0.0.1:{ds_port}/-/login")
        anonymous = httpx.get(f"http://127.0.0.1:{ds_port}/mitmflare/requests")
        assert anonymous.status_code == 403  # the dashboard asks for the password
        assert (tmp_path / "config" / "accounts.yaml").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    for number in (port, ds_port):  # both children are gone
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", number))


def wait_http(url: str, timeout: float = 30.0) -> httpx.Response:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return httpx.get(url, timeout=2)
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")
