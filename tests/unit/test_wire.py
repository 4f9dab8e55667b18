"""Untrusted JSON: the fast reader routing uses (orjson) accepts and refuses exactly what the
standard library's reader does, and whatever re-encodes a body reads every value exactly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import tutils

from mitmflare.providers.request_info import inspect_request
from mitmflare.providers.wire import json_object, json_object_fast
from mitmflare.proxy_state import FlowContext

TRICKY = [
    b'{"model":"a","model":"b"}',              # duplicate keys: the last wins
    b'{"model":"m","n":NaN,"i":Infinity}',      # json-only literals
    b'{"model":"m","n":1e400}',                 # overflows a double
    b'{"model":"\\ud800"}',                     # a lone surrogate escape
    b'\xef\xbb\xbf{"model":"m"}',               # a UTF-8 byte-order mark
    b'{"model":"m","big":123456789012345678901234567890}',
    b'{"model":"m","neg":-9223372036854775809}',
    b'{"model":"\xff\xfe"}',                    # not UTF-8
    '{"model":"m"}'.encode("utf-16"),           # another Unicode encoding
    b"[" * 200_000,                             # too deep for both
    b"[" * 1100 + b"]" * 1100,                  # deeper than orjson's limit: json decides
    b'{"model":"m"} x',                         # trailing garbage
    b'[{"model":"m"}]', b'"model"', b"", b"   ", b"{}",
]


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True,
                                                                      default=repr)


@pytest.mark.parametrize("data", TRICKY, ids=range(len(TRICKY)))
def test_the_fast_reader_accepts_and_refuses_what_json_does(data):
    fast, exact = json_object_fast(data), json_object(data)
    assert (fast is None) == (exact is None)
    if exact is not None and "big" not in exact and "neg" not in exact:
        assert _same(fast, exact)


def test_only_integers_past_64_bits_differ_and_re_encoding_reads_them_exactly():
    data = b'{"model":"claude-sonnet-4-6","max_tokens":123456789012345678901234567890}'
    assert isinstance(json_object_fast(data)["max_tokens"], float)  # documented difference
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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_on_any_bytes_both_readers_agree_on_what_is_an_object(data):
    fast, exact = json_object_fast(data), json_object(data)
    assert (fast is None) == (exact is None)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
                    | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=30))
def test_on_any_json_object_the_fast_reader_reads_the_same_values(value):
    data = json.dumps({"v": value}).encode()
    assert _same(json_object_fast(data), json_object(data))


def test_large_bodies_are_read_by_json_with_the_same_result():
    from mitmflare.providers.wire import FAST_MAX
    data = json.dumps({"model": "m", "big": 123456789012345678901234567890,
                       "pad": "x" * FAST_MAX}).encode()
    assert json_object_fast(data)["big"] == 123456789012345678901234567890  # json read it
