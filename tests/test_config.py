"""The accounts YAML: validation messages name the line, the account and the field."""

from __future__ import annotations

import pytest

from mitmflare.config import ConfigError, parse_accounts

GOOD = """\
accounts:
  - name: work-max
    provider: anthropic
    oauth: {access_token: sk-ant-oat01-x, refresh_token: sk-ant-ort01-y, expires_at: 2026-11-21T20:00:00Z}
    priority: 0
  - name: key_2
    provider: openai
    api_key: ${FLARE_TEST_KEY}
    weight: 2.5
    base_url: http://127.0.0.1:9000/prefix/
"""


def test_valid_file_with_env_reference(monkeypatch):
    monkeypatch.setenv("FLARE_TEST_KEY", "sk-from-env")
    first, second = parse_accounts(GOOD)
    assert first.credential_kind == "oauth" and first.oauth.expires_at.tzinfo is not None
    assert first.upstream == "https://api.anthropic.com"
    assert second.api_key == "sk-from-env" and second.weight == 2.5
    assert second.upstream == "http://127.0.0.1:9000/prefix"


@pytest.mark.parametrize(("text", "expected"), [
    ("accounts:\n  - name: a\n    provider: anthropic\n", "line 2: account a: (account): needs exactly one"),
    ("accounts:\n  - name: a\n    provider: anthropic\n    api_key: k\n    colour: red\n",
     "line 5: account a: colour: Extra inputs are not permitted"),
    ("accounts:\n  - name: a\n    provider: anthropic\n    api_key: k\n"
     "  - name: a\n    provider: anthropic\n    api_key: k\n",
     "line 5: account a: duplicate name (first defined on line 2)"),
    ("accounts:\n  - name: a b\n    provider: anthropic\n    api_key: k\n", "line 2: account a b: name"),
    ("accounts:\n  - name: a\n    provider: gemini\n    api_key: k\n", "line 3: account a: provider"),
    ("accounts:\n  - name: a\n    provider: anthropic\n    api_key: ${FLARE_UNSET_VAR}\n",
     "line 4: account a: api_key: environment variable FLARE_UNSET_VAR is not set"),
    ("accounts:\n  - name: a\n    provider: openai\n    oauth: {access_token: t}\n",
     "oauth is only supported for provider anthropic"),
    ("accounts:\n  - name: a\n    provider: anthropic\n    api_key: [oops\n", "YAML syntax error at line 5"),
    ("accounts:\n  - name: a\n    provider: anthropic\n    api_key: k\n    weight: 0\n",
     "line 5: account a: weight"),
    ("accounts:\n  - name: a\n    provider: anthropic\n    api_key: k\n    base_url: ftp://x\n",
     "line 5: account a: base_url: must be an http"),
    ("servers: []\n", "line 1: the file must be a mapping with one key, 'accounts'"),
])
def test_errors_name_line_account_and_field(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_accounts(text, "accounts.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("accounts.yaml: ")


def test_empty_file_means_no_accounts():
    assert parse_accounts("") == []
    assert parse_accounts("accounts: []\n") == []
