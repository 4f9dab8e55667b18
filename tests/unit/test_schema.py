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


def test_an_older_database_keeps_provider_for_the_account_and_gains_wire_format(tmp_path):
    """Before the ``wire_format`` column, ``provider`` held the client's format when no
    account served: it moves to ``wire_format``, in the rollup too (once)."""
    path = tmp_path / "old.db"
    open_analytics_db(str(path)).conn.close()
    conn = sqlite3.connect(path)
    conn.execute("alter table requests drop column wire_format")
    conn.executemany("insert into requests (id, started_at, provider, account, path, status) "
                     "values (?, '2026-11-01T10:05:00.000Z', ?, ?, ?, 200)", [
                         ("1", "zai", "glm", "/v1/messages"),
                         ("2", "anthropic", "sub", "/v1/chat/completions"),
                         ("3", "openai", None, "/v1/responses"),
                         ("4", None, None, "/v2/other")])
    conn.execute("insert into usage_hourly (hour, provider, account, model, requests) values "
                 "('2026-11-01T10', 'openai', '', 'm', 2), ('2026-11-01T10', '', '', 'm', 1), "
                 "('2026-11-01T10', 'zai', 'glm', 'm', 5)")
    conn.commit()
    conn.close()
    for _ in range(2):  # a second start changes nothing
        open_analytics_db(str(path)).conn.close()
        conn = sqlite3.connect(path)
        rows = conn.execute("select id, provider, wire_format from requests order by id")
        assert rows.fetchall() == [("1", "zai", "anthropic"), ("2", "anthropic", "openai"),
                                   ("3", None, "openai"), ("4", None, None)]
        rollup = conn.execute("select provider, account, requests from usage_hourly "
                              "order by provider").fetchall()
        assert rollup == [("", "", 3), ("zai", "glm", 5)]
        conn.close()
