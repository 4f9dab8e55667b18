"""Costs from flat per-token rates equal genai-prices' own calculation, tiers included."""

from __future__ import annotations

import random

import pytest
from genai_prices import Usage, calc_price

from mitmflare.storage.pricing import cost_usd
from mitmflare.storage.rows import ACCOUNT_PRICE, PRICE_PROVIDER, complete

MODELS = [("anthropic", "claude-sonnet-4-6"), ("anthropic", "claude-sonnet-4-5"),
          ("anthropic", "claude-haiku-4-5"), ("openai", "gpt-4.1"), ("zai", "glm-4.6"),
          ("openrouter", "anthropic/claude-sonnet-4.5"), (None, "claude-opus-4-1")]


def library_cost(provider, model, plain, output, read, write, write_1h):
    usage = Usage(input_tokens=plain + read + write, output_tokens=output,
                  cache_read_tokens=read, cache_write_tokens=write,
                  **({"cache_write_1h_tokens": write_1h} if write_1h else {}))
    return float(calc_price(usage, model, provider_id=provider).total_price)


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_cost_matches_genai_prices(provider, model):
    rng = random.Random(model)
    for _ in range(200):
        write = rng.choice([0, rng.randint(1, 40_000)])
        counts = (rng.randint(0, 400_000),  # crosses the 200k long-context tier of some models
                  rng.randint(0, 8_000), rng.choice([0, rng.randint(1, 300_000)]),
                  write, rng.choice([0, rng.randint(0, write)]))
        assert cost_usd(provider, model, *counts) == pytest.approx(
            library_cost(provider, model, *counts), rel=1e-9, abs=1e-15)


def test_unknown_model_or_no_usage_has_no_cost():
    assert cost_usd("anthropic", "claude-unknown-9", 10, 10, 0, 0, 0) is None
    assert cost_usd("anthropic", "claude-sonnet-4-6", None, None, 5, 0, 0) is None
    assert cost_usd("anthropic", None, 10, 10, 0, 0, 0) is None


@pytest.mark.parametrize("total_input", [199_999, 200_000, 200_001, 1_000_000, 5_000_000])
def test_long_context_tier_boundary(total_input):
    counts = (total_input - 3_000, 900, 2_000, 600, 400)
    assert cost_usd("anthropic", "claude-sonnet-4-5", *counts) == pytest.approx(
        library_cost("anthropic", "claude-sonnet-4-5", *counts), rel=1e-9)


def test_the_accounts_price_is_used_only_for_models_genai_prices_does_not_know():
    price = {"input": 2.0, "output": 8.0, "cache_read": 0.5, "cache_write": 2.5}
    base = {"id": "r", "status": 200, "started_at": 0.0, "input_tokens": 1000,
            "output_tokens": 500, "cache_read_input_tokens": 4000,
            "cache_creation_input_tokens": 200, ACCOUNT_PRICE: price}
    local = complete({**base, "model": "local-llm-7b", PRICE_PROVIDER: None})
    assert local["cost_source"] == "account" and ACCOUNT_PRICE not in local
    assert local["cost_usd"] == pytest.approx((1000 * 2 + 500 * 8 + 4000 * 0.5 + 200 * 2.5) / 1e6)
    known = complete({**base, "model": "claude-sonnet-4-6", PRICE_PROVIDER: "anthropic"})
    assert known["cost_source"] == "genai-prices"
    assert known["cost_usd"] == pytest.approx(cost_usd("anthropic", "claude-sonnet-4-6", 1000,
                                                       500, 4000, 200, 0))
    unknown = complete({**base, "model": "local-llm-7b", ACCOUNT_PRICE: None})
    assert (unknown["cost_usd"], unknown["cost_source"]) == (None, None)
    nothing = complete({"id": "r", "status": 502, "model": "local-llm-7b",
                        ACCOUNT_PRICE: price})
    assert (nothing["cost_usd"], nothing["cost_source"]) == (None, None)
