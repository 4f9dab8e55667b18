"""Failover in-process: :class:`~mitmflare.addons.failover.Failover` (the bundle's part just
before the router) judging the first answer (set on the flow here, as the upstream's),
re-sending to the simulated upstream, and answering when nothing is left to try; mitmproxy's
taddons and tflow."""

from __future__ import annotations

import json
import time

import pytest
from mitmproxy import ctx
from mitmproxy.http import Headers
from mitmproxy.test import taddons, tflow, tutils

from conftest import accounts_yaml
from mitmflare.addons.accounts_file import AccountsFile
from mitmflare.addons.failover import Failover, free_at, no_account_response
from mitmflare.addons.recorder import Recorder
from mitmflare.addons.router import Router
from mitmflare.bundle import make_addons
from mitmflare.providers.sse import UsageTap
from mitmflare.proxy_state import FlowContext
from mitmflare.routing.pool import AVAILABLE, COOLING_DOWN

A, B = "sk-ant-api03-A", "sk-ant-api03-B"


@pytest.fixture
async def parts(tmp_path, sim):
    """(router, tctx) for two API-key accounts at the simulated upstream: ``a`` chosen first."""
    path = tmp_path / "accounts.yaml"
    path.write_text(accounts_yaml(sim.url, {"name": "a", "api_key": A},
                                  {"name": "b", "api_key": B, "priority": 1}))
    addons = make_addons()
    by_type = {type(a): a for a in addons}
    files, router, recorder = by_type[AccountsFile], by_type[Router], by_type[Recorder]
    with taddons.context(*addons) as tctx:
        tctx.configure(files, flare_accounts=str(path), flare_db=str(tmp_path / "a.db"),
                       flare_state=str(tmp_path / "s.db"), flare_retry_delay_ms=0)
        by_type[Failover].running()  # its HTTP client (mitmproxy calls running once started)
        yield router, tctx
        by_type[Failover].done()
        recorder.done()


def messages_flow(stream: bool = False, **headers: str):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}
    req = tutils.treq(method=b"POST", path=b"/v1/messages", content=json.dumps(body).encode())
    req.headers.update(Headers(host="127.0.0.1:8080", content_type="application/json",
                               **headers))
    return tflow.tflow(req=req)


async def answered(router: Router, flow, status: int, headers: dict[str, str] | None = None,
                   body: bytes = b"{}") -> FlowContext:
    """Route ``flow``, then let the failover judge ``status`` as its first account's answer."""
    await router.request(flow)
    assert flow.response is None, "routed, not answered by the router"
    flow.response = tutils.tresp(status_code=status, content=body,
                                 headers=Headers(content_type="application/json",
                                                 **(headers or {})))
    router.responseheaders(flow)
    await respond(router, flow)
    return router.proxy.flows[flow.id]


async def respond(router: Router, flow) -> None:
    """The response hooks in the bundle's order: failover judges (and retries), then the
    router."""
    await ctx.master.addons.get("failover").response(flow)
    router.response(flow)


