"""Rows through Redis (``flare_redis`` set): every mitmflare process appends its `requests`,
`attempts` and `account_events` rows to one Redis Stream, which one ``mitmflare writer``
(:mod:`.stream_writer`) writes into the analytics database.

Producer side, :class:`StreamSender`: ``put`` appends to a deque (never blocks, safe on the
event loop); a thread sends what gathered every :data:`SEND_S` as one stream entry (``XADD``,
at most :data:`ENTRY_ITEMS` items each), so a request adds no Redis round trip to its own
path. While Redis is unreachable, or the stream holds :data:`STREAM_MAX` entries (no writer
consumes it), rows wait in memory (at most :data:`BUFFER_MAX` items, then the oldest are
dropped and counted) and are sent when it can take them again. Once a second the thread also
reads the stream's length, which writer holds the lease (``mitmflare:writer``) and the spend
the writer recorded today and this month (users' caps and accounts' budgets hold across
processes): :attr:`StreamSender.spend`.

Entries: field ``w`` (the worker, ``host:pid``), field ``b`` (JSON list of ``[kind, payload]``;
bytes as ``{"$b64": …}``). Standard library and redis-py only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

STREAM = "mitmflare:rows"
GROUP = "writers"
CONSUMER = "writer"              # one name: a restarted writer gets its unacknowledged entries
WRITER_KEY = "mitmflare:writer"  # the active writer's lease: its host:pid (PX WRITER_TTL_MS)
WRITER_TTL_MS = 5_000            # renewed on every pass of the writer's loop (some 0.2 s)
SPEND_KEY = "mitmflare:spend:"   # + "YYYY-MM-DD" or "YYYY-MM": hash "kind\x1fname" -> USD
SPEND_TTL_S = 40 * 86400
STREAMED = ("request", "attempt", "event")  # item kinds that go through the stream
SEND_S = 0.05
POLL_S = 1.0           # stream length, writer and spend read this often (s)
RETRY_S = 1.0          # reconnection attempts this often (s)
TIMEOUT_S = 2.0        # connect and command timeout (s)
ENTRY_ITEMS = 200      # items per stream entry at most
STREAM_MAX = 200_000   # entries the stream may hold before rows wait in memory instead
BUFFER_MAX = 100_000   # items kept in memory while they cannot be sent (then the oldest go)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # this process, as rows and /health name it


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not sent through the rows stream")


def _bytes(obj: dict) -> Any:
    if len(obj) == 1 and "$b64" in obj:
        return base64.b64decode(obj["$b64"])
    return obj


def encode(items: list[tuple[str, Any]]) -> str:
    """The ``b`` field of a stream entry for ``items`` ((kind, payload) pairs). Raises
    TypeError for a payload holding something other than JSON types and bytes."""
    return json.dumps(items, default=_default, separators=(",", ":"))


def decode(text: str | bytes) -> list[tuple[str, Any]]:
    """The items of an entry's ``b`` field. Raises ValueError when it is not one."""
    items = json.loads(text, object_hook=_bytes)
    if not isinstance(items, list) or not all(
            isinstance(i, list) and len(i) == 2 and isinstance(i[0], str) for i in items):
        raise ValueError("not a list of [kind, payload]")
    return [(kind, payload) for kind, payload in items]


