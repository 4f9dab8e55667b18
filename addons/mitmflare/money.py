"""How amounts of money are shown to people (messages, listings): one rule everywhere."""

from __future__ import annotations

import math


def usd(amount: float) -> str:
    """An amount in USD as text: ``$12.35`` and ``$1,250.00`` from one dollar up (cents);
    below a dollar three significant digits, at least two decimals (``$0.50``, ``$0.123``,
    ``$0.004``, ``$0.0000123``), so a cap or cost below a cent never reads ``$0.00``.
    Zero is ``$0.00``; a negative amount gets a leading ``-``."""
    sign, size = ("-" if amount < 0 else ""), abs(amount)
    if size >= 1 or size == 0:
        return f"{sign}${size:,.2f}"
    decimals = max(2, 2 - math.floor(math.log10(size)))
    text = f"{size:.{decimals}f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction[:2] + fraction[2:].rstrip("0")
    return f"{sign}${whole}.{fraction}"
