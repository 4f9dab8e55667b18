"""End to end: nothing a client sends cools, benches or marks an account. Only an upstream's
answer (or its failure) about the account can; an error that follows a request from account to
account is the request's fault. One mitmdump with two accounts serves the module."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Proxy, accounts_yaml

A, B = "sk-ant-api03-AAA-cool", "sk-ant-api03-BBB-cool"
MSG = {"model": "claude-sonnet-4-6", "max_tokens": 5,
       "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def pool(sim_server, tmp_path_factory) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("cannot-cool")
    p = Proxy(folder, accounts_yaml(sim_server.url, {"name": "key-a", "api_key": A},
                                    {"name": "key-b", "api_key": B, "priority": 1}),
              {}, None)
    p.start()
    yield p
    p.stop()


def all_available(p: Proxy) -> bool:
    accounts = p.health()["accounts"]
    return accounts["available"] == accounts["total"] == 2


def raw(p: Proxy, data: bytes, settle: float = 5) -> bytes:
    """What the proxy answers to ``data`` on a fresh connection: until it closes, or (for a
    connection it keeps open) until nothing more came for ``settle`` s after the first bytes;
    nothing for 5 s is an empty answer."""
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                s.settimeout(settle)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_http2_preface_is_refused_locally_and_cools_nobody(sim, pool):
    for _ in range(3):
        answer = raw(pool, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    assert sim.requests == []
    assert all_available(pool)
    assert pool.query("select * from account_events") == []


def test_h2c_upgrade_and_odd_methods_are_answered_with_4xx(sim, pool):
    answer = httpx.post(pool.url + "/v1/messages", json=MSG,
                        headers={"upgrade": "h2c", "http2-settings": "AAMAAABkAAQAoAAAAAIAAAAA",
                                 "connection": "upgrade, http2-settings"})
    assert answer.status_code in (200, 400)  # mitmproxy drops h2c upgrades itself, or we refuse
    for method in ("TRACE", "CONNECTX", "PROPFIND"):
        answer = httpx.request(method, pool.url + "/v1/messages", json=MSG)
        assert answer.status_code == 405
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert all(r.method in ("POST",) for r in sim.requests)
    assert all_available(pool)


def test_an_error_that_follows_the_request_cools_no_account(sim, pool):
    # every account fails this one request: the request's fault, not theirs
    sim.script(A, {"status": 500}, {"status": 500})
    sim.script(B, {"status": 500}, {"status": 500})
    answer = httpx.post(pool.url + "/v1/messages", json=MSG, timeout=30)
    assert answer.status_code == 500
    assert answer.headers["x-should-retry"] == "false"
    assert answer.headers["x-mitmflare-error"] == "request_fault"
    assert [r.credential for r in sim.requests] == [A, A, B]
    assert all_available(pool)
    good = httpx.post(pool.url + "/v1/messages", json=MSG, timeout=30)
    assert good.status_code == 200
    assert pool.query("select * from account_events where event = 'cooldown'") == []


methods = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE",
                           "PRI", "FOO", "CONNECT"])
targets = st.sampled_from(["/v1/messages", "/v1/chat/completions", "/v1/models", "*",
                           "http://example.com/v1/messages", "example.com:443", "/", "/health",
                           "/x" * 300])
CLIENT_SECRET = b"sk-client"  # in every credential the property test sends
heads = st.lists(st.sampled_from([
    b"upgrade: h2c", b"expect: 100-continue", b"content-type: application/json",
    b"transfer-encoding: chunked",
    # credentials, in the spellings a lenient server reads as one (all must be removed)
    b"x-api-key: sk-client-0", b"x-api-key: sk-client-1", b"X-API-KEY: sk-client-2",
    b"x_api_key: sk-client-3", b"authorization: Bearer sk-client-4", b"cookie: s=sk-client-5",
    b"proxy_authorization: Basic sk-client-6", b"x-api-key : sk-client-7",
    # folded, bare CR, NUL, a folded first line, a line without a colon
    b"x-note: a\r\n sk-client-8", b"x-note: a\rb", b"x-note: a\x00b", b" folded-first",
    b"x-api-key sk-client-9"]), max_size=4, unique=True)
bodies = st.sampled_from([b"", b"{}", b"[", b'{"model": null}', b'{"model": "claude-x"}',
                          json.dumps(MSG).encode()])
prefaces = st.sampled_from([b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])  # HTTP/2 preface
trailers = st.sampled_from([b"", b"x-api-key: sk-client-10\r\n"])  # after a chunked body


def answered_in_json_or_closed(answer: bytes) -> bool:
    """True when ``answer`` is empty (closed without a word) or an HTTP/1.1 answer (after any
    ``100 Continue``) whose body, if any, is JSON."""
    while answer.startswith(b"HTTP/1.1 100"):
        answer = answer.partition(b"\r\n\r\n")[2]
    if not answer:
        return True
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return False
    return not body or b"\ncontent-type: application/json" in head.lower()


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=methods, target=targets, head=heads, body=bodies, preface=prefaces,
       trailer=trailers)
def test_no_client_request_changes_any_accounts_state(sim_server, pool, method, target, head,
                                                      body, preface, trailer):
    sim_server.reset()
    lines = [f"{method} {target} HTTP/1.1".encode(), b"host: 127.0.0.1", *head]
    if b"transfer-encoding: chunked" in head:
        payload = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") \
            + b"0\r\n" + trailer + b"\r\n"
    else:
        lines.append(f"content-length: {len(body)}".encode())
        payload = body
    lines.append(b"connection: close")
    answer = raw(pool, preface + b"\r\n".join(lines) + b"\r\n\r\n" + payload, settle=0.3)
    assert answered_in_json_or_closed(answer), answer[:500]
    assert CLIENT_SECRET not in answer
    assert CLIENT_SECRET.decode() not in json.dumps([r.headers for r in sim_server.requests])
    assert all_available(pool)
    assert pool.query("select count(*) as n from account_events")[0]["n"] == 0


def test_an_error_the_next_account_does_not_repeat_is_the_first_accounts(sim, pool):
    # (last in the module: it cools key-a)
    sim.script(A, {"status": 500}, {"status": 500})
    answer = httpx.post(pool.url + "/v1/messages", json=MSG, timeout=30)
    assert answer.status_code == 200
    assert [r.credential for r in sim.requests] == [A, A, B]
    rows = pool.wait_rows(1, "select * from account_events where event = 'cooldown'")
    assert rows[0]["account"] == "key-a" and rows[0]["reason"] == "http_500"
    httpx.post(pool.url + "/-/mitmflare-nothing", timeout=5)  # any request: state unchanged
    pool_state = pool.health()["accounts"]
    assert pool_state["cooling_down"] == 1
