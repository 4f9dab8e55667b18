"""The database writer: the only code that writes the SQLite files while the proxy runs.

The proxy runs it in a child process (:mod:`.writer_process`), fed over a pipe; it can also
run as a thread of the caller's process (tests, benchmarks). :meth:`DatabaseWriter.put` only
appends to a deque (no lock, no wake-up). The thread wakes every ``FLUSH_S`` (at once for a
flush or stop), takes what has arrived (at most ``BATCH_MAX``), computes costs, and writes each
batch in one transaction per database with prepared statements. Time columns may be given as
epoch seconds (float); they are formatted here.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import sqlite_utils

from . import retention, rows, schema
from .times import iso_utc

log = logging.getLogger(__name__)

BATCH_MAX = 5000
FLUSH_S = 0.5        # the thread wakes this often (items wait at most this long)
UPKEEP_S = 10.0      # file sizes refreshed this often
PRUNE_EVERY_S = 3600.0


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
    (account name -> persisted state dict), ``flush``
    (a :class:`threading.Event` set once everything before it is written).
    """

    def __init__(self, analytics_path: str, state_path: str) -> None:
        super().__init__(name="mitmflare-db-writer", daemon=True)
        self.analytics_path = analytics_path
        self.state_path = state_path
        self._items: deque[tuple[str, Any] | None] = deque()  # append/popleft are atomic
        self._urgent = threading.Event()  # a flush or stop is waiting: wake now
        self.ready = threading.Event()
        self.write_errors = 0  # rows (or snapshots) that could not be written
        self.request_log = False  # log one line per written `requests` row
        # USD spent this month per ("user" | "account", name, "YYYY-MM-DD" | "YYYY-MM"), UTC:
        # read by the event loop (plain dict reads) for users' caps and accounts' budgets
        self.spend: dict[tuple[str, str, str], float] = {}
        self.retention_days = 0.0          # requests/attempts/events older than this go (0: keep)
        self.payload_retention_days = 7.0  # captured payloads older than this go
        self.db_bytes = 0                  # sizes of the analytics database and its WAL (bytes)
        self.wal_bytes = 0
        self._next_upkeep = 0.0
        self._next_prune = 0.0
        self._prune_plan: list[tuple[str, str]] = []  # (table, cutoff) still to prune
        self.after_batch: Callable[[], None] | None = None  # called after each cycle

    # -- producer side (event loop) ---------------------------------------------------------
    def put(self, kind: str, payload: Any) -> None:
        """Queue one item (see the class docstring); never blocks."""
        self._items.append((kind, payload))

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is written (for shutdown and tests)."""
        done = threading.Event()
        self.put("flush", done)
        self._urgent.set()
        return done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the databases and end the thread."""
        self._items.append(None)
        self._urgent.set()
        self.join(timeout)

    # -- consumer side (this thread) --------------------------------------------------------
    def run(self) -> None:
        analytics = open_analytics_db(self.analytics_path)
        state = open_state_db(self.state_path)
        for db in (analytics, state):
            db.execute("pragma synchronous=normal")  # WAL: durable across crashes, not power cuts
        self._load_spend(analytics)
        self.ready.set()
        running = True
        while running:
            batch = self._collect()
            if None in batch:
                running = False
                batch = [b for b in batch if b is not None]
            try:
                if batch:
                    self._write(analytics, state, batch)
                self._upkeep(analytics)
            except Exception:  # never let a surprise kill the writer
                self.write_errors += 1
                log.exception("database writer: a batch of %d items failed", len(batch))
            if self.after_batch is not None:
                try:
                    self.after_batch()
                except Exception:
                    log.exception("database writer: after-batch callback failed")
            for kind, payload in batch:
                if kind == "flush":
                    payload.set()
        analytics.conn.close()
        state.conn.close()

    def _collect(self) -> list[tuple[str, Any] | None]:
        """Sleep ``FLUSH_S`` (less for a flush or stop; not at all with ``BATCH_MAX`` items
        waiting), then take up to ``BATCH_MAX`` items, ending at a stop: one transaction then
        covers many rows. An empty list when nothing came (time for upkeep)."""
        if len(self._items) < BATCH_MAX:
            self._urgent.wait(FLUSH_S)
        self._urgent.clear()  # a flush queued after this sets it again: no wake-up is lost
        batch: list[tuple[str, Any] | None] = []
        while len(batch) < BATCH_MAX and self._items:
            batch.append(self._items.popleft())
            if batch[-1] is None:
                break
        return batch

    def _write(self, analytics: sqlite_utils.Database, state: sqlite_utils.Database,
               batch: list[tuple[str, Any]]) -> None:
        grouped: dict[str, list[Any]] = defaultdict(list)
        for kind, payload in batch:
            grouped[kind].append(payload)
        requests, payloads = [], []
        for row in grouped.get("request", []):
            captured = row.pop(rows.PAYLOAD, None)
            try:
                requests.append(rows.complete(row))
                if captured is not None:
                    payloads.append(rows.payload_row(row["id"], row["started_at"], captured))
            except Exception:
                self._lost("request", row.get("id"))
        items = [("requests", r) for r in requests] + [("payloads", p) for p in payloads]
        items += [(table, r) for kind, table in (("attempt", "attempts"), ("event", "account_events"))
                  for r in grouped.get(kind, [])]
        try:
            with analytics.atomic():
                _insert(analytics.conn, items)
        except Exception:
            # One bad row costs only itself: write them one by one, drop the ones that fail.
            log.warning("database writer: a batch of %d rows failed; writing them one by one",
                        len(items))
            for item in items:
                try:
                    with analytics.atomic():
                        _insert(analytics.conn, [item])
                except Exception:
                    self._lost(item[0], item[1].get("id") or item[1].get("request_id"))
        self._count_spend(requests)
        if self.request_log:
            for row in requests:
                log.info("%s", request_line(row), extra=_log_fields(row))
        if grouped.get("accounts"):
            self._guarded("accounts", _write_accounts, analytics, grouped["accounts"][-1])
        if grouped.get("windows"):
            self._guarded("account windows", _write_windows, analytics, grouped["windows"][-1])
        if grouped.get("state"):
            self._guarded("account state", _write_state, state, grouped["state"])

    def _upkeep(self, analytics: sqlite_utils.Database) -> None:
        """Between batches: refresh the file sizes (every 10 s) and, once an hour, prune rows
        past their retention one batch per call, so request rows are never held up for more
        than one short delete."""
        now = time.time()
        if now >= self._next_upkeep:
            self._next_upkeep = now + UPKEEP_S
            self.db_bytes = _size(self.analytics_path)
            self.wal_bytes = _size(self.analytics_path + "-wal")
        if not self._prune_plan and now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            plan = [(t, retention.cutoff(self.retention_days, now))
                    for t in ("requests", "attempts", "account_events") if self.retention_days]
            plan.append(("payloads", retention.cutoff(self.payload_retention_days, now)))
            existing = retention.tables(analytics.conn)
            self._prune_plan = [(t, c) for t, c in plan if t in existing]
        if self._prune_plan:
            table, before = self._prune_plan[0]
            if retention.prune_batch(analytics.conn, table, before) < retention.BATCH_ROWS:
                self._prune_plan.pop(0)

    def _load_spend(self, analytics: sqlite_utils.Database) -> None:
        """Users' and accounts' recorded spend this month, per day and in total (startup)."""
        month = time.strftime("%Y-%m", time.gmtime())
        spend: dict[tuple[str, str, str], float] = defaultdict(float)
        for kind in SPENDERS:
            for name, day, cost in analytics.execute(
                    f"select {kind}, substr(started_at, 1, 10), sum(cost_usd) from requests "
                    f"where {kind} is not null and started_at >= ? group by 1, 2",
                    [month]).fetchall():
                spend[(kind, name, day)] += cost or 0.0
                spend[(kind, name, day[:7])] += cost or 0.0
        self.spend = dict(spend)

    def _count_spend(self, requests: list[dict[str, Any]]) -> None:
        spend = self.spend
        for row in requests:
            cost, started = row.get("cost_usd"), row.get("started_at")
            if not cost or not isinstance(started, str):
                continue
            for kind in SPENDERS:
                name = row.get(kind)
                if name:
                    for key in ((kind, name, started[:10]), (kind, name, started[:7])):
                        spend[key] = spend.get(key, 0.0) + cost

    def _lost(self, table: str, flow_id: str | None) -> None:
        self.write_errors += 1
        log.exception("database writer: a %s row of flow %s was not written", table, flow_id)

    def _guarded(self, what: str, write, db: sqlite_utils.Database, payload: Any) -> None:
        try:
            with db.atomic():
                write(db, payload)
        except Exception:
            self.write_errors += 1
            log.exception("database writer: %s not written", what)


