"""End to end: a listener never forwards a raw request, even when mitmflare is not running in
it (its options could not be applied, its script failed to load) or the command line names a
real reverse target."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from conftest import BUNDLE, MITMDUMP, accounts_yaml, free_port
from mitmflare.addons.listener import unreachable_mode

CANARY = "sk-ant-api03-CLIENT-CANARY-startup"


def _start(tmp: Path, script: Path, mode: str, *sets: str) -> tuple[subprocess.Popen, Path]:
    log = tmp / "proxy.log"
    args = [str(MITMDUMP), "-s", str(script), "--mode", mode, "--set", "flow_detail=0",
            "--set", f"flare_state={tmp / 'state.db'}"]
    for value in sets:
        args += ["--set", value]
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=tmp), log


def _wait_listening(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            httpx.get(url + "/health", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(log.read_text())


def _canary_request(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/messages", headers={"x-api-key": CANARY},
                      json={"model": "claude-sonnet-4-6", "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hi"}]}, timeout=20)


def test_an_option_given_twice_stops_the_proxy_and_sends_nothing(sim, tmp_path):
    (tmp_path / "accounts.yaml").write_text(accounts_yaml(sim.url, {"name": "a", "api_key": "k"}))
    port = free_port()
    # the worst case: a reverse target that would answer (the simulated upstream itself)
    proc, log = _start(tmp_path, BUNDLE, f"reverse:{sim.url}@127.0.0.1:{port}",
                       "flare_accounts=accounts.yaml", "flare_db=a.db", "flare_db=b.db")
    while proc.poll() is None:
        try:
            answer = _canary_request(f"http://127.0.0.1:{port}")
            assert answer.status_code >= 500 and CANARY not in answer.text
        except httpx.HTTPError:
            pass  # not listening yet, or already gone
        time.sleep(0.05)
    assert proc.returncode == 1
    text = log.read_text()
    assert "mitmflare cannot start" in text and "flare_db" in text and "b.db" in text
    assert sim.requests == []


@pytest.mark.parametrize("bad", ["flare_max_cooldown_s=0", "flare_queue_s=-1",
                                 "flare_oauth_refresh_buffer_min=-5"])
def test_a_bad_option_value_stops_the_proxy_at_once(sim, tmp_path, bad):
    """A part raising OptionsError while the listener sets its own options once looped
    through mitmproxy's rollback forever (300 MB of log in 10 minutes, SIGTERM ignored)."""
    (tmp_path / "accounts.yaml").write_text(accounts_yaml(sim.url, {"name": "a", "api_key": "k"}))
    proc, log = _start(tmp_path, BUNDLE, f"reverse:{sim.url}@127.0.0.1:{free_port()}",
                       "flare_accounts=accounts.yaml", "flare_db=a.db", bad)
    try:
        assert proc.wait(30) == 1
    finally:
        proc.kill()
    text = log.read_text()
    assert len(text) < 20_000 and bad.split("=")[0] in text
    assert sim.requests == []


def test_a_bundle_that_fails_to_load_later_forwards_nothing(sim, tmp_path):
    (tmp_path / "accounts.yaml").write_text(accounts_yaml(sim.url, {"name": "a", "api_key": "k"}))
    entry = tmp_path / "entry.py"
    shutil.copy(BUNDLE, entry)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, log = _start(tmp_path, entry, f"reverse:{sim.url}@127.0.0.1:{port}",
                       "flare_accounts=accounts.yaml", "flare_db=a.db")
    try:
        _wait_listening(url, proc, log)
        assert "serving it as reverse:http://mitmflare.invalid@" in log.read_text()
        assert _canary_request(url).status_code == 200  # routed with the account's key
        assert [r.credential for r in sim.requests] == ["k"]
        sim.requests.clear()
        entry.write_text(textwrap.dedent("""\
            raise RuntimeError("a broken edit of the entry script")
        """))
        deadline = time.time() + 15
        while "broken edit" not in log.read_text():  # mitmproxy reloads edited scripts
            assert time.time() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
        answer = _canary_request(url)
        assert answer.status_code == 502 and CANARY not in answer.text
        assert sim.requests == []
    finally:
        proc.terminate()
        proc.wait(10)


def test_reverse_targets_become_unreachable_names():
    assert unreachable_mode("reverse:https://api.anthropic.com@127.0.0.1:8080") \
        == "reverse:https://anthropic.mitmflare.invalid@127.0.0.1:8080"
    assert unreachable_mode("reverse:https://api.openai.com@8090") \
        == "reverse:https://openai.mitmflare.invalid@8090"
    assert unreachable_mode("reverse:http://127.0.0.1:9099") == "reverse:http://mitmflare.invalid"
    kept = "reverse:https://anthropic.mitmflare.invalid@8080"
    assert unreachable_mode(kept) == kept
    assert unreachable_mode("regular@8080") == "regular@8080"
