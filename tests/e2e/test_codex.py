"""End to end: Codex (ChatGPT subscription) accounts against the simulator's Codex mode: the
real ``openai`` SDK (Responses API, JSON and streamed; Chat Completions) and the real
``anthropic`` SDK (through conversion, tools included) served by a Codex account, its
``x-codex-*`` headers read into usage windows, failover between two Codex accounts, the
``mitmflare accounts login --provider codex`` login, and token refresh."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import anthropic
import httpx
import openai
import pytest

from conftest import Proxy, free_port, start_login, wait_for
from mitmflare.demo import simulator_codex
from mitmflare.demo.simulator import REPLY_WORDS

REPLY = " ".join(REPLY_WORDS)
MODEL = "gpt-5.4"
MSG = [{"role": "user", "content": "hello"}]
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def codex_yaml(sim, pairs: dict[str, dict], expires_in: float = 28800) -> str:
    """Codex accounts named as ``pairs``' keys (priority in that order), each with its pair."""
    lines = ["accounts:"]
    for priority, (name, pair) in enumerate(pairs.items()):
        lines += [f"  - name: {name}", "    provider: codex",
                  f"    base_url: {sim.url}/backend-api/codex", f"    priority: {priority}",
                  f"    models: {{sonnet: {MODEL}}}",
                  f"    oauth: {{access_token: {pair['access_token']}, "
                  f"refresh_token: {pair['refresh_token']}, "
                  f"expires_at: {iso(time.time() + expires_in)}}}"]
    return "\n".join(lines) + "\n"


class Gateway(Proxy):
    """A proxy with an Anthropic listener (``url``) and an OpenAI one (``openai_url``)."""

    def __init__(self, tmp, accounts_yaml: str) -> None:
        self.port2 = free_port()
        super().__init__(tmp, accounts_yaml, {}, [
            "reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}",
            f"reverse:https://openai.mitmflare.invalid@127.0.0.1:{self.port2}"])

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port2}/v1"


@pytest.fixture(scope="module")
def pairs(sim_server) -> dict[str, dict]:
    return {"codex-a": simulator_codex.issue_tokens(sim_server),
            "codex-b": simulator_codex.issue_tokens(sim_server)}


@pytest.fixture(scope="module")
def gateway(sim_server, pairs, tmp_path_factory) -> Iterator[Gateway]:
    p = Gateway(tmp_path_factory.mktemp("codex"), codex_yaml(sim_server, pairs))
    yield p.start()
    p.stop()


def gpt(p: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.openai_url, api_key="sk-CLIENT", max_retries=0)


def claude(p: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url, api_key="sk-ant-CLIENT", max_retries=0)


def codex_request(sim):
    return [r for r in sim.requests if r.path == simulator_codex.RESPONSES_PATH][-1]


def assert_codex_wire(seen, pair: dict) -> None:
    """What every request to the Codex endpoint carries (``providers/codex.py``)."""
    assert seen.credential == pair["access_token"]
    assert seen.headers["chatgpt-account-id"] == simulator_codex.ACCOUNT
    assert seen.headers["originator"] == "codex_cli_rs"
    assert seen.headers["openai-beta"] == "responses=experimental"
    assert seen.headers["session_id"] and seen.headers["accept"] == "text/event-stream"
    assert "CLIENT" not in json.dumps(seen.headers)
    assert (seen.body["stream"], seen.body["store"]) == (True, False)
    assert not {"max_output_tokens", "temperature", "top_p"} & set(seen.body)


def test_responses_api_served_by_a_codex_account(sim, gateway, pairs):
    done = gpt(gateway).responses.create(model=MODEL, input="hello", instructions="Be brief.",
                                         max_output_tokens=50, temperature=0.2)
    assert done.output_text == REPLY and done.status == "completed"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (25, len(REPLY_WORDS))
    seen = codex_request(sim)
    assert_codex_wire(seen, pairs["codex-a"])
    assert seen.body["instructions"] == "Be brief." and seen.body["model"] == MODEL
    assert seen.body["input"] == [{"type": "message", "role": "user",
                                   "content": [{"type": "input_text", "text": "hello"}]}]
    [row] = gateway.wait_rows(1, "select * from requests where path = '/v1/responses' "
                                 "and streamed = 0")
    assert (row["account"], row["provider"], row["status"]) == ("codex-a", "codex", 200)
    assert (row["input_tokens"], row["output_tokens"]) == (25, len(REPLY_WORDS))


