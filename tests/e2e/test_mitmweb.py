"""The same bundle under mitmweb: flows show the serving account and keep no secret."""

from __future__ import annotations

import time

import anthropic
import httpx

from conftest import accounts_yaml, free_port


def start_mitmweb(sim, proxy):
    """mitmweb with the bundle and two keys; returns (proxy, web UI port)."""
    web_port = free_port()
    yaml = accounts_yaml(sim.url, {"name": "key-a", "api_key": "sk-ant-api03-SECRET-A"},
                         {"name": "key-b", "api_key": "sk-ant-api03-SECRET-B", "priority": 1})
    return proxy(yaml, tool="mitmweb", web_port=web_port, web_host="127.0.0.1",
                 web_open_browser="false", web_password="test-password"), web_port


def test_mitmweb_flows_are_redacted_and_name_the_account(sim, proxy):
    p, web_port = start_mitmweb(sim, proxy)
    sim.script("sk-ant-api03-SECRET-A", {"status": 429, "headers": {"retry-after": "600"}})
    client = anthropic.Anthropic(base_url=p.url, api_key="client-key", max_retries=0)
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                           messages=[{"role": "user", "content": "hi"}])
    web = f"http://127.0.0.1:{web_port}"
    auth = {"authorization": "Bearer test-password"}
    flows = []
    deadline = time.time() + 10
    while time.time() < deadline:
        flows = [f for f in httpx.get(f"{web}/flows", headers=auth).json()
                 if f["request"]["path"].startswith("/v1/messages")]
        if flows and flows[0].get("response"):
            break
        time.sleep(0.2)
    (flow,) = flows
    dump = httpx.get(f"{web}/flows/dump", headers=auth).content
    assert b"SECRET" not in dump and b"client-key" not in dump
    headers = dict((k.lower(), v) for k, v in flow["request"]["headers"])
    assert headers["x-api-key"] == "<key-b>"
    assert "account key-b" in flow["comment"] and "key-a: 429 rate_limited" in flow["comment"]


WEB_TYPES = {"str", "int", "bool", "optional str", "sequence of str"}  # what its editors know


def test_mitmweb_as_inspector_options_stream_copy_replay_and_commands(sim, proxy):
    p, web_port = start_mitmweb(sim, proxy)
    web = httpx.Client(base_url=f"http://127.0.0.1:{web_port}",
                       headers={"authorization": "Bearer test-password"})
    assert web.get("/").status_code == 200
    token = "5f" * 16  # tornado's XSRF check: the same token as cookie and header
    web.cookies.set("_mitmproxy_xsrf", token, domain="127.0.0.1")
    web.headers["x-xsrftoken"] = token

    options = web.get("/options").json()
    flare = {k: v for k, v in options.items() if k.startswith("flare_")}
    assert len(flare) >= 10 and {v["type"] for v in flare.values()} <= WEB_TYPES
    assert "comment" in options["web_columns"]["value"]

    client = anthropic.Anthropic(base_url=p.url, api_key="client-key", max_retries=0)
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=5,
                                messages=[{"role": "user", "content": "hi"}]) as s:
        s.get_final_message()
    (row,) = p.wait_rows(1)
    flow_id = row["id"]
    body = web.get(f"/flows/{flow_id}/response/content.data").text
    assert "event: message_start" in body and "message_stop" in body  # readable in mitmweb
    (flow,) = [f for f in web.get("/flows").json() if f["id"] == flow_id]
    assert flow["comment"].startswith("[key-a]")

    assert web.post(f"/flows/{flow_id}/replay").status_code == 200
    rows = p.wait_rows(2)
    assert sim.credentials_seen() == ["sk-ant-api03-SECRET-A"] * 2  # real key, not "<key-a>"
    assert [r["replay"] for r in rows] == [0, 1] and rows[1]["id"] != flow_id

    answer = web.post("/commands/flare.replay", json={"arguments": ["@all", "key-b"]}).json()
    assert "error" not in answer, answer
    p.wait_rows(3)
    assert sim.credentials_seen()[-1] == "sk-ant-api03-SECRET-B"
    assert b"SECRET" not in web.get("/flows/dump").content

    lines = web.post("/commands/flare.accounts", json={"arguments": []}).json()["value"]
    assert lines[0].split() == ["ACCOUNT", "PROVIDER", "STATUS", "UNTIL", "WHY"]
    assert lines[1].split()[:3] == ["key-a", "anthropic", "available"]
    why = web.post("/commands/flare.why", json={"arguments": ["claude-sonnet-4-6"]}).json()
    assert any(line.startswith("key-a") and "yes:" in line for line in why["value"])
    assert any(line.startswith("key-b") and "not next" in line for line in why["value"])


def test_replay_of_a_keyed_request_is_served_as_its_user(sim, proxy):
    from .test_access_keys import new_key

    web_port = free_port()
    yaml = accounts_yaml(sim.url, {"name": "key-a", "api_key": "sk-ant-api03-SECRET-A"})
    p = proxy(yaml, tool="mitmweb", web_port=web_port, web_host="127.0.0.1",
              web_open_browser="false", web_password="test-password",
              flare_require_access_keys="true")
    key = new_key(p.state, "alice")
    deadline = time.time() + 10
    while "accounts" not in httpx.get(p.url + "/health", headers={"x-api-key": key}).json():
        assert time.time() < deadline  # the proxy reads new users within 2 s
        time.sleep(0.2)
    client = anthropic.Anthropic(base_url=p.url, api_key=key, max_retries=0)
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                           messages=[{"role": "user", "content": "hi"}])
    (row,) = p.wait_rows(1)
    web = httpx.Client(base_url=f"http://127.0.0.1:{web_port}",
                       headers={"authorization": "Bearer test-password"})
    token = "5f" * 16
    web.cookies.set("_mitmproxy_xsrf", token, domain="127.0.0.1")
    web.headers["x-xsrftoken"] = token
    assert web.post(f"/flows/{row['id']}/replay").status_code == 200
    rows = p.wait_rows(2)
    assert [(r["replay"], r["status"], r["user"]) for r in rows] == [(0, 200, "alice"),
                                                                     (1, 200, "alice")]
    assert sim.credentials_seen() == ["sk-ant-api03-SECRET-A"] * 2
