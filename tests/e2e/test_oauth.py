"""End to end: Claude subscription (OAuth) accounts against the simulated token endpoint."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime

import anthropic
import httpx

from conftest import ROOT, accounts_yaml, start_login, within_reload

MSG = [{"role": "user", "content": "hello"}]
MODEL = "claude-sonnet-4-6"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def oauth_yaml(sim, pair: dict, expires_in: float, backup: bool = False) -> str:
    accounts = [{"name": "max", "oauth": {"access_token": pair["access_token"],
                                          "refresh_token": pair["refresh_token"],
                                          "expires_at": iso(time.time() + expires_in)}}]
    if backup:
        accounts.append({"name": "backup-key", "api_key": "sk-ant-api03-BACKUP", "priority": 5})
    return accounts_yaml(sim.url, *accounts)


def start(sim, proxy, yaml: str):
    sim.oauth_enforce = True
    return proxy(yaml, flare_oauth_token_url=f"{sim.url}/v1/oauth/token")


def ask(p):
    client = anthropic.Anthropic(base_url=p.url, api_key="client", max_retries=0)
    return client.messages.create(model=MODEL, max_tokens=5, messages=MSG)


def stored_tokens(p) -> dict:
    conn = sqlite3.connect(p.state)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("select * from oauth_tokens where name='max'").fetchone() or {})
    finally:
        conn.close()


def test_token_about_to_expire_is_refreshed_before_use_and_persisted(sim, proxy):
    pair = sim.issue_tokens(expires_in=600)  # inside the 30 min buffer
    p = start(sim, proxy, oauth_yaml(sim, pair, 600))
    ask(p)
    assert len(sim.token_requests) == 1
    refresh = sim.token_requests[0]
    assert refresh["grant_type"] == "refresh_token" and refresh["refresh_token"] == pair["refresh_token"]
    assert refresh["client_id"] == "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    used = sim.requests[-1]
    assert used.credential.startswith("sk-ant-oat01-sim") and used.credential != pair["access_token"]
    assert "oauth-2025-04-20" in used.headers["anthropic-beta"]
    saved = stored_tokens(p)
    assert saved["access_token"] == used.credential
    assert saved["refresh_token"] != pair["refresh_token"]
    account = p.wait_rows(1, "select * from accounts where last_refresh_at is not null")[0]
    assert account["token_expires_at"] > iso(time.time() + 7 * 3600)
    assert "refreshed" in [e["event"] for e in p.query("select event from account_events")]
    p.stop()
    assert pair["refresh_token"] not in p.db.read_bytes().decode("latin-1")
    assert used.credential not in p.db.read_bytes().decode("latin-1")


def test_twenty_concurrent_requests_cause_one_refresh(sim, proxy):
    pair = sim.issue_tokens(expires_in=60)
    p = start(sim, proxy, oauth_yaml(sim, pair, 60))

    async def burst():
        client = anthropic.AsyncAnthropic(base_url=p.url, api_key="client", max_retries=0)
        return await asyncio.gather(*[client.messages.create(model=MODEL, max_tokens=5,
                                                             messages=MSG) for _ in range(20)])

    results = asyncio.run(burst())
    assert len(results) == 20
    assert len(sim.token_requests) == 1
    assert len({r.credential for r in sim.requests}) == 1


def test_restart_after_rotation_keeps_working(sim, proxy):
    pair = sim.issue_tokens(expires_in=600)
    p = start(sim, proxy, oauth_yaml(sim, pair, 600))
    ask(p)
    p.restart()
    ask(p)  # the YAML pair's refresh token is dead now: the rotated pair in flare_state wins
    assert len(sim.token_requests) == 1
    assert sim.requests[-1].credential == sim.requests[0].credential


def test_new_pair_pasted_into_yaml_wins_over_state(sim, proxy):
    pair = sim.issue_tokens(expires_in=600)
    p = start(sim, proxy, oauth_yaml(sim, pair, 600))
    ask(p)
    fresh = sim.issue_tokens()
    reloads = p.log_text().count("accounts reloaded")
    p.accounts.write_text(oauth_yaml(sim, fresh, 28800))
    within_reload(lambda: p.log_text().count("accounts reloaded") > reloads)
    ask(p)
    assert sim.requests[-1].credential == fresh["access_token"]


def test_revoked_refresh_token_marks_needs_reauth_and_fails_over(sim, proxy):
    dead = {"access_token": "sk-ant-oat01-expired", "refresh_token": "sk-ant-ort01-revoked"}
    p = start(sim, proxy, oauth_yaml(sim, dead, -60, backup=True))
    ask(p)
    assert sim.credentials_seen() == ["sk-ant-api03-BACKUP"]
    events = [e["event"] for e in p.wait_rows(2, "select * from account_events order by id")]
    assert events[:2] == ["refresh_failed", "needs_reauth"]
    assert p.health()["accounts"]["available"] == 1


def test_401_triggers_refresh_and_successful_retry(sim, proxy):
    pair = sim.issue_tokens()
    p = start(sim, proxy, oauth_yaml(sim, pair, 28800, backup=True))
    sim.revoke_access(pair["access_token"])
    ask(p)
    assert len(sim.token_requests) == 1
    attempts = p.wait_rows(2, "select account, status from attempts order by id")
    assert [(a["account"], a["status"]) for a in attempts] == [("max", 401), ("max", 200)]
    assert p.health()["accounts"]["available"] == 2


def test_login_script_against_simulated_endpoints(sim, proxy, tmp_path):
    accounts = tmp_path / "accounts.yaml"
    state = tmp_path / "state.db"
    accounts.write_text("# my accounts\naccounts:\n  - name: keep-me  # a comment\n"
                        "    provider: anthropic\n    api_key: sk-ant-api03-KEEP\n")
    proc, url = start_login(["new-max", "--accounts", str(accounts), "--state", str(state),
                             "--authorize-url", f"{sim.url}/oauth/authorize",
                             "--token-url", f"{sim.url}/v1/oauth/token"],
                            [sys.executable, str(ROOT / "scripts" / "oauth_login.py")])
    assert "code_challenge_method=S256" in url and "client_id=9d1c250a" in url
    approved = httpx.get(url).json()  # the simulated user approves in the browser
    _, err = proc.communicate(f"{approved['code']}#{approved['state']}\n", timeout=30)
    assert proc.returncode == 0, err
    text = accounts.read_text()
    assert text.startswith("# my accounts") and "# a comment" in text
    assert "name: new-max" in text and "from_state: true" in text and "sk-ant-oat" not in text
    assert text.index("keep-me") < text.index("new-max")
    assert sim.token_requests[-1]["grant_type"] == "authorization_code"

    sim.oauth_enforce = True
    served = re.sub(r"(?m)^(\s*)oauth:", rf"\1base_url: {sim.url}\n\1oauth:", text)
    served = re.sub(r"(?m)^(\s*)api_key: (.*)$", r"\1api_key: \2\n\1paused: true", served)
    p = proxy(served, flare_state=str(state), flare_oauth_token_url=f"{sim.url}/v1/oauth/token")
    ask(p)
    assert sim.requests[-1].credential.startswith("sk-ant-oat01-sim")


def test_login_script_rejects_wrong_state(sim, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "oauth_login.py"), "x",
         "--accounts", str(tmp_path / "a.yaml"), "--state", str(tmp_path / "s.db"),
         "--authorize-url", f"{sim.url}/oauth/authorize", "--token-url", f"{sim.url}/v1/oauth/token"],
        input="somecode#forged-state\n", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "state does not match" in proc.stderr
    assert not (tmp_path / "a.yaml").exists()