def order(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as a comparable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def periods(now: float) -> tuple[str, str]:
    """(today, this month) in UTC: ``YYYY-MM-DD``, ``YYYY-MM``."""
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    return day, day[:7]


class StreamSender:
    """Sends rows to the stream from a thread (see the module docstring). Counts:
    :attr:`lost` items dropped (of which :attr:`rows_lost` `requests` rows), :attr:`sent`
    items; :meth:`status` is ``/health``'s ``rows_stream``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.spend: dict[tuple[str, str, str], float] = {}
        self.lost = 0
        self.rows_lost = 0
        self.sent = 0
        self.length = 0                  # entries in the stream at the last poll
        self.writer = ""                 # the writer holding the lease at the last poll
        self.connected = False
        self.down_since: float | None = time.time()
        self.no_writer_since: float | None = None
        self._items: deque[tuple[str, Any]] = deque()
        self._stop = threading.Event()
        self._idle = threading.Event()   # set while nothing waits to be sent
        self._thread = threading.Thread(target=self._run, name="mitmflare-rows-stream",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, kind: str, payload: Any) -> None:
        """Queue one item; never blocks. Beyond :data:`BUFFER_MAX` the oldest is dropped."""
        self._idle.clear()
        self._items.append((kind, payload))
        if len(self._items) > BUFFER_MAX:
            self._drop(self._items.popleft())

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every item queued so far is in the stream (tests, shutdown)."""
        return self._idle.wait(timeout) if self._items else True

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most ``timeout`` s), then end; what is left is
        counted as lost."""
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)
        left = list(self._items)
        self._items.clear()
        for item in left:
            self._drop(item)
        if left:
            log.error("rows stream: %d items not sent before stopping (Redis unreachable)",
                      len(left))

    def status(self) -> dict[str, Any]:
        """``state`` (``ok``, ``down since …`` (Redis), ``no writer since …``, ``full``),
        ``writer``, ``backlog`` (entries in the stream), ``buffered`` (items here), ``lost``
        (items dropped since start)."""
        from ..times import iso_utc

        if not self.connected:
            state = f"down since {iso_utc(self.down_since or time.time())}"
        elif self.length >= STREAM_MAX:
            state = "full"
        elif self.no_writer_since is not None:
            state = f"no writer since {iso_utc(self.no_writer_since)}"
        else:
            state = "ok"
        return {"state": state, "writer": self.writer, "backlog": self.length,
                "buffered": len(self._items), "lost": self.lost}

    # -- the thread ---------------------------------------------------------------------------
    def _drop(self, item: tuple[str, Any]) -> None:
        self.lost += 1
        if item[0] == "request":
            self.rows_lost += 1

    def _run(self) -> None:
        import redis
        client = None
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                if client is None:
                    client = redis.Redis.from_url(self.url, socket_connect_timeout=TIMEOUT_S,
                                                  socket_timeout=TIMEOUT_S)
                if time.monotonic() >= next_poll:
                    self._poll(client)
                    next_poll = time.monotonic() + POLL_S
                self._send(client)
            except (redis.RedisError, OSError) as error:
                if self.connected:
                    log.warning("rows stream: Redis unreachable (%s); rows wait in memory "
                                "(at most %d items)", error, BUFFER_MAX)
                    self.down_since = time.time()
                self.connected = False
                if client is not None:
                    client.close()
                client = None
                self._stop.wait(RETRY_S)
                continue
            if not self._items:
                self._idle.set()
            self._stop.wait(SEND_S)
        if client is not None:
            with contextlib.suppress(redis.RedisError, OSError):  # then counted by stop()
                self._send(client)  # the last items (stop() waited for the others)
            client.close()

    def _poll(self, client) -> None:
        now = time.time()
        day, month = periods(now)
        pipe = client.pipeline(transaction=False)
        pipe.xlen(STREAM)
        pipe.get(WRITER_KEY)
        pipe.hgetall(SPEND_KEY + day)
        pipe.hgetall(SPEND_KEY + month)
        length, writer, today, this_month = pipe.execute()
        if not self.connected:
            log.info("rows stream: connected; %d items waiting here are sent now",
                     len(self._items))
        self.connected, self.down_since = True, None
        self.length = int(length)
        self.writer = writer.decode() if writer else ""
        if self.writer:
            self.no_writer_since = None
        elif self.no_writer_since is None:
            self.no_writer_since = now
        spend: dict[tuple[str, str, str], float] = {}
        for period, fields in ((day, today), (month, this_month)):
            for field, value in fields.items():
                kind, _, name = field.decode().partition("\x1f")
                spend[(kind, name, period)] = float(value)
        self.spend = spend

    def _send(self, client) -> None:
        while self._items and self.length < STREAM_MAX:
            batch = [self._items.popleft() for _ in range(min(ENTRY_ITEMS, len(self._items)))]
            try:
                text = encode(batch)
            except TypeError:
                log.exception("rows stream: a batch of %d items cannot be encoded", len(batch))
                for item in batch:
                    self._drop(item)
                continue
            try:
                client.xadd(STREAM, {"w": WORKER, "b": text})
            except BaseException:
                self._items.extendleft(reversed(batch))  # sent again once Redis is back
                raise
            self.sent += len(batch)
            self.length += 1
