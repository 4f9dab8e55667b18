"""Tables of the analytics database (``flare_db``, served by Datasette) and the state database
(``flare_state``, never served). Created and migrated with sqlite-utils: missing tables are
created, missing columns added; nothing is dropped.
"""

from __future__ import annotations

import sqlite_utils

from ..providers import OPENAI_PATHS

REQUESTS = {  # in the order a person reads a row (new databases; older ones keep theirs)
    "id": str,                 # mitmproxy flow id (with a suffix for a replay)
    "started_at": str,         # ISO 8601 UTC, ms
    "account": str,
    "model": str,              # what the client asked for
    "status": int,
    "duration_ms": float,
    "input_tokens": int,
    "output_tokens": int,
    "cost_usd": float,
    "failover": int,
    "error": str,
    "streamed": int,
    "ttfb_ms": float,
    "cache_read_input_tokens": int,
    "cache_creation_input_tokens": int,
    "cache_creation_5m_input_tokens": int,
    "cache_creation_1h_input_tokens": int,
    "provider": str,           # the serving account's provider (NULL when no account served)
    "wire_format": str,        # the client's: anthropic (Messages) or openai (Chat, Responses)
    "method": str,
    "path": str,
    "client_session": str,
    "user_agent": str,
    "attempts": int,
    "replay": int,             # 1: replayed from mitmweb / mitmdump, routed again
    "user": str,               # access-key user (NULL when keys are not required)
    "purpose": str,            # NULL: a client's request; window_start: sent by the proxy
    "upstream_model": str,     # what the upstream served (a mapped or dated name)
    "auth_refusals": int,      # requests refused for want of a valid key this row stands for
    "cost_source": str,        # genai-prices | account (its price:) | NULL (no price known)
    "worker": str,             # the mitmflare process that served it: host:pid
    "conversation": str,       # prompt-cache conversation (session id, or a hash of its start)
    "cache_ttl_s": float,      # prompt-cache TTL asked (s; / flare_cache_ttl_scale; NULL: none)
    "cache_event": str,        # why it wrote to the cache: first|switch|expired|changed|unknown
    "cache_loss_usd": float,   # what that write cost above a cache read of the same tokens
    "overage": int,            # 1: served from the account's extra usage (its plan was spent)
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
    "model_cooldowns": str,    # models this account cannot serve for now, until when and why
    "updated_at": str,
    "position": int,           # 1: the next request of its format goes here; 2: next in line
    "near_limit_until": str,   # ranked last until then (utilization >= flare_headroom or warning)
    "over_budget_until": str,
    "budget_day_usd": float,
    "budget_month_usd": float,
    "spent_today_usd": float,
    "spent_month_usd": float,
    "window_started_at": str,  # last time a window start request was sent (flare_window_start)
    "clock_skew_s": float,     # this machine's clock minus the upstream's Date header (s)
}

# Captured bodies (flare_payloads = errors | all), one row per request; never credentials.
PAYLOADS = {
    "id": str,                 # the request's id (requests.id)
    "created_at": str,         # the request's start (ISO 8601 UTC), for retention
    "request_headers": str,    # JSON list of [name, value], credentials and cookies left out
    "request_body": str,       # the client's body as sent to the proxy
    "request_truncated": int,
    "response_headers": str,
    "response_body": str,      # the answer the client got (a stream: its event text)
    "response_truncated": int,
}

# One row per account and limit window, replaced with every accounts snapshot
# (see .usage_windows).
ACCOUNT_WINDOWS = {
    "account": str,
    "window": str,             # 5h, 7d, 7d_oi, overage; requests, tokens, input-tokens, …
    "kind": str,               # unified (subscription) or bucket (API key)
    "status": str,
    "utilization": float,
    "limit": float,
    "remaining": float,
    "reset_at": str,
    "observed_at": str,
    "burn_per_hour": float,
    "limit_at": str,
}

# Hourly totals per (hour, provider, account, model), kept by the writer in the same
# transaction as the rows, so charts over long ranges never scan `requests`.
ROLLUP_KEY = ("hour", "provider", "account", "model")
ROLLUP_SUMS = {
    # column: SQL expression over one `requests` row (a row of refusals stands for several)
    "requests": "coalesce(auth_refusals, 1)",
    "errors": "coalesce(auth_refusals, status >= 400 or error is not null)",
    "failovers": "coalesce(failover, 0)",
    "streamed": "coalesce(streamed, 0)",
    "input_tokens": "coalesce(input_tokens, 0)",
    "output_tokens": "coalesce(output_tokens, 0)",
    "cache_read_input_tokens": "coalesce(cache_read_input_tokens, 0)",
    "cache_creation_input_tokens": "coalesce(cache_creation_input_tokens, 0)",
    "cost_usd": "coalesce(cost_usd, 0)",
    "duration_ms": "coalesce(duration_ms, 0)",
    "auth_refusals": "coalesce(auth_refusals, 0)",
}
USAGE_HOURLY = {"hour": str, "provider": str, "account": str, "model": str,
                **{c: (float if c in ("cost_usd", "duration_ms") else int) for c in ROLLUP_SUMS}}

STREAM_OFFSETS = {  # rows through Redis (storage.stream_writer): the last entry committed
    "stream": str,
    "last_id": str,
}

ANALYTICS_TABLES = {  # created in this order: a foreign key's table first
    "accounts": (ACCOUNTS, "name"),
    "account_windows": (ACCOUNT_WINDOWS, ("account", "window")),
    "requests": (REQUESTS, "id"),
    "attempts": (ATTEMPTS, "id"),
    "account_events": (ACCOUNT_EVENTS, "id"),
    "usage_hourly": (USAGE_HOURLY, ROLLUP_KEY),
    "payloads": (PAYLOADS, "id"),
    "stream_offsets": (STREAM_OFFSETS, "stream"),
}

