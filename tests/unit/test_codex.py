"""Codex accounts without processes: the request body and headers, the ``x-codex-*`` limit
headers, the classification of its answers, Chat ⇄ Responses conversion, the OAuth client."""

from __future__ import annotations

import json
import time

import httpx
from mitmproxy.http import Headers

from mitmflare.config.accounts import parse_accounts
from mitmflare.demo.simulator_codex import AUTH_CLAIM, jwt
from mitmflare.providers import codex, oauth
from mitmflare.providers.responses_to_chat import (
    ResponsesChatStream,
    chat_to_responses,
    final_response,
    response_to_completion,
)
from mitmflare.routing.classify import classify
from mitmflare.routing.ratelimits import parse_limits


def headers(**fields: str) -> Headers:
    return Headers([(k.replace("_", "-").encode(), v.encode()) for k, v in fields.items()])


def test_request_body_is_what_the_codex_endpoint_takes():
    body = codex.request_body({"model": "x", "input": "hi", "max_output_tokens": 9,
                               "temperature": 1, "top_p": 1, "user": "u", "stream": False,
                               "service_tier": "flex", "tools": []}, "gpt-5.4", "sess-1")
    assert body == {"model": "gpt-5.4", "stream": True, "store": False, "instructions": "",
                    "tools": [], "prompt_cache_key": "sess-1",
                    "input": [{"type": "message", "role": "user",
                               "content": [{"type": "input_text", "text": "hi"}]}]}
    kept = codex.request_body({"input": [{"role": "system", "content": "s"}],
                               "instructions": "i", "service_tier": "priority"}, "m")
    assert kept["input"] == [{"role": "developer", "content": "s"}]
    assert (kept["instructions"], kept["service_tier"]) == ("i", "priority")


def test_headers_name_the_chatgpt_account_of_the_token():
    token = jwt({"exp": 1, AUTH_CLAIM: {"chatgpt_account_id": "acct-1"}})
    fields = dict(codex.request_headers(token, "s-1"))
    assert fields == {b"chatgpt-account-id": b"acct-1", b"originator": b"codex_cli_rs",
                      b"openai-beta": b"responses=experimental", b"session_id": b"s-1",
                      b"accept": b"text/event-stream"}
    assert b"chatgpt-account-id" not in dict(codex.request_headers("not-a-jwt", None))


def test_codex_accounts_need_oauth():
    yaml = ("accounts:\n  - name: c\n    provider: codex\n    api_key: k\n"
            "  - name: d\n    provider: codex\n    oauth: {from_state: true}\n")
    loaded = parse_accounts(yaml)
    assert [a.name for a in loaded.accounts] == ["d"]
    assert "provider codex needs oauth" in loaded.errors[0]
    assert loaded.accounts[0].upstream == "https://chatgpt.com/backend-api/codex"


def test_codex_limit_headers_become_windows():
    now = time.time()
    limits = parse_limits("codex", headers(
        x_codex_primary_used_percent="42.5", x_codex_primary_window_minutes="300",
        x_codex_primary_reset_at=str(int(now + 600)), x_codex_secondary_used_percent="100",
        x_codex_secondary_window_minutes="10080", x_codex_secondary_reset_after_seconds="60"),
        now)
    five, week = limits.windows["5h"], limits.windows["7d"]
    assert (five.status, five.utilization, five.reset) == ("allowed", 0.425, int(now + 600))
    assert (week.status, week.utilization, week.reset) == ("rejected", 1.0, now + 60)
    assert limits.constrained(0.95, now)
    empty = parse_limits("codex", headers(x_codex_primary_used_percent="0"), now)
    assert not empty.present


