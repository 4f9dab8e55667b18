"""The accounts YAML: validation messages name the line, the account and the field."""

from __future__ import annotations

import pytest

from mitmflare.config.accounts import ConfigError, load_accounts, parse_accounts

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
    loaded = parse_accounts(GOOD)
    assert loaded.errors == []
    first, second = loaded.accounts
    assert first.credential_kind == "oauth" and first.oauth.expires_at.tzinfo is not None
    assert first.upstream == "https://api.anthropic.com"
    assert second.api_key == "sk-from-env" and second.weight == 2.5
    assert second.upstream == "http://127.0.0.1:9000/prefix"


ENTRY = "accounts:\n  - name: ok\n    provider: anthropic\n    api_key: k0\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("  - name: a\n    provider: anthropic\n", "line 5: account a: (account): needs exactly one"),
    ("  - name: a\n    provider: anthropic\n    api_key: k\n    colour: red\n",
     "line 8: account a: colour: Extra inputs are not permitted"),
    ("  - name: ok\n    provider: anthropic\n    api_key: k\n",
     "line 5: account ok: duplicate name (first defined on line 2)"),
    ("  - name: a b\n    provider: anthropic\n    api_key: k\n", "line 5: account a b: name"),
    ("  - name: a\n    provider: gemini\n    api_key: k\n", "line 6: account a: provider"),
    ("  - name: a\n    provider: anthropic\n    api_key: ${FLARE_UNSET_VAR}\n",
     "line 7: account a: api_key: environment variable FLARE_UNSET_VAR is not set"),
    ("  - name: a\n    provider: openai\n    oauth: {access_token: t}\n",
     "oauth is only supported for provider anthropic"),
    ("  - name: a\n    provider: anthropic\n    api_key: k\n    weight: 0\n",
     "line 8: account a: weight"),
    ("  - name: a\n    provider: anthropic\n    api_key: k\n    base_url: ftp://x\n",
     "line 8: account a: base_url: must be an http"),
    ("  - just a string\n", "line 5: account #2: must be a mapping"),
])
def test_a_bad_entry_costs_only_itself_and_names_line_account_and_field(text, expected):
    loaded = parse_accounts(ENTRY + text, "accounts.yaml")
    assert [a.name for a in loaded.accounts] == ["ok"]
    (error,) = loaded.errors
    assert expected in error and error.startswith("accounts.yaml: ")


@pytest.mark.parametrize(("text", "expected"), [
    ("accounts:\n  - name: a\n    provider: anthropic\n    api_key: [oops\n",
     "YAML syntax error at line 5"),
    ("servers: []\n", "line 1: the file must be a mapping with the key 'accounts'"),
    ("accounts: {a: 1}\n", "line 1: 'accounts' must be a list"),
])
def test_a_file_that_cannot_be_read_as_a_whole_is_rejected(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_accounts(text, "accounts.yaml")
    assert expected in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("accounts:\n  - name: a\n    provider: anthropic\n    api_key: sk-SECRET\x07\n",
     "accounts.yaml: line 4, column 23: unacceptable character #x0007 (special characters are "
     "not allowed); delete it, or write it as \\u0007 inside double quotes"),
    ("accounts: []\n\x1b[0m\n", "accounts.yaml: line 2, column 1: unacceptable character #x001b"),
    ("accounts: []\n# a comment\x7f\n", "accounts.yaml: line 2, column 12: unacceptable "
                                       "character #x007f"),
    ("accounts: !secret-tag []\n", "accounts.yaml: YAML error at line 1, column 11: could not "
                                   "determine a constructor for the tag '!secret-tag'"),
    ("accounts:\n  - name: a\n    oauth: {access_token: t, expires_at: 2026-13-45}\n",
     "accounts.yaml: line 3, column 42: not a valid timestamp; put the value in quotes"),
    ("accounts:\n  - name: a\n    priority: !!int sk-SECRET\n",
     "accounts.yaml: line 3, column 15: not a valid int"),
])
def test_a_character_or_value_yaml_cannot_read_is_one_line_naming_where(text, expected):
    """Control characters (a stray escape from a terminal) are refused by the YAML reader,
    which has no line of its own, only a position; values that do not fit their YAML type
    fail when built. Both name the line and column, and never the text around them."""
    with pytest.raises(ConfigError) as info:
        parse_accounts(text, "accounts.yaml")
    message = str(info.value)
    assert message.startswith(expected) and "\n" not in message and "SECRET" not in message