def _log_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The fields of a request for a structured log line (see :mod:`.log_format`)."""
    return {"flow_id": row.get("id"), "account": row.get("account"), "model": row.get("model"),
            "status": row.get("status"), "ms": row.get("duration_ms"),
            "input_tokens": row.get("input_tokens"), "output_tokens": row.get("output_tokens"),
            "cost_usd": row.get("cost_usd"), "failover": row.get("failover"),
            "user": row.get("user"), "error": row.get("error")}


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


SPENDERS = ("user", "account")  # `requests` columns whose spend is counted


def request_line(row: dict[str, Any]) -> str:
    """One line for a `requests` row: ``account model status tokens in/out $cost ms``."""
    tokens = f"{row.get('input_tokens') or 0}/{row.get('output_tokens') or 0} tok"
    cost = f"${row['cost_usd']:.4f}" if row.get("cost_usd") is not None else "$?"
    extra = " failover" if row.get("failover") else ""
    extra += f" error: {row['error']}" if row.get("error") else ""
    return (f"{row.get('account') or '-'} {row.get('model') or '-'} {row.get('status')} "
            f"{tokens} {cost} {row.get('duration_ms') or 0:.0f} ms{extra}")


def _insert(conn: sqlite3.Connection, items: list[tuple[str, dict[str, Any]]]) -> None:
    """Insert (table, row) items; `requests` rows are added to the hourly rollup too."""
    by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for table, row in items:
        by_table[table].append(row)
    for table, table_rows in by_table.items():
        conn.executemany(_INSERT[table], [_values(r, table) for r in table_rows])
    if by_table.get("requests"):
        schema.add_to_rollup(conn, [r["id"] for r in by_table["requests"]])


def _write_accounts(analytics: sqlite_utils.Database, account_rows: list[dict[str, Any]]) -> None:
    names = [r["name"] for r in account_rows]
    analytics.execute(f"delete from accounts where name not in ({','.join('?' * len(names))})",
                      names)
    if account_rows:
        analytics["accounts"].upsert_all(account_rows, pk="name")


def _write_windows(analytics: sqlite_utils.Database, window_rows: list[dict[str, Any]]) -> None:
    """Replace `account_windows` with the latest snapshot (a small table)."""
    analytics.execute("delete from account_windows")
    if window_rows:
        analytics["account_windows"].insert_all(window_rows)


def _write_state(state: sqlite_utils.Database, snapshots: list[dict[str, dict]]) -> None:
    merged: dict[str, dict] = {}
    for snapshot in snapshots:
        merged.update(snapshot)
    now = iso_utc(time.time())
    state["account_state"].upsert_all(
        [{"name": n, "provider": d.pop("provider", None), "data": json.dumps(d),
          "updated_at": now} for n, d in merged.items()], pk="name")


_COLUMNS = {
    "requests": list(schema.REQUESTS),
    "attempts": [c for c in schema.ATTEMPTS if c != "id"],
    "account_events": [c for c in schema.ACCOUNT_EVENTS if c != "id"],
    "payloads": list(schema.PAYLOADS),
}
_INSERT = {table: f"insert or replace into {table} ({', '.join(cols)}) "
                  f"values ({', '.join('?' * len(cols))})"
           for table, cols in _COLUMNS.items()}
_TIMES = {table: [i for i, c in enumerate(cols) if c in ("started_at", "at", "until")]
          for table, cols in _COLUMNS.items()}  # positions of the time columns


def _values(row: dict[str, Any], table: str) -> list:
    """The row's values in ``table``'s column order; epoch-second times become ISO 8601
    text."""
    values = [row.get(c) for c in _COLUMNS[table]]
    for i in _TIMES[table]:
        if isinstance(values[i], float):
            values[i] = iso_utc(values[i])
    return values


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
