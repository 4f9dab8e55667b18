"""Time formatting shared by the tables: ISO 8601 UTC with milliseconds."""

from __future__ import annotations

import time


def iso_utc(ts: float | None) -> str | None:
    """``2026-11-21T20:05:03.123Z`` for an epoch time in s; None for None or 0."""
    if not ts:
        return None
    ms = round(ts * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
