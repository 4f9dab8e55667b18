"""The database writer in a child process: SQLite, body parsing and pricing run outside the
proxy's interpreter, so they never hold the GIL the event loop needs.

Proxy side, :class:`WriterProcess` (the interface of :class:`~.writer.DatabaseWriter`):
``put`` appends to a deque; a sender thread wakes every ``SEND_S`` (at once for a flush or
stop), pickles what has gathered and writes it to the child's stdin as one frame; a reader
thread takes the child's frames from its stdout: status (spend, write errors, database
sizes), flush acknowledgements and log records, which are logged here (so
``flare_log_format`` and mitmproxy's terminal apply to them).

Child side (``python -m mitmflare.storage.writer_process ANALYTICS_DB STATE_DB``): a
:class:`~.writer.DatabaseWriter` thread fed from stdin. It ignores SIGINT and SIGTERM and ends
when stdin says stop or closes, after writing everything it was handed, so a proxy stopped
with SIGKILL loses at most the rows of its last ``SEND_S``. The child confirms each frame once
its items are committed; if it dies, the proxy starts another one and sends again every frame
not confirmed (`requests` rows already written are skipped).

Frames: a 4-byte big-endian length, then a pickle. To the child: ``(seq, items)``, a list of items
``(kind, payload)`` (kinds of :class:`~.writer.DatabaseWriter`; ``flush`` carries a token;
``settings`` a dict of writer attributes) or None (stop). To the proxy: ``("ready",)``,
``("status", dict)``, ``("ack", token)``, ``("committed", seq)``, ``("log", logger, level,
message, fields)``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from typing import IO, Any

from .rows import LOG_FIELDS

log = logging.getLogger(__name__)

SEND_S = 0.05         # rows wait at most this long in the proxy before going to the child
START_TIMEOUT_S = 30.0
FRAME = struct.Struct("!I")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = ("request_log", "retention_days", "payload_retention_days")
UNCONFIRMED_MAX_BYTES = 256 * 1024 * 1024  # frames kept for resending (then only counted)
NICE = 10             # scheduling priority the child lowers itself by (POSIX)


def write_frame(stream: IO[bytes], message: Any) -> None:
    """Write one frame (see the module docstring) and flush. Raises OSError/ValueError when
    the other end is gone."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> tuple[bool, Any]:
    """``(True, message)`` for the next frame, ``(False, None)`` at the end of the stream."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return False, None
    (size,) = FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return False, None
    return True, pickle.loads(data)


class _Sent:
    """A frame handed to a child and not yet confirmed committed: its bytes (None once
    dropped from memory to stay under ``UNCONFIRMED_MAX_BYTES``) and how many items and
    `requests` rows it holds."""

    __slots__ = ("data", "items", "requests")

    def __init__(self, data: bytes | None, items: int, requests: int) -> None:
        self.data, self.items, self.requests = data, items, requests


class WriterProcess:
    """Proxy-side handle of the writer child process; what the proxy uses of
    :class:`~.writer.DatabaseWriter` (``start``, ``ready``, ``put``, ``flush``, ``stop``,
    ``spend``, ``write_errors``, ``rows_lost``, ``db_bytes``, ``wal_bytes``), with its settings
    passed by :meth:`configure`, and :attr:`state` for ``/health``.

    Every frame is kept until the child says its rows are committed; a child that ends (killed,
    crashed) is replaced and the frames it had not committed are sent again to the new one,
    which skips `requests` rows already written. Counts of replaced children are kept."""

    def __init__(self, analytics_path: str, state_path: str) -> None:
        self.analytics_path = analytics_path
        self.state_path = state_path
        self.ready = threading.Event()
        self.spend: dict[tuple[str, str, str], float] = {}
        self.db_bytes = 0
        self.wal_bytes = 0
        self.degraded = ""        # the child's reason its writes are held back ("" when not)
        self.restarts = 0         # children replaced since start
        self._child: dict[str, int] = dict.fromkeys(_COUNTS, 0)   # the running child's counts
        self._before: dict[str, int] = dict.fromkeys(_COUNTS, 0)  # replaced children's, summed
        self._items: deque[tuple[str, Any] | None] = deque()  # append/popleft are atomic
        self._urgent = threading.Event()
        self._acks: dict[int, threading.Event] = {}
        self._tokens = itertools.count()
        self._frames = itertools.count(1)
        self._unconfirmed: OrderedDict[int, _Sent] = OrderedDict()
        self._unconfirmed_bytes = 0
        self._lock = threading.Lock()   # _unconfirmed, _child and _before
        self._settings: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._sender = threading.Thread(target=self._send_loop, name="mitmflare-db-sender",
                                        daemon=True)

    # -- the DatabaseWriter interface -------------------------------------------------------
    @property
    def write_errors(self) -> int:
        """Items (rows or snapshots) that were not written, since start: by any child, or
        lost on the way."""
        return self._count("write_errors")

    @property
    def rows_lost(self) -> int:
        """`requests` rows among :attr:`write_errors`."""
        return self._count("rows_lost")

    @property
    def recreated(self) -> int:
        """Database files the children found deleted or replaced and created again."""
        return self._count("recreated")

    @property
    def state(self) -> str:
        """``ok``, ``degraded (reason)`` or ``down`` (no writer process runs now; rows wait
        in memory for the next one)."""
        proc = self._proc
        if proc is None or proc.poll() is not None or not self.ready.is_set():
            return "down"
        return f"degraded ({self.degraded})" if self.degraded else "ok"

    def configure(self, **settings: Any) -> None:
        """Set writer attributes in the child (:data:`SETTINGS`: ``request_log`` bool,
        ``retention_days`` and ``payload_retention_days`` days); kept for a replaced child.
        Raises ValueError for any other name."""
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ValueError(f"not a writer setting: {', '.join(sorted(unknown))}")
        self._settings.update(settings)
        self.put("settings", settings)

    def start(self) -> None:
        """Start the child and the sender thread; ``ready`` is set once the child has opened
        both databases."""
        self._spawn()
        self._sender.start()

    def put(self, kind: str, payload: Any) -> None:
        """Queue one item; never blocks (safe on the event loop)."""
        self._items.append((kind, payload))

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is written (shutdown and tests)."""
        token = next(self._tokens)
        done = self._acks[token] = threading.Event()
        self.put("flush", token)
        self._urgent.set()
        try:
            return done.wait(timeout)
        finally:
            self._acks.pop(token, None)

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued, let the child write it and end, and wait for it; frames it
        never confirmed are counted as lost."""
        self._items.append(None)
        self._urgent.set()
        self._sender.join(timeout)
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("database writer process %d did not end in %.0f s; killing it",
                          proc.pid, timeout)
                proc.kill()
                proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        self._forget_unconfirmed("the database writer process ended before writing them")

    # -- proxy side threads -----------------------------------------------------------------
    def _count(self, name: str) -> int:
        with self._lock:
            return self._before[name] + self._child[name]

    def _spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)}
        self.ready.clear()
        proc = self._proc = subprocess.Popen(
            [sys.executable, "-m", "mitmflare.storage.writer_process", self.analytics_path,
             self.state_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            start_new_session=True)  # Ctrl-C in a terminal reaches the proxy, not the child
        self._reader = threading.Thread(target=self._read_loop, args=(proc,),
                                        name="mitmflare-db-reader", daemon=True)
        self._reader.start()
        if self._settings and proc.stdin is not None:  # (stdin=PIPE: never None)
            write_frame(proc.stdin, (0, [("settings", dict(self._settings))]))

    def _send_loop(self) -> None:
        while True:
            self._urgent.wait(SEND_S)
            self._urgent.clear()
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._replace()
            batch: list[tuple[str, Any] | None] = []
            while self._items:
                batch.append(self._items.popleft())
                if batch[-1] is None:
                    break
            items = [item for item in batch if item is not None]
            if items:
                self._send(items)
            if batch and batch[-1] is None:
                proc = self._proc
                if proc is not None and proc.stdin is not None:
                    with contextlib.suppress(OSError, ValueError):
                        proc.stdin.close()
                return

    def _send(self, items: list[tuple[str, Any]]) -> None:
        """Hand ``items`` to the child as one frame, kept until it is confirmed committed; a
        child that is gone is replaced (which sends the kept frames again)."""
        seq = next(self._frames)
        data = pickle.dumps((seq, items), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._unconfirmed[seq] = _Sent(
                data, len(items), sum(1 for kind, _ in items if kind == "request"))
            self._unconfirmed_bytes += len(data)
            self._shed()
        try:
            _write_bytes(self._proc, data)
        except (OSError, ValueError, AttributeError):
            self._replace()

    def _shed(self) -> None:
        """Keep at most ``UNCONFIRMED_MAX_BYTES`` of frames in memory (lock held): the oldest
        lose their bytes and are counted as lost only if their child ends before writing."""
        for sent in self._unconfirmed.values():
            if self._unconfirmed_bytes <= UNCONFIRMED_MAX_BYTES:
                return
            if sent.data is not None:
                self._unconfirmed_bytes -= len(sent.data)
                sent.data = None

    def _replace(self) -> None:
        """The child has ended: start another (trying again every second) and send it every
        frame the old one had not confirmed, in order."""
        old = self._proc
        code = old.poll() if old is not None else None
        if old is not None and old.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                old.stdin.close()
        with self._lock:
            for name in _COUNTS:
                self._before[name] += self._child[name]
                self._child[name] = 0
            waiting = len(self._unconfirmed)
        self.restarts += 1
        # a warning: nothing is lost (and an error in mitmproxy's first seconds stops it)
        log.warning("database writer process ended (exit code %s); starting another and "
                    "sending again the %d batches it had not written", code, waiting)
        while not self._start_child():
            time.sleep(1.0)
        with self._lock:
            frames = list(self._unconfirmed.items())
        for seq, sent in frames:
            if sent.data is None:
                with self._lock:
                    if self._unconfirmed.pop(seq, None) is not None:
                        self._before["write_errors"] += sent.items
                        self._before["rows_lost"] += sent.requests
                log.error("database writer: %d rows lost (dropped from memory while the writer "
                          "could not write, then its process ended)", sent.items)
                continue
            try:
                _write_bytes(self._proc, sent.data)
            except (OSError, ValueError, AttributeError):
                return  # this one ended too: the next cycle replaces it again

    def _start_child(self) -> bool:
        """Start a child and wait until it is ready, however long a loaded machine makes it
        take (a slow start is not a failure); False if it could not start or ended first."""
        try:
            self._spawn()
        except OSError:
            log.exception("database writer process could not be started")
            return False
        started = time.monotonic()
        warned = False
        while not self.ready.wait(1.0):
            if self._proc is None or self._proc.poll() is not None:
                log.error("database writer process ended while starting")
                return False
            if not warned and time.monotonic() - started > START_TIMEOUT_S:
                warned = True
                log.warning("database writer process is not ready after %.0f s; waiting",
                            START_TIMEOUT_S)
        return True

    def _forget_unconfirmed(self, why: str) -> None:
        with self._lock:
            items = sum(s.items for s in self._unconfirmed.values())
            requests = sum(s.requests for s in self._unconfirmed.values())
            self._unconfirmed.clear()
            self._unconfirmed_bytes = 0
            self._before["write_errors"] += items
            self._before["rows_lost"] += requests
        if items:
            log.error("database writer: %d items (%d requests rows) lost: %s", items, requests,
                      why)

    def _read_loop(self, proc: subprocess.Popen) -> None:
        stream = proc.stdout
        assert stream is not None  # stdout=PIPE
        while True:
            try:
                ok, message = read_frame(stream)
            except (OSError, ValueError, pickle.UnpicklingError, EOFError):
                ok = False
            if not ok:
                self._urgent.set()  # the sender notices the child has ended
                return
            kind = message[0]
            if kind == "committed":
                with self._lock:
                    sent = self._unconfirmed.pop(message[1], None)
                    if sent is not None and sent.data is not None:
                        self._unconfirmed_bytes -= len(sent.data)
            elif kind == "status":
                status = message[1]
                self.spend = status["spend"]
                self.db_bytes, self.wal_bytes = status["db_bytes"], status["wal_bytes"]
                self.degraded = status["degraded"]
                if proc is self._proc:
                    with self._lock:
                        self._child = {name: status[name] for name in _COUNTS}
            elif kind == "ack":
                done = self._acks.get(message[1])
                if done is not None:
                    done.set()
            elif kind == "log":
                _, name, level, text, fields = message
                logging.getLogger(name).log(level, "%s", text, extra=fields)
            elif kind == "ready":
                self.ready.set()


_COUNTS = ("write_errors", "rows_lost", "recreated")  # counts each child reports of itself


def _write_bytes(proc: subprocess.Popen | None, data: bytes) -> None:
    """One pickled frame to the child's stdin. Raises OSError/ValueError when it is gone (or
    none was started)."""
    stream = proc.stdin if proc is not None else None
    if stream is None:
        raise OSError("no database writer process")
    stream.write(FRAME.pack(len(data)) + data)
    stream.flush()


# -- child side -------------------------------------------------------------------------------
class _Channel:
    """The child's stdout: frames to the proxy, one writer at a time."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, message: Any) -> None:
        # A proxy that is gone cannot hear us; the rows still go to the database.
        with self.lock, contextlib.suppress(OSError, ValueError):
            write_frame(self.stream, message)


