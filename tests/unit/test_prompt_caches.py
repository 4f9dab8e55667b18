"""The simulated upstream's prompt caches: per credential, with TTLs, growing turn by turn."""

from __future__ import annotations

from mitmflare.demo.prompt_caches import PromptCaches


def body(turns: int, ttl: str | None = None) -> dict:
    control = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    messages = []
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i} " * 20},
                     {"role": "assistant", "content": f"answer {i} " * 20}]
    messages.append({"role": "user", "content": [{"type": "text", "text": f"question {turns} "
                                                  * 20, "cache_control": control}]})
    return {"model": "m", "system": "you code " * 200, "messages": messages}


def test_a_conversation_reads_what_it_wrote_on_its_own_credential_only():
    caches = PromptCaches()
    first = caches.usage("a", body(0), now=1000)
    assert first["cache_read_input_tokens"] == 0 and first["cache_creation_input_tokens"] > 400
    second = caches.usage("a", body(1), now=1010)
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert 0 < second["cache_creation_input_tokens"] < first["cache_creation_input_tokens"]
    assert second["cache_creation"]["ephemeral_5m_input_tokens"] == \
        second["cache_creation_input_tokens"]
    moved = caches.usage("b", body(2), now=1020)  # another account: the whole prompt again
    assert moved["cache_read_input_tokens"] == 0
    assert moved["cache_creation_input_tokens"] > first["cache_creation_input_tokens"]
    assert caches.usage("a", {"model": "m", "messages": [{"role": "user", "content": "x"}]},
                        now=1030) is None  # no cache_control: not simulated


def test_the_ttl_runs_out_unless_refreshed_and_1h_lasts_longer():
    caches = PromptCaches()
    caches.usage("a", body(0), now=0)
    assert caches.usage("a", body(1), now=200)["cache_read_input_tokens"] > 0  # refreshed
    assert caches.usage("a", body(2), now=499)["cache_read_input_tokens"] > 0
    assert caches.usage("a", body(3), now=900)["cache_read_input_tokens"] == 0  # > 5 min idle
    caches.usage("b", body(0, "1h"), now=0)
    late = caches.usage("b", body(1, "1h"), now=3000)
    assert late["cache_read_input_tokens"] > 0
    assert late["cache_creation"]["ephemeral_1h_input_tokens"] == late["cache_creation_input_tokens"]
    fast = PromptCaches(ttl_scale=60)  # 5 min last 5 s
    fast.usage("a", body(0), now=0)
    assert fast.usage("a", body(1), now=6)["cache_read_input_tokens"] == 0
