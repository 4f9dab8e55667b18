"""Cache forensics in the writer: every cache write gets its cause and its price."""

from __future__ import annotations

import sqlite3

import pytest

from mitmflare.storage import rows, schema
from mitmflare.storage.cache_forensics import STARTED_S, CacheForensics
from mitmflare.storage.writer import open_analytics_db


def row(at: float, account: str, read: int, write: int, conversation: str | None = "c",
        ttl: float = 300.0, status: int = 200) -> dict:
    return rows.complete({
        "id": f"r{at}", "started_at": float(at), "account": account, "status": status,
        "provider": "anthropic", "model": "claude-sonnet-4-6", "input_tokens": 10,
        "output_tokens": 5, "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write, "cache_creation_5m_input_tokens": write,
        "conversation": conversation, "cache_ttl_s": ttl if conversation else None,
        rows.PRICE_PROVIDER: "anthropic"})


def test_causes_of_cache_writes_and_their_loss():
    forensics = CacheForensics()
    events = []
    for r in [row(1000, "a", 0, 5000),           # first
              row(1010, "a", 5000, 200),         # growth: no loss
              row(1020, "b", 0, 5400),           # switch (failover)
              row(1400, "b", 0, 5600),           # expired (380 s > 300 s)
              row(1410, "b", 100, 5600),         # changed (read 100 of 5600 cached)
              row(1420, "b", 5700, 0),           # a hit
              row(1430, "b", 0, 300, conversation=None),  # unknown
              row(1440, "a", 0, 900, status=429)]:        # not answered: nothing
        forensics.attribute(r)
        events.append((r.get("cache_event"), r.get("cache_loss_usd")))
        assert STARTED_S not in r
    assert [e for e, _ in events] == ["first", None, "switch", "expired", "changed", None,
                                      "unknown", None]
    # Sonnet 4.6: a 5-minute write 3.75 $/MTok, a read 0.30 $/MTok
    assert events[2][1] == pytest.approx(5400 * (3.75 - 0.30) / 1e6)
    assert events[1][1] is None and events[5][1] is None


def test_a_new_writer_continues_from_the_recorded_rows(tmp_path):
    db = open_analytics_db(str(tmp_path / "a.db"))
    recorded = row(1_000_000_000.0, "a", 0, 5000)
    CacheForensics().attribute(recorded)
    db["requests"].insert({k: v for k, v in recorded.items() if k in schema.REQUESTS})
    forensics = CacheForensics()
    forensics.load(db.conn, 1_000_000_100.0)
    moved = row(1_000_000_060.0, "b", 0, 5200)
    forensics.attribute(moved)
    assert moved["cache_event"] == "switch"
    forensics = CacheForensics()
    forensics.load(sqlite3.connect(":memory:"), 0.0)  # no table yet: nothing, no error
