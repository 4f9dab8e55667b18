"""Cache forensics: why a request wrote to the prompt cache, and what that cost.

Runs in the database writer process (:mod:`.writer`), never on the proxy's event loop: it
keeps, per conversation, its latest answered request (account, start, TTL, tokens cached)
and compares each new row with it. A write (``cache_creation_input_tokens`` > 0) is
attributed to one cause, stored in ``requests.cache_event``:

* ``first``: the conversation's first request with a prompt cache;
* ``expired``: its previous request started longer ago than that request's TTL (5 min, or
  1 h with ``"ttl": "1h"``), so no account still held the cache;
* ``switch``: the previous request, within the TTL, was served by another account (failover,
  or stickiness lost): caches are per account;
* ``changed``: same account, within the TTL, yet it read less than half of what the previous
  request left cached: the prompt's prefix changed;
* ``unknown``: no conversation to compare with (no ``cache_control`` seen, or a request that
  names none).

A write that only adds the new turn (same account, within the TTL, the earlier prefix read)
is the cache working: ``cache_event`` stays empty. ``cache_loss_usd`` of an attributed row is
what its write cost above reading the same tokens from the cache (from :mod:`.rows`, with the
same prices as the row's ``cost_usd``). Facts on TTLs: ``shared/reference/
prompt-cache-limits-clients.md`` ("Prompt caching"; the TTL runs from a request's start).
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..times import iso_utc, parse_iso

CONVERSATIONS_MAX = 50_000  # conversations remembered (least recently seen dropped)
LOOKBACK_S = 3600.0         # rows read back at start (the longest TTL)
CHANGED_SHARE = 0.5         # reading less than this share of the cached prefix: "changed"

STARTED_S = "_started_s"        # private row key: start, epoch s
WRITE_PREMIUM = "_write_premium"  # private row key: the write's cost above a read (USD)
EVENTS = ("first", "switch", "expired", "changed", "unknown")


@dataclass(slots=True)
class Last:
    """A conversation's latest answered request: ``account``, ``started`` (epoch s),
    ``ttl_s`` (s) and ``cached`` (tokens in the cache after it: read + written)."""

    account: str | None
    started: float
    ttl_s: float
    cached: int


class CacheForensics:
    """conversation -> :class:`Last`, least recently seen dropped past ``limit``."""

    def __init__(self, limit: int = CONVERSATIONS_MAX) -> None:
        self.limit = limit
        self._last: OrderedDict[str, Last] = OrderedDict()

    def attribute(self, row: dict[str, Any]) -> None:
        """Set ``cache_event`` and ``cache_loss_usd`` of a completed `requests` row (see the
        module docstring) and remember it for the conversation's next request. Reads the
        private keys :data:`STARTED_S` and :data:`WRITE_PREMIUM` and removes them."""
        started = row.pop(STARTED_S, None)
        premium = row.pop(WRITE_PREMIUM, None)
        conversation, ttl = row.get("conversation"), row.get("cache_ttl_s") or 0.0
        written = row.get("cache_creation_input_tokens") or 0
        read = row.get("cache_read_input_tokens") or 0
        answered = (row.get("status") or 0) < 400 and row.get("input_tokens") is not None
        if not answered or not isinstance(started, float):
            return
        event = self._cause(conversation, row.get("account"), started, read) if written else None
        row["cache_event"] = event
        row["cache_loss_usd"] = premium if event else None
        if conversation and ttl > 0:
            self._last[conversation] = Last(row.get("account"), started, ttl, read + written)
            self._last.move_to_end(conversation)
            while len(self._last) > self.limit:
                self._last.popitem(last=False)

    def _cause(self, conversation: str | None, account: str | None, started: float,
               read: int) -> str | None:
        if not conversation:
            return "unknown"
        last = self._last.get(conversation)
        if last is None:
            return "first"
        if started - last.started > last.ttl_s:
            return "expired"
        if account != last.account:
            return "switch"
        if read < CHANGED_SHARE * last.cached:
            return "changed"
        return None  # the conversation grew: the cache worked

    def load(self, conn: sqlite3.Connection, now: float) -> None:
        """Remember the conversations answered in the last hour from the recorded rows (a
        new writer process continues where the last one stopped)."""
        since = iso_utc(now - LOOKBACK_S)
        try:
            found = conn.execute(
                "select conversation, account, started_at, cache_ttl_s, "
                "coalesce(cache_read_input_tokens, 0) + coalesce(cache_creation_input_tokens, 0) "
                "from requests where started_at >= ? and conversation is not null "
                "and cache_ttl_s > 0 and status < 400 order by started_at", [since]).fetchall()
        except sqlite3.Error:
            return
        for conversation, account, started_at, ttl, cached in found:
            started = parse_iso(started_at)
            if started is not None:
                self._last[conversation] = Last(account, started, ttl, cached)
                self._last.move_to_end(conversation)
