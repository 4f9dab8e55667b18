"""The database writer in a child process: SQLite, body parsing and pricing run outside the
proxy's interpreter, so they never hold the GIL the event loop needs.

Proxy side, :class:`WriterProcess` (the interface of :class:`~.writer.DatabaseWriter`):
``put`` appends to a deque; a sender thread wakes every ``SEND_S`` (at once for a flush or
stop), pickles what has gathered and writes it to the child's stdin as one frame; a reader
thread takes the child's frames from its stdout: status (spend, write errors, database
sizes), flush acknowledgements and log records, which are logged here (so
``flare_log_format`` and mitmproxy's terminal apply to them).

Child side (``python -m mitmflare.writer_process ANALYTICS_DB STATE_DB``): a
:class:`~.writer.DatabaseWriter` thread fed from stdin. It ignores SIGINT and SIGTERM and ends
when stdin says stop or closes, after writing everything it was handed, so a proxy stopped
with SIGKILL loses at most the rows of its last ``SEND_S``. If the child dies, the proxy
starts another one and sends the batch again.

Frames: a 4-byte big-endian length, then a pickle. To the child: a list of items
``(kind, payload)`` (kinds of :class:`~.writer.DatabaseWriter`; ``flush`` carries a token;
``settings`` a dict of writer attributes) or None (stop). To the proxy: ``("ready",)``,
``("status", dict)``, ``("ack", token)``, ``("log", logger, level, message, fields)``.
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
from collections import deque
from typing import IO, Any

from .log_format import FIELDS

log = logging.getLogger(__name__)

SEND_S = 0.05         # rows wait at most this long in the proxy before going to the child
START_TIMEOUT_S = 30.0
FRAME = struct.Struct("!I")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("request_log", "retention_days", "payload_retention_days")
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


class WriterProcess:
    """Proxy-side handle of the writer child process; what the proxy uses of
    :class:`~.writer.DatabaseWriter` (``start``, ``ready``, ``put``, ``flush``, ``stop``,
    ``spend``, ``write_errors``, ``db_bytes``, ``wal_bytes``), with its settings passed by
    :meth:`configure`."""

    def __init__(self, analytics_path: str, state_path: str) -> None:
        self.analytics_path = analytics_path
        self.state_path = state_path
        self.ready = threading.Event()
        self.spend: dict[tuple[str, str, str], float] = {}
        self.child_errors = 0   # rows the child could not write (its own count)
        self.lost = 0           # items that never reached a child
        self.db_bytes = 0
        self.wal_bytes = 0
        self._items: deque[tuple[str, Any] | None] = deque()  # append/popleft are atomic
        self._urgent = threading.Event()
        self._acks: dict[int, threading.Event] = {}
        self._tokens = itertools.count()
        self._settings: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._sender = threading.Thread(target=self._send_loop, name="mitmflare-db-sender",
                                        daemon=True)

    # -- the DatabaseWriter interface -------------------------------------------------------
    @property
    def write_errors(self) -> int:
        """Rows (or snapshots) that were not written: by the child, or lost on the way."""
        return self.child_errors + self.lost

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
        """Send what is queued, let the child write it and end, and wait for it."""
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

    # -- proxy side threads -----------------------------------------------------------------
    def _spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)}
        self.ready.clear()
        proc = self._proc = subprocess.Popen(
            [sys.executable, "-m", "mitmflare.writer_process", self.analytics_path,
             self.state_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            start_new_session=True)  # Ctrl-C in a terminal reaches the proxy, not the child
        threading.Thread(target=self._read_loop, args=(proc,), name="mitmflare-db-reader",
                         daemon=True).start()
        if self._settings:
            write_frame(proc.stdin, [("settings", dict(self._settings))])

    def _send_loop(self) -> None:
        while True:
            self._urgent.wait(SEND_S)
            self._urgent.clear()
            batch: list[tuple[str, Any] | None] = []
            while self._items:
                batch.append(self._items.popleft())
                if batch[-1] is None:
                    break
            if batch:
                self._deliver(batch)
            if batch and batch[-1] is None:
                proc = self._proc
                if proc is not None and proc.stdin is not None:
                    proc.stdin.close()
                return

    def _deliver(self, batch: list[tuple[str, Any] | None]) -> None:
        """Write ``batch`` to the child; a child that has died is replaced and the batch sent
        again; if that fails too the batch is counted as lost."""
        for attempt in range(2):
            proc = self._proc
            try:
                write_frame(proc.stdin, batch)
                return
            except (OSError, ValueError, AttributeError):
                code = proc.poll() if proc is not None else None
                if proc is not None and proc.stdin is not None:
                    with contextlib.suppress(OSError, ValueError):
                        proc.stdin.close()  # its unsent bytes go with it (sent again below)
                if attempt == 0:
                    log.error("database writer process ended (exit code %s); starting another",
                              code)
                    try:
                        self._spawn()
                        self.ready.wait(START_TIMEOUT_S)
                    except OSError:
                        log.exception("database writer process could not be started")
                        break
        self.lost += sum(1 for item in batch if item is not None)
        log.error("database writer: %d items were not written (no writer process)", len(batch))

    def _read_loop(self, proc: subprocess.Popen) -> None:
        stream = proc.stdout
        while True:
            try:
                ok, message = read_frame(stream)
            except (OSError, ValueError, pickle.UnpicklingError, EOFError):
                ok = False
            if not ok:
                return
            kind = message[0]
            if kind == "status":
                status = message[1]
                self.spend = status["spend"]
                self.child_errors = status["write_errors"]
                self.db_bytes, self.wal_bytes = status["db_bytes"], status["wal_bytes"]
            elif kind == "ack":
                done = self._acks.get(message[1])
                if done is not None:
                    done.set()
            elif kind == "log":
                _, name, level, text, fields = message
                logging.getLogger(name).log(level, "%s", text, extra=fields)
            elif kind == "ready":
                self.ready.set()


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
        fields = {f: getattr(record, f) for f in FIELDS if getattr(record, f, None) is not None}
        self.channel.send(("log", record.name, record.levelno, text, fields))


class _Ack:
    """A flush marker for the child's writer: when set, report the status and acknowledge."""

    def __init__(self, token: int, report) -> None:
        self.token, self.report = token, report

    def set(self) -> None:
        self.report(force=True)
        self.report.channel.send(("ack", self.token))


class _Reporter:
    """Sends the writer's status to the proxy when it has changed (after each batch)."""

    def __init__(self, writer, channel: _Channel) -> None:
        self.writer, self.channel = writer, channel
        self.last: dict[str, Any] | None = None

    def __call__(self, force: bool = False) -> None:
        w = self.writer
        status = {"spend": dict(w.spend), "write_errors": w.write_errors,
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
            ok, batch = read_frame(source)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError):
            log.exception("database writer process: unreadable frame from the proxy")
            ok = False
        if not ok or batch is None:
            break
        for item in batch:
            if item is None:
                break
            kind, payload = item
            if kind == "flush":
                writer.put("flush", _Ack(payload, report))
            elif kind == "settings":
                for name, value in payload.items():
                    if name in SETTINGS:
                        setattr(writer, name, value)
            else:
                writer.put(kind, payload)
        else:
            continue
        break
    writer.stop(timeout=300)
    report(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], sys.argv[2]))