class _ForwardLogs(logging.Handler):
    """Sends the child's log records to the proxy, with the request fields of
    :mod:`.log_format`."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__(logging.INFO)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        fields = {f: getattr(record, f) for f in LOG_FIELDS if getattr(record, f, None) is not None}
        self.channel.send(("log", record.name, record.levelno, text, fields))


class _Ack:
    """A flush marker for the child's writer: when set, report the status and acknowledge."""

    def __init__(self, token: int, report) -> None:
        self.token, self.report = token, report

    def set(self) -> None:
        self.report(force=True)
        self.report.channel.send(("ack", self.token))


class _Committed:
    """Set by the writer once a frame's items are committed (or dropped and counted): tells
    the proxy it may forget the frame."""

    def __init__(self, seq: int, channel: _Channel) -> None:
        self.seq, self.channel = seq, channel

    def set(self) -> None:
        self.channel.send(("committed", self.seq))


class _Reporter:
    """Sends the writer's status to the proxy when it has changed (after each batch)."""

    def __init__(self, writer, channel: _Channel) -> None:
        self.writer, self.channel = writer, channel
        self.last: dict[str, Any] | None = None

    def __call__(self, force: bool = False) -> None:
        w = self.writer
        status = {"spend": dict(w.spend), "write_errors": w.write_errors,
                  "rows_lost": w.rows_lost, "recreated": w.recreated, "degraded": w.degraded,
                  "db_bytes": w.db_bytes, "wal_bytes": w.wal_bytes}
        if force or status != self.last:
            self.last = status
            self.channel.send(("status", status))