def test_usage_limit_reached_cools_until_its_reset_and_no_codex_plan_benches():
    now = time.time()
    body = json.dumps({"error": {"type": "usage_limit_reached", "resets_at": int(now + 900)}})
    verdict = classify("codex", 429, parse_limits("codex", headers(), now), body.encode(), now,
                       6 * 3600)
    assert (verdict.action, verdict.reason, verdict.cooldown_until) == (
        "failover", "codex_usage_limit", int(now + 900))
    plain = classify("codex", 429, parse_limits("codex", headers(), now),
                     b'{"error": {"type": "usage_limit_reached"}}', now, 6 * 3600)
    assert plain.backoff
    benched = classify("codex", 403, parse_limits("codex", headers(), now),
                       b'{"error": {"type": "usage_not_included"}}', now, 6 * 3600)
    assert benched.bench


def test_chat_request_becomes_a_responses_request():
    body = chat_to_responses({"messages": [
        {"role": "system", "content": "s1"}, {"role": "developer", "content": "s2"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "http://i"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}},
        "reasoning_effort": "low", "max_completion_tokens": 5, "stream": True})
    assert body["instructions"] == "s1\n\ns2"
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "http://i"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"}]
    assert body["tool_choice"] == {"type": "function", "name": "f"}
    assert body["text"] == {"format": {"type": "json_schema", "name": "n", "schema": {}}}
    assert (body["reasoning"], body["max_output_tokens"], body["stream"]) == (
        {"effort": "low"}, 5, True)


def _stream(*events: dict) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


DONE = {"id": "r1", "model": "gpt-5.4", "status": "completed", "output": [
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'}],
    "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
              "output_tokens": 3}}


def _chunks(stream: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in stream.split(b"\n\n") if line.startswith(b"data: {")]


def test_responses_stream_becomes_chat_chunks_in_any_split():
    raw = _stream({"type": "response.created", "response": {"id": "r1", "model": "gpt-5.4"}},
                  {"type": "response.output_text.delta", "delta": "Hé"},
                  {"type": "response.output_item.added", "output_index": 1,
                   "item": {"type": "function_call", "call_id": "c1", "name": "f"}},
                  {"type": "response.function_call_arguments.delta", "output_index": 1,
                   "delta": '{"a":1}'},
                  {"type": "response.completed", "response": DONE})
    whole = ResponsesChatStream("m").feed(raw)
    pieces = ResponsesChatStream("m")
    split = b"".join(pieces.feed(raw[i:i + 7]) for i in range(0, len(raw), 7)) + pieces.feed(b"")
    chunks = _chunks(whole)
    assert [{k: v for k, v in c.items() if k != "created"} for c in _chunks(split)] == \
        [{k: v for k, v in c.items() if k != "created"} for c in chunks]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hé"}
    call = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert (call["index"], call["id"], call["function"]["name"]) == (0, "c1", "f")
    assert chunks[3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[4]["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert whole.endswith(b"data: [DONE]\n\n") and chunks[0]["id"] == "chatcmpl-r1"
    cut = ResponsesChatStream("m")
    assert b'"error"' in cut.feed(raw[:40]) + cut.feed(b"")


def test_whole_stream_gives_its_final_response_and_completion():
    final, error = final_response(_stream({"type": "response.completed", "response": DONE}))
    assert final == DONE and error is None
    done = response_to_completion(final, "m")
    assert done["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    assert done["usage"]["prompt_tokens"] == 10
    final, error = final_response(_stream({"type": "error", "message": "boom"}))
    assert final is None and error["message"] == "boom"


def test_codex_refresh_body_and_dead_refresh_tokens():
    assert codex.CODEX.refresh_body("rt") == {"grant_type": "refresh_token",
                                              "refresh_token": "rt", "client_id": codex.CLIENT_ID}
    assert "scope" in oauth.CLAUDE.refresh_body("rt")
    reused = httpx.Response(401, json={"error": {"code": "refresh_token_reused"}})
    assert oauth.token_error(reused, codex.CODEX).invalid_grant
    assert not oauth.token_error(httpx.Response(500, json={}), codex.CODEX).invalid_grant
    assert oauth.token_error(httpx.Response(400, json={"error": "invalid_grant"})).invalid_grant
    expiring = jwt({"exp": 1_900_000_000})
    assert oauth.token_set_from_answer({"access_token": expiring}, "old", "", 0).expires_at == \
        1_900_000_000
