"""One attempt's answer in the client's format (:mod:`mitmflare.addons.attempt`), in-process."""

from __future__ import annotations

import json

from mitmproxy.test import tflow, tutils

from mitmflare.addons.attempt import convert_stream, convert_whole, free_at
from mitmflare.config.accounts import AccountConfig
from mitmflare.proxy_state import FlowContext
from mitmflare.routing.pool import Account

SSE = {"content-type": "text/event-stream"}


def attempt(wire_format: str, path: str, account: Account, stream: bool = True):
    fc = FlowContext(flow_id="f", wire_format=wire_format, started=0.0, path=path,
                     client_session=None, model="m", user_agent=None, stream=stream)
    fc.body_source = json.dumps({"model": "m", "stream": stream}).encode()
    fc.account, fc.converted, fc.upstream_model = account, wire_format != account.wire, "m"
    flow = tflow.tflow(resp=tutils.tresp(headers=((b"content-type", b"text/event-stream"),
                                                   (b"content-length", b"10"))))
    return flow, fc


def openai_account() -> Account:
    return Account(AccountConfig(name="o", provider="openai", api_key="k", default_model="m"), 0)


def codex_account() -> Account:
    return Account(AccountConfig(name="c", provider="codex",
                                 oauth={"access_token": "a", "refresh_token": "r"}), 0)


def test_a_converted_stream_is_converted_piece_by_piece():
    flow, fc = attempt("anthropic", "/v1/messages", openai_account())
    convert_stream(flow, fc)
    assert callable(flow.response.stream) and "content-length" not in flow.response.headers
    chunk = (b'data: {"id":"x","object":"chat.completion.chunk","model":"m","choices":'
             b'[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}\n\n')
    [out] = flow.response.stream(chunk)
    assert out.startswith(b"event: message_start\n")  # Anthropic events for the client
    assert flow.response.stream(b"event: ping\n") == []  # an empty piece is never handed on


def test_nothing_to_convert_leaves_the_stream_alone():
    # a Responses client served by Codex: the stream is already in the client's format
    flow, fc = attempt("openai", "/v1/responses", codex_account())
    convert_stream(flow, fc)
    assert flow.response.stream is False and "content-length" in flow.response.headers
    # a Codex stream the client did not ask to stream is converted whole, later
    flow, fc = attempt("anthropic", "/v1/messages", codex_account(), stream=False)
    convert_stream(flow, fc)
    assert flow.response.stream is False
    # same format: nothing converted
    flow, fc = attempt("openai", "/v1/chat/completions", openai_account())
    convert_stream(flow, fc)
    assert flow.response.stream is False


def test_a_whole_answer_made_here_is_not_converted():
    flow, fc = attempt("anthropic", "/v1/messages", openai_account(), stream=False)
    flow.response.headers["x-mitmflare-error"] = "failover"
    convert_whole(flow, fc)
    assert fc.upstream_body is None


def test_free_at_takes_the_later_of_account_and_model_cooldowns():
    acc = openai_account()
    acc.state.cooldown_until, acc.state.model_cooldowns["m"] = 100.0, 200.0
    assert free_at(acc, "m", 50.0) == 200.0 and free_at(acc, None, 50.0) == 100.0
    assert free_at(acc, "m", 300.0) == 300.0
