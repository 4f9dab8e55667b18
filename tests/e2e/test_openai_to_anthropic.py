"""End to end: the real ``openai`` SDK (Chat Completions and the Responses API, JSON and
streamed, tools, JSON schema) served by Anthropic accounts through the simulated upstream,
on the OpenAI listener, the ``/v1/openai`` prefix and the compatibility route; failover
crossing formats both ways; rows with the client's model, the upstream's, usage and cost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from pydantic import BaseModel

from conftest import Proxy, accounts_yaml
from mitmflare.demo.simulator import REPLY_WORDS
from mitmflare.storage.pricing import cost_usd

CLAUDE, PLAIN, GPT = "sk-ant-api03-CLAUDE", "sk-ant-api03-PLAIN", "sk-proj-GPT"
OPENAI_LISTENER = ["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"]
REPLY = " ".join(REPLY_WORDS)
MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
MAPPED = {"gpt-4.1": "claude-sonnet-4-5"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
CALLS = [{"id": "toolu_w1", "name": "get_weather", "arguments": {"city": "Paris"}},
         {"id": "toolu_w2", "name": "get_weather", "arguments": {"city": "Rome"}}]


class Weather(BaseModel):
    city: str
    celsius: int


def pool(sim, gpt_first: bool = False) -> str:
    """An Anthropic key mapping gpt-4.1, an Anthropic key without a mapping, an OpenAI key."""
    return accounts_yaml(
        sim.url,
        {"name": "claude", "api_key": CLAUDE, "models": MAPPED, "priority": 1 if gpt_first else 0},
        {"name": "plain", "api_key": PLAIN, "priority": 2},
        {"name": "gpt", "provider": "openai", "api_key": GPT, "priority": 0 if gpt_first else 1})


@pytest.fixture(scope="module")
def gateway(sim_server, tmp_path_factory) -> Iterator[Proxy]:
    p = Proxy(tmp_path_factory.mktemp("openai-to-anthropic"), pool(sim_server), {},
              OPENAI_LISTENER)
    yield p.start()
    p.stop()


def gpt(p: Proxy, prefix: str = "/v1", retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.url + prefix, api_key="sk-CLIENT", max_retries=retries)


def row(p: Proxy, flow_model: str = "gpt-4.1", count: int = 1) -> list[dict]:
    return p.wait_rows(count, f"select * from requests where model = '{flow_model}' "
                              f"order by started_at")


def test_chat_completion_from_an_anthropic_account(sim, gateway):
    done = gpt(gateway).chat.completions.create(model="gpt-4.1", messages=MSG, temperature=0.5,
                                               max_completion_tokens=50, user="u-1")
    choice = done.choices[0]
    assert (choice.message.content, choice.finish_reason) == (REPLY, "stop")
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (25, len(REPLY_WORDS))
    seen = sim.requests[-1]
    assert (seen.path, seen.credential, seen.headers["anthropic-version"]) == (
        "/v1/messages", CLAUDE, "2023-06-01")
    assert "sk-CLIENT" not in json.dumps(seen.headers)
    assert seen.body == {"model": "claude-sonnet-4-5", "max_tokens": 50, "temperature": 0.5,
                         "system": [{"type": "text", "text": "Be brief."}],
                         "messages": [{"role": "user",
                                       "content": [{"type": "text", "text": "hello"}]}],
                         "metadata": {"user_id": "u-1"}}
    [r] = row(gateway)
    assert (r["account"], r["provider"], r["model"], r["upstream_model"], r["status"]) == (
        "claude", "anthropic", "gpt-4.1", "claude-sonnet-4-5", 200)
    assert r["wire_format"] == "openai"  # the client's; the account's provider above
    assert (r["input_tokens"], r["output_tokens"], r["cost_source"]) == (
        25, len(REPLY_WORDS), "genai-prices")
    assert r["cost_usd"] == pytest.approx(cost_usd("anthropic", "claude-sonnet-4-5", 25,
                                                   len(REPLY_WORDS), 0, 0, 0))


def test_streamed_chat_completion_with_the_usage_chunk_and_cache_tokens(sim, gateway):
    sim.script(CLAUDE, {"usage": {"input_tokens": 10, "cache_read_input_tokens": 100,
                                  "cache_creation_input_tokens": 50, "output_tokens": 11}})
    chunks = list(gpt(gateway).chat.completions.create(
        model="gpt-4.1", messages=MSG, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens,
            usage.completion_tokens) == (160, 100, 11)
    assert sim.requests[-1].body["stream"] is True
    r = gateway.wait_rows(1, "select * from requests where streamed = 1 and account = 'claude' "
                             "order by started_at")[0]
    assert (r["input_tokens"], r["cache_read_input_tokens"], r["cache_creation_input_tokens"],
            r["output_tokens"]) == (10, 100, 50, 11)
    assert r["cost_usd"] == pytest.approx(cost_usd("anthropic", "claude-sonnet-4-5", 10, 11,
                                                   100, 50, 0))


def test_parallel_tool_calls_and_their_results(sim, gateway):
    client = gpt(gateway)
    sim.script(CLAUDE, {"tool_calls": CALLS})
    done = client.chat.completions.create(model="gpt-4.1", messages=MSG, tools=[WEATHER],
                                          parallel_tool_calls=False)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments))
            for c in choice.message.tool_calls] == [
        ("toolu_w1", "get_weather", {"city": "Paris"}), ("toolu_w2", "get_weather",
                                                         {"city": "Rome"})]
    sent = sim.requests[-1].body
    assert sent["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": WEATHER["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}

    answer = client.chat.completions.create(model="gpt-4.1", tools=[WEATHER], messages=[
        *MSG, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "toolu_w1", "content": "sunny, 21 C"},
        {"role": "tool", "tool_call_id": "toolu_w2", "content": "rain, 15 C"}])
    assert answer.choices[0].message.content == REPLY
    assistant, results = sim.requests[-1].body["messages"][-2:]
    assert [b["id"] for b in assistant["content"] if b["type"] == "tool_use"] == [
        "toolu_w1", "toolu_w2"]
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_w1", "content": "sunny, 21 C"},
        {"type": "tool_result", "tool_use_id": "toolu_w2", "content": "rain, 15 C"}]}

    sim.script(CLAUDE, {"tool_calls": CALLS})
    with client.chat.completions.stream(model="gpt-4.1", messages=MSG,
                                        tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.id, json.loads(c.function.arguments)) for c in
            final.choices[0].message.tool_calls] == [("toolu_w1", {"city": "Paris"}),
                                                     ("toolu_w2", {"city": "Rome"})]


def test_json_schema_answers_parse_json_and_streamed(sim, gateway):
    client = gpt(gateway)
    forced = {"tool_calls": [{"id": "toolu_j", "name": "json_response",
                              "arguments": {"city": "Oslo", "celsius": 3}}]}
    sim.script(CLAUDE, forced)
    done = client.chat.completions.parse(model="gpt-4.1", messages=MSG, response_format=Weather)
    assert done.choices[0].message.parsed == Weather(city="Oslo", celsius=3)
    assert done.choices[0].finish_reason == "stop"
    sent = sim.requests[-1].body
    assert sent["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert sent["tools"][0]["input_schema"]["properties"]["celsius"]["type"] == "integer"
    sim.script(CLAUDE, forced)
    with client.chat.completions.stream(model="gpt-4.1", messages=MSG,
                                        response_format=Weather) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Weather(city="Oslo", celsius=3)


def test_responses_api_json_and_streamed_with_a_function_tool(sim, gateway):
    client = gpt(gateway)
    answer = client.responses.create(model="gpt-4.1", instructions="Be brief.", input="hello",
                                     max_output_tokens=40)
    assert answer.output_text == REPLY and answer.status == "completed"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (25, len(REPLY_WORDS))
    sent = sim.requests[-1]
    assert (sent.path, sent.body["system"], sent.body["max_tokens"]) == (
        "/v1/messages", [{"type": "text", "text": "Be brief."}], 40)

    with client.responses.stream(model="gpt-4.1", input="hello") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == REPLY and len(deltas) == len(REPLY_WORDS)
    assert final.output_text == REPLY and final.usage.output_tokens == len(REPLY_WORDS)

    tool = {"type": "function", "name": "get_weather", "description": "Weather",
            "parameters": WEATHER["function"]["parameters"], "strict": True}
    sim.script(CLAUDE, {"tool_calls": CALLS[:1]})
    called = client.responses.create(model="gpt-4.1", input="weather?", tools=[tool])
    [call] = called.output
    assert (call.type, call.call_id, call.name, json.loads(call.arguments)) == (
        "function_call", "toolu_w1", "get_weather", {"city": "Paris"})
    sim.script(CLAUDE, {"tool_calls": CALLS[:1]})
    with client.responses.stream(model="gpt-4.1", input="weather?", tools=[tool]) as stream:
        pieces = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert json.loads("".join(pieces)) == {"city": "Paris"} and len(pieces) == 2
    assert final.output[0].arguments == "".join(pieces)

    client.responses.create(model="gpt-4.1", tools=[tool], input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "toolu_w1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "toolu_w1", "output": "sunny"}])
    assert sim.requests[-1].body["messages"][-1]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_w1", "content": "sunny"}]
    rows = gateway.wait_rows(5, "select * from requests where path = '/v1/responses' "
                                "order by started_at")
    assert [(r["streamed"], r["model"], r["upstream_model"], r["account"]) for r in rows] == [
        (streamed, "gpt-4.1", "claude-sonnet-4-5", "claude") for streamed in (0, 1, 0, 1, 0)]
    assert all(r["output_tokens"] == len(REPLY_WORDS) for r in rows[:2])


def test_prefix_and_compatibility_routes(sim, gateway):
    done = gpt(gateway, "/v1/openai/v1").chat.completions.create(model="gpt-4.1", messages=MSG)
    assert done.choices[0].message.content == REPLY and sim.requests[-1].credential == CLAUDE
    # the compatibility route's prefix picks Anthropic accounts, mapped or not
    compat = gpt(gateway, "/v1/mitmflare/v1")
    done = compat.chat.completions.create(model="anthropic/claude-haiku-4-5", messages=MSG)
    assert done.choices[0].message.content == REPLY
    assert (sim.requests[-1].credential, sim.requests[-1].body["model"]) == (
        PLAIN, "claude-haiku-4-5")
    # and the other way: an Anthropic-format request for openai/… goes to the OpenAI account
    message = httpx.post(gateway.url + "/v1/mitmflare/v1/messages", headers={"x-api-key": "c"},
                         json={"model": "openai/gpt-4o", "max_tokens": 5,
                               "messages": [{"role": "user", "content": "hi"}]}).json()
    assert message["type"] == "message" and message["content"][0]["text"] == REPLY
    assert (sim.requests[-1].credential, sim.requests[-1].path) == (GPT, "/v1/chat/completions")
    # without a prefix naming them, unmapped Anthropic accounts take no OpenAI requests
    done = gpt(gateway).chat.completions.create(model="gpt-4o", messages=MSG)
    assert (sim.requests[-1].credential, sim.requests[-1].path) == (GPT, "/v1/chat/completions")


def test_errors_keep_their_status_in_the_openai_shape(sim, gateway):
    sim.script(CLAUDE, {"status": 400, "body": {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: too large"}}})
    with pytest.raises(openai.BadRequestError) as bad:
        gpt(gateway).chat.completions.create(model="gpt-4.1", messages=MSG)
    assert bad.value.body == {"message": "max_tokens: too large",
                              "type": "invalid_request_error", "param": None, "code": None}
    sim.script(CLAUDE, {"error_event": {"type": "overloaded_error", "message": "Overloaded"}})
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(gpt(gateway).chat.completions.create(model="gpt-4.1", messages=MSG, stream=True))


def test_what_cannot_convert_goes_to_the_openai_account_or_is_refused(sim, gateway, proxy):
    """``previous_response_id`` and built-in tools never reach an Anthropic account: the
    OpenAI account serves them as they are; with no such account, a clear 400."""
    client = gpt(gateway)
    client.responses.create(model="gpt-4.1", input="news?", tools=[{"type": "web_search"}])
    assert (sim.requests[-1].credential, sim.requests[-1].path) == (GPT, "/v1/responses")
    client.responses.create(model="gpt-4.1", input="and then?", previous_response_id="resp_1")
    assert sim.requests[-1].body["previous_response_id"] == "resp_1"
    assert sim.requests[-1].credential == GPT
    only_claude = proxy(accounts_yaml(sim.url, {"name": "claude", "api_key": CLAUDE,
                                                "models": MAPPED}), OPENAI_LISTENER)
    sent = len(sim.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        gpt(only_claude).responses.create(model="gpt-4.1", input="and then?",
                                          previous_response_id="resp_1")
    assert "`previous_response_id` is not supported by the accounts that could serve this " \
           "request (claude)" in refused.value.message
    assert "send the whole conversation in `input`" in refused.value.message
    with pytest.raises(openai.BadRequestError, match=r"built-in tools \(file_search, "
                                                     r"web_search\) do not convert"):
        gpt(only_claude).responses.create(model="gpt-4.1", input="x", tools=[
            {"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}])
    assert len(sim.requests) == sent  # nothing went upstream
    [row] = only_claude.wait_rows(2)[:1]
    assert row["status"] == 400 and "previous_response_id" in row["error"]


def rejected_5h() -> dict:
    reset = str(int(time.time() + 600))
    return {"status": 429, "headers": {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-5h-status": "rejected",
        "anthropic-ratelimit-unified-5h-reset": reset,
        "anthropic-ratelimit-unified-reset": reset, "retry-after": "600"}}


def test_failover_from_an_anthropic_account_to_an_openai_one(sim, proxy):
    p = proxy(pool(sim), OPENAI_LISTENER)
    sim.script(CLAUDE, rejected_5h())
    done = gpt(p).chat.completions.create(model="gpt-4.1", messages=MSG)
    assert done.choices[0].message.content == REPLY
    assert [(r.credential, r.path) for r in sim.requests] == [
        (CLAUDE, "/v1/messages"), (GPT, "/v1/chat/completions")]
    assert sim.requests[-1].body["messages"] == MSG  # the client's own body, passed through
    [r] = p.wait_rows(1)
    assert (r["account"], r["provider"], r["model"], r["upstream_model"], r["failover"],
            r["attempts"]) == ("gpt", "openai", "gpt-4.1", "gpt-4.1", 1, 2)
    assert r["cost_usd"] == pytest.approx(cost_usd("openai", "gpt-4.1", 25, 11, 0, 0, 0))


def test_failover_from_an_openai_account_to_an_anthropic_one_json_and_streamed(sim, proxy):
    p = proxy(pool(sim, gpt_first=True), OPENAI_LISTENER)
    windowless = {"status": 429}  # fails over, no cooldown: gpt stays first in line
    sim.script(GPT, windowless)
    done = gpt(p).chat.completions.create(model="gpt-4.1", messages=MSG)  # re-sent by the proxy
    assert done.choices[0].message.content == REPLY and done.object == "chat.completion"
    sim.script(GPT, windowless)
    chunks = list(gpt(p, retries=2).chat.completions.create(  # retried by the client
        model="gpt-4.1", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage.completion_tokens == len(REPLY_WORDS)
    assert [(r.credential, r.path) for r in sim.requests] == [
        (GPT, "/v1/chat/completions"), (CLAUDE, "/v1/messages")] * 2
    rows = p.wait_rows(3)
    assert [(r["account"], r["status"], r["streamed"]) for r in rows] == [
        ("claude", 200, 0), ("gpt", 503, 1), ("claude", 200, 1)]
    assert all((r["model"], r["upstream_model"], r["output_tokens"]) == (
        "gpt-4.1", "claude-sonnet-4-5", len(REPLY_WORDS)) for r in (rows[0], rows[2]))
