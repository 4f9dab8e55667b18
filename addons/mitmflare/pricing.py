"""Request cost in USD from the ``genai-prices`` package (bundled price data, works offline).

Runs in the database writer thread, never on the proxy's event loop.
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

log = logging.getLogger(__name__)


def cost_usd(provider: str | None, model: str | None, input_tokens: int | None,
             output_tokens: int | None, cache_read: int | None, cache_write: int | None,
             cache_write_1h: int | None) -> float | None:
    """Cost of one request in USD, or None when the model is unknown or nothing was counted.

    ``provider``: the genai-prices provider id (``anthropic``, ``openai``, ``zai``,
    ``openrouter``, …); None lets genai-prices find the model's provider. Token arguments follow
    :class:`mitmflare.usage.Usage` (``input_tokens`` excludes cache tokens).
    ``cache_write_1h`` is the part of ``cache_write`` written with the 1-hour TTL,
    priced at its own rate (2x input for Anthropic, per genai-prices).
    """
    if not model or (input_tokens is None and output_tokens is None):
        return None
    read = cache_read or 0
    write = cache_write or 0
    usage = {
        "input_tokens": (input_tokens or 0) + read + write,  # genai-prices wants the total
        "output_tokens": output_tokens or 0,
        "cache_read_tokens": read,
        "cache_write_tokens": write,
    }
    if cache_write_1h:
        usage["cache_write_1h_tokens"] = min(cache_write_1h, write)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            price = calc_price(PriceUsage(**usage), model, provider_id=provider)
    except LookupError:
        _warn_unknown(provider, model)
        return None
    except ValueError as exc:
        log.warning("cannot price %s/%s: %s", provider, model, exc)
        return None
    return float(price.total_price)


@lru_cache(maxsize=256)
def _warn_unknown(provider: str | None, model: str) -> None:
    log.info("no price known for %s model %r; cost_usd left empty", provider, model)
