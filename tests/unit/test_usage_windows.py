"""The burn-rate forecast of usage windows, and the order the next request would take."""

from __future__ import annotations

import pytest

from mitmflare.config.accounts import AccountConfig
from mitmflare.routing.pool import AccountPool
from mitmflare.routing.selection import Selector
from mitmflare.routing.usage_windows import BurnTracker, forecast, window_rows

T0 = 1_795_000_000.0


def test_forecast_extrapolates_the_last_hours_burn_rate():
    samples = [(T0, 0.20), (T0 + 1800, 0.40)]  # 0.4 of the window per hour
    at, rate = forecast(samples, T0 + 1800, reset=T0 + 5 * 3600)
    assert rate == pytest.approx(0.4)
    assert at == pytest.approx(T0 + 1800 + 1.5 * 3600)  # 0.6 left at 0.4 per hour


def test_forecast_says_not_before_reset_and_ignores_old_or_flat_samples():
    samples = [(T0, 0.20), (T0 + 1800, 0.40)]
    assert forecast(samples, T0 + 1800, reset=T0 + 3600) == (None, pytest.approx(0.4))
    assert forecast([(T0, 0.5), (T0 + 600, 0.5)], T0 + 600, None) == (None, 0.0)
    assert forecast([(T0 - 7200, 0.1), (T0, 0.5)], T0, None) == (None, None)  # one recent sample


def test_tracker_keeps_one_sample_per_interval_and_restarts_after_a_reset():
    tracker = BurnTracker()

    def seen(t: float, used: float) -> None:
        tracker.observe("max", {"windows": {"5h": {"utilization": used, "reset": T0 + 9000}}}, t)

    for i in range(10):  # ten answers within 9 s
        seen(T0 + i, 0.10 + i / 1000)
    seen(T0 + 60, 0.20)
    assert [round(u, 3) for _, u in tracker.samples("max", "5h")] == [0.10, 0.109, 0.20]
    seen(T0 + 120, 0.01)  # utilization dropped: the window reset
    assert tracker.samples("max", "5h") == [(T0 + 120, 0.01)]


def test_window_rows_cover_unified_windows_and_api_key_buckets():
    tracker = BurnTracker()
    limits = {"observed_at": T0, "windows": {"5h": {"status": "allowed", "utilization": 0.5,
                                                    "reset": T0 + 3600}},
              "buckets": {"tokens": {"limit": 1000.0, "remaining": 250.0, "reset": T0 + 60}}}
    rows = {r["window"]: r for r in window_rows("a", limits, tracker, T0)}
    assert rows["5h"]["kind"] == "unified" and rows["5h"]["utilization"] == 0.5
    assert rows["5h"]["reset_at"] == "2026-11-18T12:06:40.000Z"
    assert rows["tokens"]["kind"] == "bucket" and rows["tokens"]["utilization"] == 0.75
    assert rows["tokens"]["remaining"] == 250.0 and rows["5h"]["limit_at"] is None


def pool(*names: str) -> AccountPool:
    p = AccountPool()
    p.replace([AccountConfig(name=n, provider="anthropic", api_key=f"k-{n}") for n in names])
    return p


def test_preview_shows_where_the_next_request_goes_without_changing_state():
    accounts, selector = pool("a", "b", "c"), Selector()
    assert [a.name for a in selector.preview(accounts, "anthropic", "session", T0, 5)] == [
        "a", "b", "c"]
    accounts.get("a").state.cooldown_until = T0 + 60
    chosen = selector.choose(accounts, "anthropic", "session", T0, session_hours=5)
    accounts.get("a").state.cooldown_until = 0
    # the session stays on b (a is back, but equal rank keeps the session's account)
    assert chosen.name == "b"
    assert [a.name for a in selector.preview(accounts, "anthropic", "session", T0 + 1, 5)][:2] == [
        "b", "a"]
    selector.choose(accounts, "anthropic", "round-robin", T0, session_hours=5)
    before = [a.name for a in selector.preview(accounts, "anthropic", "round-robin", T0, 5)]
    assert before == [a.name for a in selector.preview(accounts, "anthropic", "round-robin", T0, 5)]
    assert before[0] == selector.choose(accounts, "anthropic", "round-robin", T0, session_hours=5).name


def test_spent_within_extrapolates_only_over_a_span_it_has_seen():
    from mitmflare.routing.usage_windows import spent_within

    tracker = BurnTracker()
    limits = {"windows": {"5h": {"utilization": 0.9, "reset": T0 + 4 * 3600},
                          "7d_oi": {"utilization": 0.99, "reset": T0 + 86400}}}

    def seen(t: float, used: float) -> None:
        tracker.observe("max", {"windows": {"5h": {"utilization": used, "reset": T0 + 4 * 3600},
                                            "7d_oi": {"utilization": 0.5}}}, t)

    seen(T0, 0.80)
    seen(T0 + 5, 0.81)  # 1 % in 5 s: spent in ~100 s, yet seen over 5 s only
    assert not spent_within(tracker, "max", limits, T0 + 5, 300)
    seen(T0 + 1800, 0.90)  # 10 % in 30 min: the last 10 % in 30 min
    assert spent_within(tracker, "max", limits, T0 + 1800, 3600)  # a 1-hour cache
    assert not spent_within(tracker, "max", limits, T0 + 1800, 300)  # a 5-minute one
    assert not spent_within(tracker, "other", limits, T0 + 1800, 3600)  # no samples
    late = {"windows": {"5h": {"utilization": 0.9, "reset": T0 + 2400}}}  # resets first
    assert not spent_within(tracker, "max", late, T0 + 1800, 3600)