def test_responses_api_streamed_from_a_codex_account(sim, gateway):
    with gpt(gateway).responses.stream(model=MODEL, input=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == REPLY and final.output_text == REPLY
    assert final.usage.output_tokens == len(REPLY_WORDS)
    assert codex_request(sim).body["input"][0]["role"] == "developer"
    [row] = gateway.wait_rows(1, "select * from requests where path = '/v1/responses' "
                                 "and streamed = 1")
    assert (row["account"], row["output_tokens"]) == ("codex-a", len(REPLY_WORDS))


def test_chat_completions_served_by_a_codex_account(sim, gateway):
    done = gpt(gateway).chat.completions.create(model=MODEL, messages=[
        {"role": "system", "content": "Be brief."}, *MSG], max_completion_tokens=40)
    assert (done.choices[0].message.content, done.choices[0].finish_reason) == (REPLY, "stop")
    assert done.usage.completion_tokens == len(REPLY_WORDS)
    stream = gpt(gateway).chat.completions.create(model=MODEL, messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    assert codex_request(sim).body["instructions"] == ""


def test_anthropic_sdk_served_by_a_codex_account(sim, gateway, pairs):
    message = claude(gateway).messages.create(model="claude-sonnet-4-6", max_tokens=50,
                                              system="Be brief.", messages=MSG)
    assert message.content[0].text == REPLY and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (25, len(REPLY_WORDS))
    seen = codex_request(sim)
    assert_codex_wire(seen, pairs["codex-a"])
    assert (seen.body["model"], seen.body["instructions"]) == (MODEL, "Be brief.")
    [row] = gateway.wait_rows(1, "select * from requests where path = '/v1/messages'")
    assert (row["model"], row["upstream_model"], row["account"]) == (
        "claude-sonnet-4-6", MODEL, "codex-a")


def test_anthropic_sdk_streams_tool_calls_from_a_codex_account(sim, gateway, pairs):
    sim.script(pairs["codex-a"]["access_token"], {"tool_calls": [
        {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]})
    with claude(gateway).messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                         messages=MSG, tools=[WEATHER]) as s:
        final = s.get_final_message()
    [block] = final.content
    assert (block.type, block.id, block.name, block.input) == (
        "tool_use", "call_1", "get_weather", {"city": "Paris"})
    assert final.stop_reason == "tool_use"
    tool = codex_request(sim).body["tools"][0]
    assert (tool["type"], tool["name"], tool["parameters"]["required"]) == (
        "function", "get_weather", ["city"])


def test_codex_takes_built_in_tools_but_refuses_previous_response_id(sim, gateway):
    gpt(gateway).responses.create(model=MODEL, input="news?", tools=[{"type": "web_search"}])
    assert codex_request(sim).body["tools"] == [{"type": "web_search"}]
    sent = len(sim.requests)
    with pytest.raises(openai.BadRequestError, match="`previous_response_id` is not supported "
                                                     "by the accounts"):
        gpt(gateway).responses.create(model=MODEL, input="more", previous_response_id="resp_1")
    assert len(sim.requests) == sent


def test_codex_headers_become_usage_windows(sim, gateway):
    gpt(gateway).responses.create(model=MODEL, input="hello")

    def windows():
        rows = gateway.query("select limits from accounts where name = 'codex-a'")
        return rows and rows[0]["limits"] and json.loads(rows[0]["limits"]).get("windows")

    found = wait_for(windows)
    assert set(found) == {"5h", "7d"} and 0 < found["5h"]["utilization"] <= 1
    assert found["5h"]["reset"] > time.time() + 3600 and found["5h"]["status"] == "allowed"


def test_failover_between_two_codex_accounts(sim, proxy):
    first, second = simulator_codex.issue_tokens(sim), simulator_codex.issue_tokens(sim)
    resets = int(time.time() + 3600)
    sim.script(first["access_token"], {"status": 429, "headers": {
        "x-codex-primary-used-percent": "100", "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-at": str(resets)}, "body": {"error": {
            "type": "usage_limit_reached", "message": "The usage limit has been reached",
            "plan_type": "pro", "resets_at": resets}}})
    p = proxy(codex_yaml(sim, {"codex-a": first, "codex-b": second}),
              ["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"])
    client = openai.OpenAI(base_url=p.url + "/v1", api_key="sk-CLIENT", max_retries=0)
    assert client.responses.create(model=MODEL, input="hello").output_text == REPLY
    attempts = p.wait_rows(2, "select account, status, reason from attempts order by id")
    assert [(a["account"], a["status"]) for a in attempts] == [("codex-a", 429),
                                                                ("codex-b", 200)]
    assert attempts[0]["reason"] == "codex_usage_limit"
    cooling = wait_for(lambda: p.query(
        "select cooldown_until from accounts where name = 'codex-a' and cooldown_until is "
        "not null"))
    until = datetime.fromisoformat(cooling[0]["cooldown_until"].replace("Z", "+00:00"))
    assert abs(until.timestamp() - resets) < 5
    assert client.responses.create(model=MODEL, input="again").output_text == REPLY
    assert codex_request(sim).credential == second["access_token"]


def test_token_about_to_expire_is_refreshed_first_and_persisted(sim, proxy):
    sim.oauth_enforce = True
    pair = simulator_codex.issue_tokens(sim, expires_in=600)  # inside the 30 min buffer
    p = proxy(codex_yaml(sim, {"codex-a": pair}, expires_in=600),
              ["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"],
              flare_codex_token_url=f"{sim.url}{simulator_codex.TOKEN_PATH}")
    client = openai.OpenAI(base_url=p.url + "/v1", api_key="sk-CLIENT", max_retries=0)
    assert client.responses.create(model=MODEL, input="hello").output_text == REPLY
    [refresh] = sim.token_requests
    assert refresh == {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"],
                       "client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "_form": False}
    used = codex_request(sim).credential
    assert used != pair["access_token"]
    conn = sqlite3.connect(p.state)
    try:
        stored = conn.execute("select access_token, refresh_token from oauth_tokens "
                              "where name = 'codex-a'").fetchone()
    finally:
        conn.close()
    assert stored[0] == used and stored[1] != pair["refresh_token"]


def test_a_dead_refresh_token_marks_the_account_for_login(sim, proxy):
    sim.oauth_enforce = True
    pair = simulator_codex.issue_tokens(sim, expires_in=600)
    sim._refresh_tokens.discard(pair["refresh_token"])  # used elsewhere: refresh_token_reused
    p = proxy(codex_yaml(sim, {"codex-a": pair}, expires_in=600),
              ["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"],
              flare_codex_token_url=f"{sim.url}{simulator_codex.TOKEN_PATH}")
    client = openai.OpenAI(base_url=p.url + "/v1", api_key="sk-CLIENT", max_retries=0)
    with pytest.raises(openai.APIStatusError):
        client.responses.create(model=MODEL, input="hello")
    assert wait_for(lambda: p.query("select 1 from accounts where name = 'codex-a' "
                                    "and needs_reauth = 1"))


def test_login_with_provider_codex_against_the_simulator(sim, proxy, tmp_path):
    accounts = tmp_path / "accounts.yaml"
    state = tmp_path / "state.db"
    accounts.write_text("accounts: []\n")
    proc, url = start_login(["chatgpt", "--provider", "codex", "--accounts", str(accounts),
                             "--state", str(state), "--authorize-url",
                             f"{sim.url}{simulator_codex.AUTHORIZE_PATH}",
                             "--token-url", f"{sim.url}{simulator_codex.TOKEN_PATH}"])
    assert "client_id=app_EMoamEEZ73f0CkXaXp7hrann" in url and "code_challenge_method=S256" in url
    assert "redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback" in url
    approved = httpx.get(url).json()  # the simulated user approves in the browser
    callback = f"http://localhost:1455/auth/callback?code={approved['code']}" \
               f"&state={approved['state']}"
    _, err = proc.communicate(callback + "\n", timeout=30)
    assert proc.returncode == 0, err
    exchange = sim.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code" and exchange["_form"] is True
    text = accounts.read_text()
    assert "provider: codex" in text and "from_state: true" in text and "rt_sim" not in text

    sim.oauth_enforce = True
    served = re.sub(r"(?m)^(\s*)oauth:", rf"\1base_url: {sim.url}/backend-api/codex\n\1oauth:",
                    text)
    p = proxy(served, ["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"],
              flare_state=str(state))
    client = openai.OpenAI(base_url=p.url + "/v1", api_key="sk-CLIENT", max_retries=0)
    assert client.responses.create(model=MODEL, input="hello").output_text == REPLY
    assert codex_request(sim).headers["chatgpt-account-id"] == simulator_codex.ACCOUNT
