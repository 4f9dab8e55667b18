"""Untrusted JSON: whatever re-encodes a request body reads every value exactly (the reader
routing uses is tested in test_routing_body)."""

from __future__ import annotations

from mitmproxy.test import tutils

from mitmflare.providers.request_info import inspect_request
from mitmflare.proxy_state import FlowContext


def test_re_encoding_reads_integers_past_64_bits_exactly():
    data = b'{"model":"claude-sonnet-4-6","max_tokens":123456789012345678901234567890}'
    request = tutils.treq(method=b"POST", path=b"/v1/messages", content=data)
    info = inspect_request("anthropic", request)
    assert info.model == info.body_model == "claude-sonnet-4-6"
    fc = FlowContext(wire_format="anthropic", started=0.0, path="/v1/messages",
                     client_session=None, model=info.model, user_agent=None, flow_id="f")
    fc.body_source = info.source
    assert fc.request_json()["max_tokens"] == 123456789012345678901234567890
    assert info.source is request.raw_content  # no copy of the body


def test_an_openai_stream_asking_no_usage_is_rewritten_with_exact_values():
    data = b'{"model":"gpt-4o","stream":true,"n":123456789012345678901234567890,"x":NaN}'
    request = tutils.treq(method=b"POST", path=b"/v1/chat/completions", content=data)
    info = inspect_request("openai", request)
    sent = request.content.decode()
    assert '"n":123456789012345678901234567890' in sent and '"x":NaN' in sent
    assert '"stream_options":{"include_usage":true}' in sent
    assert info.source == request.content