def child_main(analytics_path: str, state_path: str) -> int:
    """Run the writer until stdin says stop or closes; returns the exit code."""
    from .writer import DatabaseWriter

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the proxy decides when this process ends
    if hasattr(os, "nice"):
        os.nice(NICE)  # background work: the proxy gets the CPU first when both want it
    channel = _Channel(sys.stdout.buffer)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(channel)]
    root.setLevel(logging.INFO)
    writer = DatabaseWriter(analytics_path, state_path)
    report = _Reporter(writer, channel)
    writer.after_batch = report
    writer.start()
    if not writer.ready.wait(START_TIMEOUT_S):
        return 1
    channel.send(("ready",))
    report(force=True)
    source = sys.stdin.buffer
    while True:
        try:
            ok, frame = read_frame(source)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError):
            log.exception("database writer process: unreadable frame from the proxy")
            ok = False
        if not ok or frame is None:
            break
        seq, batch = frame
        items: list[tuple[str, Any]] = []
        for kind, payload in batch:
            if kind == "flush":
                items.append(("flush", _Ack(payload, report)))
            elif kind == "settings":
                for name, value in payload.items():
                    if name in SETTINGS:
                        setattr(writer, name, value)
            else:
                items.append((kind, payload))
        items.append(("flush", _Committed(seq, channel)))
        writer.put_frame(items)
    writer.stop(timeout=300)
    report(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], sys.argv[2]))
