"""Prompt-cache affinity: conversation keys, TTLs, and where a conversation's cache is warm."""

from __future__ import annotations

from mitmflare.config.accounts import AccountConfig
from mitmflare.routing.cache_affinity import CacheAffinity, cache_ttl, conversation_key
from mitmflare.routing.pool import AccountPool
from mitmflare.routing.selection import Selector

CACHED = {"type": "ephemeral"}


def turn(text: str, cached: bool = False) -> dict:
    block = {"type": "text", "text": text, **({"cache_control": CACHED} if cached else {})}
    return {"role": "user", "content": [block]}


def test_the_conversation_key_ignores_the_moving_cache_breakpoint():
    first = {"system": "you help", "messages": [turn("fix the bug", cached=True)]}
    later = {"system": "you help", "messages": [
        turn("fix the bug"), {"role": "assistant", "content": "ok"}, turn("now test", True)]}
    assert conversation_key(None, first) == conversation_key(None, later)
    other = {"system": "you review", "messages": [turn("fix the bug")]}
    assert conversation_key(None, other) != conversation_key(None, first)
    assert conversation_key("session-1", first) == "session-1"
    assert conversation_key(None, {"messages": []}) is None


def test_the_ttl_is_the_longest_asked_and_none_without_cache_control():
    assert cache_ttl({"messages": [turn("hi")]}) == 0.0
    assert cache_ttl({"messages": [turn("hi", cached=True)]}) == 300.0
    assert cache_ttl({"system": [{"type": "text", "text": "s",
                                  "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                      "messages": [turn("hi", cached=True)]}) == 3600.0


def test_warm_accounts_last_one_first_and_expire_with_the_ttl():
    affinity = CacheAffinity()
    affinity.served("c", "a", 300, now=1000)
    affinity.served("c", "b", 300, now=1100)
    assert affinity.warm("c", 1200) == ["b", "a"]
    assert affinity.warm("c", 1350) == ["b"]  # a's cache lived until 1300
    assert affinity.warm("c", 1401) == []


def test_the_warm_account_wins_over_the_strategy_unless_it_opted_out():
    pool = AccountPool()
    pool.replace([AccountConfig(name="a", provider="anthropic", api_key="k1"),
                  AccountConfig(name="b", provider="anthropic", api_key="k2", sticky=False),
                  AccountConfig(name="c", provider="anthropic", api_key="k3", priority=5)])
    selector = Selector()
    pick = [selector.choose(pool, "anthropic", "round-robin", 1000, session_hours=5,
                            warm=["c"]).name for _ in range(3)]
    assert pick == ["c", "c", "c"]
    assert selector.choose(pool, "anthropic", "round-robin", 1000, session_hours=5,
                           warm=["b"]).name in ("a", "b")  # b is not sticky: the strategy decides
    chosen = selector.choose(pool, "anthropic", "round-robin", 1000, session_hours=5,
                             warm=["c", "a"], exclude={"c"})
    assert chosen.name == "a"  # c failed this request: the next warm one


def test_a_sub_agent_is_a_conversation_of_its_own_that_follows_its_parent():
    from mitmflare.routing.cache_affinity import conversation_key, parent_key

    assert conversation_key("s1", None) == "s1"
    assert conversation_key("s1", None, "a7") == "s1:agent:a7"
    assert parent_key("s1", "a7", None) == "s1"  # started by the main conversation
    assert parent_key("s1", "a8", "a7") == "s1:agent:a7"
    assert parent_key("s1", None, None) is None and parent_key(None, "a7", None) is None
