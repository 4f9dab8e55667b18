"""Reading rate-limit signals from upstream responses.

Header facts (``shared/reference/upstream-apis.md`` sections 1 and 5):

* Anthropic subscription accounts: ``anthropic-ratelimit-unified-*``; resets are Unix epoch
  seconds, utilizations fractions 0..1 (may exceed 1). Windows ``5h``, ``7d``, ``7d_oi``,
  ``overage``.
* Anthropic API keys: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
  {limit,remaining,reset}``; resets are RFC 3339 (documented by Anthropic).
* OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go-style
  durations such as ``6m0s`` (documented by OpenAI).
* Codex (ChatGPT subscription): ``x-codex-{primary,secondary}-used-percent`` (0..100),
  ``-window-minutes``, ``-reset-at`` (epoch s; older servers: ``-reset-after-seconds``), as
  the ``openai/codex`` CLI reads them (``codex-rs/codex-api/src/rate_limits.rs``); a window
  of at most 5 h is read as ``5h``, one of a week or more as ``7d`` (better-ccflare's rule),
  and one at 100 % as ``rejected``.
* ``retry-after`` (seconds or HTTP date) and ``retry-after-ms``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from mitmproxy.http import Headers

from ..times import parse_iso

UNIFIED = "anthropic-ratelimit-unified-"
ANTHROPIC_PREFIX = "anthropic-ratelimit-"
OPENAI_PREFIX = "x-ratelimit-"
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
        """JSON-ready snapshot: the fields that are set; windows and buckets as dicts of
        their fields (what :func:`dataclasses.asdict` gives, without its deep copy)."""
        data: dict[str, Any] = {k: v for k, v in vars(self).items()
                                if v is not None and k not in ("windows", "buckets")}
        if self.windows:
            data["windows"] = {n: dict(vars(w)) for n, w in self.windows.items()}
        if self.buckets:
            data["buckets"] = {n: dict(vars(b)) for n, b in self.buckets.items()}
        return data

    def plan_spent_until(self, now: float) -> float:
        """Epoch s until which the plan itself is spent: the latest reset of a shared window
        (``5h``, ``7d``) whose status is ``rejected`` and whose reset is after ``now``; 0 when
        the plan can serve. An answer that says so and still succeeds was served from the
        account's extra usage (overage): Claude Code reads ``unified-status: rejected`` with
        ``overage-status: allowed`` / ``allowed_warning`` as "using overage"
        (``shared/reference/upstream-apis.md`` section 1, and Claude Code's
        ``claudeAiLimits``; not captured from a live answer here)."""
        resets = [w.reset for n, w in self.windows.items() if n in ("5h", "7d")
                  and w.status == "rejected" and w.reset and w.reset > now]
        return max(resets) if resets else 0.0

    @property
    def overage_status(self) -> str | None:
        """``anthropic-ratelimit-unified-overage-status``: allowed, allowed_warning, rejected."""
        window = self.windows.get("overage")
        return window.status if window is not None else None

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


_PREFIXES = (b"anthropic-ratelimit-", b"x-ratelimit-", b"retry-after", b"x-codex-")
CODEX_PREFIX = "x-codex-"
_CODEX_WINDOWS = {"primary": "5h", "secondary": "7d"}  # when a window states no length


def parse_limits(wire_format: str, headers: Headers, now: float) -> Limits:
    """Parse every limit header of a response received at ``now`` (epoch s). One pass over
    the raw headers, then one over the limit headers found; nothing more is done for a
    response that carries none."""
    found = {k.lower().decode(): v.decode("latin-1") for k, v in headers.fields
             if k.lower().startswith(_PREFIXES)}
    limits = Limits(observed_at=now)
    if not found:
        return limits
    limits.retry_after_s = parse_retry_after(found, now)
    if wire_format == "anthropic":
        for key, value in found.items():
            if key.startswith(UNIFIED):
                _unified_field(limits, key[len(UNIFIED):], value)
            elif key.startswith(ANTHROPIC_PREFIX):
                name, _, part = key[len(ANTHROPIC_PREFIX):].rpartition("-")  # requests-limit
                if name in ANTHROPIC_LIMITS and part in _BUCKET_PARTS:
                    _bucket_field(limits, name, part, parse_iso(value) if part == "reset"
                                  else _num(value))
    elif wire_format == "codex":
        for slot, default in _CODEX_WINDOWS.items():
            _codex_window(limits, found, f"{CODEX_PREFIX}{slot}-", default, now)
    else:
        for key, value in found.items():
            if key.startswith(OPENAI_PREFIX):
                part, _, name = key[len(OPENAI_PREFIX):].partition("-")  # limit-requests
                if name in OPENAI_LIMITS and part in _BUCKET_PARTS:
                    if part == "reset":
                        reset = parse_duration(value)
                        _bucket_field(limits, name, part, now + reset if reset is not None
                                      else None)
                    else:
                        _bucket_field(limits, name, part, _num(value))
    return limits


_BUCKET_PARTS = ("limit", "remaining", "reset")
_WINDOW_FIELDS = {"status": "status", "utilization": "utilization", "reset": "reset",
                  "surpassed-threshold": "surpassed_threshold"}


def _bucket_field(limits: Limits, name: str, part: str, value: float | None) -> None:
    """Set one field of a bucket; a bucket exists only once one of its values parsed."""
    if value is not None:
        setattr(limits.buckets.setdefault(name, Bucket()), part, value)


def _codex_window(limits: Limits, found: Mapping[str, str], prefix: str, default: str,
                  now: float) -> None:
    """One Codex window (``x-codex-primary-*`` or ``-secondary-*``) into ``limits.windows``;
    none when it has no used percent, or only a zero placeholder (as the Codex CLI reads it)."""
    used = _num(found.get(prefix + "used-percent"))
    minutes = _num(found.get(prefix + "window-minutes"))
    reset = _num(found.get(prefix + "reset-at"))
    if reset is None:
        after = _num(found.get(prefix + "reset-after-seconds"))
        reset = now + after if after is not None else None
    if used is None or (used == 0 and not minutes and reset is None):
        return
    name = default if not minutes else "5h" if minutes <= 300 else "7d" if minutes >= 10080 \
        else f"{int(minutes)}m"
    limits.windows[name] = Window("rejected" if used >= 100 else "allowed", used / 100.0, reset)


def _unified_field(limits: Limits, rest: str, value: str) -> None:
    """One ``anthropic-ratelimit-unified-*`` header, ``rest`` being the part after the
    prefix (``status``, ``5h-utilization``, ``overage-disabled-reason``, …)."""
    if rest == "status":
        limits.unified_status = value
    elif rest == "reset":
        limits.unified_reset = _num(value)
    elif rest == "representative-claim":
        limits.representative_claim = value
    elif rest == "overage-disabled-reason":
        limits.overage_disabled_reason = value
    else:
        name, _, part = rest.partition("-")
        field_name = _WINDOW_FIELDS.get(part)
        if name in WINDOWS and field_name:
            parsed = value if field_name == "status" else _num(value)
            if parsed is not None:
                setattr(limits.windows.setdefault(name, Window()), field_name, parsed)


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
