"""The operator's commands in-process: ``flare.why`` names every reason an account would not
take the next request."""

from __future__ import annotations

import pytest

from conftest import bundle_parts
from mitmflare.addons.operations import Operations

YAML = """accounts:
  - {name: sub, provider: anthropic, oauth: {access_token: sk-ant-oat01-S, refresh_token: r}}
  - {name: capped, provider: anthropic, api_key: sk-ant-api03-KEY, max_concurrent: 2}
"""


@pytest.fixture
def parts(tmp_path):
    with bundle_parts(tmp_path, YAML) as (parts, tctx):
        yield parts[Operations], tctx


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