# Links Datasette shows (a request's page lists its attempts; an account's page its requests,
# attempts and events). Declared when a table is created; SQLite does not enforce them.
FOREIGN_KEYS = {
    "requests": [("account", "accounts", "name")],
    "attempts": [("request_id", "requests", "id"), ("account", "accounts", "name")],
    "account_events": [("account", "accounts", "name")],
    "account_windows": [("account", "accounts", "name")],
    "payloads": [("id", "requests", "id")],
}

ANALYTICS_INDEXES = {
    "requests": [["started_at"], ["account", "started_at"], ["model", "started_at"],
                 ["client_session"], ["status", "started_at"], ["user", "started_at"],
                 ["conversation", "started_at"]],
    "attempts": [["request_id"], ["account", "started_at"]],
    "account_events": [["at"], ["account", "at"]],
    "usage_hourly": [["account", "hour"], ["model", "hour"]],
    "payloads": [["created_at"]],
}

STATE_TABLES = {
    "account_state": ({"name": str, "provider": str, "data": str, "updated_at": str}, "name"),
    "oauth_tokens": ({"name": str, "access_token": str, "refresh_token": str,
                      "expires_at": float, "source_fingerprint": str, "last_refresh_at": str,
                      "updated_at": str}, "name"),
    "operator_commands": ({"id": int, "command": str, "account": str, "created_at": str,
                           "uid": str}, "id"),
    "users": ({"name": str, "key_hash": str, "key_prefix": str, "disabled": int,
               "allowed_models": str, "allowed_providers": str, "daily_cap_usd": float,
               "monthly_cap_usd": float, "created_at": str, "updated_at": str,
               "max_concurrent": int}, "name"),
}


def migrate(db: sqlite_utils.Database, tables: dict, indexes: dict | None = None) -> None:
    """Create missing tables, add missing columns and create missing indexes. A new
    ``usage_hourly`` table is filled from the rows already recorded; a new
    ``requests.wire_format`` column from the rows' path (:func:`split_wire_format`)."""
    for name, (columns, pk) in tables.items():
        table = db.table(name)
        if not table.exists():
            table.create(columns, pk=pk, foreign_keys=FOREIGN_KEYS.get(name))
            if name == "usage_hourly" and db.table("requests").exists():
                with db.atomic():
                    rebuild_rollup(db.conn)
        else:
            existing = set(table.columns_dict)
            for column, kind in columns.items():
                if column not in existing:
                    table.add_column(column, kind)
            if name == "requests" and "wire_format" not in existing:
                with db.atomic():
                    split_wire_format(db.conn)
    for name, index_list in (indexes or {}).items():
        for cols in index_list:
            db.table(name).create_index(cols, if_not_exists=True)


WIRE_FORMAT_OF_PATH = ("case when path like '/v1/messages%' then 'anthropic' when "
                       + " or ".join(f"path like '{p}%'" for p in OPENAI_PATHS)
                       + " then 'openai' end")
"""SQL: the wire format of a `requests` row's path, as :func:`mitmflare.providers.format_of_path`
reads it (NULL for other paths)."""


def split_wire_format(conn) -> None:
    """Migrate `requests` rows recorded before the ``wire_format`` column (same transaction as
    the caller's): where no account served, ``provider`` held the client's wire format, which
    moves to ``wire_format`` (``provider`` becomes NULL, in ``usage_hourly`` too); other rows
    get the wire format of their path. ``provider`` then always means the account's."""
    conn.execute("update requests set wire_format = provider, provider = null "
                 "where account is null and provider is not null")
    conn.execute(f"update requests set wire_format = {WIRE_FORMAT_OF_PATH} "
                 "where wire_format is null")
    if conn.execute("select 1 from sqlite_master where name = 'usage_hourly'").fetchone():
        sums = ", ".join(ROLLUP_SUMS)
        conn.execute(
            f"insert into usage_hourly (hour, provider, account, model, {sums}) "
            f"select hour, '', account, model, {sums} from usage_hourly "
            "where account = '' and provider != '' "
            "on conflict (hour, provider, account, model) do update set "
            + ", ".join(f"{c} = coalesce({c}, 0) + coalesce(excluded.{c}, 0)" for c in ROLLUP_SUMS))
        conn.execute("delete from usage_hourly where account = '' and provider != ''")


def _key_sql() -> list[str]:
    return ["substr(started_at, 1, 13)", "coalesce(provider, '')", "coalesce(account, '')",
            "coalesce(model, '')"]


ROLLUP_UPSERT = (
    f"insert into usage_hourly ({', '.join((*ROLLUP_KEY, *ROLLUP_SUMS))}) "
    f"select {', '.join(_key_sql())}, {', '.join(f'sum({e})' for e in ROLLUP_SUMS.values())} "
    "from requests where {where} group by 1, 2, 3, 4 "
    f"on conflict ({', '.join(ROLLUP_KEY)}) do update set "
    + ", ".join(f"{c} = coalesce({c}, 0) + excluded.{c}" for c in ROLLUP_SUMS)
)


def add_to_rollup(conn, ids: list[str]) -> None:
    """Add the `requests` rows with these ids to ``usage_hourly`` (same transaction)."""
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        where = f"id in ({', '.join('?' * len(chunk))})"
        conn.execute(ROLLUP_UPSERT.format(where=where), chunk)


def rebuild_rollup(conn) -> None:
    """Recompute ``usage_hourly`` from every `requests` row."""
    conn.execute("delete from usage_hourly")
    conn.execute(ROLLUP_UPSERT.format(where="1"))
