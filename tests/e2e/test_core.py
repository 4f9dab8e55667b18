"""End to end: real mitmdump + bundle, the simulated upstream, the real SDKs as clients."""

from __future__ import annotations

import itertools
import os
import stat
import time

import anthropic
import httpx
import openai
import pytest

from conftest import accounts_yaml, free_port, self_signed, within_reload
from mitmflare.demo.simulator import SimulatedUpstream
from mitmflare.storage.pricing import cost_usd

CLIENT_KEY = "sk-ant-api03-CLIENT-OWN-KEY"
MSG = [{"role": "user", "content": "hello"}]


def two_keys(sim) -> str:
    return accounts_yaml(sim.url, {"name": "key-a", "api_key": "sk-ant-api03-AAA"},
                         {"name": "key-b", "api_key": "sk-ant-api03-BBB", "priority": 1})


def test_non_streamed_request_uses_account_key_and_records_exact_usage(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script("sk-ant-api03-AAA", {"usage": {"input_tokens": 120, "output_tokens": 33,
                                              "cache_read_input_tokens": 1000,
                                              "cache_creation_input_tokens": 200,
                                              "cache_creation": {"ephemeral_5m_input_tokens": 150,
                                                                 "ephemeral_1h_input_tokens": 50}}})
    client = anthropic.Anthropic(base_url=p.url, api_key=CLIENT_KEY, max_retries=0)
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=MSG)
    assert message.usage.input_tokens == 120

    seen = sim.requests[-1]
    assert seen.credential == "sk-ant-api03-AAA"
    assert CLIENT_KEY not in str(seen.headers)
    assert "authorization" not in seen.headers
    assert seen.headers["host"] == sim.url.removeprefix("http://")
    assert seen.headers["accept-encoding"] == "identity"  # usage is read from the raw bytes

    (row,) = p.wait_rows(1)
    assert row["account"] == "key-a" and row["provider"] == "anthropic"
    assert row["wire_format"] == "anthropic"
    assert row["status"] == 200 and row["streamed"] == 0 and row["model"] == "claude-sonnet-4-6"
    assert (row["input_tokens"], row["output_tokens"]) == (120, 33)
    assert (row["cache_read_input_tokens"], row["cache_creation_input_tokens"]) == (1000, 200)
    assert (row["cache_creation_5m_input_tokens"], row["cache_creation_1h_input_tokens"]) == (150, 50)
    # Sonnet 4.6: 3 in, 15 out, 0.30 read, 3.75 5m write, 6 1h write ($/MTok)
    expected = (120 * 3 + 33 * 15 + 1000 * 0.3 + 150 * 3.75 + 50 * 6) / 1e6
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert row["duration_ms"] > 0 and 0 < row["ttfb_ms"] <= row["duration_ms"]
    assert row["user_agent"].startswith("Anthropic/Python")


def test_streamed_chunks_arrive_as_sent_and_usage_is_recorded(sim, proxy):
    p = proxy(two_keys(sim))
    sim.chunk_delay_s = 0.1
    client = anthropic.Anthropic(base_url=p.url, api_key=CLIENT_KEY, max_retries=0)
    arrivals = []
    start = time.monotonic()
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=50, messages=MSG) as s:
        for _ in s.text_stream:
            arrivals.append(time.monotonic() - start)
        final = s.get_final_message()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 11
    # each text delta is its own event, 100 ms apart upstream: they must not be bunched
    assert min(gaps) > 0.06, gaps
    assert final.usage.output_tokens == 11

    (row,) = p.wait_rows(1)
    assert row["streamed"] == 1 and row["status"] == 200
    assert (row["input_tokens"], row["output_tokens"]) == (25, 11)
    assert row["ttfb_ms"] < 500 < row["duration_ms"]
    assert row["cost_usd"] == pytest.approx(cost_usd("anthropic", "claude-sonnet-4-6", 25, 11,
                                                     0, 0, None))


