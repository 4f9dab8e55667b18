"""The same bundle under mitmweb: flows show the serving account and keep no secret."""

from __future__ import annotations

import time

import anthropic
import httpx

from conftest import accounts_yaml, free_port


def test_mitmweb_flows_are_redacted_and_name_the_account(sim, proxy):
    web_port = free_port()
    yaml = accounts_yaml(sim.url, {"name": "key-a", "api_key": "sk-ant-api03-SECRET-A"},
                         {"name": "key-b", "api_key": "sk-ant-api03-SECRET-B", "priority": 1})
    p = proxy(yaml, tool="mitmweb", web_port=web_port, web_host="127.0.0.1",
              web_open_browser="false", web_password="test-password")
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
