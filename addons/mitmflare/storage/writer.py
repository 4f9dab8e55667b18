"""The database writer: the only code that writes the analytics database (``flare_db``), and
the code that stores account state in the state database (``flare_state``, through
:mod:`.state_store`; the proxy also stores rotated OAuth pairs there, and the ``mitmflare``
command users, logins and resets).

The proxy runs it in a child process (:mod:`.writer_process`), fed over a pipe; it can also
run as a thread of the caller's process (tests, benchmarks). :meth:`DatabaseWriter.put` only
appends to a deque (no lock, no wake-up). The thread wakes every ``FLUSH_S`` (at once for a
flush or stop), takes what has arrived (at most ``BATCH_MAX``), computes costs, and writes each
batch in one transaction per database with prepared statements. Time columns may be given as
epoch seconds (float); they are formatted here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from functools import partial
from typing import Any

import sqlite_utils

from ..times import iso_utc
from . import retention, rows, schema
from .cache_forensics import CacheForensics
from .state_store import SqliteStateStore, StoreUnavailable, file_identity

log = logging.getLogger(__name__)

BATCH_MAX = 5000
FLUSH_S = 0.5        # the thread wakes this often (items wait at most this long)
UPKEEP_S = 10.0      # file sizes refreshed this often
PRUNE_EVERY_S = 3600.0


def open_analytics_db(path: str) -> sqlite_utils.Database:
    """Open (creating) the analytics database in WAL mode so Datasette can read it live."""
    db = sqlite_utils.Database(sqlite3.connect(path, timeout=10))
    db.enable_wal()
    schema.migrate(db, schema.ANALYTICS_TABLES, schema.ANALYTICS_INDEXES)
    return db


STORAGE_RETRY_S = 1.0   # a write the disk refused is tried again this often
BACKLOG_MAX = 100_000   # items kept in memory while the disk refuses writes (then the oldest go)


def is_storage_error(error: BaseException) -> bool:
    """True for SQLite errors about the file or the disk (full, I/O error, read-only, cannot
    open, locked too long), which pass when the disk does; False for errors about a row."""
    cause = error.__cause__ if isinstance(error, StoreUnavailable) else error
    return isinstance(cause, sqlite3.OperationalError)


class _Batch:
    """One cycle's items, ready to commit: analytics rows ``(table, row)``, finished
    `requests` rows (for spend and log lines), the latest snapshots, and the flush markers to
    set once all of it is committed (or dropped and counted)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[dict[str, Any]] = []
        self.accounts: list[dict[str, Any]] | None = None
        self.windows: list[dict[str, Any]] | None = None
        self.state: list[dict[str, dict]] = []
        self.markers: list[Any] = []

    def __len__(self) -> int:
        return len(self.rows) + (self.accounts is not None) + (self.windows is not None) + len(
            self.state)