def test_openai_chat_and_responses_streaming_and_json(sim, proxy):
    yaml = accounts_yaml(sim.url, {"name": "oa", "provider": "openai", "api_key": "sk-proj-OA"})
    p = proxy(yaml, modes=["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"])
    client = openai.OpenAI(base_url=f"{p.url}/v1", api_key="sk-client",
                           max_retries=0)
    sim.script("sk-proj-OA", {"usage": {"input_tokens": 40, "cache_read_input_tokens": 60,
                                        "output_tokens": 7}})
    chat = client.chat.completions.create(model="gpt-4o", messages=MSG)
    assert chat.usage.prompt_tokens == 100
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # the proxy asked the upstream for the usage chunk
    assert sim.requests[-1].body["stream_options"] == {"include_usage": True}
    with client.responses.stream(model="gpt-4o-mini", input="hello") as s:
        final = s.get_final_response()
    assert final.usage.output_tokens == 11
    plain = client.responses.create(model="gpt-4o-mini", input="hello")
    assert plain.status == "completed"

    assert all(r.credential == "sk-proj-OA" for r in sim.requests)
    rows = p.wait_rows(4)
    by_path = [(r["path"], r["streamed"], r["input_tokens"], r["cache_read_input_tokens"],
                r["output_tokens"]) for r in rows]
    assert by_path == [("/v1/chat/completions", 0, 40, 60, 7),
                       ("/v1/chat/completions", 1, 25, 0, 11),
                       ("/v1/responses", 1, 25, 0, 11),
                       ("/v1/responses", 0, 25, 0, 11)]
    assert rows[0]["cost_usd"] == pytest.approx((40 * 2.5 + 60 * 1.25 + 7 * 10) / 1e6)
    assert all(r["provider"] == "openai" and r["account"] == "oa" for r in rows)


def test_two_listeners_route_by_reverse_target_over_http_and_tls(sim, proxy):
    oa_port = free_port()
    yaml = accounts_yaml(sim.url, {"name": "an", "api_key": "sk-ant-api03-AN"},
                         {"name": "oa", "provider": "openai", "api_key": "sk-proj-OA"})
    p = proxy(yaml, modes=["reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}",
                           f"reverse:https://openai.mitmflare.invalid@127.0.0.1:{oa_port}"])
    # /v1/models exists on both APIs: the listener decides
    httpx.get(f"{p.url}/v1/models", headers={"x-api-key": CLIENT_KEY})
    httpx.get(f"http://127.0.0.1:{oa_port}/v1/models", headers={"authorization": "Bearer x"})
    # a client speaking TLS to the listener keeps mitmproxy's layers (see mitmflare.addons.listener)
    answer = httpx.get(f"https://127.0.0.1:{p.port}/v1/models", verify=False,
                       headers={"x-api-key": CLIENT_KEY})
    assert answer.status_code == 200
    assert sim.credentials_seen() == ["sk-ant-api03-AN", "sk-proj-OA", "sk-ant-api03-AN"]


def test_https_upstream_is_reached_over_verified_tls(proxy, tmp_path):
    server_pem, ca = self_signed(tmp_path)
    upstream = SimulatedUpstream(chunk_delay_s=0.0)
    url = upstream.start(certfile=str(server_pem))
    try:
        p = proxy(accounts_yaml(url, {"name": "tls", "api_key": "sk-ant-api03-TLS"}),
                  ssl_verify_upstream_trusted_ca=str(ca))  # verification stays on
        client = anthropic.Anthropic(base_url=p.url, api_key=CLIENT_KEY, max_retries=0)
        message = client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=5,
                                    messages=MSG) as stream:
            streamed = stream.get_final_message()
        assert message.usage.output_tokens == streamed.usage.output_tokens > 0
        assert upstream.credentials_seen() == ["sk-ant-api03-TLS"] * 2
        rows = p.wait_rows(2)
        assert [(r["account"], r["status"], r["streamed"]) for r in rows] == \
            [("tls", 200, 0), ("tls", 200, 1)]
    finally:
        upstream.stop()


def test_unknown_model_gets_null_cost_not_zero(sim, proxy):
    p = proxy(two_keys(sim))
    client = anthropic.Anthropic(base_url=p.url, api_key=CLIENT_KEY, max_retries=0)
    client.messages.create(model="claude-imaginary-9", max_tokens=5, messages=MSG)
    (row,) = p.wait_rows(1)
    assert row["input_tokens"] == 25 and row["cost_usd"] is None


