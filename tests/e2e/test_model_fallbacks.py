"""End to end: the accounts file's ``fallbacks:`` serve another model when no account can
serve the one asked for now, and say so (header, row); off without it."""

from __future__ import annotations

import time

import anthropic
import httpx

from conftest import accounts_yaml
from mitmflare.storage.pricing import cost_usd

A, B = "sk-ant-api03-AAA", "sk-ant-api03-BBB"
OPUS, SONNET, HAIKU = "claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5"
FALLBACKS = f"fallbacks:\n  {OPUS}: [{SONNET}, {HAIKU}]\n"
MSG = [{"role": "user", "content": "hello"}]


def ask(p, model: str = OPUS, stream: bool = False) -> httpx.Response:
    return httpx.post(p.url + "/v1/messages", headers={"x-api-key": "client"},
                      json={"model": model, "max_tokens": 5, "messages": MSG, "stream": stream},
                      timeout=30)


def opus_limited() -> dict:
    """A 429 that holds only the model (the 7d_oi window), for an hour."""
    reset = str(int(time.time() + 3600))
    return {"status": 429, "headers": {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d_oi-status": "rejected",
        "anthropic-ratelimit-unified-7d_oi-reset": reset}}


def test_a_model_no_account_offers_is_served_by_its_first_servable_fallback(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "a", "api_key": A, "models": {HAIKU: HAIKU}})
              + FALLBACKS)
    answer = ask(p)
    assert answer.status_code == 200 and answer.json()["type"] == "message"
    assert answer.headers["x-mitmflare-model-fallback"] == HAIKU  # sonnet: nobody offers it
    assert sim.requests[-1].body["model"] == HAIKU
    plain = ask(p, HAIKU)
    assert "x-mitmflare-model-fallback" not in plain.headers
    [row, _] = p.wait_rows(2)
    assert (row["model"], row["upstream_model"], row["status"]) == (OPUS, HAIKU, 200)
    assert row["cost_usd"] == cost_usd("anthropic", HAIKU, row["input_tokens"], row["output_tokens"], 0, 0, 0)
    # a model without fallbacks is still refused
    assert ask(p, SONNET).status_code == 404


def test_when_every_account_cools_for_the_model_its_fallback_streams(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "a", "api_key": A},
                            {"name": "b", "api_key": B, "priority": 1}) + FALLBACKS)
    sim.script(A, opus_limited())
    sim.script(B, opus_limited())
    client = anthropic.Anthropic(base_url=p.url, api_key="client", max_retries=2)
    with client.messages.stream(model=OPUS, max_tokens=5, messages=MSG) as stream:
        text = "".join(stream.text_stream)
        headers = stream.response.headers
    assert "simulated answer" in text and headers["x-mitmflare-model-fallback"] == SONNET
    # both accounts refused opus; the same first account serves sonnet
    assert [(r.credential, r.body["model"]) for r in sim.requests] == [
        (A, OPUS), (B, OPUS), (A, SONNET)]
    again = client.messages.create(model=OPUS, max_tokens=5, messages=MSG)
    assert again.model == SONNET and sim.requests[-1].body["model"] == SONNET
    # each refusal of a stream asked the SDK to retry (529); its second retry fell back
    rows = p.wait_rows(4)
    assert [(r["model"], r["upstream_model"], r["account"], r["status"]) for r in rows] == [
        (OPUS, OPUS, "a", 529), (OPUS, OPUS, "b", 529), (OPUS, SONNET, "a", 200),
        (OPUS, SONNET, "a", 200)]
    assert rows[2]["output_tokens"] and rows[2]["streamed"] == 1


def test_without_fallbacks_nothing_changes(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "a", "api_key": A, "models": {HAIKU: HAIKU}}))
    refused = ask(p)
    assert refused.status_code == 404 and "x-mitmflare-model-fallback" not in refused.headers
    assert sim.requests == []
