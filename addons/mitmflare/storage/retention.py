"""Deleting old rows of the analytics database in small batches, for ``flare_retention_days``
(the proxy's writer process, once an hour) and ``mitmflare prune``. The hourly rollup
(``usage_hourly``) is never pruned, so long-range charts stay right."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

# table -> its time column (ISO 8601 UTC text, so string comparison orders by time)
PRUNED = {"requests": "started_at", "attempts": "started_at", "account_events": "at",
          "payloads": "created_at"}
BATCH_ROWS = 2000


def cutoff(days: float, now: float | None = None) -> str:
    """The ISO 8601 UTC time ``days`` before ``now``: rows older than it go."""
    at = (time.time() if now is None else now) - days * 86400.0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + ".000Z"


def tables(conn: sqlite3.Connection) -> list[str]:
    existing = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    return [t for t in PRUNED if t in existing]


def count_older(conn: sqlite3.Connection, before: str) -> dict[str, int]:
    """Rows per table older than ``before`` (what a prune would delete)."""
    return {t: conn.execute(f"select count(*) from {t} where {PRUNED[t]} < ?",
                            [before]).fetchone()[0] for t in tables(conn)}


def prune_batch(conn: sqlite3.Connection, table: str, before: str,
                limit: int = BATCH_ROWS) -> int:
    """Delete up to ``limit`` rows of ``table`` older than ``before`` in one short
    transaction; returns how many went (0: the table is done)."""
    with conn:
        cursor = conn.execute(
            f"delete from {table} where rowid in (select rowid from {table} "
            f"where {PRUNED[table]} < ? limit ?)", [before, limit])
    return cursor.rowcount


def prune(conn: sqlite3.Connection, before: str, pause_s: float = 0.02,
          progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Delete every row older than ``before`` batch by batch, pausing ``pause_s`` between
    batches so the proxy's writer gets the lock; returns rows deleted per table."""
    deleted = {}
    for table in tables(conn):
        total = 0
        while True:
            n = prune_batch(conn, table, before)
            total += n
            if progress and n:
                progress(n)
            if n < BATCH_ROWS:
                break
            time.sleep(pause_s)
        deleted[table] = total
    return deleted
