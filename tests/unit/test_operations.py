"""The operator's commands in-process: ``flare.why`` names every reason an account would not
take the next request."""

from __future__ import annotations

import pytest
from mitmproxy.test import taddons

from mitmflare.addons.accounts_file import AccountsFile
from mitmflare.addons.operations import Operations
from mitmflare.addons.recorder import Recorder
from mitmflare.bundle import make_addons

YAML = """\
accounts:
  - name: sub
    provider: anthropic
    oauth: {access_token: sk-ant-oat01-SUB, refresh_token: sk-ant-ort01-R}
  - name: capped
    provider: anthropic
    api_key: sk-ant-api03-KEY
    max_concurrent: 2
"""


@pytest.fixture
def parts(tmp_path):
    (tmp_path / "accounts.yaml").write_text(YAML)
    addons = make_addons()
    by_type = {type(a): a for a in addons}
    with taddons.context(*addons) as tctx:
        tctx.configure(by_type[AccountsFile], flare_accounts=str(tmp_path / "accounts.yaml"),
                       flare_db=str(tmp_path / "a.db"), flare_state=str(tmp_path / "s.db"))
        yield by_type[Operations], tctx
        by_type[Recorder].done()


def verdicts(operations: Operations) -> dict[str, str]:
    lines = operations.why("claude-sonnet-4-6")[1:]
    return {line.split()[0]: line for line in lines if "anthropic requests" in line}


def test_why_names_an_account_at_its_concurrency_cap(parts):
    operations, _ = parts
    capped = operations.proxy.pool.get("capped")
    assert "at its cap" not in verdicts(operations)["capped"]
    capped.state.in_flight = 2
    assert "no: at its cap, 2 in flight (max_concurrent 2)" in verdicts(operations)["capped"]


def test_why_says_a_subscription_account_serves_only_claude_code_when_so_configured(parts):
    operations, tctx = parts
    assert "Claude Code only" not in verdicts(operations)["sub"]
    tctx.options.flare_oauth_clients = "claude-code"
    assert "Claude Code only (flare_oauth_clients=claude-code)" in verdicts(operations)["sub"]
    assert "Claude Code only" not in verdicts(operations)["capped"]
