"""What OpenAI-format requests Anthropic and Codex accounts cannot serve (routing/unconvertible)."""

from __future__ import annotations

from mitmflare.config.accounts import parse_accounts
from mitmflare.routing.pool import Account
from mitmflare.routing.unconvertible import refusal, unservable

YAML = """accounts:
  - {name: claude, provider: anthropic, api_key: k, models: {gpt-4.1: claude-sonnet-4-5}}
  - {name: gpt, provider: openai, api_key: k}
"""


def accounts() -> list[Account]:
    return [Account(cfg, i) for i, cfg in enumerate(parse_accounts(YAML).accounts)]


def test_what_each_format_cannot_serve():
    assert unservable("/v1/responses", {"input": "x", "tools": [{"type": "function"}]}) == {}
    stateful = unservable("/v1/responses", {"previous_response_id": "resp_1"})
    assert set(stateful) == {"anthropic", "codex"}
    assert stateful["codex"][0] == "previous_response_id"
    builtin = unservable("/v1/responses", {"tools": [{"type": "web_search"}]})
    assert set(builtin) == {"anthropic"} and "web_search" in builtin["anthropic"][1]
    assert set(unservable("/v1/chat/completions", {"web_search_options": {}})) == {"anthropic"}
    assert unservable("/v1/chat/completions", None) == {}


def test_refusal_leaves_accounts_out_and_refuses_when_none_is_left():
    excluded, skipped = set(), {}
    body = {"previous_response_id": "resp_1"}
    assert refusal(accounts(), "/v1/responses", body, excluded, skipped) is None
    assert excluded == {"claude"} and "keeps none" in skipped["claude"]
    message = refusal(accounts()[:1], "/v1/responses?x=1", body, set(), {})
    assert message.startswith("mitmflare: `previous_response_id` is not supported by the "
                              "accounts that could serve this request (claude)")
