"""Time formats shared by the tables and headers: ISO 8601 UTC with milliseconds."""

from __future__ import annotations

import time
from datetime import datetime


def parse_iso(value: str | None) -> float | None:
    """Epoch s of an ISO 8601 / RFC 3339 time (``Z`` or an offset); None if absent or invalid."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def iso_utc(ts: float | None) -> str | None:
    """``2026-11-21T20:05:03.123Z`` for an epoch time in s; None for None or 0."""
    if not ts:
        return None
    ms = round(ts * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
