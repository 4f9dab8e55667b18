"""Numbers with a fraction in ``flare_*`` options.

mitmproxy's option editors (mitmweb's Options page, the console) handle ``str``, ``int``,
``bool``, optional ``str`` and sequences of ``str`` only; a ``float`` option breaks mitmweb's
editor ("unknown option type float"). Fractional options are therefore ``str`` options holding
a decimal number, checked here when they are set.
"""

from __future__ import annotations

import math

from mitmproxy import exceptions


def decimal(name: str, text: str, low: float, high: float = math.inf,
            low_inclusive: bool = False) -> float:
    """The value of option ``name`` (``text``, e.g. ``"0.95"``) as a float within
    (``low``, ``high``] (``[low, high]`` with ``low_inclusive``).

    Raises ``mitmproxy.exceptions.OptionsError`` naming the option and the range."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    above = value >= low if low_inclusive else value > low
    if not (above and value <= high):
        bracket = "[" if low_inclusive else "("
        upper = f"{high:g}]" if math.isfinite(high) else "inf)"
        raise exceptions.OptionsError(f"{name} must be a number in {bracket}{low:g}, {upper}, "
                                      f"not {text!r}")
    return value
