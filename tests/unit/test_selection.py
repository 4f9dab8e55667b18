"""Account selection strategies."""

from __future__ import annotations

import collections

from mitmflare.config.accounts import AccountConfig
from mitmflare.routing.pool import AccountPool
from mitmflare.routing.selection import Selector

NOW = 1_000_000.0


def pool(*specs: tuple[str, int, float]) -> AccountPool:
    p = AccountPool()
    p.replace([AccountConfig(name=n, provider="anthropic", api_key="k", priority=prio, weight=w)
               for n, prio, w in specs])
    return p


def choose(sel, p, strategy="session", now=NOW, **kw):
    a = sel.choose(p, "anthropic", strategy, now, session_hours=5, **kw)
    return a.name if a else None


def test_session_sticks_then_returns_to_preferred_account():
    p = pool(("a", 0, 1), ("b", 1, 1))
    sel = Selector()
    assert choose(sel, p) == "a"
    p.get("a").state.cooldown_until = NOW + 100
    assert choose(sel, p) == "b"
    assert choose(sel, p, now=NOW + 50) == "b"
    assert choose(sel, p, now=NOW + 101) == "a"  # preferred is free again


def test_session_expires_after_session_hours():
    p = pool(("a", 0, 1), ("b", 0, 1))
    sel = Selector()
    assert choose(sel, p) == "a"
    p.get("a").state.constrained_until = NOW + 10
    assert choose(sel, p) == "b"   # near its limit: chosen only when nothing better is free
    p.get("a").state.constrained_until = 0
    assert choose(sel, p, now=NOW + 3600) == "b"      # still within the session
    assert choose(sel, p, now=NOW + 5 * 3600 + 1) == "a"  # new session on the best account


def test_client_conversation_keeps_its_account_while_available():
    p = pool(("a", 0, 1), ("b", 1, 1))
    sel = Selector()
    p.get("a").state.cooldown_until = NOW + 100
    assert choose(sel, p, client_session="conv-1") == "b"
    assert choose(sel, p, now=NOW + 200, client_session="conv-1") == "b"  # prompt cache
    assert choose(sel, p, now=NOW + 200, client_session="conv-2") == "a"
    p.get("b").state.cooldown_until = NOW + 1000
    assert choose(sel, p, now=NOW + 300, client_session="conv-1") == "a"


def test_paused_excluded_and_model_cooling_accounts_are_skipped():
    p = pool(("a", 0, 1), ("b", 1, 1), ("c", 2, 1))
    p.replace([AccountConfig(name="a", provider="anthropic", api_key="k", paused=True),
               *[acc.config for acc in list(p.accounts.values())[1:]]])
    p.get("b").state.model_cooldowns["opus"] = NOW + 10
    sel = Selector()
    assert choose(sel, p, "round-robin", model="opus") == "c"
    assert choose(sel, p, "round-robin", exclude={"c"}, model="opus") is None


def test_round_robin_least_requests_and_weighted():
    p = pool(("a", 0, 1), ("b", 0, 3), ("c", 1, 1))
    sel = Selector()
    assert [choose(sel, p, "round-robin") for _ in range(4)] == ["a", "b", "a", "b"]
    p.get("a").state.in_flight = 2
    assert choose(sel, p, "least-requests") == "b"
    counts = collections.Counter(choose(sel, p, "weighted") for _ in range(4000))
    assert set(counts) == {"a", "b"} and 2.5 < counts["b"] / counts["a"] < 3.6


def test_hand_off_warm_conversations_stay_on_a_near_limit_account_the_others_move():
    p = pool(("a", 0, 1), ("b", 0, 1))
    sel = Selector()
    assert choose(sel, p, client_session="warm") == "a"
    assert choose(sel, p, client_session="cold") == "a"
    p.get("a").state.constrained_until = NOW + 1000  # allowed_warning / >= flare_headroom
    assert choose(sel, p, now=NOW + 10, client_session="warm", warm=["a"]) == "a"
    assert choose(sel, p, now=NOW + 10, client_session="cold") == "b"  # its cache expired
    assert choose(sel, p, now=NOW + 10, client_session="new") == "b"
    assert choose(sel, p, now=NOW + 10) == "b"  # the session moved on
    assert choose(sel, p, now=NOW + 20, client_session="warm", warm=["a"]) == "a"
    p.get("a").state.cooldown_until = NOW + 1000  # a can no longer serve: warm ones move too
    assert choose(sel, p, now=NOW + 30, client_session="warm", warm=["a"]) == "b"


def test_hand_off_goes_by_priority_and_not_when_nothing_better_is_free():
    p = pool(("a", 0, 1), ("b", 2, 1), ("c", 1, 1))
    sel = Selector()
    assert choose(sel, p, client_session="conv") == "a"
    for name in ("a", "c"):
        p.get(name).state.constrained_until = NOW + 1000
    assert choose(sel, p, now=NOW + 10, client_session="conv") == "b"  # the only one in tier 0
    p.get("b").state.constrained_until = NOW + 1000  # every account near a limit
    assert choose(sel, p, now=NOW + 20, client_session="conv") == "b"  # it keeps its account
    assert choose(sel, p, now=NOW + 20, client_session="other") == "a"  # by priority
    p.get("c").state.constrained_until = 0  # c free again: cold ones take the best
    assert choose(sel, p, now=NOW + 30, client_session="conv") == "c"


def test_hand_off_on_a_forecast_only_for_that_request():
    p = pool(("a", 0, 1), ("b", 0, 1))
    sel = Selector()
    assert choose(sel, p, client_session="warm") == "a"
    # a is forecast to be spent before this request's cache would expire
    assert choose(sel, p, client_session="warm", warm=["a"], ending={"a"}) == "a"
    assert choose(sel, p, client_session="new", ending={"a"}) == "b"
    assert choose(sel, p, client_session="other", ending={"a", "b"}) == "b"  # same tier: session
    for strategy in ("round-robin", "least-requests", "weighted"):
        assert choose(sel, p, strategy, ending={"a"}) == "b"
