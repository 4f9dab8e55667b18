"""Reading rate-limit signals from upstream responses.

Header facts (``shared/reference/upstream-apis.md`` sections 1 and 5):

* Anthropic subscription accounts: ``anthropic-ratelimit-unified-*``; resets are Unix epoch
  seconds, utilizations fractions 0..1 (may exceed 1). Windows ``5h``, ``7d``, ``7d_oi``,
  ``overage``.
* Anthropic API keys: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
  {limit,remaining,reset}``; resets are RFC 3339 (documented by Anthropic).
* OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go-style
  durations such as ``6m0s`` (documented by OpenAI).
* ``retry-after`` (seconds or HTTP date) and ``retry-after-ms``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from mitmproxy.http import Headers

from .times import parse_iso

UNIFIED = "anthropic-ratelimit-unified-"
WINDOWS = ("5h", "7d", "7d_oi", "overage")
ANTHROPIC_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
OPENAI_LIMITS = ("requests", "tokens")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_DURATION_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
                     "ns": 1e-9}


@dataclass
class Window:
    """One unified window (5h, 7d, 7d_oi, overage): ``reset`` in epoch s, ``utilization`` 0..1."""

    status: str | None = None
    utilization: float | None = None
    reset: float | None = None
    surpassed_threshold: float | None = None


@dataclass
class Bucket:
    """A standard limit (requests, tokens, …): counts, and ``reset`` as epoch s."""

    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None


@dataclass
class Limits:
    """Everything a response said about the account's limits. Empty when it said nothing."""

    observed_at: float
    unified_status: str | None = None
    unified_reset: float | None = None
    representative_claim: str | None = None
    overage_disabled_reason: str | None = None
    windows: dict[str, Window] = field(default_factory=dict)
    buckets: dict[str, Bucket] = field(default_factory=dict)
    retry_after_s: float | None = None

    @property
    def present(self) -> bool:
        """True when any rate-limit header or retry-after was present."""
        return bool(self.unified_status or self.unified_reset or self.windows or self.buckets
                    or self.retry_after_s is not None or self.representative_claim
                    or self.overage_disabled_reason)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v not in (None, {}, [])}

    def rejected_windows(self) -> dict[str, Window]:
        return {n: w for n, w in self.windows.items() if w.status == "rejected"}

    def constrained(self, threshold: float, now: float) -> bool:
        """True when the account as a whole is near a limit: unified status
        ``allowed_warning``, a shared window (5h, 7d) not allowed or at or above
        ``threshold`` utilization, or a bucket with at most ``1 - threshold`` of its limit
        remaining, before its reset. A rejection of the model-scoped ``7d_oi`` window alone
        does not count (other models still work)."""
        shared = {n: w for n, w in self.windows.items() if n in ("5h", "7d")}
        if self.unified_status == "allowed_warning":
            return True
        if not shared and self.unified_status not in (None, "allowed") and \
                "7d_oi" not in self.rejected_windows():
            return True
        for w in shared.values():
            if w.reset is not None and w.reset <= now:
                continue
            if w.status not in (None, "allowed"):
                return True
            if w.utilization is not None and w.utilization >= threshold:
                return True
        for b in self.buckets.values():
            if b.reset is not None and b.reset <= now:
                continue
            if b.limit and b.remaining is not None and b.remaining <= b.limit * (1 - threshold):
                return True
        return False


_PREFIXES = (b"anthropic-ratelimit-", b"x-ratelimit-", b"retry-after")


def parse_limits(provider: str, headers: Headers, now: float) -> Limits:
    """Parse every limit header of a response received at ``now`` (epoch s). One pass over
    the raw headers; nothing more is done for a response that carries none."""
    found = {k.lower().decode(): v.decode("latin-1") for k, v in headers.fields
             if k.lower().startswith(_PREFIXES)}
    limits = Limits(observed_at=now)
    if not found:
        return limits
    limits.retry_after_s = parse_retry_after(found, now)
    if provider == "anthropic":
        _parse_unified(found, limits)
        for name in ANTHROPIC_LIMITS:
            prefix = f"anthropic-ratelimit-{name}-"
            bucket = Bucket(_num(found.get(prefix + "limit")),
                            _num(found.get(prefix + "remaining")),
                            parse_iso(found.get(prefix + "reset")))
            if bucket != Bucket():
                limits.buckets[name] = bucket
    else:
        for name in OPENAI_LIMITS:
            reset = parse_duration(found.get(f"x-ratelimit-reset-{name}"))
            bucket = Bucket(_num(found.get(f"x-ratelimit-limit-{name}")),
                            _num(found.get(f"x-ratelimit-remaining-{name}")),
                            now + reset if reset is not None else None)
            if bucket != Bucket():
                limits.buckets[name] = bucket
    return limits


def _parse_unified(found: Mapping[str, str], limits: Limits) -> None:
    limits.unified_status = found.get(UNIFIED + "status")
    limits.unified_reset = _num(found.get(UNIFIED + "reset"))
    limits.representative_claim = found.get(UNIFIED + "representative-claim")
    limits.overage_disabled_reason = found.get(UNIFIED + "overage-disabled-reason")
    for name in WINDOWS:
        prefix = f"{UNIFIED}{name}-"
        window = Window(found.get(prefix + "status"), _num(found.get(prefix + "utilization")),
                        _num(found.get(prefix + "reset")),
                        _num(found.get(prefix + "surpassed-threshold")))
        if window != Window():
            limits.windows[name] = window


def parse_retry_after(found: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (ms) or ``retry-after`` (s or HTTP date);
    ``found`` maps lower-case header names to values."""
    ms = _num(found.get("retry-after-ms"))
    if ms is not None:
        return max(ms / 1000.0, 0.0)
    value = found.get("retry-after")
    if value is None:
        return None
    seconds = _num(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError):
        return None


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration (``12ms``, ``1s``, ``6m0s``, ``1h2m3s``); None if invalid."""
    if not value:
        return None
    value = value.strip()
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return _num(value)
    return sum(float(n) * _DURATION_SECONDS[u] for n, u in parts)


def _num(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
