"""Access keys in-process: :class:`~mitmflare.addons.access.AccessKeys` reading users from
``flare_state``, judging keys, providers, models and caps, and counting refusals; mitmproxy's
taddons and tflow."""

from __future__ import annotations

import time

import pytest
from mitmproxy.http import Headers
from mitmproxy.test import taddons, tflow, tutils

from conftest import wait_for
from mitmflare.addons.access import AccessKeys, keep_to_user_providers, presented_key
from mitmflare.addons.accounts_file import AccountsFile
from mitmflare.proxy_state import FlowContext, ProxyState
from mitmflare.storage.rows import PRICE_PROVIDER
from mitmflare.storage.users import UsersStore
from mitmflare.storage.writer_process import WriterProcess


@pytest.fixture
def keys(tmp_path):
    """(AccessKeys, tctx, {user: key}): alice (anthropic only, claude-* models, a daily cap of
    1 USD), bob (disabled)."""
    state = str(tmp_path / "s.db")
    store = UsersStore(state)
    _, alice = store.add("alice", allowed_providers=["anthropic"], allowed_models=["claude-*"],
                         daily_cap_usd=1.0)
    _, bob = store.add("bob")
    store.update("bob", disabled=True)
    store.close()
    proxy = ProxyState()
    files, access = AccountsFile(proxy), AccessKeys(proxy)
    with taddons.context(files, access) as tctx:
        tctx.configure(files, flare_state=state,
                       flare_accounts=str(tmp_path / "accounts.yaml"))
        tctx.configure(access, flare_require_access_keys=True)
        yield access, tctx, {"alice": alice, "bob": bob}


def test_the_key_is_read_from_x_api_key_else_a_bearer_token():
    assert presented_key(Headers(x_api_key=" k1 ", authorization="Bearer k2")) == "k1"
    assert presented_key(Headers(authorization="bearer k2")) == "k2"
    assert presented_key(Headers(authorization="Basic k3")) is None
    assert presented_key(Headers()) is None


def test_without_required_keys_anyone_passes(keys):
    access, tctx, _ = keys
    tctx.configure(access, flare_require_access_keys=False)
    assert access.authenticate(None) == (None, None)
    assert access.authenticate("mfk_wrong") == (None, None)


def test_a_valid_key_names_its_user_and_others_get_401(keys):
    access, _, key = keys
    user, refusal = access.authenticate(key["alice"])
    assert user is not None and user.name == "alice" and refusal is None
    for wrong in (None, "", "mfk_" + "0" * 64, key["alice"][:-1]):
        user, refusal = access.authenticate(wrong)
        assert user is None and refusal is not None
        assert (refusal.status, refusal.kind) == (401, "authentication")


def test_a_disabled_user_is_refused_by_name(keys):
    access, _, key = keys
    user, refusal = access.authenticate(key["bob"])
    assert user is not None and refusal is not None
    assert refusal.status == 401 and "user bob is disabled" in refusal.message
    assert access.user_for(key["bob"]) is None


def test_a_user_added_later_is_known_once_the_users_are_read_again(keys, tmp_path):
    access, tctx, _ = keys
    store = UsersStore(str(tmp_path / "s.db"))
    _, carol = store.add("carol")
    store.close()
    assert access.authenticate(carol)[0] is None
    tctx.configure(access, flare_require_access_keys=False)
    tctx.configure(access, flare_require_access_keys=True)  # as the 1 s watcher does
    assert access.authenticate(carol)[0].name == "carol"


def test_models_outside_the_users_list_get_403(keys):
    access, _, key = keys
    alice, _ = access.authenticate(key["alice"])
    now = time.time()
    assert access.authorize(alice, "claude-sonnet-4-5", now) is None
    assert access.authorize(alice, None, now) is None  # e.g. GET /v1/models
    refusal = access.authorize(alice, "gpt-4o", now)
    assert (refusal.status, refusal.kind) == (403, "permission")
    assert "may not use model gpt-4o" in refusal.message
    assert access.authorize(None, "gpt-4o", now) is None  # keys not required


def context() -> FlowContext:
    return FlowContext(flow_id="f", wire_format="anthropic", started=time.time(),
                       path="/v1/messages", client_session=None, model="claude-sonnet-4-5",
                       user_agent=None)


