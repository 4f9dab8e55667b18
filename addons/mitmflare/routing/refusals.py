"""Requests refused for want of a valid access key: counted, not each recorded as a row.

Anyone who can reach a listener can send requests without a key; a `requests` row for each
would let them grow the analytics database at will. Instead, per source and minute (UTC), the
first refusal is recorded as a row of its own (``auth_refusals = 1``) and the others become one
more row once the minute is over (``auth_refusals = n``, its ``error`` naming the source): at
most two rows per source and minute, whatever the rate. An IPv6 source counts per /64 network
(one host usually holds a whole /64); past ``MAX_SOURCES`` sources in a minute, the others
share one (``other sources``). ``total`` is what ``/health`` shows as ``auth_refusals``;
``usage_hourly`` sums the column.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

MAX_SOURCES = 100  # sources per minute with rows of their own
OTHERS = "other sources"


@dataclass
class _Minute:
    first: dict[str, Any]   # the row recorded for the source's first refusal this minute
    more: int = 0           # refusals counted since, not recorded yet
    last: float = 0.0       # time of the latest of them (epoch s)


class RefusalTally:
    """Counts refusals and says which rows to record (see the module docstring)."""

    def __init__(self) -> None:
        self.total = 0
        self._minutes: dict[tuple[int, str], _Minute] = {}

    def note(self, source: str, row: dict[str, Any], now: float) -> dict[str, Any] | None:
        """Count one refusal from ``source`` (see :func:`source_of`) at ``now`` (epoch s).
        Returns ``row`` (with ``auth_refusals = 1``) when it is the source's first refusal
        this minute and is to be recorded now, else None (it is counted for the minute's
        second row, :meth:`due`)."""
        self.total += 1
        minute = int(now // 60)
        key = (minute, source)
        pending = self._minutes.get(key)
        if pending is None and sum(m == minute for m, _ in self._minutes) >= MAX_SOURCES:
            key = (minute, OTHERS)
            pending = self._minutes.get(key)
        if pending is None:
            self._minutes[key] = _Minute(row)
            return {**row, "auth_refusals": 1}
        pending.more += 1
        pending.last = now
        return None

    def due(self, now: float | None) -> list[dict[str, Any]]:
        """The rows for refusals counted but not recorded yet, of the minutes that are over
        at ``now`` (of every minute when ``now`` is None, e.g. at shutdown); each minute is
        reported once."""
        current = None if now is None else int(now // 60)
        rows = []
        for key in [k for k in self._minutes if current is None or k[0] < current]:
            pending = self._minutes.pop(key)
            if pending.more:
                rows.append({**pending.first, "id": f"{pending.first['id']}~refusals",
                             "started_at": pending.last, "auth_refusals": pending.more,
                             "error": f"mitmflare: {pending.more} more requests without a "
                                      f"valid access key from {key[1]} in this minute"})
        return rows


def source_of(peername: tuple | None) -> str:
    """The source a refusal is counted for: the client's IPv4 address, or its IPv6 /64."""
    host = str(peername[0]) if peername else "unknown"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