def test_a_file_that_is_not_utf8_is_rejected_in_one_line(tmp_path):
    path = tmp_path / "accounts.yaml"
    path.write_bytes(b"accounts: []\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_accounts(str(path))
    assert str(info.value) == (f"{path}: not UTF-8 text (invalid continuation byte at byte 18); "
                               f"save it as UTF-8")


def test_libyaml_and_pyyaml_read_alike_and_word_errors_alike(monkeypatch):
    from mitmflare.config import accounts

    monkeypatch.setenv("FLARE_TEST_KEY", "sk-from-env")
    texts = [GOOD, ENTRY + "  - name: a\n    provider: anthropic\n    api_key: k\n    colour: red\n",
             ENTRY + "  - just a string\n", "accounts:\n  - name: a\n    api_key: [oops\n",
             "accounts:\n\t- name: a\n", "accounts: []\n\x07\n"]

    def read(text):
        try:
            loaded = parse_accounts(text, "accounts.yaml")
        except ConfigError as exc:
            return str(exc)
        return [a.model_dump() for a in loaded.accounts], loaded.errors

    assert accounts._CLoader is not None  # the constraints' PyYAML wheels have libyaml
    fast = [read(text) for text in texts]
    monkeypatch.setattr(accounts, "_CLoader", None)
    assert fast == [read(text) for text in texts]


def test_empty_file_means_no_accounts():
    assert parse_accounts("").accounts == []
    assert parse_accounts("accounts: []\n").accounts == []


def test_variables_come_from_the_env_file_beside_the_accounts_file(tmp_path, monkeypatch):
    monkeypatch.delenv("FLARE_DOTENV_KEY", raising=False)
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n  - name: a\n    provider: anthropic\n"
                    "    api_key: ${FLARE_DOTENV_KEY}\n")
    (error,) = load_accounts(str(path)).errors
    assert str(tmp_path / ".env") in error and "cannot change" in error
    (tmp_path / ".env").write_text("FLARE_DOTENV_KEY=sk-from-dotenv\n")
    assert load_accounts(str(path)).accounts[0].api_key == "sk-from-dotenv"
    monkeypatch.setenv("FLARE_DOTENV_KEY", "sk-from-process")  # the process environment wins
    assert load_accounts(str(path)).accounts[0].api_key == "sk-from-process"


def test_identity_survives_a_rename():
    one = parse_accounts("accounts:\n  - {name: a, provider: anthropic, api_key: k1}\n"
                         "  - {name: b, provider: anthropic, api_key: k2, id: team-b}\n").accounts
    two = parse_accounts("accounts:\n  - {name: renamed, provider: anthropic, api_key: k1}\n"
                         "  - {name: b2, provider: anthropic, api_key: other, id: team-b}\n").accounts
    assert [a.identity for a in one] == [a.identity for a in two]
    assert "k1" not in one[0].identity


def test_fallbacks_and_prices_are_read_and_a_bad_fallbacks_costs_only_itself():
    loaded = parse_accounts(
        "accounts:\n  - name: local\n    provider: openai-compatible\n    api_key: k\n"
        "    base_url: http://127.0.0.1:9/v1\n"
        "    price: {input: 0.5, output: 1.5, cache_read: 0.05}\n"
        "fallbacks:\n  claude-opus-4-5: [claude-sonnet-4-5, claude-haiku-4-5]\n")
    assert loaded.errors == []
    assert loaded.fallbacks == {"claude-opus-4-5": ["claude-sonnet-4-5", "claude-haiku-4-5"]}
    assert loaded.accounts[0].price.rates() == {"input": 0.5, "output": 1.5,
                                                "cache_read": 0.05, "cache_write": 0.5}
    bad = parse_accounts(ENTRY + "fallbacks:\n  claude-opus-4-5: claude-sonnet-4-5\n")
    assert [a.name for a in bad.accounts] == ["ok"] and bad.fallbacks == {}
    assert bad.errors == ["<accounts>: line 6: fallbacks: must map each model to a list of "
                          "models (e.g. claude-opus-4-5: [claude-sonnet-4-5]); no fallbacks "
                          "are used"] and bad.rejected == ["fallbacks"]
    price = parse_accounts(ENTRY + "    price: {input: -1, output: 2}\n")
    assert price.accounts == [] and "price.input" in price.errors[0]


@pytest.mark.parametrize("text", [
    "accounts: " + "[" * 5000 + "]" * 5000 + "\n",
    "accounts:\n  - name: a\n    provider: anthropic\n    api_key: k\n    models: "
    + "{a: " * 3000 + "b" + "}" * 3000 + "\n",
])
def test_nesting_past_the_parsers_depth_is_one_line_not_a_traceback(text):
    for fast in (True, False):  # libyaml and PyYAML
        from mitmflare.config import accounts

        loader = accounts._CLoader
        try:
            if not fast:
                accounts._CLoader = None
            with pytest.raises(ConfigError) as info:
                parse_accounts(text, "accounts.yaml")
        finally:
            accounts._CLoader = loader
        assert str(info.value) == f"accounts.yaml: {accounts.TOO_DEEP}"
