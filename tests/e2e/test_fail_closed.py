"""End to end: no request leaves the proxy unless the router finished with it, one bad row
costs only itself, and whatever a client sends, the proxy answers cleanly and records it.

One mitmdump (with a test-only fault-injection script) serves the whole module."""

from __future__ import annotations

import json
import sqlite3
import string
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, Proxy, accounts_yaml
from mitmflare.storage.writer import DatabaseWriter

CANARY = "sk-ant-api03-CLIENT-CANARY-7f3a"
ACCOUNT_KEY = "sk-ant-api03-ACCOUNT-KEY"
LOCAL_PATHS = ("/health", "/")  # answered by the proxy itself, never recorded


@pytest.fixture(scope="module")
def guarded(sim_server, tmp_path_factory) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("fail-closed")
    p = Proxy(folder, accounts_yaml(sim_server.url, {"name": "key-a", "api_key": ACCOUNT_KEY}),
              {"flare_retry_attempts": "0"}, None,
              scripts=[ROOT / "tests" / "e2e" / "faults" / "router_faults.py"])
    p.start()
    yield p
    p.stop()


def canary_headers(**extra: str) -> dict[str, str]:
    return {"x-api-key": CANARY, "authorization": f"Bearer {CANARY}", **extra}


def leaked(sim) -> list:
    return [r for r in sim.requests if CANARY in json.dumps(r.headers)]


def row_count(p: Proxy) -> int:
    return p.query("select count(*) as n from requests")[0]["n"] if p.db.exists() else 0


def test_deeply_nested_body_is_answered_cleanly_and_never_leaks(sim, guarded):
    # too deep for Python's parser: its model cannot be read, so it is refused here (400)
    body = b'{"model": "claude-sonnet-4-6", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    before = row_count(guarded)
    answer = httpx.post(guarded.url + "/v1/messages", content=body, headers=canary_headers(
        **{"content-type": "application/json"}), timeout=30)
    assert answer.status_code == 400 and "Traceback" not in answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert sim.requests == []
    guarded.wait_rows(before + 1)


def test_exception_inside_the_router_answers_500_in_provider_shape_and_records(sim, guarded):
    before = row_count(guarded)
    answer = httpx.post(guarded.url + "/v1/messages", json={"model": "claude-sonnet-4-6"},
                        headers=canary_headers(**{"x-test-fault": "inspect"}))
    assert answer.status_code == 500
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "RuntimeError" in error["error"]["message"] and "Traceback" not in answer.text
    assert sim.requests == []
    rows = guarded.wait_rows(before + 1)
    assert rows[-1]["status"] == 500 and rows[-1]["error"] == "internal_error: RuntimeError"
    assert rows[-1]["account"] is None
    assert guarded.log_text().count("injected fault while reading the body") >= 1


def test_flow_the_router_never_finished_is_stopped_by_the_guard(sim, guarded):
    before = row_count(guarded)
    answer = httpx.post(guarded.url + "/v1/messages", json={"model": "claude-sonnet-4-6"},
                        headers=canary_headers(**{"x-test-fault": "skip-router"}))
    assert answer.status_code == 500 and answer.json()["error"]["type"] == "api_error"
    assert "not sent upstream" in answer.json()["error"]["message"]
    assert sim.requests == []
    rows = guarded.wait_rows(before + 1)
    assert rows[-1]["error"] == "internal_error: not routed"
    assert "was not routed" in guarded.log_text()


def test_odd_types_cost_only_their_own_fields_and_never_other_rows(sim, guarded):
    before = row_count(guarded)
    odd = {"model": {"a": 1}, "stream": "yes", "metadata": {"user_id": 5}, "max_tokens": 5,
           "messages": [{"role": "user", "content": "hi"}]}
    streamed_odd = {**odd, "model": "claude-sonnet-4-6", "stream": True}
    good = {"model": "claude-sonnet-4-6", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}
    # all three land in the same writer batch; a model that is not a string is refused here
    statuses = [httpx.post(guarded.url + "/v1/messages", json=body).status_code
                for body in (odd, streamed_odd, good)]
    assert statuses == [400, 200, 200]
    rows = guarded.wait_rows(before + 3)[-3:]
    assert [r["model"] for r in rows] == [None, "claude-sonnet-4-6", "claude-sonnet-4-6"]
    assert rows[2]["cost_usd"] > 0 and rows[1]["output_tokens"] == 11
    assert guarded.health()["write_errors"] == 0


def test_writer_drops_only_the_row_that_cannot_be_written(tmp_path):
    writer = DatabaseWriter(str(tmp_path / "a.db"), str(tmp_path / "s.db"))
    writer.start()
    writer.ready.wait(10)
    for i in range(3):
        writer.put("request", {"id": f"good-{i}", "started_at": 1.7e9, "provider": "anthropic",
                               "model": "claude-sonnet-4-6", "input_tokens": 10,
                               "output_tokens": 5})
    writer.put("attempt", {"request_id": "bad", "attempt": 1, "account": {"not": "text"}})
    writer.put("request", {"id": "odd", "provider": "anthropic", "model": ["x"],
                           "input_tokens": "12", "output_tokens": True, "status": 2.0})
    assert writer.flush()
    writer.stop()
    conn = sqlite3.connect(tmp_path / "a.db")
    ids = sorted(r[0] for r in conn.execute("select id from requests"))
    assert ids == ["good-0", "good-1", "good-2", "odd"]
    odd = conn.execute("select model, input_tokens, output_tokens, status from requests "
                       "where id='odd'").fetchone()
    assert odd == (None, None, 1, 2)
    assert conn.execute("select count(*) from attempts").fetchone()[0] == 0
    assert writer.write_errors == 1


# -- property: whatever a client sends ------------------------------------------------------
SAFE = string.ascii_letters + string.digits + "-_.~"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=20)
request_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model": json_values, "stream": json_values, "metadata": json_values,
                           "max_tokens": json_values, "messages": json_values,
                           "stream_options": json_values}).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
)
paths = st.tuples(
    st.sampled_from(["/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions",
                     "/v1/responses", "/v1/models", "/v1/", "/", "", "/health/x"]),
    st.text(SAFE + "/", max_size=20),
    st.text(SAFE + "=&", max_size=12),
).map(lambda t: "/" + (t[0] + t[1]).lstrip("/") + (f"?{t[2]}" if t[2] else ""))
headers = st.dictionaries(st.text(string.ascii_lowercase + "-", min_size=1, max_size=12)
                          .filter(lambda h: h not in ("content-length", "host",
                                                      "transfer-encoding", "connection",
                                                      "expect", "upgrade", "te")),
                          st.text(SAFE + " ,;=", max_size=30).map(str.strip), max_size=5)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])


class Tally:
    recorded = 0  # requests of the property run that must have a row


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=methods, path=paths, body=request_bodies, extra=headers)
def test_any_request_is_answered_cleanly_and_never_leaks(sim_server, guarded, method, path, body,
                                                         extra):
    before = row_count(guarded) if Tally.recorded == 0 else None
    if before is not None:
        Tally.recorded = before
    sent = {**extra, **canary_headers()}
    answer = httpx.request(method, guarded.url + path, content=body, headers=sent, timeout=30)
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    assert leaked(sim_server) == []
    if path.split("?", 1)[0] not in LOCAL_PATHS:
        Tally.recorded += 1
    assert httpx.get(guarded.url + "/health").status_code == 200


def test_every_answered_request_of_the_property_run_has_its_row(guarded):
    # runs after the property test (same module, file order): every request it sent is a row
    assert Tally.recorded > 0
    guarded.wait_rows(Tally.recorded, timeout=15)
