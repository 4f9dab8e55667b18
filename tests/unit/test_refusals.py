"""The tally of requests refused for want of a valid access key (:mod:`mitmflare.routing.refusals`)."""

from __future__ import annotations

from mitmflare.routing.refusals import MAX_SOURCES, OTHERS, RefusalTally, source_of

T = 1_800_000_000.0  # a minute boundary (divisible by 60)


def row(i: int) -> dict:
    return {"id": f"flow-{i}", "started_at": T, "status": 401}


def test_one_row_at_once_and_one_when_the_minute_is_over_per_source():
    tally = RefusalTally()
    firsts = [tally.note("10.0.0.1", row(i), T + i * 0.1) for i in range(50)]
    assert firsts[0] == {**row(0), "auth_refusals": 1} and firsts[1:] == [None] * 49
    assert tally.note("10.0.0.2", row(99), T + 1) is not None
    assert tally.due(T + 59) == []  # the minute is not over
    (second,) = tally.due(T + 60)
    assert second["id"] == "flow-0~refusals" and second["auth_refusals"] == 49
    assert second["started_at"] == T + 4.9 and "from 10.0.0.1" in second["error"]
    assert tally.due(T + 120) == [] and tally.total == 51
    assert tally.note("10.0.0.1", row(100), T + 60) is not None  # a new minute


def test_many_sources_share_one_row_past_the_limit_and_shutdown_reports_all():
    tally = RefusalTally()
    recorded = [tally.note(f"10.0.{i // 250}.{i % 250}", row(i), T) for i in range(MAX_SOURCES + 40)]
    assert sum(r is not None for r in recorded) == MAX_SOURCES + 1
    (others,) = tally.due(None)
    assert others["auth_refusals"] == 39 and OTHERS in others["error"]


def test_sources_are_addresses_and_ipv6_slash_64_networks():
    assert source_of(("192.0.2.7", 5000)) == "192.0.2.7"
    assert source_of(("2001:db8:1:2:aaaa::1", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("::ffff:192.0.2.7", 5000, 0, 0)) == "192.0.2.7"
    assert source_of(None) == "unknown"