class DatabaseWriter(threading.Thread):
    """Owns the connection to ``analytics_path`` and, in its process, the state store of
    ``state_path`` (:class:`~.state_store.SqliteStateStore`).

    Queue items are ``(kind, payload)``; kinds: ``request``, ``attempt``, ``event`` (rows for
    the analytics tables), ``offset`` (``{"stream", "last_id"}``: a Redis Stream position,
    committed in the same transaction as the rows before it), ``accounts`` (the full list of
    account rows), ``state`` (account name -> persisted state dict), ``flush`` (an object
    whose ``set()`` is called once everything before it is committed, or dropped and counted).

    Faults: a write the disk refuses (full, I/O error, read-only) keeps its rows in memory and
    is tried again every ``STORAGE_RETRY_S`` in order, up to ``BACKLOG_MAX`` items (then the
    oldest are dropped and counted); ``degraded`` says why meanwhile. A database file deleted
    or replaced while open is noticed after each commit (its inode), created again with the
    schema, and the batch written again into it (``recreated`` counts it). `requests` rows are
    inserted once per id: a batch sent again after a writer crash adds nothing twice.
    """

    def __init__(self, analytics_path: str, state_path: str) -> None:
        super().__init__(name="mitmflare-db-writer", daemon=True)
        self.analytics_path = analytics_path
        self.state_path = state_path
        self._items: deque[tuple[str, Any] | None] = deque()  # append/popleft are atomic
        self._urgent = threading.Event()  # a flush or stop is waiting: wake now
        self.ready = threading.Event()
        self.write_errors = 0  # items (rows or snapshots) that were not written
        self.rows_lost = 0     # `requests` rows among them
        self.degraded = ""     # why writes are held back now ("" when they go through)
        self.recreated = 0     # database files found deleted or replaced and created again
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
        self._backlog: deque[_Batch] = deque()  # prepared batches not yet committed, oldest first
        self._next_retry = 0.0
        self._dbs: dict[str, sqlite_utils.Database] = {}
        self._state = SqliteStateStore(state_path, synchronous="normal")
        self._inodes: dict[str, tuple[int, int]] = {}
        self.after_batch: Callable[[], None] | None = None  # called after each cycle
        self.forensics = CacheForensics()  # why each request wrote to the prompt cache

    @property
    def state(self) -> str:
        """``ok``, ``degraded (reason)`` or ``down`` (the thread is not running)."""
        if not self.is_alive():
            return "down"
        return f"degraded ({self.degraded})" if self.degraded else "ok"

    # -- producer side (event loop) ---------------------------------------------------------
    def put(self, kind: str, payload: Any) -> None:
        """Queue one item (see the class docstring); never blocks."""
        self._items.append((kind, payload))

    def put_frame(self, items: list[tuple[str, Any]]) -> None:
        """Queue items that are committed in one cycle (never split across two)."""
        self._items.append(("frame", items))

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
        self._open("analytics")
        self._open("state")
        self._load_spend(self._dbs["analytics"])
        self.forensics.load(self._dbs["analytics"].conn, time.time())
        self.ready.set()
        running = True
        while running:
            batch = self._collect()
            if None in batch:
                running = False
                batch = [b for b in batch if b is not None]
            if batch:
                self._backlog.append(self._prepare(batch))  # type: ignore[arg-type]
            self._drain(final=not running)
            try:
                self._upkeep(self._dbs["analytics"])
            except Exception as error:  # never let a surprise kill the writer
                if not is_storage_error(error):
                    log.exception("database writer: upkeep failed")
            if self.after_batch is not None:
                try:
                    self.after_batch()
                except Exception:
                    log.exception("database writer: after-batch callback failed")
        for db in self._dbs.values():
            db.conn.close()
        self._state.close()

    def _open(self, which: str) -> None:
        """(Re)open one database, creating the file and schema when missing."""
        if which == "state":
            self._state.open()
            self._inodes[which] = file_identity(self.state_path)
            return
        old = self._dbs.pop(which, None)
        if old is not None:
            with contextlib.suppress(sqlite3.Error):
                old.conn.close()  # the last connection of an unlinked file: its WAL goes too
        db = open_analytics_db(self.analytics_path)
        db.execute("pragma synchronous=normal")  # WAL: durable across crashes, not power cuts
        self._dbs[which] = db
        self._inodes[which] = file_identity(self.analytics_path)

    def _replaced(self, which: str) -> bool:
        """The file at the database's path is no longer the one open (deleted or replaced):
        open it again (new schema) and say so."""
        path = self.analytics_path if which == "analytics" else self.state_path
        if file_identity(path) == self._inodes[which]:
            return False
        self.recreated += 1
        log.error("database writer: the %s database %s was deleted or replaced while open; "
                  "creating it again (rows from now on are written to the new file)", which, path)
        self._open(which)
        return True

    def _collect(self) -> list[tuple[str, Any] | None]:
        """Sleep ``FLUSH_S`` (less for a flush or stop; not at all with ``BATCH_MAX`` items
        waiting), then take up to ``BATCH_MAX`` items (whole frames), ending at a stop: one
        transaction then covers many rows. An empty list when nothing came (time for upkeep)."""
        if len(self._items) < BATCH_MAX:
            self._urgent.wait(FLUSH_S)
        self._urgent.clear()  # a flush queued after this sets it again: no wake-up is lost
        batch: list[tuple[str, Any] | None] = []
        while len(batch) < BATCH_MAX and self._items:
            item = self._items.popleft()
            if item is not None and item[0] == "frame":
                batch.extend(item[1])
                continue
            batch.append(item)
            if item is None:
                break
        return batch

    def _prepare(self, batch: list[tuple[str, Any]]) -> _Batch:
        """Finish the rows (usage, cost) once; a row that cannot be finished is counted."""
        ready = _Batch()
        for kind, payload in batch:
            if kind == "request":
                captured = payload.pop(rows.PAYLOAD, None)
                try:
                    ready.requests.append(rows.complete(payload))
                    self.forensics.attribute(payload)
                    ready.rows.append(("requests", payload))
                    if captured is not None:
                        ready.rows.append(("payloads", rows.payload_row(
                            payload["id"], payload["started_at"], captured)))
                except Exception:
                    self._lost("requests", payload.get("id"))
            elif kind in ("attempt", "event"):
                ready.rows.append(("attempts" if kind == "attempt" else "account_events",
                                   payload))
            elif kind == "offset":  # committed with the rows it follows (see .stream_writer)
                ready.rows.append(("stream_offsets", payload))
            elif kind == "accounts":
                ready.accounts = payload
            elif kind == "windows":
                ready.windows = payload
            elif kind == "state":
                ready.state.append(payload)
            elif kind == "flush":
                ready.markers.append(payload)
        return ready

    def _drain(self, final: bool = False) -> None:
        """Commit the waiting batches in order; stop at a write the disk refuses (kept for the
        next try, ``STORAGE_RETRY_S`` later). ``final``: what cannot be written now is dropped
        and counted."""
        if self._backlog and self.degraded and time.monotonic() < self._next_retry and not final:
            self._trim()
            return
        while self._backlog:
            batch = self._backlog[0]
            try:
                self._commit(batch)
            except Exception as error:
                if not is_storage_error(error):  # never let a surprise kill the writer
                    log.exception("database writer: a batch of %d items failed", len(batch))
                    self._drop(self._backlog.popleft())
                    continue
                waiting = sum(len(b) for b in self._backlog)
                if not self.degraded:
                    log.error("database writer: cannot write (%s); keeping %d items in memory "
                              "and trying again every %.0f s", error, waiting, STORAGE_RETRY_S)
                self.degraded = f"{error}; {waiting} items waiting"
                self._next_retry = time.monotonic() + STORAGE_RETRY_S
                if final:
                    while self._backlog:
                        self._drop(self._backlog.popleft())
                self._trim()
                return
            self._backlog.popleft()
            _settle(batch)
        if self.degraded:
            log.warning("database writer: writing again (%s before)", self.degraded)
            self.degraded = ""

    def _trim(self) -> None:
        """Keep at most ``BACKLOG_MAX`` items waiting: drop (and count) the oldest batches."""
        waiting = sum(len(b) for b in self._backlog)
        while self._backlog and waiting > BACKLOG_MAX:
            batch = self._backlog.popleft()
            waiting -= len(batch)
            self._drop(batch)

    def _drop(self, batch: _Batch) -> None:
        for table, _ in batch.rows:
            self._count_lost(table)
        self.write_errors += len(batch) - len(batch.rows)
        if batch.rows:
            log.error("database writer: %d rows dropped", len(batch.rows))
        _settle(batch)

    def _commit(self, batch: _Batch) -> None:
        """Write one batch; each part is marked done once committed, so a retry after a
        storage error writes only what is left. Raises the storage error."""
        if batch.rows:
            self._insert_rows(batch.rows)
            if self._replaced("analytics"):
                self._insert_rows(batch.rows)
            batch.rows = []
            self._count_spend(batch.requests)
            if self.request_log:
                for row in batch.requests:
                    log.info("%s", request_line(row), extra=_log_fields(row))
        analytics = self._dbs["analytics"]
        if batch.accounts is not None:
            self._guarded("accounts", partial(_atomic, analytics, _write_accounts, batch.accounts))
            batch.accounts = None
        if batch.windows is not None:
            self._guarded("account windows", partial(_atomic, analytics, _write_windows,
                                                     batch.windows))
            batch.windows = None
        if batch.state:
            self._replaced("state")
            merged: dict[str, dict] = {}
            for snapshot in batch.state:
                merged.update(snapshot)
            self._guarded("account state", partial(self._state.save_account_states, merged))
            batch.state = []

    def _insert_rows(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Insert rows in one transaction, skipping `requests` (and their payloads) already
        there; if a row is at fault, row by row, dropping (and counting) those that fail."""
        conn = self._dbs["analytics"].conn
        items = _new_only(conn, items)
        try:
            with self._dbs["analytics"].atomic():
                _insert(conn, items)
        except Exception as error:
            if is_storage_error(error):
                raise
            # One bad row costs only itself: write them one by one, drop the ones that fail.
            log.warning("database writer: a batch of %d rows failed; writing them one by one",
                        len(items))
            for item in items:
                try:
                    with self._dbs["analytics"].atomic():
                        _insert(conn, [item])
                except Exception as row_error:
                    if is_storage_error(row_error):
                        raise
                    self._lost(item[0], item[1].get("id") or item[1].get("request_id"))

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
        for name, day, cost in analytics.execute(
                "select account, substr(started_at, 1, 10), sum(cost_usd) from requests "
                "where overage = 1 and account is not null and started_at >= ? group by 1, 2",
                [month]).fetchall():
            spend[("overage", name, day)] += cost or 0.0
            spend[("overage", name, day[:7])] += cost or 0.0
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
            if row.get("overage") and row.get("account"):  # for overage_cap_usd
                for key in (("overage", row["account"], started[:10]),
                            ("overage", row["account"], started[:7])):
                    spend[key] = spend.get(key, 0.0) + cost

    def _count_lost(self, table: str) -> None:
        self.write_errors += 1
        if table == "requests":
            self.rows_lost += 1

    def _lost(self, table: str, flow_id: str | None) -> None:
        self._count_lost(table)
        log.exception("database writer: a %s row of flow %s was not written", table, flow_id)

    def _guarded(self, what: str, write: Callable[[], None]) -> None:
        """Run ``write`` (one transaction): an error about its rows is counted and logged, a
        storage error raised."""
        try:
            write()
        except Exception as error:
            if is_storage_error(error):
                raise
            self.write_errors += 1
            log.exception("database writer: %s not written", what)


def _settle(batch: _Batch) -> None:
    for marker in batch.markers:
        marker.set()
    batch.markers = []


def _new_only(conn: sqlite3.Connection,
              items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``items`` without the `requests` rows (and their payloads) whose id is already
    recorded: a batch sent again after a writer crash."""
    ids = [row["id"] for table, row in items if table == "requests"]
    seen: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        seen.update(r[0] for r in conn.execute(
            f"select id from requests where id in ({', '.join('?' * len(chunk))})", chunk))
    if not seen:
        return items
    return [(t, r) for t, r in items if not (t in ("requests", "payloads") and r["id"] in seen)]


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


def _atomic(db: sqlite_utils.Database, write, payload: Any) -> None:
    with db.atomic():
        write(db, payload)


def _write_accounts(analytics: sqlite_utils.Database, account_rows: list[dict[str, Any]]) -> None:
    names = [r["name"] for r in account_rows]
    analytics.execute(f"delete from accounts where name not in ({','.join('?' * len(names))})",
                      names)
    if account_rows:
        analytics.table("accounts").upsert_all(account_rows, pk="name")


def _write_windows(analytics: sqlite_utils.Database, window_rows: list[dict[str, Any]]) -> None:
    """Replace `account_windows` with the latest snapshot (a small table)."""
    analytics.execute("delete from account_windows")
    if window_rows:
        analytics.table("account_windows").insert_all(window_rows)


_COLUMNS = {
    "requests": list(schema.REQUESTS),
    "attempts": [c for c in schema.ATTEMPTS if c != "id"],
    "account_events": [c for c in schema.ACCOUNT_EVENTS if c != "id"],
    "payloads": list(schema.PAYLOADS),
    "stream_offsets": list(schema.STREAM_OFFSETS),
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