def error_body(kind: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": "x"}}).encode()


async def test_a_rate_limited_request_is_sent_again_to_the_next_account(parts, sim):
    router, _ = parts
    flow = messages_flow()
    fc = await answered(router, flow, 429, {"retry_after": "30"}, error_body("rate_limit_error"))
    assert flow.response.status_code == 200
    assert sim.credentials_seen() == [B]  # the first answer came from the test, not the sim
    assert [a["account"] for a in fc.attempts] == ["a", "b"] and fc.failover
    a = router.proxy.pool.get("a")
    assert a.status(time.time()) == COOLING_DOWN
    assert 25 < a.state.cooldown_until - time.time() <= 30
    assert flow.comment.startswith("[b]") and "a: 429" in flow.comment


async def test_a_streaming_client_that_retries_by_itself_is_asked_to(parts, sim):
    router, _ = parts
    flow = messages_flow(stream=True, x_stainless_retry_count="0")
    fc = await answered(router, flow, 429, {"retry_after": "30"}, error_body("rate_limit_error"))
    assert flow.response.status_code == 529
    assert flow.response.json()["error"]["type"] == "overloaded_error"
    assert flow.response.headers["x-should-retry"] == "true"
    assert flow.response.headers["retry-after-ms"] == "1"
    assert sim.credentials_seen() == []  # nothing re-sent: the client's retry goes to b
    assert "a" in fc.excluded
    assert router.proxy.pool.get("a").status(time.time()) == COOLING_DOWN


async def test_a_transient_error_is_retried_on_the_same_account_and_charged_once_b_serves(
        parts, sim):
    router, _ = parts
    sim.script(A, {"status": 529})
    flow = messages_flow()
    fc = await answered(router, flow, 529, body=error_body("overloaded_error"))
    assert flow.response.status_code == 200
    assert sim.credentials_seen() == [A, B]
    assert [a["status"] for a in fc.attempts] == [529, 529, 200]
    a = router.proxy.pool.get("a")
    assert a.status(time.time()) == COOLING_DOWN and a.state.cooldown_reason == "http_529"


async def test_the_same_error_on_a_second_account_is_the_requests_fault(parts, sim):
    router, _ = parts
    sim.script(A, {"status": 500})
    sim.script(B, {"status": 500})
    flow = messages_flow()
    fc = await answered(router, flow, 500, body=error_body("api_error"))
    assert flow.response.status_code == 500
    assert flow.response.headers["x-mitmflare-error"] == "request_fault"
    assert flow.response.headers["x-should-retry"] == "false"
    assert sim.credentials_seen() == [A, B]
    assert fc.request_fault
    now = time.time()
    assert [a.status(now) for a in router.proxy.pool.accounts.values()] == [AVAILABLE] * 2
    assert all(a.state.consecutive_errors == 0 for a in router.proxy.pool.accounts.values())


async def test_with_no_retry_left_the_answer_goes_back_marked_not_to_retry(parts, sim):
    router, tctx = parts
    tctx.options.update(flare_retry_attempts=0)
    flow = messages_flow()
    await answered(router, flow, 429, {"retry_after": "3600"}, error_body("rate_limit_error"))
    assert flow.response.status_code == 429
    assert flow.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in flow.response.headers  # an hour: the client should not wait
    assert sim.credentials_seen() == []
    assert router.proxy.pool.get("a").status(time.time()) == COOLING_DOWN


async def test_an_error_event_in_a_200_stream_still_cools_the_account(parts, sim):
    router, _ = parts
    flow = messages_flow(stream=True)
    await router.request(flow)
    fc = router.proxy.flows[flow.id]
    fc.tap = UsageTap("anthropic")
    fc.tap.feed(b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
                b'"message":"slow down"}}\n\n')
    flow.response = tutils.tresp(status_code=200, headers=Headers(
        content_type="text/event-stream"))
    router.responseheaders(flow)
    await respond(router, flow)
    a = router.proxy.pool.get("a")
    assert a.state.cooldown_reason == "stream_rate_limit_error"
    assert a.status(time.time()) == COOLING_DOWN


async def test_nothing_left_to_try_answers_429_until_the_soonest_account(parts):
    router, _ = parts
    now = time.time()
    for name, wait in (("a", 300), ("b", 120)):
        st = router.proxy.pool.get(name).state
        st.cooldown_until, st.cooldown_reason = now + wait, "rate_limited_5h"
    fc = FlowContext(flow_id="f", wire_format="anthropic", started=now, path="/v1/messages",
                     client_session=None, model="claude-sonnet-4-5", user_agent=None)
    response = no_account_response(router.proxy, fc)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert 119 <= int(response.headers["retry-after"]) <= 120
    assert "b is free again in" in response.json()["error"]["message"]


async def test_accounts_out_for_an_outage_or_paused_answer_503(parts):
    router, _ = parts
    now = time.time()
    a, b = router.proxy.pool.get("a"), router.proxy.pool.get("b")
    a.state.cooldown_until, a.state.cooldown_reason = now + 30, "http_529"
    b.state.benched, b.state.benched_reason = True, "billing_error"
    fc = FlowContext(flow_id="f", wire_format="anthropic", started=now, path="/v1/messages",
                     client_session=None, model=None, user_agent=None)
    response = no_account_response(router.proxy, fc)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "a (cooling down until" in message and "b (benched: billing_error)" in message
    assert int(response.headers["retry-after"]) <= 30


async def test_openai_clients_with_no_account_of_their_format_get_404_in_their_shape(parts):
    router, _ = parts
    fc = FlowContext(flow_id="f", wire_format="openai", started=time.time(),
                     path="/v1/responses", client_session=None, model="gpt-4o", user_agent=None)
    response = no_account_response(router.proxy, fc)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_account_is_free_when_both_it_and_the_model_are(parts):
    router, _ = parts
    a = router.proxy.pool.get("a")
    a.state.cooldown_until = 100.0
    a.state.model_cooldowns["m"] = 200.0
    assert free_at(a, None, 50.0) == 100.0
    assert free_at(a, "m", 50.0) == 200.0
    assert free_at(a, "other", 150.0) == 150.0  # now: free already
