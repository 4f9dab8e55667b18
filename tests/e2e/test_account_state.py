"""End to end: the routing and account-state items of the field report, each through a real
mitmdump in front of the simulated upstream."""

from __future__ import annotations

import subprocess
import sys
import time

import anthropic
import httpx
import pytest

from conftest import ROOT, accounts_yaml, within_reload
from mitmflare.config.accounts import parse_accounts
from mitmflare.proxy_state import ProxyState
from mitmflare.routing.classify import FAILOVER, Verdict

A, B = "sk-ant-api03-AAA", "sk-ant-api03-BBB"
MSG = [{"role": "user", "content": "hello"}]
MODEL = "claude-sonnet-4-6"
WINDOWLESS = {"status": 429, "headers": {"x-should-retry": "true"}}


def two_keys(sim, first: str = "key-a") -> str:
    return accounts_yaml(sim.url, {"name": first, "api_key": A},
                         {"name": "key-b", "api_key": B, "priority": 1})


def client(p, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url, api_key="sk-ant-api03-CLIENT", max_retries=retries)


def test_headerless_429_on_every_account_stays_retryable(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, WINDOWLESS)
    sim.script(B, WINDOWLESS)
    with pytest.raises(anthropic.RateLimitError) as info:
        client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    response = info.value.response
    assert response.headers["x-should-retry"] == "true"
    assert 0 < int(response.headers["retry-after"]) <= 5
    message = info.value.body["error"]["message"]
    assert info.value.body["error"]["type"] == "rate_limit_error" and "(available)" not in message

    # streamed, the SDK retrying by itself: key-a, then key-b refuse; the last retry is served
    sim.script(A, WINDOWLESS)
    sim.script(B, WINDOWLESS)
    with client(p, retries=2).messages.stream(model=MODEL, max_tokens=5, messages=MSG) as s:
        assert s.get_final_message().content
    rows = p.wait_rows(4)
    assert [r["status"] for r in rows] == [429, 529, 429, 200]


def test_probe_is_answered_locally_without_credential_or_row(sim, proxy):
    p = proxy(two_keys(sim))
    assert httpx.head(p.url + "/").status_code == 200
    assert httpx.get(p.url + "/").json()["service"] == "mitmflare"
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert [r.path for r in sim.requests] == ["/v1/messages"]
    (row,) = p.wait_rows(1)
    assert row["path"] == "/v1/messages"


def test_rename_keeps_the_cooldown_across_reload_and_restart(sim, proxy):
    p = proxy(two_keys(sim))
    reset = str(int(time.time() + 600))
    sim.script(A, {"status": 429, "headers": {"anthropic-ratelimit-unified-status": "rejected",
                                              "anthropic-ratelimit-unified-reset": reset}})
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert p.health()["accounts"]["cooling_down"] == 1
    p.accounts.write_text(two_keys(sim, first="key-a-renamed"))
    within_reload(lambda: "renamed to key-a-renamed" in p.log_text())
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert sim.credentials_seen() == [A, B, B]
    assert "renamed to key-a-renamed" in p.log_text()
    p.restart()
    assert p.health()["accounts"]["cooling_down"] == 1
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert sim.credentials_seen()[-1] == B


def test_a_bad_entry_costs_only_itself(sim, proxy):
    yaml = two_keys(sim) + "  - name: broken entry\n    provider: anthropic\n    api_key: k\n"
    p = proxy(yaml)
    health = p.health()
    assert health["accounts"]["total"] == 2
    (error,) = health["config_errors"]
    assert "line 11: account broken entry: name" in error
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert sim.credentials_seen() == [A]


def test_first_run_example_is_valid_and_says_what_to_add(sim, proxy):
    p = proxy((ROOT / "config" / "accounts.example.yaml").read_text())
    health = p.health()
    assert health["accounts"]["total"] == 0 and "config_errors" not in health
    assert "no account is configured yet" in p.log_text()
    p.accounts.write_text(two_keys(sim))
    within_reload(lambda: p.health()["accounts"]["total"] == 2)


