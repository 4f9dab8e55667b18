"""The reader routing uses (msgspec, typed views): it accepts and refuses exactly what the
standard library's reader does, and gives routing the same answers as the whole parsed body."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mitmflare.providers.request_info import model_problem
from mitmflare.providers.routing_body import LATEST_TURNS, abridged, routing_body
from mitmflare.providers.wire import json_object
from mitmflare.routing.cache_affinity import cache_ttl, conversation_key

TRICKY = [
    b'{"model":"a","model":"b"}',              # duplicate keys: the last wins
    b'{"model":"m","n":NaN,"i":Infinity}',      # json-only literals
    b'{"model":"m","n":1e400}',                 # overflows a double
    b'{"model":1e400}',                         # … where a value is read
    b'{"model":"\\ud800"}',                     # a lone surrogate escape
    b'{"model":"m","x":"\\udc00"}',             # … skipped
    b'\xef\xbb\xbf{"model":"m"}',               # a UTF-8 byte-order mark
    b'{"model":"m","big":123456789012345678901234567890}',
    b'{"model":123456789012345678901234567890}',
    b'{"model":"\xff\xfe"}',                    # not UTF-8 where routing reads
    b'{"model":"m","system":"\xc0\xaf"}',       # an overlong encoding
    b'{"model":"m","x":"\xed\xa0\x80"}',        # an encoded surrogate (json takes it)
    b'{"model":"m","messages":[{"role":"user","content":"\xff"}]}',
    '{"model":"m"}'.encode("utf-16"),           # another Unicode encoding
    '{"model":"é"}'.encode("utf-32"),
    b"[" * 200_000,                             # too deep for both
    b'{"model":"m","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model":"m"} x',                         # trailing garbage
    b'{"model":"m","x":"a\x01b"}',              # a control character in a string
    b'{"model":"m","x":01}', b'{"model":"m",}', b"{'model':'m'}", b'{"model":"m"}\x00',
    b'{"model":"m","messages":{"a":1}}',        # not a list: read by json
    b'{"model":"m","messages":[1,"x",{"role":"user","content":"hi"}]}',
    b'{"model":"m","messages":null,"tools":null}',
    b'{"model":"m","tools":"x","system":7}',
    b'{"model":"m","tools":[1,{"cache_control":{"type":"ephemeral"}}]}',
    b'{"messages":[{"role":"user","content":[1,{"type":"text","cache_control":{}}]}]}',
    b'{"messages":[{"content":[{"cache_control":null}]}]}',
    b'[{"model":"m"}]', b'"model"', b"", b"   ", b"{}", b" \n{\"model\":\"m\"} \n",
]


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True,
                                                                      default=repr)


def _expected(data: bytes):
    return abridged(json_object(data))


@pytest.mark.parametrize("data", TRICKY, ids=range(len(TRICKY)))
def test_it_accepts_refuses_and_reads_what_json_does(data):
    fast, exact = routing_body(data), _expected(data)
    assert (fast is None) == (exact is None)
    assert _same(fast, exact)


NOT_UTF8_UNREAD = [b'{"model":"m","x":"\xff\xfe"}',
                   b'{"model":"m","messages":[{"role":"user","content":"a"},'
                   b'{"role":"assistant","content":"\xc0\xaf"},{"role":"user","content":"b"},'
                   b'{"role":"assistant","content":"c"},{"role":"user","content":"d"},'
                   b'{"role":"assistant","content":"e"}]}']


@pytest.mark.parametrize("data", NOT_UTF8_UNREAD, ids=range(len(NOT_UTF8_UNREAD)))
def test_bytes_that_are_not_utf8_where_routing_does_not_read_go_as_sent(data):
    assert json_object(data) is None  # json refuses the whole body
    assert routing_body(data)["model"] == "m"  # routing reads what it needs; the upstream judges


def test_integers_past_64_bits_are_read_exactly():
    data = b'{"model":"m","metadata":{"n":123456789012345678901234567890}}'
    assert routing_body(data)["metadata"]["n"] == 123456789012345678901234567890


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_on_any_bytes_it_agrees_with_json_on_what_is_an_object(data):
    if json_object(data) is not None:  # never refuses what json takes
        assert routing_body(data) is not None
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # the one difference (above): it may take what json refuses
        return
    assert (routing_body(data) is None) == (json_object(data) is None)


VALUE = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                     | st.floats(allow_nan=False) | st.text(),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                     max_leaves=12)
CONTROL = st.none() | st.fixed_dictionaries({"type": st.just("ephemeral")},
                                            optional={"ttl": st.sampled_from(["5m", "1h", 3])})
BLOCK = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=8)},
                              optional={"cache_control": CONTROL}) | VALUE
TURN = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "assistant", "system"]) | VALUE,
    "content": st.text(max_size=8) | st.lists(BLOCK, max_size=4) | VALUE}) | VALUE
BODY = st.fixed_dictionaries({}, optional={
    "model": st.text(max_size=8) | VALUE, "stream": st.booleans() | VALUE,
    "metadata": VALUE, "stream_options": VALUE, "max_tokens": VALUE,
    "system": st.text(max_size=8) | st.lists(BLOCK, max_size=3) | VALUE,
    "tools": st.lists(BLOCK, max_size=3) | VALUE,
    "messages": st.lists(TURN, max_size=9) | VALUE})


@settings(max_examples=500, deadline=None)
@given(BODY, st.sampled_from([None, "session-1"]))
def test_on_any_body_routing_reads_what_the_whole_body_says(body, session):
    data = json.dumps(body).encode()
    fast, whole = routing_body(data), json_object(data)
    assert _same(fast, abridged(whole))
    assert cache_ttl(fast) == cache_ttl(whole)
    assert conversation_key(session, fast) == conversation_key(session, whole)
    for path in ("/v1/messages", "/v1/responses"):
        assert model_problem(path, "POST", fast, True) == model_problem(path, "POST", whole, True)
    for key in ("model", "stream", "metadata", "stream_options", "system"):
        assert _same(fast.get(key), whole.get(key))


def test_a_long_conversation_keeps_the_first_user_turn_and_the_latest_ones():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bench_sizes import claude_code_body
    data = claude_code_body(1_000_000, 1, True)
    fast, whole = routing_body(data), json_object(data)
    assert len(whole["messages"]) > 100
    assert len(fast["messages"]) == LATEST_TURNS + 1
    assert fast["messages"][0] == next(m for m in whole["messages"] if m["role"] == "user")
    assert cache_ttl(fast) == cache_ttl(whole) > 0
    assert conversation_key(None, fast) == conversation_key(None, whole)
    assert fast["system"] == whole["system"] and fast["model"] == whole["model"]
