"""End to end: per-user access keys with the real SDKs, the `mitmflare users` commands against
a running proxy, and serving clients over TLS with the operator's own certificate."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from conftest import ROOT, Proxy, accounts_yaml, free_port, within_reload

MSG = [{"role": "user", "content": "hello"}]
MODEL = "claude-sonnet-4-6"
KEY_A, OPENAI_KEY = "sk-ant-api03-ACCOUNT-A", "sk-proj-ACCOUNT-O"
MITMFLARE = Path(sys.executable).with_name("mitmflare")


def users(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(MITMFLARE), "users", *args, "--state", str(state)],
                          capture_output=True, text=True, timeout=60)


def new_key(state: Path, name: str, *options: str) -> str:
    done = users(state, "add", name, *options)
    assert done.returncode == 0, done.stderr
    (key,) = [line for line in done.stdout.splitlines() if line.startswith("mfk_")]
    return key


@pytest.fixture(scope="module")
def keyed(sim_server, tmp_path_factory) -> Iterator[tuple[Proxy, int, dict[str, str]]]:
    """One proxy with keys required, an Anthropic and an OpenAI listener, three users."""
    folder = tmp_path_factory.mktemp("keys")
    openai_port = free_port()
    yaml = accounts_yaml(sim_server.url, {"name": "key-a", "api_key": KEY_A},
                         {"name": "oa", "provider": "openai", "api_key": OPENAI_KEY})
    p = Proxy(folder, yaml, {"flare_require_access_keys": "true",
                             "save_stream_file": str(folder / "flows.mitm")},
              ["reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}",
               f"reverse:https://openai.mitmflare.invalid@127.0.0.1:{openai_port}"])
    keys = {"alice": new_key(p.state, "alice"),
            "bob": new_key(p.state, "bob", "--daily-cap", "0.0001"),
            "carol": new_key(p.state, "carol", "--models", "claude-haiku-*",
                             "--providers", "anthropic")}
    p.start()
    yield p, openai_port, keys
    p.stop()


def known(p: Proxy, key: str) -> bool:
    """Whether the proxy takes ``key`` as an enabled user's (its /health names the user)."""
    return "user" in httpx.get(p.url + "/health", headers={"x-api-key": key}, timeout=5).json()


def claude(p: Proxy, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url, api_key=key, max_retries=0)


def test_no_key_is_refused_and_nothing_reaches_an_upstream(sim, keyed):
    p, _, _ = keyed
    for key in ("dummy", "mfk_" + "0" * 64):
        with pytest.raises(anthropic.AuthenticationError) as info:
            claude(p, key).messages.create(model=MODEL, max_tokens=5, messages=MSG)
        assert info.value.body["error"]["type"] == "authentication_error"
    assert sim.requests == []
    rows = p.wait_rows(1, "select * from requests where status = 401")  # one per minute
    assert all(r["user"] is None and r["account"] is None for r in rows)
    assert all(r["provider"] is None and r["wire_format"] == "anthropic" for r in rows)
    assert p.health() == {"status": "ok"}  # no key: no counts


def test_valid_key_is_served_tagged_and_never_forwarded_or_stored(sim, keyed):
    p, openai_port, keys = keyed
    claude(p, keys["alice"]).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    gpt = openai.OpenAI(base_url=f"http://127.0.0.1:{openai_port}/v1", api_key=keys["alice"],
                        max_retries=0)
    gpt.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert sim.credentials_seen() == [KEY_A, OPENAI_KEY]
    assert keys["alice"] not in json.dumps([r.headers for r in sim.requests])
    rows = p.wait_rows(2, "select * from requests where user = 'alice' order by started_at")
    assert [(r["provider"], r["status"]) for r in rows] == [("anthropic", 200), ("openai", 200)]
    assert keys["alice"].encode() not in p.db.read_bytes()
    assert keys["alice"] not in p.log_text()
    time.sleep(0.5)  # saved flows (what mitmweb would show) keep neither key
    saved = (p.tmp / "flows.mitm").read_bytes()
    assert b"/v1/messages" in saved
    assert keys["alice"].encode() not in saved and KEY_A.encode() not in saved


def test_health_shows_account_data_only_to_key_holders(keyed):
    p, _, keys = keyed
    assert httpx.get(p.url + "/health").json() == {"status": "ok"}
    full = httpx.get(p.url + "/health", headers={"x-api-key": keys["alice"]}).json()
    assert full["accounts"]["total"] == 2
    assert full["user"] == "alice" and full["spent_today_usd"] >= 0  # the statusline's figure


