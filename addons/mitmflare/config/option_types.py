"""Checks of numeric ``flare_*`` option values, for the addons' ``configure``.

A value out of range raises ``mitmproxy.exceptions.OptionsError`` naming the option and the
range (mitmdump then stops at startup; mitmweb keeps the old value): never clamped silently.
Enumerations are declared with ``choices=`` and checked by :class:`mitmflare.bundle.Bundle`.

mitmproxy's option editors (mitmweb's Options page, the console) handle ``str``, ``int``,
``bool``, optional ``str`` and sequences of ``str`` only; a ``float`` option breaks mitmweb's
editor ("unknown option type float"). Fractional options are therefore ``str`` options holding
a decimal number (:func:`decimal`).
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


def whole(name: str, value: int, low: int) -> int:
    """The value of ``int`` option ``name`` when it is at least ``low``.

    Raises ``mitmproxy.exceptions.OptionsError`` naming the option and the bound."""
    if value < low:
        raise exceptions.OptionsError(f"{name} must be a whole number >= {low}, not {value}")
    return value
