"""Addon: with ``flare_redis`` set, this process's `requests`, `attempts` and
`account_events` rows go to the Redis Stream that ``mitmflare writer`` writes into the one
analytics database (:mod:`..storage.row_stream`); the state snapshots (``flare_state``, the
`accounts` table) stay with the local database writer process.

It wraps the writer the recorder made (:class:`StreamedWriter`, the same interface), so
nothing else changes: the spend that users' caps and accounts' budgets read is the one the
writer recorded from every process.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx

from ..storage.row_stream import STREAMED, StreamSender


class StreamedWriter:
    """``proxy.writer`` while rows go through Redis: rows to ``sender``, the rest to ``local``
    (a :class:`~..storage.writer_process.WriterProcess`). ``state`` is the local writer's,
    or ``degraded (rows stream: …)`` while the stream is not ``ok``; lost counts add up."""

    def __init__(self, local: Any, sender: StreamSender) -> None:
        self.local, self.sender = local, sender
        self.ready = local.ready

    def put(self, kind: str, payload: Any) -> None:
        (self.sender if kind in STREAMED else self.local).put(kind, payload)

    @property
    def spend(self) -> dict[tuple[str, str, str], float]:
        return self.sender.spend

    @property
    def state(self) -> str:
        stream = self.sender.status()["state"]
        local = self.local.state
        return local if local != "ok" or stream == "ok" else f"degraded (rows stream: {stream})"

    @property
    def rows_lost(self) -> int:
        return self.local.rows_lost + self.sender.rows_lost

    @property
    def write_errors(self) -> int:
        return self.local.write_errors + self.sender.lost

    def __getattr__(self, name: str) -> Any:  # db_bytes, wal_bytes, recreated, configure
        return getattr(self.local, name)

    def flush(self, timeout: float = 10.0) -> bool:
        return self.sender.flush(timeout) and self.local.flush(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.sender.stop(min(timeout, 5.0))
        self.local.stop(timeout)


class RowStream:
    """Wraps ``proxy.writer`` in a :class:`StreamedWriter` while ``flare_redis`` is set (after
    the recorder has made the writer, hence after it in the bundle)."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy

    def configure(self, updated: set[str]) -> None:
        url = ctx.options.flare_redis.strip()
        writer = self.proxy.writer
        if isinstance(writer, StreamedWriter):
            if writer.sender.url == url:
                return
            writer.sender.stop()
            writer = self.proxy.writer = writer.local
        if url and writer is not None:
            sender = StreamSender(url)
            sender.start()
            self.proxy.writer = StreamedWriter(writer, sender)
