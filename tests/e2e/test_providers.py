"""End to end: a Max (OAuth) account, a z.ai coding-plan key and an OpenRouter key serve one
Claude session with failover across them; the MiniMax preset, and a NanoGPT account priced by
its own price:; prefix and compatibility routes; conversion of answers and errors checked by
the real SDKs; the real Claude Code CLI through an OpenAI-compatible account."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from conftest import ROOT, Proxy, accounts_yaml
from mitmflare.storage.pricing import cost_usd

ZAI, ROUTER, GPT, CLAUDE_KEY = "zai-KEY-1", "sk-or-v1-ROUTER", "sk-proj-GPT", "sk-ant-api03-KEY"
MINIMAX, NANO = "minimax-KEY-1", "nano-KEY-1"
GLM = {"opus": "glm-4.6", "sonnet": "glm-4.6", "haiku": "glm-4.5-air"}
ROUTED = {"opus": "anthropic/claude-opus-4.1", "sonnet": "anthropic/claude-sonnet-4.5",
          "haiku": "anthropic/claude-3.5-haiku"}
MSG = [{"role": "user", "content": "hello"}]
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def team_pool(sim, oauth: dict | None = None) -> str:
    """Max OAuth (or an Anthropic key) first, then z.ai, then OpenRouter, then OpenAI."""
    first = ({"name": "max", "oauth": oauth} if oauth else
             {"name": "claude", "api_key": CLAUDE_KEY})
    return accounts_yaml(
        sim.url, first,
        {"name": "zai", "provider": "zai", "api_key": ZAI, "priority": 1, "models": GLM},
        {"name": "router", "provider": "openrouter", "base_url": f"{sim.url}/v1",
         "api_key": ROUTER, "priority": 2, "models": ROUTED},
        {"name": "gpt", "provider": "openai", "api_key": GPT, "priority": 3})


def rejected(reset_in: float = 600) -> dict:
    reset = str(int(time.time() + reset_in))
    return {"status": 429, "headers": {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-5h-status": "rejected",
        "anthropic-ratelimit-unified-5h-reset": reset,
        "anthropic-ratelimit-unified-reset": reset, "retry-after": str(int(reset_in))}}


def zai_limit() -> dict:
    """z.ai's coding-plan 5-hour limit (business code 1308, reset time in the message)."""
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 8 * 3600 + 600))
    return {"status": 429, "body": {"error": {"code": "1308", "message":
                                              f"Usage limit reached for 5 hour. Your limit "
                                              f"will reset at {at}"}}}


def claude(p: Proxy, retries: int = 2, prefix: str = "") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url + prefix, api_key="sk-ant-api03-CLIENT",
                               max_retries=retries)


def row_cost(row: dict, provider: str) -> float | None:
    return cost_usd(provider, row["upstream_model"], row["input_tokens"], row["output_tokens"],
                    row["cache_read_input_tokens"], row["cache_creation_input_tokens"], 0)


