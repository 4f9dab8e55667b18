"""Request cost in USD from the ``genai-prices`` package (bundled price data, works offline).

Runs in the database writer process, never in the proxy's interpreter.

genai-prices is the only source of prices and of how token kinds are charged. Its full
calculation costs ~130 µs a row (unit registry, decomposition and validation each call), which
capped the writer near 6,000 rows/s. Most price entries are flat per-token rates, where the
cost is linear in each token count, and tiered entries (long-context rates) are linear between
tier starts; for those the library is asked once per entry and region (one token kind at a
time, then checked on a mixed usage) and rows are priced from its answers. Entries
whose answers are not linear go through the library on every row.
"""

from __future__ import annotations

import logging
import warnings
from bisect import bisect_left
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from genai_prices.types import ModelInfo, ModelPrice, TieredPrices

log = logging.getLogger(__name__)

Counts = tuple[int, int, int, int, int]
"""Token counts in the order (input excluding cache, output, cache read, cache write 5 min,
cache write 1 h)."""

PROBE_TOKENS = 1_000_000           # tokens per kind when asking for a rate
LINEAR_TOLERANCE = Decimal("1e-12")  # USD per USD of cost the rates may miss a check by


def account_cost(price: dict[str, float], input_tokens: int | None, output_tokens: int | None,
                 cache_read: int | None, cache_write: int | None) -> float | None:
    """Cost of one request in USD from an account's own ``price:`` (USD per million tokens:
    ``input``, ``output``, ``cache_read``, ``cache_write``; see
    :meth:`.config.Price.rates`), for models genai-prices does not know. None when nothing was
    counted. Token arguments follow :class:`mitmflare.providers.usage.Usage`."""
    if input_tokens is None and output_tokens is None:
        return None
    tokens = {"input": input_tokens, "output": output_tokens, "cache_read": cache_read,
              "cache_write": cache_write}
    return sum((tokens[kind] or 0) * price[kind] for kind in tokens) / 1_000_000


def cost_usd(provider: str | None, model: str | None, input_tokens: int | None,
             output_tokens: int | None, cache_read: int | None, cache_write: int | None,
             cache_write_1h: int | None) -> float | None:
    """Cost of one request in USD, or None when the model is unknown or nothing was counted.

    ``provider``: the genai-prices provider id (``anthropic``, ``openai``, ``zai``,
    ``openrouter``, …); None lets genai-prices find the model's provider. Token arguments follow
    :class:`mitmflare.providers.usage.Usage` (``input_tokens`` excludes cache tokens).
    ``cache_write_1h`` is the part of ``cache_write`` written with the 1-hour TTL,
    priced at its own rate (2x input for Anthropic, per genai-prices). Prices in effect now.
    """
    if not model or (input_tokens is None and output_tokens is None):
        return None
    info = _model_info(provider, model)
    if info is None:
        return None
    write = cache_write or 0
    write_1h = min(cache_write_1h or 0, write)
    counts = (input_tokens or 0, output_tokens or 0, cache_read or 0, write - write_1h, write_1h)
    prices = info.get_prices(datetime.now(UTC))
    rates = _rates(prices) if min(counts) >= 0 else None
    if rates is not None:
        starts, regions = rates
        return _linear(regions[bisect_left(starts, counts[0] + counts[2] + counts[3] + counts[4])],
                       counts)
    try:
        return float(_library_price(prices, counts))
    except ValueError as exc:
        log.warning("cannot price %s/%s: %s", provider, model, exc)
        return None


@lru_cache(maxsize=512)
def _model_info(provider: str | None, model: str) -> ModelInfo | None:
    """genai-prices' entry for ``model`` at ``provider`` (its own lookup), None when unknown."""
    try:
        return _quiet(calc_price, PriceUsage(), model, provider_id=provider).model
    except LookupError:
        log.info("no price known for %s model %r; cost_usd left empty", provider, model)
        return None


Rates = tuple[tuple[int, ...], tuple[tuple[float, ...], ...]]
"""Tier starts (total input tokens, ascending) and, per region between them, USD per token for
each kind of :data:`Counts`."""

_RATES: dict[int, tuple[ModelPrice, Rates | None]] = {}


def _rates(prices: ModelPrice) -> Rates | None:
    """Per-token rates of ``prices`` as genai-prices charges them; None when its answers are
    not linear. Cached per price entry (long-lived objects of the library's data snapshot; the
    cache keeps each one alive, so its ``id`` stays its own)."""
    known = _RATES.get(id(prices))
    if known is None:
        known = _RATES[id(prices)] = (prices, _derive_rates(prices))
    return known[1]


def _derive_rates(prices: ModelPrice) -> Rates | None:
    """:func:`_rates` without the cache. Tiered prices apply one rate to all tokens by the
    request's total input tokens (``total > start``, per genai-prices' ``TieredPrices``), so
    the rates are asked for in each region between tier starts."""
    starts = sorted({tier.start for value in vars(prices).values()
                     if isinstance(value, TieredPrices) for tier in value.tiers})
    regions = []
    for region, low in enumerate([0] + [start + 1 for start in starts]):
        room = starts[region] - low if region < len(starts) else PROBE_TOKENS
        try:
            rates = _region_rates(prices, low, min(room, PROBE_TOKENS))
        except ValueError:
            return None
        if rates is None:
            return None
        regions.append(rates)
    return tuple(starts), tuple(regions)


def _region_rates(prices: ModelPrice, low: int, room: int) -> tuple[float, ...] | None:
    """USD per token of each kind for requests of ``low`` to ``low + room`` total input tokens,
    from genai-prices' answers one kind at a time; None when a mixed usage in the region does
    not cost what the rates say (or the region is too narrow to ask).

    Raises ValueError when genai-prices rejects a probe."""
    if room < 4:
        return None
    base = (low, 0, 0, 0, 0)
    base_cost = _library_price(prices, base)
    rates = []
    for kind in range(5):
        step = PROBE_TOKENS if kind == 1 else room
        probe = tuple(count + step if i == kind else count for i, count in enumerate(base))
        rates.append((_library_price(prices, probe) - base_cost) / step)
    quarter = room // 4
    check = (low + quarter, 567, quarter, quarter, quarter)
    for counts, cost in ((base, base_cost), (check, _library_price(prices, check))):
        if abs(_linear(rates, counts) - cost) > LINEAR_TOLERANCE * max(abs(cost), Decimal(1)):
            return None
    return tuple(float(rate) for rate in rates)


def _linear(rates: Any, counts: tuple[int, ...]) -> Any:
    """The sum of rate * count over the kinds of :data:`Counts`."""
    return sum(rate * count for rate, count in zip(rates, counts, strict=True))


def _library_price(prices: ModelPrice, counts: tuple[int, ...]) -> Decimal:
    """genai-prices' total in USD for ``counts`` (see :data:`Counts`) under ``prices``.

    Raises ValueError when genai-prices rejects the usage."""
    plain, output, read, write_5m, write_1h = counts
    usage = {"input_tokens": plain + read + write_5m + write_1h,  # genai-prices wants the total
             "output_tokens": output, "cache_read_tokens": read,
             "cache_write_tokens": write_5m + write_1h}
    if write_1h:
        usage["cache_write_1h_tokens"] = write_1h
    return _quiet(prices.calc_price, PriceUsage(**usage))["total_price"]


def _quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` with genai-prices' warnings (data age, inferred values) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)
