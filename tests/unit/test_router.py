"""The router in-process, with mitmproxy's test helpers."""

from __future__ import annotations

import json

import pytest
from mitmproxy import exceptions
from mitmproxy.http import Headers
from mitmproxy.test import tflow, tutils

from conftest import bundle_parts
from mitmflare.addons.accounts_file import AccountsFile
from mitmflare.addons.recorder import Recorder
from mitmflare.addons.router import Router

YAML = """\
accounts:
  - name: sub
    provider: anthropic
    oauth: {access_token: sk-ant-oat01-SUB, refresh_token: sk-ant-ort01-R}
  - name: key
    provider: anthropic
    api_key: sk-ant-api03-KEY
    priority: 1
    base_url: https://gateway.example:8443/anthropic
"""


@pytest.fixture
def bundle(tmp_path):
    with bundle_parts(tmp_path, YAML) as (parts, tctx):
        yield (parts[AccountsFile], parts[Router], parts[Recorder]), tctx


def messages_flow(**headers: str):
    req = tutils.treq(method=b"POST", path=b"/v1/messages", content=b'{"model":"m"}')
    req.headers.update(Headers(host="127.0.0.1:8080", **headers))
    return tflow.tflow(req=req)


async def test_oauth_account_gets_bearer_and_beta_and_client_credentials_go(bundle):
    (_, router, _), _ = bundle
    flow = messages_flow(x_api_key="client-key", authorization="Bearer client-token",
                         anthropic_beta="claude-code-20250219,oauth-2025-04-20")
    await router.request(flow)
    headers = flow.request.headers
    assert headers["authorization"] == "Bearer sk-ant-oat01-SUB"
    assert "x-api-key" not in headers
    assert headers["anthropic-beta"] == "claude-code-20250219,oauth-2025-04-20"
    assert flow.request.url == "https://api.anthropic.com/v1/messages"


async def test_api_key_account_with_custom_base_url(bundle):
    (_, router, _), _ = bundle
    router.proxy.pool.get("sub").state.cooldown_until = 4_000_000_000
    flow = messages_flow(authorization="Bearer client", anthropic_beta="oauth-2025-04-20,x-1")
    await router.request(flow)
    headers = flow.request.headers
    assert headers["x-api-key"] == "sk-ant-api03-KEY" and "authorization" not in headers
    assert headers["anthropic-beta"] == "x-1"
    assert flow.request.url == "https://gateway.example:8443/anthropic/v1/messages"
    assert headers["host"] == "gateway.example:8443"


async def test_secret_is_redacted_once_sent(bundle):
    (_, router, _), _ = bundle
    flow = messages_flow()
    await router.request(flow)
    flow.response = tutils.tresp()
    router.responseheaders(flow)
    assert flow.request.headers["authorization"] == "Bearer <sub>"


async def test_resume_clears_cooldown_and_needs_reauth(bundle):
    (_, router, _), tctx = bundle
    account = router.proxy.pool.get("sub")
    account.state.cooldown_until = 4_000_000_000
    account.state.needs_reauth = True
    tctx.master.commands.call("flare.resume", "sub")
    assert account.is_available(1_000)
    with pytest.raises(Exception, match="no account"):
        tctx.master.commands.call("flare.resume", "ghost")


async def test_unknown_path_on_unknown_target_gets_error_shape(bundle):
    (_, router, _), _ = bundle
    flow = tflow.tflow(req=tutils.treq(path=b"/v2/other"))
    await router.request(flow)
    assert flow.response.status_code == 404
    assert flow.response.json()["error"]["type"] == "not_found_error"


async def test_cache_ttl_scale_shortens_the_ttl_a_request_asks_and_must_be_positive(bundle):
    (_, router, _), tctx = bundle
    tctx.options.update(flare_cache_ttl_scale="60")
    flow = messages_flow(x_claude_code_session_id="s1")
    flow.request.content = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]}).encode()
    await router.request(flow)
    assert router.proxy.flows[flow.id].cache.ttl_s == 5.0  # 5 minutes, 60 times faster
    for bad in ("0", "-1", "fast"):
        with pytest.raises(exceptions.OptionsError, match="flare_cache_ttl_scale"):
            tctx.options.update(flare_cache_ttl_scale=bad)
