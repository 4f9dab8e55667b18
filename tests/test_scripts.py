"""The README's `./scripts/run`: its help, and failing fast (one line, no traceback) on what
would otherwise start a half-working setup."""

from __future__ import annotations

import os
import socket
import subprocess

from conftest import ROOT, free_port


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