def test_client_disconnect_mid_stream_is_recorded_with_partial_usage(sim, proxy):
    p = proxy(two_keys(sim))
    sim.chunk_delay_s = 0.2
    with httpx.stream("POST", p.url + "/v1/messages", headers={"x-api-key": CLIENT_KEY},
                      json={"model": "claude-sonnet-4-6", "max_tokens": 5, "stream": True,
                            "messages": MSG}, timeout=10) as r:
        for chunk in r.iter_raw():
            if b"text_delta" in chunk:
                break
    (row,) = p.wait_rows(1)
    assert row["input_tokens"] == 25
    assert row["error"] and "disconnect" in row["error"].lower()


def test_mid_stream_error_event_is_recorded(sim, proxy):
    p = proxy(two_keys(sim))
    sim.script("sk-ant-api03-AAA", {"error_event": {"type": "overloaded_error",
                                                    "message": "Overloaded"}})
    client = anthropic.Anthropic(base_url=p.url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError), \
            client.messages.stream(model="claude-sonnet-4-6", max_tokens=5, messages=MSG) as s:
        for _ in s.text_stream:
            pass
    (row,) = p.wait_rows(1)
    assert row["status"] == 200 and row["error"] == "overloaded_error: Overloaded"


def test_health_answers_without_upstream_connection(sim, proxy):
    p = proxy(two_keys(sim))
    body = p.health()
    assert body["status"] == "ok" and body["strategy"] == "session"
    assert body["accounts"] == {"total": 2, "available": 2, "cooling_down": 0}
    assert body["version"]
    assert sim.requests == []
    assert p.query("select * from requests") == []


def test_yaml_edit_takes_effect_and_broken_edit_keeps_last_good(sim, proxy):
    p = proxy(two_keys(sim))
    client = anthropic.Anthropic(base_url=p.url, api_key=CLIENT_KEY, max_retries=0)
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
    p.accounts.write_text(accounts_yaml(sim.url, {"name": "key-c", "api_key": "sk-ant-api03-CCC"}))
    within_reload(lambda: "accounts reloaded: 1 (key-c:anthropic); removed" in p.log_text())
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
    assert sim.credentials_seen() == ["sk-ant-api03-AAA", "sk-ant-api03-CCC"]

    p.accounts.write_text("accounts:\n  - name: broken\n    provider: anthropic\n"
                          "    api_key: [unclosed\n")
    within_reload(lambda: "accounts file rejected" in p.log_text())
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
    assert sim.credentials_seen()[-1] == "sk-ant-api03-CCC"
    health = p.health()
    assert health["accounts"]["total"] == 1 and "line" in health["config_error"]
    assert "accounts file rejected" in p.log_text()


def test_no_usable_account_answers_in_anthropic_shape_and_never_forwards_client_key(sim, proxy):
    yaml = accounts_yaml(sim.url, {"name": "only", "api_key": "sk-ant-api03-X", "paused": "true"})
    p = proxy(yaml)
    client = anthropic.Anthropic(base_url=p.url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
    assert info.value.status_code == 503
    assert info.value.body["type"] == "error" and "only (paused)" in info.value.body["error"]["message"]
    assert sim.requests == []
    (row,) = p.wait_rows(1)
    assert row["account"] is None and row["status"] == 503 and "paused" in row["error"]


def test_secrets_stay_out_of_analytics_db_and_logs(sim, proxy):
    p = proxy(two_keys(sim), termlog_verbosity="debug", flow_detail="3")
    client = anthropic.Anthropic(base_url=p.url, api_key=CLIENT_KEY, max_retries=0)
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
    p.wait_rows(1)
    p.stop()
    assert b"sk-ant-api03-AAA" not in p.db.read_bytes()
    assert "sk-ant-api03-AAA" not in p.log_text()
    assert stat.S_IMODE(os.stat(p.state).st_mode) == 0o600
    accounts = p.query("select * from accounts order by name")
    assert [a["name"] for a in accounts] == ["key-a", "key-b"]
    assert accounts[0]["requests"] == 1 and accounts[0]["status"] == "available"
