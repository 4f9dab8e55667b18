"""End to end: the runtime file a running proxy writes, and the ``mitmflare`` command finding
the proxy's files through it from any folder (``--demo``: the demo's), creating no stray state
database, and ``doctor`` knowing mitmflare's own ports."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from conftest import MITMDUMP, Proxy, accounts_yaml, wait_for
from mitmflare import runtime

MITMFLARE = MITMDUMP.with_name("mitmflare")
KEY = "sk-ant-api03-RUNTIME"
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[Path]:
    """A per-user runtime folder of this module's own (the proxies inherit the variable)."""
    folder = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MITMFLARE_RUNTIME_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def dashboard() -> Iterator[int]:
    """A listener standing in for the Datasette that `mitmflare run` starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def keyed(registry, dashboard, sim_server, tmp_path_factory) -> Iterator[Proxy]:
    p = Proxy(tmp_path_factory.mktemp("proxy"),
              accounts_yaml(sim_server.url, {"name": "key-a", "api_key": KEY}),
              {"flare_require_access_keys": "true",
               "flare_runtime_info": f"dashboard={dashboard}"}, None)
    p.start()
    wait_for(lambda: (p.tmp / runtime.FILE_NAME).exists())
    yield p
    p.stop()



def mitmflare(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The command as typed in ``cwd``, without MITMFLARE_ACCOUNTS/_DB/_STATE."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MITMFLARE_ACCOUNTS", "MITMFLARE_DB", "MITMFLARE_STATE")}
    return subprocess.run([str(MITMFLARE), *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_the_runtime_file_names_files_ports_and_pid_privately(keyed, registry, dashboard):
    beside = keyed.tmp / runtime.FILE_NAME
    facts = json.loads(beside.read_text())
    assert facts["pid"] == keyed.proc.pid and facts["demo"] is False
    assert (facts["accounts"], facts["db"], facts["state"]) == (
        str(keyed.accounts), str(keyed.db), str(keyed.state))
    assert [(lst["host"], lst["port"]) for lst in facts["listeners"]] == [("127.0.0.1", keyed.port)]
    assert facts["ports"] == {"dashboard": dashboard}
    assert KEY not in beside.read_text()
    listed = registry / f"{keyed.proc.pid}.json"
    assert json.loads(listed.read_text()) == facts
    for path in (beside, listed):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_clean_stop_removes_the_runtime_files(registry, sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "key-b", "api_key": KEY}))
    wait_for(lambda: (p.tmp / runtime.FILE_NAME).exists())
    pid = p.proc.pid
    assert (registry / f"{pid}.json").exists()
    p.stop()
    assert not (p.tmp / runtime.FILE_NAME).exists() and not (registry / f"{pid}.json").exists()


def test_users_add_from_another_folder_gives_a_key_the_running_proxy_accepts(keyed, tmp_path):
    done = mitmflare(tmp_path, "users", "add", "alice")
    assert done.returncode == 0, done.stderr
    (key,) = [line for line in done.stdout.splitlines() if line.startswith("mfk_")]
    assert not (tmp_path / "mitmflare-state.db").exists()
    answer = wait_for(lambda: _served(keyed, key), timeout=5)
    assert answer.content[0].text
    listed = mitmflare(tmp_path, "accounts", "list", "--json")
    assert [a["name"] for a in json.loads(listed.stdout)] == ["key-a"]


def _served(p: Proxy, key: str):
    try:
        return anthropic.Anthropic(base_url=p.url, api_key=key, max_retries=0).messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
    except anthropic.AuthenticationError:
        return None  # the proxy reads new users within 2 s


def test_no_state_database_is_created_where_no_proxy_or_accounts_file_is(tmp_path):
    empty = tmp_path / "registry"
    empty.mkdir()
    done = mitmflare(tmp_path, "users", "add", "bob", MITMFLARE_RUNTIME_DIR=str(empty))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "pass --state FILE" in done.stderr and not done.stdout
    assert not (tmp_path / "mitmflare-state.db").exists()


def test_demo_picks_the_running_demo_and_plain_the_other_proxy(keyed, sim, proxy, tmp_path):
    demo = proxy(accounts_yaml(sim.url, {"name": "demo-a", "api_key": KEY}),
                 flare_runtime_info="demo,simulated upstream=9")
    wait_for(lambda: (demo.tmp / runtime.FILE_NAME).exists())
    picked = mitmflare(tmp_path, "--demo", "accounts", "list", "--json")
    assert [a["name"] for a in json.loads(picked.stdout)] == ["demo-a"], picked.stderr
    plain = mitmflare(tmp_path, "accounts", "list", "--json")
    assert [a["name"] for a in json.loads(plain.stdout)] == ["key-a"], plain.stderr


def test_doctor_tells_mitmflares_own_ports_from_other_programs(keyed, dashboard, tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        done = mitmflare(tmp_path, "doctor", "--json")
        foreign = mitmflare(tmp_path, "doctor", "--json", "--dashboard-port",
                            str(other.getsockname()[1]))
    checks = {c["check"]: c for c in json.loads(done.stdout)}
    assert checks["running proxy"]["detail"] == f"pid {keyed.proc.pid}: {keyed.accounts}"
    assert checks["proxy port"] == {"level": "ok", "check": "proxy port", "detail": (
        f"{keyed.port}: mitmflare's own proxy listener (pid {keyed.proc.pid})")}
    assert checks["dashboard port"] == {"level": "ok", "check": "dashboard port", "detail": (
        f"{dashboard}: mitmflare's own dashboard (pid {keyed.proc.pid})")}
    assert checks["accounts file"]["detail"] == f"1 account(s) in {keyed.accounts}"
    port_check = {c["check"]: c for c in json.loads(foreign.stdout)}["dashboard port"]
    assert port_check["level"] == "warn" and "taken by another program" in port_check["detail"]


def test_workers_sharing_a_state_database_never_overwrite_its_runtime_file(
        registry, sim_server, tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared")
    yaml = accounts_yaml(sim_server.url, {"name": "key-c", "api_key": KEY})
    options = {"flare_state": str(shared / "mitmflare-state.db")}
    first = Proxy(tmp_path_factory.mktemp("w1"), yaml, options, None).start()
    second = None
    try:
        beside = shared / runtime.FILE_NAME
        wait_for(lambda: runtime.read(beside) is not None)
        second = Proxy(tmp_path_factory.mktemp("w2"), yaml, options, None).start()
        wait_for(lambda: (registry / f"{second.proc.pid}.json").exists())
        assert json.loads(beside.read_text())["pid"] == first.proc.pid  # not the second's
        assert json.loads((registry / f"{second.proc.pid}.json").read_text())["listeners"][0][
            "port"] == second.port
        second.stop()
        assert json.loads(beside.read_text())["pid"] == first.proc.pid  # still the first's
    finally:
        for p in (first, second):
            if p is not None:
                p.stop()
