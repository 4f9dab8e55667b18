"""End to end: a conversation stays on the account where its prompt cache lives, under any
strategy, and moves only when that account cannot serve; an account near its limit keeps only
the conversations whose cache is warm on it (the hand-off)."""

from __future__ import annotations

import time

import httpx

from conftest import accounts_yaml

KEYS = ["sk-ant-api03-PC-A", "sk-ant-api03-PC-B", "sk-ant-api03-PC-C"]


def turn_body(n: int) -> dict:
    messages = []
    for i in range(n):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"step {i}"}]})
        messages.append({"role": "assistant", "content": f"done {i}"})
    messages.append({"role": "user", "content": [{"type": "text", "text": f"step {n}",
                                                  "cache_control": {"type": "ephemeral"}}]})
    return {"model": "claude-sonnet-4-6", "max_tokens": 5, "system": "you code",
            "messages": messages}


def round_robin_with_turns(sim, proxy, session: dict, turns: int):
    """A proxy over the three keys with round-robin, after ``turns`` turns of ``session``."""
    p = proxy(accounts_yaml(sim.url, *({"name": f"k{i}", "api_key": key}
                                       for i, key in enumerate(KEYS))),
              flare_strategy="round-robin")
    for n in range(turns):
        assert httpx.post(p.url + "/v1/messages", json=turn_body(n), headers=session,
                          timeout=30).status_code == 200
    return p


def test_a_conversation_sticks_through_round_robin_and_moves_only_on_failover(sim, proxy):
    session = {"x-claude-code-session-id": "conv-1", "x-api-key": "client"}
    p = round_robin_with_turns(sim, proxy, session, 4)
    first = sim.credentials_seen()
    assert len(set(first)) == 1  # four turns, one account (round-robin would rotate)
    # requests without cache_control are not held: round-robin rotates them
    for _ in range(3):
        httpx.post(p.url + "/v1/messages", json={"model": "claude-sonnet-4-6", "max_tokens": 5,
                                                 "messages": [{"role": "user", "content": "x"}]})
    assert len(set(sim.credentials_seen()[4:])) == 3
    # its account hits a limit: the conversation moves once, then stays
    sim.script(first[0], {"status": 429, "headers": {"retry-after": "600"}})
    for n in range(4, 7):
        assert httpx.post(p.url + "/v1/messages", json=turn_body(n), headers=session,
                          timeout=30).status_code == 200
    moved = sim.credentials_seen()[7:]
    assert moved[0] == first[0] and len(set(moved[1:])) == 1 and moved[1] != first[0]


def agent_body(system: str, n: int) -> dict:
    return {**turn_body(n), "system": [{"type": "text", "text": system,
                                        "cache_control": {"type": "ephemeral"}}]}


def test_sub_agents_follow_their_parent_conversations_account(sim, proxy):
    main = {"x-claude-code-session-id": "conv-2", "x-api-key": "client"}
    p = round_robin_with_turns(sim, proxy, main, 2)
    (parent,) = set(sim.credentials_seen())
    # three sub-agents of the main conversation and one of a sub-agent (Claude Code sends the
    # session's id with its own agent id, and its parent's when an agent started it)
    agents = [{"x-claude-code-agent-id": "explore-1"}, {"x-claude-code-agent-id": "plan-1"},
              {"x-claude-code-agent-id": "test-1"},
              {"x-claude-code-agent-id": "deep-1", "x-claude-code-parent-agent-id": "plan-1"}]
    for agent in agents:
        for n in range(2):
            assert httpx.post(p.url + "/v1/messages", json=agent_body(f"agent {agent}", n),
                              headers={**main, **agent}, timeout=30).status_code == 200
    assert set(sim.credentials_seen()) == {parent}  # round-robin would have rotated them
    # a conversation of another session is not held there
    for i in range(3):
        httpx.post(p.url + "/v1/messages", json=turn_body(0), timeout=30,
                   headers={"x-claude-code-session-id": f"other-{i}", "x-api-key": "client"})
    assert len(set(sim.credentials_seen()[-3:])) == 3
    # each agent's cache is its own: its first write is `first`, and the main conversation's
    # next turn still reads its own cache (no `changed` from the agents' writes in between)
    assert httpx.post(p.url + "/v1/messages", json=turn_body(2), headers=main,
                      timeout=30).status_code == 200
    rows = p.wait_rows(11, "select conversation, cache_event from requests where "
                           "conversation like 'conv-2%' order by started_at")
    events = {}
    for row in rows:
        events.setdefault(row["conversation"], []).append(row["cache_event"])
    assert events == {"conv-2": ["first", None, None],
                      **{f"conv-2:agent:{a['x-claude-code-agent-id']}": ["first", None]
                         for a in agents}}


