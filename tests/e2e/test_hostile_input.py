"""End to end: the smaller holes fuzzing found (issue 20), each closed against a real mitmdump
with access keys required, in front of the simulated upstream. Raw bytes go over a plain
socket where an HTTP client would tidy them up."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import BUNDLE, MITMDUMP, Proxy, accounts_yaml, free_port, wait_for

from .test_access_keys import new_key

ACCOUNT_KEY, OPENAI_KEY = "sk-ant-api03-ACCOUNT-HOLES", "sk-proj-ACCOUNT-HOLES"
CANARY = "sk-ant-api03-CLIENT-CANARY-hole"
BODY = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def keyed(sim_server, tmp_path_factory) -> Iterator[tuple[Proxy, int, dict[str, str]]]:
    """Keys required; an Anthropic and an OpenAI listener; ``rita`` may use Haiku models only,
    ``una`` any model."""
    folder = tmp_path_factory.mktemp("holes")
    openai_port = free_port()
    yaml = accounts_yaml(sim_server.url, {"name": "key-a", "api_key": ACCOUNT_KEY},
                         {"name": "oa", "provider": "openai", "api_key": OPENAI_KEY})
    p = Proxy(folder, yaml, {"flare_require_access_keys": "true"},
              ["reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}",
               f"reverse:https://openai.mitmflare.invalid@127.0.0.1:{openai_port}"])
    keys = {"rita": new_key(p.state, "rita", "--models", "claude-haiku-*,gpt-4o-mini"),
            "una": new_key(p.state, "una")}
    p.start()
    yield p, openai_port, keys
    p.stop()


def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` on a fresh connection; everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def request(path: str, *headers: bytes, body: bytes = BODY, method: bytes = b"POST") -> bytes:
    head = [method + b" " + path.encode() + b" HTTP/1.1", b"host: 127.0.0.1",
            b"content-type: application/json", *headers,
            b"content-length: %d" % len(body), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def answer_of(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one HTTP/1.1 answer (not chunked)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in
                   (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def json_error(data: bytes, status: int, kind: str = "invalid_request_error") -> dict:
    code, headers, body = answer_of(data)
    assert code == status, data[:300]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["error"]["type"] == kind, error
    return error


def seen(sim) -> str:
    return json.dumps([r.headers for r in sim.requests])


# -- 1. credential headers under other spellings; control characters in values ---------------
def test_credential_headers_under_any_spelling_never_reach_the_upstream(sim, keyed):
    p, _, keys = keyed
    forms = [b"x_api_key: " + CANARY.encode() + b"-1", b"X_Api_Key: " + CANARY.encode() + b"-2",
             b"cookie: session=" + CANARY.encode() + b"-3",
             b"proxy_authorization: Basic " + CANARY.encode() + b"-4",
             b"Proxy-Authorization: Basic " + CANARY.encode() + b"-5",
             b"x_goog_api_key: " + CANARY.encode() + b"-6", b"api_key: " + CANARY.encode() + b"-7"]
    answer = raw(p.port, request("/v1/messages", b"x-api-key: " + keys["una"].encode(), *forms))
    assert answer_of(answer)[0] == 200, answer[:300]
    assert [r.credential for r in sim.requests] == [ACCOUNT_KEY]
    assert CANARY not in seen(sim) and keys["una"] not in seen(sim)
    upstream_names = {k.lower() for k in sim.requests[-1].headers}
    assert not upstream_names & {"x_api_key", "cookie", "proxy_authorization",
                                 "proxy-authorization", "x_goog_api_key", "api_key"}


@pytest.mark.parametrize("field", [b"x-note: a\rb", b"x-note: a\x00b", b"x-note: one\r\n two",
                                   b"x-note: a\x1bb", b"x-note: a\x7f"])
def test_malformed_header_fields_are_refused_in_the_providers_shape(sim, keyed, field):
    p, openai_port, keys = keyed
    answer = raw(p.port, request("/v1/messages", b"x-api-key: " + keys["una"].encode(), field))
    error = json_error(answer, 400)
    assert error["type"] == "error" and "malformed header field" in error["error"]["message"]
    answer = raw(openai_port, request("/v1/chat/completions",
                                      b"authorization: Bearer " + keys["una"].encode(), field))
    assert json_error(answer, 400)["error"]["param"] is None  # OpenAI's shape
    assert sim.requests == []
    assert CANARY.encode() not in answer


# -- 2. a model restriction cannot be dodged with a model that is not a string ------------------
@pytest.mark.parametrize("model", [None, ["claude-opus-4-1"], {"name": "claude-opus-4-1"}, 7, "",
                                   "missing"])
def test_a_model_that_is_not_a_string_is_refused_before_routing(sim, keyed, model):
    p, openai_port, keys = keyed
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    if model != "missing":
        body["model"] = model
    for user in ("rita", "una"):  # restricted to some models, or not: the API needs a string
        answer = httpx.post(p.url + "/v1/messages", json=body, headers={"x-api-key": keys[user]})
        assert answer.status_code == 400, answer.text
        error = answer.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert "`model`" in error["error"]["message"]
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings"):
        answer = httpx.post(f"http://127.0.0.1:{openai_port}{path}", json=body,
                            headers={"authorization": f"Bearer {keys['rita']}"})
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert sim.requests == []


def test_the_allowed_model_still_goes_and_responses_without_a_model_go_for_unrestricted(sim,
                                                                                      keyed):
    p, openai_port, keys = keyed
    answer = httpx.post(p.url + "/v1/messages", content=BODY, headers={"x-api-key": keys["rita"]})
    assert answer.status_code == 200
    denied = httpx.post(p.url + "/v1/messages", json={**json.loads(BODY), "model": "claude-opus-4-1"},
                        headers={"x-api-key": keys["rita"]})
    assert denied.status_code == 403
    stored_prompt = {"prompt": {"id": "pmpt_1"}, "input": "hi"}  # model from a stored prompt
    httpx.post(f"http://127.0.0.1:{openai_port}/v1/responses", json=stored_prompt,
               headers={"authorization": f"Bearer {keys['una']}"})
    assert [r.credential for r in sim.requests] == [ACCOUNT_KEY, OPENAI_KEY]


# -- 3. requests without a valid key are counted, not each recorded -----------------------------
def test_refused_requests_are_counted_not_each_recorded(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "key-a", "api_key": ACCOUNT_KEY}),
              flare_require_access_keys="true")
    key = new_key(p.state, "una")
    if time.time() % 60 > 50:  # all 200 within one minute
        time.sleep(61 - time.time() % 60)
    with httpx.Client(base_url=p.url) as client:
        for i in range(200):
            assert client.post("/v1/messages", content=BODY, headers={
                "x-api-key": f"mfk_{i}"}).status_code == 401
        # the new key reaches the proxy within 2 s; until then /health says only the status
        health = wait_for(lambda: (lambda h: h if "auth_refusals" in h else None)(
            client.get("/health", headers={"x-api-key": key}).json()))
    assert health["auth_refusals"] == 200
    assert p.wait_rows(1, "select * from requests where status = 401")[0]["auth_refusals"] == 1
    p.stop()  # the minute's second row is written at the latest at shutdown
    rows = p.query("select * from requests where status = 401")
    assert len(rows) == 2 and sum(r["auth_refusals"] for r in rows) == 200
    assert "199 more requests without a valid access key from 127.0.0.1" in rows[1]["error"]
    hourly = p.query("select sum(requests) as n, sum(errors) as e, sum(auth_refusals) as r "
                     "from usage_hourly")[0]
    assert hourly == {"n": 200, "e": 200, "r": 200}
    assert sim.requests == []


# -- 4. what mitmproxy's HTTP/1 server refuses by itself is answered in JSON, quoting nothing --
SECRET = CANARY.encode()
HEAD = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
CHUNKED = HEAD + b"transfer-encoding: chunked\r\n"
REFUSED_BY_MITMPROXY = {
    "trailers": CHUNKED + b"\r\n" + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\nx-api-key: "
                + SECRET + b"\r\n\r\n",
    "folded first header": HEAD.replace(b"host: x", b" x-api-key: " + SECRET + b"\r\nhost: x")
                           + b"content-length: 2\r\n\r\n{}",
    "header line without a colon": HEAD + b"x-api-key " + SECRET + b"\r\ncontent-length: 2\r\n\r\n{}",
    "header name that is not a token": HEAD + b"x-api-key : " + SECRET
                                       + b"\r\ncontent-length: 2\r\n\r\n{}",
    "bad content-length": HEAD + b"x-api-key: " + SECRET + b"\r\ncontent-length: " + SECRET
                          + b"\r\n\r\n{}",
    "content-length and chunked": CHUNKED + b"x-api-key: " + SECRET
                                  + b"\r\ncontent-length: 2\r\n\r\n{}",
    "bad chunk size": CHUNKED + b"x-api-key: " + SECRET + b"\r\n\r\nzz " + SECRET + b"\r\n",
}


@pytest.mark.parametrize("case", list(REFUSED_BY_MITMPROXY))
def test_requests_mitmproxy_refuses_get_json_that_quotes_nothing(sim, keyed, case):
    p, openai_port, _ = keyed
    data = REFUSED_BY_MITMPROXY[case]
    answer = raw(p.port, data)
    error = json_error(answer, 400)
    assert error["type"] == "error" and SECRET not in answer  # Anthropic's shape
    openai_data = data.replace(b"/v1/messages", b"/v1/chat/completions")
    answer = raw(openai_port, openai_data)
    assert json_error(answer, 400)["error"]["param"] is None and SECRET not in answer
    assert sim.requests == []
    assert CANARY not in p.log_text() and "Traceback" not in p.log_text()


def test_a_request_after_a_refused_one_is_served(sim, keyed):
    p, _, keys = keyed
    raw(p.port, REFUSED_BY_MITMPROXY["trailers"])
    answer = raw(p.port, request("/v1/messages", b"x-api-key: " + keys["una"].encode()))
    assert answer_of(answer)[0] == 200


def test_bytes_that_are_not_utf8_where_routing_does_not_read_go_as_sent(sim, keyed):
    """Routing reads the model; the rest goes on as sent (see providers/routing_body): the
    upstream refuses the body, the client gets that answer, and no account's state changes."""
    p, _, keys = keyed
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "@"},
        {"role": "user", "content": "again"}]}).encode().replace(b"@", b"\xff\xfe")
    headers = {"x-api-key": keys["una"], "content-type": "application/json"}
    answer = httpx.post(p.url + "/v1/messages", content=body, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert sim.requests[-1].body is None and sim.requests[-1].credential == ACCOUNT_KEY
    assert httpx.post(p.url + "/v1/messages", content=BODY, headers=headers).status_code == 200


# -- 5. a corrupt database stops the start with one line that says what to do -----------------
@pytest.mark.parametrize("option", ["flare_state", "flare_db"])
def test_a_corrupt_database_stops_the_start_with_one_clear_line(sim, tmp_path, option):
    (tmp_path / "accounts.yaml").write_text(accounts_yaml(sim.url, {"name": "a", "api_key": "k"}))
    files = {"flare_state": tmp_path / "state.db", "flare_db": tmp_path / "a.db"}
    files[option].write_bytes(bytes(range(256)) * 32)  # garbage where the database was
    args = [str(MITMDUMP), "-s", str(BUNDLE), "--mode",
            f"reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{free_port()}",
            "--set", "flare_accounts=accounts.yaml"]
    for name, path in files.items():
        args += ["--set", f"{name}={path}"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode != 0
    (line,) = [x for x in done.stdout.splitlines() if "mitmflare cannot start" in x]
    assert f"{files[option]} ({option}) is corrupt (file is not a database)" in line
    assert "`mitmflare doctor`" in line and "move the file aside" in line
    assert "Traceback" not in done.stdout + done.stderr
