"""The database writer thread: the only code that touches SQLite while the proxy runs.

Hooks on the event loop call the ``put_*`` methods, which only append to a queue. The thread
drains the queue in batches (up to ``BATCH_MAX`` items, at least every ``FLUSH_S``), computes
costs, and writes each batch in one transaction per database.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from typing import Any

import sqlite_utils

from . import rows, schema
from .times import iso_utc

log = logging.getLogger(__name__)

BATCH_MAX = 2000
FLUSH_S = 0.25


def open_state_db(path: str) -> sqlite_utils.Database:
    """Open (creating with mode 0600) the state database that holds secrets and cooldowns."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    db = sqlite_utils.Database(sqlite3.connect(path, timeout=10))
    db.enable_wal()
    schema.migrate(db, schema.STATE_TABLES)
    return db


def open_analytics_db(path: str) -> sqlite_utils.Database:
    """Open (creating) the analytics database in WAL mode so Datasette can read it live."""
    db = sqlite_utils.Database(sqlite3.connect(path, timeout=10))
    db.enable_wal()
    schema.migrate(db, schema.ANALYTICS_TABLES, schema.ANALYTICS_INDEXES)
    return db


class DatabaseWriter(threading.Thread):
    """Owns the connections to ``analytics_path`` and ``state_path``.

    Queue items are ``(kind, payload)``; kinds: ``request``, ``attempt``, ``event`` (rows for
    the analytics tables), ``accounts`` (the full list of account rows), ``state``
    (account name -> persisted state dict), ``tokens`` (OAuth token rows), ``flush``
    (a :class:`threading.Event` set once everything before it is written).
    """

    def __init__(self, analytics_path: str, state_path: str) -> None:
        super().__init__(name="mitmflare-db-writer", daemon=True)
        self.analytics_path = analytics_path
        self.state_path = state_path
        self._queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.rows_written = 0
        self.ready = threading.Event()

    # -- producer side (event loop) ---------------------------------------------------------
    def put(self, kind: str, payload: Any) -> None:
        self._queue.put((kind, payload))

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is written (for shutdown and tests)."""
        done = threading.Event()
        self.put("flush", done)
        return done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self.join(timeout)

    # -- consumer side (this thread) --------------------------------------------------------
    def run(self) -> None:
        analytics = open_analytics_db(self.analytics_path)
        state = open_state_db(self.state_path)
        self.ready.set()
        running = True
        while running:
            try:
                first = self._queue.get(timeout=FLUSH_S)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                running = False
                batch = [b for b in batch if b is not None]
            try:
                self._write(analytics, state, batch)
            except Exception:  # never let one bad batch kill the writer
                log.exception("database writer: a batch of %d items was not written", len(batch))
            for kind, payload in batch:
                if kind == "flush":
                    payload.set()
        analytics.conn.close()
        state.conn.close()

    def _write(self, analytics: sqlite_utils.Database, state: sqlite_utils.Database,
               batch: list[tuple[str, Any]]) -> None:
        grouped: dict[str, list[Any]] = defaultdict(list)
        for kind, payload in batch:
            grouped[kind].append(payload)
        requests = [rows.complete(r) for r in grouped.get("request", [])]
        with analytics.atomic():
            if requests:
                analytics["requests"].insert_all(requests, pk="id", replace=True)
                schema.add_to_rollup(analytics.conn, [r["id"] for r in requests])
            if grouped.get("attempt"):
                analytics["attempts"].insert_all(grouped["attempt"], pk="id")
            if grouped.get("event"):
                analytics["account_events"].insert_all(grouped["event"], pk="id")
            if grouped.get("accounts"):
                account_rows = grouped["accounts"][-1]
                names = [r["name"] for r in account_rows]
                analytics.execute(
                    f"delete from accounts where name not in ({','.join('?' * len(names))})",
                    names)
                if account_rows:
                    analytics["accounts"].upsert_all(account_rows, pk="name")
        if grouped.get("state") or grouped.get("tokens"):
            with state.atomic():
                merged: dict[str, dict] = {}
                for snapshot in grouped.get("state", []):
                    merged.update(snapshot)
                now = iso_utc(time.time())
                state["account_state"].upsert_all(
                    [{"name": n, "provider": d.pop("provider", None), "data": json.dumps(d),
                      "updated_at": now} for n, d in merged.items()], pk="name")
                for token_row in grouped.get("tokens", []):
                    state["oauth_tokens"].upsert(token_row, pk="name")
        self.rows_written += len(requests)


def load_state(path: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Read persisted account state and OAuth tokens (startup only, before traffic).

    Returns (name -> state dict, name -> token row)."""
    db = open_state_db(path)
    try:
        states = {r["name"]: {**json.loads(r["data"] or "{}"), "provider": r["provider"]}
                  for r in db["account_state"].rows}
        tokens = {r["name"]: r for r in db["oauth_tokens"].rows}
    finally:
        db.conn.close()
    return states, tokens
