"""End to end: ``flare_oauth_clients=claude-code`` keeps subscription accounts for Claude Code
(the real CLI, and its headers); other clients go to API-key accounts or get a 403."""

from __future__ import annotations

import os
import subprocess

import anthropic
import httpx
import pytest

from conftest import accounts_yaml

from .test_providers import claude_code_binary

MAX, KEY = "sk-ant-oat01-CLIENTS-MAX", "sk-ant-api03-CLIENTS-KEY"
MSG = [{"role": "user", "content": "hi"}]
MODEL = "claude-sonnet-4-6"
CLAUDE_CODE = {"user-agent": "claude-cli/2.1.330 (external, cli)", "x-app": "cli"}
SUBSCRIPTION = {"name": "max", "oauth": {"access_token": MAX, "refresh_token": MAX + "-r",
                                         "expires_at": "2099-01-01T00:00:00Z"}}


def sdk(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="client", max_retries=0)


def post(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url + "/v1/messages", json={"model": MODEL, "max_tokens": 5,
                                                  "messages": MSG},
                      headers={"x-api-key": "client", **headers}, timeout=30)


def test_other_clients_go_to_api_key_accounts(sim, proxy):
    p = proxy(accounts_yaml(sim.url, SUBSCRIPTION, {"name": "key", "api_key": KEY,
                                                    "priority": 5}),
              flare_oauth_clients="claude-code")
    sdk(p.url).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert post(p.url, {"user-agent": "curl/8.5"}).status_code == 200
    assert sim.credentials_seen() == [KEY, KEY]  # max is preferred, but not for them
    assert post(p.url, CLAUDE_CODE).status_code == 200
    assert post(p.url, {"user-agent": "claude-cli/2.0.1 (external, sdk-py)"}).status_code == 200
    assert sim.credentials_seen()[2:] == [MAX, MAX]
    rows = p.wait_rows(4)
    assert [r["account"] for r in rows] == ["key", "key", "max", "max"]


def test_with_only_subscription_accounts_other_clients_get_a_403(sim, proxy):
    p = proxy(accounts_yaml(sim.url, SUBSCRIPTION), flare_oauth_clients="claude-code")
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        sdk(p.url).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    error = refused.value.body["error"]
    assert error["type"] == "permission_error"
    assert "only Claude Code" in error["message"] and "Anthropic/Python" in error["message"]
    assert sim.credentials_seen() == []  # nothing was sent upstream
    assert post(p.url, {"x-app": "cli"}).status_code == 200
    assert sim.credentials_seen() == [MAX]
    row = p.wait_rows(2)[0]
    assert row["status"] == 403 and row["account"] is None


def test_by_default_every_client_uses_every_account(sim, proxy):
    p = proxy(accounts_yaml(sim.url, SUBSCRIPTION, {"name": "key", "api_key": KEY,
                                                    "priority": 5}))
    sdk(p.url).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert sim.credentials_seen() == [MAX]


def test_the_real_claude_code_is_served_by_the_subscription(sim, proxy, tmp_path):
    binary = claude_code_binary()
    if binary is None:
        pytest.skip("Claude Code CLI not installed (needs npm: ./scripts/test installs it)")
    p = proxy(accounts_yaml(sim.url, SUBSCRIPTION, {"name": "key", "api_key": KEY,
                                                    "priority": 5}),
              flare_oauth_clients="claude-code")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "ANTHROPIC_BASE_URL": p.url,
           "ANTHROPIC_API_KEY": "sk-ant-api03-CLIENT", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "NO_PROXY": "127.0.0.1"}
    done = subprocess.run([binary, "-p", "say hi"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "simulated answer" in done.stdout
    sent = [r for r in sim.requests if r.path.startswith("/v1/messages")]
    assert sent and all(r.credential == MAX for r in sent)
    # what identified it (upstream-apis.md section 8), as it reached the upstream
    assert all(r.headers["user-agent"].startswith("claude-cli/") for r in sent)
    assert {r.headers.get("x-app") for r in sent} <= {"cli", "cli-bg"}
