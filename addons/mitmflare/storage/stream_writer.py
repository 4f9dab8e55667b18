"""``mitmflare writer``: writes the rows every mitmflare process appends to the Redis Stream
(:mod:`.row_stream`) into one analytics database, exactly once.

- **One active writer**: it holds the lease ``mitmflare:writer`` (``SET NX PX``,
  :data:`~.row_stream.WRITER_TTL_MS`, 5 s), renewed on every pass of its read loop (a read
  waits at most :data:`BLOCK_MS`, so some 5 times a second); another one started meanwhile
  checks once a second and takes over when the lease lapses (within about 6 s of a writer's
  death). A lease that lapsed while this writer lived (its loop stalled past the TTL: a
  Redis command's timeout, a starved CPU) is taken again, with a warning saying how long
  the loop went without renewing it.
- **Exactly once**: entries are read with a consumer group (one consumer name, so a restarted
  writer first gets the entries it had read but not acknowledged), handed to a
  :class:`~.writer.DatabaseWriter` thread with their stream position (table
  ``stream_offsets``, committed in the same transaction as their rows), and acknowledged and
  deleted from the stream only once committed. Entries at or before the committed position
  are acknowledged without being written again; `requests` rows are inserted once per id.
- **Spend**: after each commit, the users' and accounts' spend today and this month (UTC) is
  stored in ``mitmflare:spend:<period>`` hashes, which every process reads once a second
  (caps and budgets hold across processes); at start it is stored whole from the database.

- **Settings** of the proxies' own writers, given to ``mitmflare writer`` (``mitmflare run``
  passes its ``flare_retention_days``, ``flare_payload_retention_days`` and
  ``flare_request_log``): rows past their retention are pruned hourly, and with the request
  log one line per written request is logged.

Stops on SIGINT/SIGTERM after committing and acknowledging what it read.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import deque
from typing import Any

from . import row_stream as rs
from .writer import DatabaseWriter
from .writer_process import SETTINGS

log = logging.getLogger(__name__)

READ_COUNT = 200       # entries per read
BLOCK_MS = 200         # a read waits this long for new entries
RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
         "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")


class _Committed:
    """Set by the database thread once its frame is committed: queues the entry ids."""

    def __init__(self, ids: list[bytes], done: deque) -> None:
        self.ids, self.done = ids, done

    def set(self) -> None:
        self.done.append(self.ids)


class StreamWriter:
    """The consumer (see the module docstring): ``run`` until ``stop`` is set."""

    def __init__(self, url: str, analytics_path: str, state_path: str,
                 settings: dict[str, Any] | None = None) -> None:
        self.url = url
        self.db = DatabaseWriter(analytics_path, state_path)
        for name, value in (settings or {}).items():  # before its thread starts pruning
            if name not in SETTINGS:
                raise ValueError(f"mitmflare writer: no setting {name!r}")
            setattr(self.db, name, value)
        self.stop = threading.Event()
        self.me = rs.WORKER
        self.written = 0                       # entries committed since start
        self._done: deque[list[bytes]] = deque()
        self._queued_upto = (0, 0)             # the last entry handed to the database thread
        self._committed = (0, 0)               # the last entry committed (from the database)
        self._pushed: dict[tuple[str, str, str], float] = {}
        self._in_flight = 0                    # frames handed over, not yet committed
        self._cursor: bytes | str = "0"        # reading this consumer's unacknowledged entries
        self._renewed: float | None = None     # time.monotonic() of the last lease taken/renewed

    def run(self) -> int:
        """Consume until :attr:`stop` is set; the exit code."""
        import redis

        self.db.start()
        if not self.db.ready.wait(60):
            log.error("mitmflare writer: the databases did not open")
            return 1
        self._committed = self._load_offset()
        client, leading, pending = None, False, True
        while not self.stop.is_set():
            try:
                if client is None:
                    client = redis.Redis.from_url(self.url, socket_connect_timeout=rs.TIMEOUT_S,
                                                  socket_timeout=rs.TIMEOUT_S + BLOCK_MS / 1000)
                    leading = False
                if not self._lease(client):
                    if leading:
                        log.warning("mitmflare writer: lost the lease; waiting")
                    leading = False
                    self.stop.wait(1.0)
                    continue
                if not leading:
                    log.info("mitmflare writer %s: writing the rows stream into %s", self.me,
                             self.db.analytics_path)
                    self._ensure_group(client)
                    self._push_spend(client, everything=True)
                    leading, pending, self._cursor = True, True, "0"
                pending = self._read(client, pending)
                self._acknowledge(client)
            except (redis.RedisError, OSError) as error:
                log.warning("mitmflare writer: Redis unreachable (%s); trying again", error)
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                self.stop.wait(1.0)
        self.db.stop(timeout=300)
        if client is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                self._acknowledge(client)
                client.eval("if redis.call('get', KEYS[1]) == ARGV[1] then "
                            "return redis.call('del', KEYS[1]) end return 0", 1,
                            rs.WRITER_KEY, self.me)
            client.close()
        return 0

    def _load_offset(self) -> tuple[int, int]:
        import sqlite3

        conn = sqlite3.connect(self.db.analytics_path, timeout=10)
        try:
            row = conn.execute("select last_id from stream_offsets where stream = ?",
                               [rs.STREAM]).fetchone()
        finally:
            conn.close()
        return rs.order(row[0]) if row else (0, 0)

    def _lease(self, client) -> bool:
        """Take or renew the lease (:data:`~.row_stream.WRITER_TTL_MS`); whether this writer
        holds it. Taking it again after it lapsed while held (not renewed in time, no other
        writer in between) logs a warning with the seconds since the last renewal."""
        ttl = rs.WRITER_TTL_MS
        now = time.monotonic()
        if client.set(rs.WRITER_KEY, self.me, nx=True, px=ttl):
            if self._renewed is not None:
                log.warning("mitmflare writer: the lease had lapsed (last renewed %.1f s ago, "
                            "it lasts %.1f s); taken again", now - self._renewed, ttl / 1000)
            self._renewed = now
            return True
        if client.eval(RENEW, 1, rs.WRITER_KEY, self.me, ttl):
            self._renewed = now
            return True
        self._renewed = None  # another writer holds it: taking it later is no lapse of ours
        return False

    def _ensure_group(self, client) -> None:
        import redis
        try:
            client.xgroup_create(rs.STREAM, rs.GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _read(self, client, pending: bool) -> bool:
        """Read the next entries (this consumer's unacknowledged ones first) and hand the new
        ones to the database thread; whether unacknowledged ones may remain."""
        import redis
        try:
            answer = client.xreadgroup(
                rs.GROUP, rs.CONSUMER, {rs.STREAM: self._cursor if pending else ">"},
                count=READ_COUNT, block=None if pending else BLOCK_MS)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            self._ensure_group(client)  # Redis lost the stream (restarted without persistence)
            self._cursor = "0"
            return True
        entries = answer[0][1] if answer else []
        fresh, old, items = [], [], []
        for entry_id, fields in entries:
            at = rs.order(entry_id)
            if at <= self._committed:
                old.append(entry_id)
                continue
            if at <= self._queued_upto:
                continue  # read again after a reconnection: its frame is on its way
            fresh.append(entry_id)
            try:
                items += rs.decode(fields[b"b"])
            except (KeyError, ValueError):
                log.error("mitmflare writer: stream entry %s is not rows; skipped", entry_id)
        if old:
            client.xack(rs.STREAM, rs.GROUP, *old)
            client.xdel(rs.STREAM, *old)
        if fresh:
            last = fresh[-1]
            self._queued_upto = rs.order(last)
            items.append(("offset", {"stream": rs.STREAM, "last_id": last.decode()}))
            items.append(("flush", _Committed(fresh, self._done)))
            self.db.put_frame(items)
            self._in_flight += 1
        if pending and entries:
            self._cursor = entries[-1][0]
        return pending and len(entries) == READ_COUNT

    def _acknowledge(self, client) -> None:
        """Acknowledge and delete the committed entries; store the spend they changed."""
        ids: list[bytes] = []
        while self._done:
            ids += self._done.popleft()
            self._in_flight -= 1
        if not ids:
            return
        self._committed = max(self._committed, rs.order(ids[-1]))
        pipe = client.pipeline(transaction=False)
        pipe.xack(rs.STREAM, rs.GROUP, *ids)
        pipe.xdel(rs.STREAM, *ids)
        pipe.execute()
        self.written += len(ids)
        self._push_spend(client)

    def _push_spend(self, client, everything: bool = False) -> None:
        """Store the spend of today and this month that changed (``everything``: all of it,
        replacing what Redis holds)."""
        day, month = rs.periods(time.time())
        for _ in range(3):
            try:
                spend = dict(self.db.spend)  # the database thread may change it meanwhile
                break
            except RuntimeError:
                continue
        else:
            return
        changed: dict[str, dict[str, float]] = {day: {}, month: {}}
        for key, usd in spend.items():
            kind, name, period = key
            if period in changed and (everything or self._pushed.get(key) != usd):
                changed[period][f"{kind}\x1f{name}"] = usd
        pipe = client.pipeline(transaction=True)
        for period, fields in changed.items():
            if everything:
                pipe.delete(rs.SPEND_KEY + period)
            if fields:
                pipe.hset(rs.SPEND_KEY + period, mapping=fields)
                pipe.expire(rs.SPEND_KEY + period, rs.SPEND_TTL_S)
        pipe.execute()
        self._pushed = spend


def main(url: str, analytics_path: str, state_path: str,
         settings: dict[str, Any] | None = None) -> int:
    """Run the writer until SIGINT/SIGTERM; the exit code. ``settings``: the database
    writer's (:data:`SETTINGS`: ``request_log`` bool, ``retention_days`` and
    ``payload_retention_days`` days; ``retention_days`` 0 keeps rows forever)."""
    writer = StreamWriter(url, analytics_path, state_path, settings)

    def stop(*_: Any) -> None:
        writer.stop.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return writer.run()