def test_env_file_beside_the_accounts_file_is_read_on_every_change(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "k", "api_key": "${FLARE_E2E_DOTENV_KEY}"}))
    (error,) = p.health()["config_errors"]
    assert "FLARE_E2E_DOTENV_KEY is not set" in error and ".env" in error
    (p.accounts.parent / ".env").write_text("FLARE_E2E_DOTENV_KEY=sk-ant-api03-DOTENV\n")
    within_reload(lambda: "config_errors" not in p.health())
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert sim.credentials_seen() == ["sk-ant-api03-DOTENV"]


def test_out_of_credits_without_reset_backs_off_and_shows_in_the_account(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script(A, {"status": 429, "headers": {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "out_of_credits"}})
    client(p).messages.create(model="claude-opus-4-8", max_tokens=5, messages=MSG)
    (event,) = p.wait_rows(1, "select * from account_events")
    assert event["event"] == "model_cooldown" and "backoff 30 s" in event["reason"]
    row = p.wait_rows(1, "select * from accounts where name='key-a' and model_cooldowns is not null")
    assert "claude-opus-4-8 until" in row[0]["model_cooldowns"]


def test_model_backoff_doubles_up_to_the_cap_and_a_success_resets_it():
    proxy = ProxyState()
    proxy.max_cooldown_s = 100.0
    proxy.pool.replace(parse_accounts("accounts:\n  - {name: a, provider: anthropic, api_key: k}\n")
                      .accounts)
    account = proxy.pool.get("a")
    verdict = Verdict(FAILOVER, "out_of_credits", model_backoff=True)
    waits = []
    for _ in range(4):
        proxy.apply(account, verdict, "m", None, 1000.0)
        waits.append(account.state.model_cooldowns["m"] - 1000.0)
    assert waits == [30.0, 60.0, 100.0, 100.0]
    proxy.succeeded(account, "m")
    proxy.apply(account, verdict, "m", None, 1000.0)
    assert account.state.model_cooldowns["m"] == 1030.0


def test_new_login_clears_needs_reauth_on_a_running_proxy_and_after_restart(sim, proxy, tmp_path):
    sim.oauth_enforce = True
    yaml = accounts_yaml(sim.url, {"name": "max", "oauth": {"from_state": "true"}},
                         {"name": "backup", "api_key": B, "priority": 5})

    def login(access: str, refresh: str, state) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "oauth_login.py"), "max",
             "--accounts", str(state.parent / "accounts.yaml"), "--state", str(state),
             "--access-token", access, "--refresh-token", refresh,
             "--expires-at", "2020-01-01T00:00:00Z"],
            capture_output=True, text=True, timeout=30, cwd=ROOT)

    p = proxy(yaml, flare_oauth_token_url=f"{sim.url}/v1/oauth/token")
    p.stop()
    assert login("sk-ant-oat01-dead", "sk-ant-ort01-revoked", p.state).returncode == 0
    p.start()
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert sim.credentials_seen() == [B]
    assert p.health()["accounts"]["available"] == 1  # max: needs_reauth

    fresh = sim.issue_tokens()
    done = login(fresh["access_token"], fresh["refresh_token"], p.state)
    assert done.returncode == 0 and "within 2 s" in done.stdout and "needs_reauth" in done.stdout
    within_reload(lambda: p.health()["accounts"]["available"] == 2)
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert sim.requests[-1].credential.startswith("sk-ant-oat01-sim")
    events = [e["event"] for e in p.wait_rows(3, "select * from account_events order by id")]
    assert "reauthenticated" in events
    p.restart()
    assert p.health()["accounts"]["available"] == 2


def test_request_log_is_one_line_per_request_without_connection_noise(sim, proxy):
    p = proxy(two_keys(sim), flare_request_log="true")
    client(p).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    p.wait_rows(1)
    time.sleep(0.3)
    log = p.log_text()
    assert "key-a claude-sonnet-4-6 200 25/11 tok $0.0002" in log
    assert "client connect" not in log and "server connect" not in log