def test_one_claude_session_fails_over_from_max_to_zai_to_openrouter(sim, proxy):
    pair = sim.issue_tokens()
    p = proxy(team_pool(sim, {"access_token": pair["access_token"],
                              "refresh_token": pair["refresh_token"],
                              "expires_at": "2099-01-01T00:00:00Z"}),
              flare_oauth_token_url=f"{sim.url}/v1/oauth/token")
    c = claude(p)
    assert c.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=MSG).content
    assert sim.requests[-1].credential == pair["access_token"]

    # the Max account hits its 5-hour window: the streamed request continues on z.ai
    sim.script(pair["access_token"], rejected())
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=20, messages=MSG) as stream:
        text = "".join(stream.text_stream)
    assert "simulated answer" in text
    zai_seen = sim.requests[-1]
    assert (zai_seen.credential, zai_seen.path, zai_seen.body["model"]) == (
        ZAI, "/v1/messages", "glm-4.6")
    assert zai_seen.headers["authorization"] == f"Bearer {ZAI}"  # z.ai's documented auth
    assert "x-api-key" not in zai_seen.headers

    # z.ai's coding plan runs out too: OpenRouter serves, converted, with tools, streamed
    sim.script(ZAI, zai_limit())
    sim.script(ROUTER, {"tool_calls": [{"id": "call_w1", "name": "get_weather",
                                        "arguments": {"city": "Paris"}}]})
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=50, messages=MSG,
                           tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    tool = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use"
    assert [(t.id, t.name, t.input) for t in tool] == [("call_w1", "get_weather",
                                                         {"city": "Paris"})]
    router_seen = sim.requests[-1]
    assert (router_seen.path, router_seen.body["model"]) == (
        "/v1/chat/completions", "anthropic/claude-sonnet-4.5")
    assert router_seen.body["tools"][0]["function"]["name"] == "get_weather"

    # the tool result goes back (JSON this time) with its id
    answer = c.messages.create(model="claude-sonnet-4-6", max_tokens=50, tools=[WEATHER],
                               messages=[*MSG, {"role": "assistant", "content": final.content},
                                         {"role": "user", "content": [{
                                             "type": "tool_result", "tool_use_id": "call_w1",
                                             "content": "sunny, 21 C"}]}])
    assert answer.stop_reason == "end_turn" and answer.usage.input_tokens > 0
    sent = sim.requests[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"}
    assert sent[-2]["tool_calls"][0]["id"] == "call_w1"

    rows = p.wait_rows(4, "select * from requests where status = 200 order by started_at")
    assert [(r["account"], r["provider"], r["model"], r["upstream_model"]) for r in rows] == [
        ("max", "anthropic", "claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("zai", "zai", "claude-sonnet-4-6", "glm-4.6"),
        ("router", "openrouter", "claude-sonnet-4-6", "anthropic/claude-sonnet-4.5"),
        ("router", "openrouter", "claude-sonnet-4-6", "anthropic/claude-sonnet-4.5")]
    assert rows[1]["cost_usd"] == pytest.approx(row_cost(rows[1], "zai"))
    assert rows[2]["cost_usd"] == pytest.approx(row_cost(rows[2], "openrouter"))
    assert rows[1]["cost_usd"] != pytest.approx(row_cost(rows[1], "anthropic"))
    events = p.wait_rows(2, "select account, reason from account_events "
                            "where event = 'cooldown' order by id")
    assert [(e["account"], e["reason"]) for e in events] == [("max", "rate_limited_5h"),
                                                             ("zai", "zai_usage_limit")]


@pytest.fixture(scope="module")
def gateway(sim_server, tmp_path_factory) -> Iterator[Proxy]:
    """One mitmdump for the routing tests: Anthropic key, z.ai, OpenRouter and OpenAI."""
    p = Proxy(tmp_path_factory.mktemp("providers"), team_pool(sim_server),
              {"flare_retry_attempts": "0"}, None)
    yield p.start()
    p.stop()


def test_prefix_routes_name_the_format_and_strip_once(sim, gateway):
    answer = claude(gateway, 0, "/v1/anthropic").messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
    assert answer.content and (sim.requests[-1].path, sim.requests[-1].credential) == (
        "/v1/messages", CLAUDE_KEY)
    gpt = openai.OpenAI(base_url=gateway.url + "/v1/openai/v1", api_key="client", max_retries=0)
    completion = gpt.chat.completions.create(model="gpt-4.1", messages=MSG)
    assert completion.choices[0].message.content
    assert (sim.requests[-1].path, sim.requests[-1].credential) == ("/v1/chat/completions", GPT)
    doubled = httpx.post(gateway.url + "/v1/anthropic/v1/anthropic/v1/messages",
                         headers={"x-api-key": "client"},
                         json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": MSG})
    assert doubled.status_code == 404  # the upstream's own answer: only one prefix goes
    assert sim.requests[-1].path == "/v1/anthropic/v1/messages"


def test_compatibility_route_picks_the_account_by_model_prefix(sim, gateway):
    url = gateway.url + "/v1/mitmflare/v1/messages"
    body = {"max_tokens": 5, "messages": MSG}
    glm = httpx.post(url, headers={"x-api-key": "client"}, json={**body, "model": "zai/glm-4.6"})
    assert glm.status_code == 200 and glm.json()["type"] == "message"
    assert (sim.requests[-1].credential, sim.requests[-1].body["model"]) == (ZAI, "glm-4.6")
    routed = httpx.post(url, headers={"x-api-key": "client"},
                        json={**body, "model": "openrouter/claude-haiku-4-5"})
    assert routed.json()["content"][0]["type"] == "text"
    assert (sim.requests[-1].credential, sim.requests[-1].body["model"]) == (
        ROUTER, "anthropic/claude-3.5-haiku")
    gpt = openai.OpenAI(base_url=gateway.url + "/v1/mitmflare/v1", api_key="c", max_retries=0)
    gpt.chat.completions.create(model="openai/gpt-4.1", messages=MSG)
    assert (sim.requests[-1].credential, sim.requests[-1].body["model"]) == (GPT, "gpt-4.1")
    rows = gateway.wait_rows(3, "select distinct account from requests "
                                "where account in ('zai', 'router', 'gpt')")
    assert {r["account"] for r in rows} == {"zai", "router", "gpt"}


def test_a_model_no_account_can_map_is_refused_in_the_clients_format(sim, gateway):
    c = claude(gateway, 0, "/v1/mitmflare")
    with pytest.raises(anthropic.NotFoundError) as refused:
        c.messages.create(model="zai/claude-unknown-9", max_tokens=5, messages=MSG)
    assert "claude-unknown-9" in refused.value.message
    assert sim.requests == []


def test_converted_errors_keep_their_status_and_take_anthropic_types(sim, gateway):
    c = claude(gateway, 0, "/v1/mitmflare")
    sim.script(ROUTER, {"status": 400, "body": {"error": {
        "message": "max_tokens is too large", "type": "invalid_request_error",
        "code": None}}})
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.messages.create(model="openrouter/claude-sonnet-4-6", max_tokens=5, messages=MSG)
    assert bad.value.body["error"] == {"type": "invalid_request_error",
                                       "message": "max_tokens is too large"}
    sim.script(ROUTER, {"status": 429, "headers": {"x-ratelimit-remaining-requests": "0",
                                                   "x-ratelimit-reset-requests": "20s"}})
    with pytest.raises(anthropic.RateLimitError) as limited:
        c.messages.create(model="openrouter/claude-sonnet-4-6", max_tokens=5, messages=MSG)
    assert limited.value.body["error"]["type"] == "rate_limit_error"


def test_minimax_serves_claude_requests_with_its_auth_and_prices_then_fails_over(sim, proxy):
    nano_price = {"input": 0.4, "output": 1.6}
    p = proxy(accounts_yaml(
        sim.url,
        {"name": "mm", "provider": "minimax", "api_key": MINIMAX,
         "models": {"sonnet": "MiniMax-M2", "haiku": "MiniMax-M2"}},
        {"name": "nano", "provider": "nanogpt", "base_url": f"{sim.url}/v1", "api_key": NANO,
         "priority": 1, "models": {"sonnet": "local-llm-7b"}, "price": nano_price}))
    c = claude(p)
    answer = c.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=MSG)
    assert answer.content[0].text.startswith("This is a simulated answer")
    seen = sim.requests[-1]
    assert (seen.credential, seen.path, seen.body["model"]) == (MINIMAX, "/v1/messages",
                                                                "MiniMax-M2")
    assert seen.headers["x-api-key"] == MINIMAX and "authorization" not in seen.headers
    with c.messages.stream(model="claude-haiku-4-5", max_tokens=20, messages=MSG) as stream:
        assert "simulated answer" in "".join(stream.text_stream)
    # MiniMax limited: the NanoGPT account serves, converted, priced from its own price:
    sim.script(MINIMAX, {"status": 429, "headers": {"retry-after": "30"}})
    assert c.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=MSG).content
    assert (sim.requests[-1].credential, sim.requests[-1].body["model"]) == (NANO,
                                                                             "local-llm-7b")
    rows = p.wait_rows(3, "select * from requests where status = 200 order by started_at")
    assert [(r["account"], r["provider"], r["upstream_model"], r["cost_source"])
            for r in rows] == [("mm", "minimax", "MiniMax-M2", "genai-prices"),
                               ("mm", "minimax", "MiniMax-M2", "genai-prices"),
                               ("nano", "nanogpt", "local-llm-7b", "account")]
    assert rows[0]["cost_usd"] == pytest.approx(row_cost(rows[0], "minimax"))
    assert rows[0]["cost_usd"] != pytest.approx(row_cost({**rows[0], "upstream_model":
                                                          "claude-sonnet-4-6"}, "anthropic"))
    assert rows[2]["cost_usd"] == pytest.approx(
        (rows[2]["input_tokens"] * 0.4 + rows[2]["output_tokens"] * 1.6) / 1e6)
    events = p.wait_rows(1, "select account, reason from account_events where event = 'cooldown'")
    assert events[0]["account"] == "mm"


def claude_code_binary() -> str | None:
    """The native Claude Code CLI: ``MITMFLARE_CLAUDE``, the copy ``./scripts/test`` installs
    into ``.tools/`` with npm, or ``claude`` on PATH."""
    found = glob.glob(str(ROOT / ".tools/node_modules/@anthropic-ai/claude-code-*/claude"))
    return os.environ.get("MITMFLARE_CLAUDE") or (found[0] if found else shutil.which("claude"))


def test_claude_code_completes_a_prompt_with_a_tool_through_openai_compatible(
        sim, proxy, tmp_path):
    binary = claude_code_binary()
    if binary is None:
        pytest.skip("Claude Code CLI not installed (needs npm: ./scripts/test installs it)")
    p = proxy(accounts_yaml(f"{sim.url}/v1", {
        "name": "router", "provider": "openai-compatible", "api_key": ROUTER,
        "models": ROUTED}))
    note = tmp_path / "note.txt"
    note.write_text("the secret word is pelican\n")
    sim.script(ROUTER, {"tool_calls": [{"id": "call_r1", "name": "Read",
                                        "arguments": {"file_path": str(note)}}]})
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "ANTHROPIC_BASE_URL": p.url,
           "ANTHROPIC_API_KEY": "sk-ant-api03-CLIENT", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "NO_PROXY": "127.0.0.1"}
    done = subprocess.run([binary, "-p", "read note.txt", "--allowedTools", "Read"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "simulated answer" in done.stdout
    chats = [r for r in sim.requests if r.path == "/v1/chat/completions"]
    assert chats and all(r.credential == ROUTER for r in chats)
    last = chats[-1].body["messages"]
    assert last[-1]["role"] == "tool" and last[-1]["tool_call_id"] == "call_r1"
    assert "pelican" in str(last[-1]["content"])
    rows = p.wait_rows(len(chats))
    assert {r["upstream_model"] for r in rows} <= set(ROUTED.values())
    assert all(r["status"] == 200 and r["account"] == "router" for r in rows)
