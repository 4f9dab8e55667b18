"""Usage windows as data: the `account_windows` rows and the burn-rate forecast.

A *window* is one limit an upstream reports for an account: the unified subscription
windows (``5h``, ``7d``, ``7d_oi``, ``overage``; utilization 0..1, status, reset — header facts
in ``shared/reference/upstream-apis.md`` section 1) or a standard API-key bucket (``requests``,
``tokens``, ``input-tokens``, ``output-tokens``; limit, remaining, reset). Buckets get a
utilization too: ``1 - remaining / limit``.

The forecast extrapolates the utilization seen over the last hour: at that burn rate, when
does the window reach 1.0? A window that resets first is "not before reset".
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..times import iso_utc

BURN_SPAN_S = 3600.0  # the burn rate is measured over the last hour
SAMPLE_EVERY_S = 30.0  # at most one sample per window this often (bounded memory)
UNIFIED_WINDOWS = ("5h", "7d", "7d_oi", "overage")
SHARED_WINDOWS = ("5h", "7d")  # the windows that stop a whole account (not one model's)


def utilization_of(window: dict[str, Any]) -> float | None:
    """Utilization 0..1 (may exceed 1) of a window dict from :meth:`Limits.to_dict`:
    ``utilization`` for unified windows, ``1 - remaining / limit`` for buckets."""
    if window.get("utilization") is not None:
        return float(window["utilization"])
    limit, remaining = window.get("limit"), window.get("remaining")
    if limit and remaining is not None and limit > 0:
        return max(0.0, 1.0 - float(remaining) / float(limit))
    return None


def forecast(samples: list[tuple[float, float]], now: float, reset: float | None) -> tuple[
        float | None, float | None]:
    """(epoch s the window reaches its limit, or None; burn rate in utilization per hour).

    ``samples``: (epoch s, utilization) oldest first, from the last hour. None for the time
    when there are fewer than two samples, the utilization is not rising, or the window
    resets (``reset``, epoch s) first."""
    recent = [s for s in samples if now - s[0] <= BURN_SPAN_S]
    if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
        return None, None
    (t0, u0), (t1, u1) = recent[0], recent[-1]
    rate = (u1 - u0) / (t1 - t0)  # per second
    if rate <= 0:
        return None, 0.0
    at = max(now, t1 + max(0.0, 1.0 - u1) / rate)
    if reset is not None and at >= reset:
        return None, rate * 3600.0
    return at, rate * 3600.0


def spent_within(tracker: BurnTracker, account: str, limits: dict[str, Any], now: float,
                 horizon_s: float) -> bool:
    """True when, at the burn rate of the last hour (:func:`forecast`), one of ``account``'s
    shared unified windows (``5h``, ``7d``: a spent one stops the whole account) reaches its
    limit before ``now + horizon_s`` (epoch s; ``horizon_s`` in s, e.g. a prompt cache's
    TTL). ``limits``: its latest :meth:`Limits.to_dict` snapshot. False without a forecast
    (not rising, or the window resets first) and when the samples of the last hour span less
    than ``horizon_s`` (at most half an hour): a rate seen over a few seconds (utilization
    comes in steps of 1 %) is not extrapolated over minutes."""
    windows = limits.get("windows") or {}
    for name in SHARED_WINDOWS:
        window = windows.get(name)
        if window is None:
            continue
        samples = [s for s in tracker.samples(account, name) if now - s[0] <= BURN_SPAN_S]
        if not samples or samples[-1][0] - samples[0][0] < min(horizon_s, BURN_SPAN_S / 2):
            continue
        at, _ = forecast(samples, now, window.get("reset"))
        if at is not None and at < now + horizon_s:
            return True
    return False


class BurnTracker:
    """Recent utilization samples per (account, window), fed from every answer's limits.

    O(1) per answer: a sample is kept at most every :data:`SAMPLE_EVERY_S` per window (the
    latest replaces the newest otherwise), and a drop in utilization (the window reset)
    starts the history again."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str], deque[tuple[float, float]]] = {}

    def observe(self, account: str, limits: dict[str, Any], now: float) -> None:
        """Take the utilizations in ``limits`` (a :meth:`Limits.to_dict` snapshot)."""
        for name, window in _windows(limits):
            used = utilization_of(window)
            if used is None:
                continue
            key = (account, name)
            samples = self._samples.get(key)
            if samples is None or (samples and used < samples[-1][1] - 1e-9):
                samples = self._samples[key] = deque(maxlen=int(BURN_SPAN_S / SAMPLE_EVERY_S) + 2)
            if samples and now - samples[-1][0] < SAMPLE_EVERY_S and len(samples) > 1:
                samples[-1] = (now, used)
            else:
                samples.append((now, used))

    def samples(self, account: str, window: str) -> list[tuple[float, float]]:
        return list(self._samples.get((account, window), ()))


def window_rows(account: str, limits: dict[str, Any], tracker: BurnTracker,
                now: float) -> list[dict[str, Any]]:
    """The `account_windows` rows of one account from its latest limits snapshot: one per
    window, with ``utilization`` (0..1), ``status``, ``limit``/``remaining`` (buckets),
    ``reset_at``, ``observed_at``, ``burn_per_hour`` (utilization per hour over the last hour)
    and ``limit_at`` (ISO time the window reaches its limit at that rate; NULL: not before
    reset or not rising)."""
    observed = limits.get("observed_at")
    out = []
    for name, window in _windows(limits):
        reset = window.get("reset")
        at, rate = forecast(tracker.samples(account, name), now, reset)
        out.append({
            "account": account, "window": name,
            "kind": "unified" if name in UNIFIED_WINDOWS else "bucket",
            "status": window.get("status"), "utilization": utilization_of(window),
            "limit": window.get("limit"), "remaining": window.get("remaining"),
            "reset_at": iso_utc(reset) if reset else None,
            "observed_at": iso_utc(observed) if observed else None,
            "burn_per_hour": None if rate is None else round(rate, 6),
            "limit_at": iso_utc(at) if at else None,
        })
    return out


def _windows(limits: dict[str, Any]):
    yield from (limits.get("windows") or {}).items()
    yield from (limits.get("buckets") or {}).items()
