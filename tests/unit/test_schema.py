"""Database creation and migration."""

from __future__ import annotations

import sqlite3

from mitmflare.storage.writer import open_analytics_db


def test_older_database_gains_columns_and_a_filled_rollup(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("create table requests (id text primary key, started_at text, provider text, "
                 "account text, model text, status integer, input_tokens integer, cost_usd real)")
    conn.executemany("insert into requests values (?, ?, 'anthropic', ?, 'm', ?, ?, ?)", [
        ("1", "2026-11-01T10:05:00.000Z", "a", 200, 10, 0.25),
        ("2", "2026-11-01T10:55:00.000Z", "a", 429, 5, None),
        ("3", "2026-11-01T11:00:00.000Z", None, 503, None, None)])
    conn.commit()
    conn.close()
    open_analytics_db(str(path)).conn.close()
    conn = sqlite3.connect(path)
    columns = {r[1] for r in conn.execute("pragma table_info(requests)")}
    assert {"ttfb_ms", "cache_creation_1h_input_tokens", "failover", "client_session"} <= columns
    rollup = conn.execute("select hour, account, requests, errors, input_tokens, cost_usd "
                          "from usage_hourly order by hour").fetchall()
    assert rollup == [("2026-11-01T10", "a", 2, 1, 15, 0.25), ("2026-11-01T11", "", 1, 1, 0, 0.0)]
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