def test_allowed_models_and_providers(sim, keyed):
    p, openai_port, keys = keyed
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        claude(p, keys["carol"]).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert "may not use model claude-sonnet-4-6" in info.value.body["error"]["message"]
    claude(p, keys["carol"]).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MSG)
    gpt = openai.OpenAI(base_url=f"http://127.0.0.1:{openai_port}/v1", api_key=keys["carol"],
                        max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        gpt.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert sim.credentials_seen() == [KEY_A]


def test_user_over_the_daily_cap_gets_a_429_until_reset(sim, keyed):
    p, _, keys = keyed
    claude(p, keys["bob"]).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    p.wait_rows(1, "select * from requests where user = 'bob' and cost_usd > 0")
    time.sleep(0.2)
    with pytest.raises(anthropic.RateLimitError) as info:
        claude(p, keys["bob"]).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    message = info.value.body["error"]["message"]
    assert "daily spend cap of $0.0001" in message and "resets at" in message
    assert 0 < int(info.value.response.headers["retry-after"]) <= 86400
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(sim.requests) == 1


def test_users_commands_apply_to_the_running_proxy_within_2_s(sim, keyed):
    p, _, keys = keyed
    dave = new_key(p.state, "dave")
    within_reload(lambda: known(p, dave))
    claude(p, dave).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert users(p.state, "disable", "dave").returncode == 0
    within_reload(lambda: not known(p, dave))
    with pytest.raises(anthropic.AuthenticationError) as info:
        claude(p, dave).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    assert "dave is disabled" in info.value.body["error"]["message"]
    assert users(p.state, "enable", "dave").returncode == 0
    rotated = users(p.state, "rotate", "dave")
    fresh = rotated.stdout.splitlines()[1]
    within_reload(lambda: known(p, fresh))
    with pytest.raises(anthropic.AuthenticationError):
        claude(p, dave).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    claude(p, fresh).messages.create(model=MODEL, max_tokens=5, messages=MSG)
    listed = json.loads(users(p.state, "list", "--json").stdout)
    assert {u["name"] for u in listed} == {"alice", "bob", "carol", "dave"}
    assert all(len(u["key_prefix"]) == 8 for u in listed)
    assert not any(k in json.dumps(listed) for k in [*keys.values(), dave, fresh])
    assert users(p.state, "remove", "nobody").returncode == 1


def readme_certificate(folder) -> tuple:
    """Run the README's certificate recipe in ``folder``: (server.pem, ca.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("the certificate recipe needs openssl (apt-get install openssl)")
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- cert-recipe:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=folder, check=True,
                   capture_output=True)
    return folder / "server.pem", folder / "ca.pem"


def test_clients_over_tls_with_the_operators_certificate(sim, proxy, tmp_path):
    server_pem, ca = readme_certificate(tmp_path)
    yaml = accounts_yaml(sim.url, {"name": "key-a", "api_key": KEY_A})
    p = proxy(yaml, certs=f"*={server_pem}", flare_require_access_keys="true")
    assert "is a certificate authority" not in p.log_text()  # a leaf, as mitmproxy wants
    key = new_key(p.state, "tls-user")
    within_reload(lambda: known(p, key))
    url = f"https://localhost:{p.port}"
    trusted = anthropic.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(ca)))
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, http_client=trusted)
    with client.messages.stream(model=MODEL, max_tokens=5, messages=MSG) as stream:
        assert stream.get_final_message().content
    with pytest.raises(anthropic.APIConnectionError):  # without the CA: not trusted
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0).messages.create(
            model=MODEL, max_tokens=5, messages=MSG)
    (row,) = p.wait_rows(1)
    assert row["user"] == "tls-user" and row["status"] == 200
    assert sim.credentials_seen() == [KEY_A]


async def test_dashboard_shows_usage_and_cost_per_user(keyed):
    import yaml
    from datasette.app import Datasette
    from datasette_dashboards import replace_opts_in_query


    p, _, _ = keyed
    metadata = yaml.safe_load((ROOT / "datasette-metadata.yml").read_text())
    ds = Datasette([str(p.db)], metadata=metadata)
    db = p.db.stem
    answer = await ds.client.get(f"/{db}/usage_by_user.json",
                                 params={"_shape": "array", "since": "", "until": ""})
    by_user = {r["user"]: r for r in answer.json()}
    expected = p.query("select user, count(*) as n, round(sum(cost_usd), 4) as cost "
                       "from requests where user is not null group by user")
    assert {u: (r["requests"], r["cost_usd"]) for u, r in by_user.items()} == \
        {e["user"]: (e["n"], e["cost"] or 0) for e in expected}
    assert by_user["alice"]["requests"] == 2
    chart = metadata["plugins"]["datasette-dashboards"]["overview"]["charts"]["cost-by-user"]
    sql = replace_opts_in_query(chart["query"], {})
    points = (await ds.client.get(f"/{db}.json", params={"sql": sql, "_shape": "array"})).json()
    assert {pt["user"] for pt in points} == set(by_user)