HAND_A, HAND_B = "sk-ant-oat01-HAND-A", "sk-ant-oat01-HAND-B"
TTL_SCALE = 30  # a 5-minute prompt cache lives 10 s, in the simulator and the proxy alike


def test_near_its_limit_the_session_account_keeps_only_its_warm_conversations(sim, proxy):
    sim.windows, sim.enforce_windows = True, True  # 5-hour windows of 400k tokens, enforced
    sim.caches.ttl_scale = TTL_SCALE
    p = proxy(accounts_yaml(sim.url, *(
        {"name": name, "oauth": {"access_token": token, "refresh_token": token + "-r",
                                 "expires_at": "2099-01-01T00:00:00Z"}}
        for name, token in (("a", HAND_A), ("b", HAND_B)))),
        flare_cache_ttl_scale=str(TTL_SCALE))  # the default session strategy

    def send(session: str, n: int, max_tokens: int = 5, agent: str | None = None):
        headers = {"x-claude-code-session-id": session, "x-api-key": "client"}
        body = turn_body(n)
        if agent:
            headers["x-claude-code-agent-id"] = agent
            body = agent_body(f"agent {agent}", n)
        answer = httpx.post(p.url + "/v1/messages", json={**body, "max_tokens": max_tokens},
                            headers=headers, timeout=60)
        assert answer.status_code == 200
        return answer

    send("cold", 0)  # the session starts on a
    time.sleep(10.5)  # cold's cache on a expires
    for n in range(12):  # each turn counts ~40k tokens against a's window: 80 % after 8
        status = send("warm", n, max_tokens=1000).headers["anthropic-ratelimit-unified-status"]
        if status == "allowed_warning":
            break
    assert status == "allowed_warning" and set(sim.credentials_seen()) == {HAND_A}
    send("cold", 1)  # its cache expired: it starts on b (it used to follow its session to a)
    send("new", 0)  # so does a new conversation
    send("warm", 0, agent="explore")  # a sub-agent follows its parent's warm cache to a
    assert sim.credentials_seen()[-3:] == [HAND_B, HAND_B, HAND_A]
    before = len(sim.credentials_seen())
    for turn in range(n + 1, n + 6):  # warm stays on a until a answers 429, then moves once
        send("warm", turn, max_tokens=1000)
        if sim.credentials_seen()[-1] == HAND_B:
            break
    tail = sim.credentials_seen()[before:]
    assert tail[-1] == HAND_B and set(tail[:-1]) == {HAND_A} and len(tail) >= 3
    (limited,) = p.wait_rows(1, "select account from attempts where status = 429")
    assert limited["account"] == "a"
    rows = p.wait_rows(len(sim.credentials_seen()) - 1,
                       "select conversation, account, failover, cache_event from requests "
                       "order by started_at")
    moves = [(r["conversation"], r["cache_event"]) for r in rows if r["account"] == "b"]
    assert moves == [("cold", "expired"), ("new", "first"), ("warm", "switch")]
    assert rows[-1]["failover"] == 1
