"""The rows-stream writer's lease: renewed while held, a lapse while alive is taken again
with a warning naming the gap, another writer's lease is left alone."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from mitmflare.storage import row_stream as rs
from mitmflare.storage import stream_writer
from mitmflare.storage.stream_writer import StreamWriter


class FakeRedis:
    """``SET NX PX`` and the renewal script on one key, with time moved by hand (ms)."""

    def __init__(self) -> None:
        self.now_ms = 0
        self.value: str | None = None
        self.expires_ms = 0

    def _live(self) -> str | None:
        return self.value if self.now_ms < self.expires_ms else None

    def set(self, key: str, value: str, nx: bool, px: int) -> bool:
        assert key == rs.WRITER_KEY and nx
        if self._live() is not None:
            return False
        self.value, self.expires_ms = value, self.now_ms + px
        return True

    def eval(self, script: str, numkeys: int, key: str, me: str, ttl: int) -> int:
        assert script == stream_writer.RENEW and key == rs.WRITER_KEY
        if self._live() != me:
            return 0
        self.expires_ms = self.now_ms + ttl
        return 1


@pytest.fixture
def clock(monkeypatch):
    """Redis's and the writer's time, moved together by ``clock(ms)``."""
    redis = FakeRedis()

    def advance(ms: int) -> None:
        redis.now_ms += ms

    monkeypatch.setattr(stream_writer, "time", SimpleNamespace(  # this module's clock only
        monotonic=lambda: redis.now_ms / 1000, time=lambda: redis.now_ms / 1000))
    advance.redis = redis  # type: ignore[attr-defined]
    return advance


def test_the_ttl_outlasts_many_renewals_and_a_stalled_writer_says_so(tmp_path, clock, caplog):
    redis = clock.redis
    writer = StreamWriter("redis://unused", str(tmp_path / "a.db"), str(tmp_path / "s.db"))
    # a pass of the loop renews it: a read waits at most BLOCK_MS, the lease lasts 25 of them
    assert rs.WRITER_TTL_MS >= 20 * stream_writer.BLOCK_MS
    with caplog.at_level(logging.WARNING, logger=stream_writer.__name__):
        assert writer._lease(redis)
        for _ in range(50):  # 10 s of normal passes: held throughout, nothing said
            clock(stream_writer.BLOCK_MS)
            assert writer._lease(redis) and redis._live() == writer.me
        assert caplog.records == []

        clock(rs.WRITER_TTL_MS + 1_500)  # the loop stalled past the TTL, no one else came
        assert redis._live() is None
        assert writer._lease(redis)
        (warning,) = caplog.records
        assert warning.getMessage() == ("mitmflare writer: the lease had lapsed (last renewed "
                                        "6.5 s ago, it lasts 5.0 s); taken again")


def test_another_writers_lease_is_not_taken_and_a_later_take_is_no_lapse(tmp_path, clock,
                                                                          caplog):
    redis = clock.redis
    one = StreamWriter("redis://unused", str(tmp_path / "a.db"), str(tmp_path / "s.db"))
    two = StreamWriter("redis://unused", str(tmp_path / "a.db"), str(tmp_path / "s.db"))
    two.me = "other-host:2"
    with caplog.at_level(logging.WARNING, logger=stream_writer.__name__):
        assert one._lease(redis)
        clock(rs.WRITER_TTL_MS)  # one died: its lease lapses, two takes it
        assert two._lease(redis) and not one._lease(redis)
        clock(rs.WRITER_TTL_MS - 1)
        assert not one._lease(redis) and redis._live() == "other-host:2"
        clock(1)  # two died in turn: one takes over, which is no lapse of its own
        assert one._lease(redis)
    assert caplog.records == []
