"""Tables of the analytics database (``flare_db``, served by Datasette) and the state database
(``flare_state``, never served). Created and migrated with sqlite-utils: missing tables are
created, missing columns added; nothing is dropped.
"""

from __future__ import annotations

import sqlite_utils

REQUESTS = {
    "id": str,                 # mitmproxy flow id
    "started_at": str,         # ISO 8601 UTC, ms
    "provider": str,
    "account": str,
    "method": str,
    "path": str,
    "model": str,
    "status": int,
    "streamed": int,
    "duration_ms": float,
    "ttfb_ms": float,
    "input_tokens": int,
    "output_tokens": int,
    "cache_read_input_tokens": int,
    "cache_creation_input_tokens": int,
    "cache_creation_5m_input_tokens": int,
    "cache_creation_1h_input_tokens": int,
    "cost_usd": float,
    "client_session": str,
    "user_agent": str,
    "error": str,
    "attempts": int,
    "failover": int,
}

ATTEMPTS = {
    "id": int,
    "request_id": str,
    "attempt": int,
    "account": str,
    "started_at": str,
    "status": int,
    "reason": str,
    "duration_ms": float,
}

ACCOUNT_EVENTS = {
    "id": int,
    "at": str,
    "account": str,
    "event": str,
    "until": str,
    "reason": str,
    "headers": str,
}

ACCOUNTS = {
    "name": str,
    "provider": str,
    "credential": str,
    "base_url": str,
    "priority": int,
    "weight": float,
    "paused": int,
    "status": str,
    "cooldown_until": str,
    "cooldown_reason": str,
    "needs_reauth": int,
    "token_expires_at": str,
    "last_refresh_at": str,
    "requests": int,
    "failures": int,
    "last_used_at": str,
    "limits": str,
    "updated_at": str,
}

ANALYTICS_TABLES = {
    "requests": (REQUESTS, "id"),
    "attempts": (ATTEMPTS, "id"),
    "account_events": (ACCOUNT_EVENTS, "id"),
    "accounts": (ACCOUNTS, "name"),
}

ANALYTICS_INDEXES = {
    "requests": [["started_at"], ["account", "started_at"], ["model", "started_at"],
                 ["client_session"], ["status", "started_at"]],
    "attempts": [["request_id"], ["account", "started_at"]],
    "account_events": [["at"], ["account", "at"]],
}

STATE_TABLES = {
    "account_state": ({"name": str, "provider": str, "data": str, "updated_at": str}, "name"),
    "oauth_tokens": ({"name": str, "access_token": str, "refresh_token": str,
                      "expires_at": float, "source_fingerprint": str, "last_refresh_at": str,
                      "updated_at": str}, "name"),
}


def migrate(db: sqlite_utils.Database, tables: dict, indexes: dict | None = None) -> None:
    """Create missing tables, add missing columns and create missing indexes."""
    for name, (columns, pk) in tables.items():
        table = db.table(name)
        if not table.exists():
            table.create(columns, pk=pk)
        else:
            existing = set(table.columns_dict)
            for column, kind in columns.items():
                if column not in existing:
                    table.add_column(column, kind)
    for name, index_list in (indexes or {}).items():
        for cols in index_list:
            db.table(name).create_index(cols, if_not_exists=True)
