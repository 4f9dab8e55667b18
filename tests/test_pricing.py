"""Costs from flat per-token rates equal genai-prices' own calculation, tiers included."""

from __future__ import annotations

import random

import pytest
from genai_prices import Usage, calc_price

from mitmflare.pricing import cost_usd

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