def test_accounts_of_providers_outside_the_users_list_are_left_out(keys, tmp_path):
    """``--providers`` names account providers: other providers' accounts are not chosen for
    the user; when only those could serve, the request gets a 403."""
    access, tctx, key = keys
    (tmp_path / "accounts.yaml").write_text(
        "accounts:\n"
        "  - {name: claude, provider: anthropic, api_key: sk-ant-api03-A}\n"
        "  - {name: glm, provider: zai, api_key: zai-key}\n")
    files = next(a for a in tctx.master.addons.chain if isinstance(a, AccountsFile))
    tctx.configure(files, flare_accounts=str(tmp_path / "accounts.yaml"))
    wait_for(lambda: len(access.proxy.pool.accounts) == 2)
    alice, _ = access.authenticate(key["alice"])
    fc = context()
    assert keep_to_user_providers(access.proxy, fc, alice) is None
    assert fc.excluded == {"glm"} and "provider not allowed" in fc.skipped["glm"]
    assert access.proxy.choose(fc).name == "claude"
    alice.allowed_providers = ["openai"]
    fc = context()
    message = keep_to_user_providers(access.proxy, fc, alice)
    assert message is not None and "only accounts of provider(s) openai" in message
    assert access.proxy.choose(fc) is None
    assert keep_to_user_providers(access.proxy, context(), None) is None


def test_a_spent_daily_cap_gets_429_until_utc_midnight(keys, tmp_path):
    """The spend comes from the writer process's running totals of recorded costs: a
    recorded request of 1M input tokens (3 USD at Sonnet's price) is over the cap."""

    access, _, key = keys
    alice, _ = access.authenticate(key["alice"])
    writer = access.proxy.writer = WriterProcess(str(tmp_path / "a.db"), str(tmp_path / "s.db"))
    writer.start()
    try:
        assert writer.ready.wait(30)
        now = time.time()
        assert access.authorize(alice, "claude-sonnet-4-5", now) is None
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        writer.put("request", {"id": "r1", "started_at": now, "user": "alice", "status": 200,
                               "model": "claude-sonnet-4-5", "input_tokens": 1_000_000,
                               "output_tokens": 0, PRICE_PROVIDER: "anthropic"})
        assert writer.flush()
        wait_for(lambda: writer.spend.get(("user", "alice", day), 0.0) >= 1.0, timeout=30)
        refusal = access.authorize(alice, "claude-sonnet-4-5", now)
        assert (refusal.status, refusal.kind) == (429, "rate_limit")
        assert "daily spend cap of" in refusal.message
        assert 0 < refusal.retry_after <= 86400
        assert (now + refusal.retry_after) % 86400 < 2  # at the next UTC midnight
    finally:
        writer.stop()
        access.proxy.writer = None


def refused_flow(peer: str):
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/messages"))
    flow.client_conn.peername = (peer, 40000)
    return flow


def test_refusals_are_counted_one_row_per_source_and_minute(keys):
    access, _, _ = keys
    rows = []
    access.proxy.put = lambda kind, row: rows.append(row)  # what would go to the writer
    now = time.time()
    for peer in ("10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"):
        flow = refused_flow(peer)
        fc = FlowContext(flow_id=flow.id, wire_format="anthropic", started=now,
                         path="/v1/messages", client_session=None, model=None, user_agent=None,
                         error="mitmflare: a valid access key is required")
        access.proxy.flows[flow.id] = fc
        access.refused(flow, fc)
        assert flow.id not in access.proxy.flows  # the recorder records no row of its own
    assert access.refusals.total == 4
    assert [r["auth_refusals"] for r in rows] == [1, 1]  # each source's first, at once
    assert all(r["status"] == 401 and r["attempts"] == 0 for r in rows)
    access.done()  # at shutdown, the minute's count is recorded too
    assert rows[-1]["auth_refusals"] == 2 and "from 10.0.0.1" in rows[-1]["error"]


def test_users_merged_with_redis_the_latest_change_wins_and_tombstones_remove():
    from mitmflare.storage.users import User, merge_users
    old, new = "2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z"
    local = [User("amy", "h1", "mfk_1", updated_at=new), User("bob", "h2", "mfk_2", updated_at=old),
             User("cid", "h3", "mfk_3", updated_at=old)]
    shared = {"amy": {**User("amy", "h1", "mfk_1", disabled=True, updated_at=old).row()},
              "bob": {**User("bob", "h2", "mfk_2", disabled=True, updated_at=new).row()},
              "cid": {"name": "cid", "removed": True, "updated_at": new},
              "dan": User("dan", "h4", "mfk_4", updated_at=old).row()}
    merged = merge_users(local, shared)
    assert sorted(u.name for u in merged.values()) == ["amy", "bob", "dan"]
    assert not merged["h1"].disabled and merged["h2"].disabled  # newer here / newer in Redis
