"""The Datasette dashboard over a database filled by real flows through mitmdump."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anthropic
import openai
import pytest
import yaml
from datasette.app import Datasette
from datasette_dashboards import replace_opts_in_query

from conftest import ROOT, Proxy, accounts_yaml

METADATA = yaml.safe_load((ROOT / "datasette-metadata.yml").read_text())
MSG = [{"role": "user", "content": "hello"}]
SESSION = "0b7f8f57-2c9a-4a59-9a51-5f3f8c2f8e11"


@pytest.fixture(scope="module")
def filled_db(sim_server, tmp_path_factory) -> Path:
    """Known traffic: 3 + 1 requests on key-a, a failover to key-b, a client error, OpenAI."""
    sim = sim_server
    sim.reset()
    folder = tmp_path_factory.mktemp("dash")
    yaml_text = accounts_yaml(sim.url, {"name": "key-a", "api_key": "sk-ant-api03-A"},
                              {"name": "key-b", "api_key": "sk-ant-api03-B", "priority": 1},
                              {"name": "oa", "provider": "openai", "api_key": "sk-oa"})
    (folder / "oa").mkdir()
    p = Proxy(folder, yaml_text, {}, None)
    oa_proxy = Proxy(folder / "oa", yaml_text, {"flare_db": str(p.db), "flare_state": str(p.state)},
                     ["reverse:https://openai.mitmflare.invalid@127.0.0.1:{port}"])
    try:
        p.start()
        claude = anthropic.Anthropic(base_url=p.url, api_key="c", max_retries=2,
                                     default_headers={"x-claude-code-session-id": SESSION})
        sim.script("sk-ant-api03-A",
                   {"usage": {"input_tokens": 1000, "output_tokens": 100,
                              "cache_read_input_tokens": 3000}},
                   {}, {},
                   {"status": 429, "headers": {"retry-after": "1"}},
                   {"status": 400})
        for _ in range(3):
            claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG)
        with claude.messages.stream(model="claude-haiku-4-5", max_tokens=5, messages=MSG) as s:
            s.get_final_message()  # 429 on key-a, served by key-b
        time.sleep(1.2)
        with pytest.raises(anthropic.BadRequestError):  # a new conversation starts on key-a
            claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSG,
                                   extra_headers={"x-claude-code-session-id": "other"})
        p.stop()  # one writer at a time on the shared files
        oa_proxy.start()
        openai.OpenAI(base_url=oa_proxy.url + "/v1", api_key="c", max_retries=0) \
            .chat.completions.create(model="gpt-4o", messages=MSG)
        oa_proxy.wait_rows(7)
    finally:
        oa_proxy.stop()
        p.stop()
    return p.db


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def ds(filled_db) -> Datasette:
    return Datasette([str(filled_db)], metadata=METADATA,
                     settings={"sql_time_limit_ms": 5000},
                     static_mounts=[("assets", str(ROOT / "datasette-assets"))])


async def get_json(ds: Datasette, path: str, **params) -> list[dict]:
    response = await ds.client.get(path, params={"_shape": "array", **params})
    assert response.status_code == 200, (path, response.text[:500])
    return response.json()


async def test_every_canned_query_answers(ds):
    queries = METADATA["databases"]["mitmflare"]["queries"]
    assert len(queries) >= 15
    for name, query in queries.items():
        params = {p: "" for p in query.get("params", [])}
        await get_json(ds, f"/mitmflare/{name}.json", **params)


async def test_cost_per_account_equals_sum_of_rows(ds, filled_db):
    result = await get_json(ds, "/mitmflare/usage_by_account.json", since="2000-01-01", until="")
    by_account = {r["account"]: r for r in result}
    expected = dict(rows(filled_db, "select account, round(sum(cost_usd), 4) from requests "
                                    "group by account"))
    assert {a: r["cost_usd"] for a, r in by_account.items()} == expected
    # three successes, the streamed attempt the client retried elsewhere, the client error
    assert by_account["key-a"]["requests"] == 5
    assert by_account["key-a"]["input_tokens"] == 1000 + 25 + 25
    assert by_account["key-a"]["cache_read_tokens"] == 3000
    assert by_account["oa"]["requests"] == 1
    # 1000 in, 100 out, 3000 cache read on Sonnet 4.6 plus two default answers (25 in, 11 out)
    sonnet = (1000 * 3 + 100 * 15 + 3000 * 0.3 + 2 * (25 * 3 + 11 * 15)) / 1e6
    assert by_account["key-a"]["cost_usd"] == pytest.approx(sonnet, abs=1e-4)


async def test_error_failover_cache_and_session_queries(ds):
    errors = {r["account"]: r for r in await get_json(ds, "/mitmflare/error_rates.json", since="")}
    # the 400, and the overloaded answer that sent the streamed request elsewhere
    assert errors["key-a"]["errors"] == 2 and errors["key-a"]["failovers"] == 1
    reasons = await get_json(ds, "/mitmflare/failures_by_reason.json", since="")
    assert {(r["reason"], r["account"]) for r in reasons} == {("rate_limited", "key-a"),
                                                              ("http_400", "key-a")}
    cache = {r["account"]: r for r in await get_json(ds, "/mitmflare/cache_hit_ratio.json", since="")}
    assert cache["key-a"]["hit_pct"] == pytest.approx(100 * 3000 / (3000 + 1050), abs=0.01)
    sessions = {r["client_session"]: r for r in await get_json(ds, "/mitmflare/sessions.json",
                                                               since="")}
    session = sessions[SESSION]
    assert session["requests"] == 5 and sessions["other"]["requests"] == 1
    assert session["accounts"] == 2
    latency = {r["model"]: r for r in await get_json(ds, "/mitmflare/latency_by_model.json", since="")}
    assert latency["claude-sonnet-4-6"]["requests"] == 3
    assert latency["claude-sonnet-4-6"]["p50_duration_ms"] > 0
    timeline = await get_json(ds, "/mitmflare/rate_limit_timeline.json", since="")
    assert [e["event"] for e in timeline][-1] == "cooldown"


async def test_dashboard_pages_and_every_chart_query(ds, filled_db):
    dashboard = METADATA["plugins"]["datasette-dashboards"]["overview"]
    page = await ds.client.get("/-/dashboards/overview")
    assert page.status_code == 200 and "mitmflare overview" in page.text
    laid_out = {c for row in dashboard["layout"] for c in row}
    assert laid_out == set(dashboard["charts"])
    filters = {"date_start": "2000-01-01", "date_end": "2999-12-31", "account": ""}
    results = {}
    for chart_id, chart in dashboard["charts"].items():
        chart_page = await ds.client.get(f"/-/dashboards/overview/{chart_id}")
        assert chart_page.status_code == 200, chart_id
        if chart["library"] == "markdown":  # a card the overview's script fills
            continue
        sql = replace_opts_in_query(chart["query"], filters)
        results[chart_id] = await get_json(ds, "/mitmflare.json", sql=sql,
                                           **{k: v for k, v in filters.items() if f":{k}" in sql})
    total = rows(filled_db, "select count(*), printf('%.2f', sum(cost_usd)) from requests")[0]
    assert results["requests"] == [{"value": total[0]}]
    assert results["cost"] == [{"value": total[1]}]  # every account here is an API key
    assert results["plan-value"] == [{"value": "0.00"}]
    assert sum(r["requests"] for r in results["requests-over-time"]) == total[0]
    statuses = {r["name"]: r["status"] for r in results["account-status"]}
    assert statuses == {"key-a": "available", "key-b": "available", "oa": "available"}


async def test_account_filter_narrows_the_charts(ds):
    chart = METADATA["plugins"]["datasette-dashboards"]["overview"]["charts"]["requests"]
    sql = replace_opts_in_query(chart["query"], {"account": "key-b"})
    assert await get_json(ds, "/mitmflare.json", sql=sql, account="key-b") == [{"value": 1}]


async def test_no_secret_is_served(ds, filled_db):
    dump = filled_db.read_bytes()
    for secret in (b"sk-ant-api03-A", b"sk-ant-api03-B", b"sk-oa"):
        assert secret not in dump
    tables = await get_json(ds, "/mitmflare.json", sql="select name from sqlite_master where type='table'")
    assert {"requests", "attempts", "account_events", "accounts"} <= {t["name"] for t in tables}
    assert not any("token" in t["name"] for t in tables)


async def test_new_rows_appear_without_restart(ds, filled_db):
    before = await get_json(ds, "/mitmflare.json", sql="select count(*) as n from requests")
    conn = sqlite3.connect(filled_db)
    with conn:
        conn.execute("insert into requests (id, started_at, status) values ('live', '2026-01-01', 200)")
    conn.close()
    after = await get_json(ds, "/mitmflare.json", sql="select count(*) as n from requests")
    assert after[0]["n"] == before[0]["n"] + 1
    conn = sqlite3.connect(filled_db)
    with conn:
        conn.execute("delete from requests where id = 'live'")
    conn.close()


async def test_requests_table_has_sort_facets_and_date_facet(ds, filled_db):
    response = await ds.client.get("/mitmflare/requests.json")
    assert response.status_code == 200
    data = response.json()
    facets = data["facet_results"]
    assert {"account", "model", "status", "provider", "started_at"} <= set(facets)
    (day,) = facets["started_at"]["results"]
    assert day["count"] == rows(filled_db, "select count(*) from requests")[0][0]
    started = [r[1] for r in data["rows"]]
    assert started == sorted(started, reverse=True)


async def test_request_page_links_to_its_attempts_and_account(ds, filled_db):
    (request_id,) = rows(filled_db, "select request_id from attempts where status = 429")[0]
    page = await ds.client.get(f"/mitmflare/requests/{request_id}")
    assert page.status_code == 200
    assert f"/mitmflare/attempts?request_id={request_id}" in page.text
    table = await ds.client.get("/mitmflare/requests")
    assert 'href="/mitmflare/accounts/key-a"' in table.text
    account = await ds.client.get("/mitmflare/accounts/key-a")
    assert "/mitmflare/account_events?account=key-a" in account.text


async def test_table_pages_collapse_descriptions_and_keep_rows_on_one_line(ds):
    page = await ds.client.get("/mitmflare/requests")
    assert '<script src="/assets/mitmflare.js"' in page.text
    assert 'href="/assets/mitmflare.css"' in page.text
    script = await ds.client.get("/assets/mitmflare.js")
    assert script.status_code == 200 and "column-descriptions" in script.text
    css = (await ds.client.get("/assets/mitmflare.css")).text
    assert "white-space: nowrap" in css
    header = page.text.index('data-column="account"')
    assert header < page.text.index('data-column="provider"')  # useful columns first


async def test_hourly_charts_use_hour_wide_bars_and_zero_filled_hours(ds, filled_db):
    charts = METADATA["plugins"]["datasette-dashboards"]["overview"]["charts"]
    for name in ("requests-over-time", "tokens-over-time", "errors-over-time"):
        assert charts[name]["display"]["encoding"]["x"]["timeUnit"] == "utcyearmonthdatehours"
    conn = sqlite3.connect(filled_db)
    with conn:  # a request three hours earlier: the hours between must be there, with 0
        conn.execute("insert into usage_hourly (hour, provider, account, model, requests, errors,"
                     " failovers) select strftime('%Y-%m-%dT%H', min(hour) || ':00:00', '-3 hours'),"
                     " 'anthropic', 'key-a', 'x', 1, 1, 0 from usage_hourly")
    try:
        sql = replace_opts_in_query(charts["errors-over-time"]["query"], {})
        points = await get_json(ds, "/mitmflare.json", sql=sql)
    finally:
        with conn:
            conn.execute("delete from usage_hourly where model = 'x'")
        conn.close()
    hours = sorted({p["hour"] for p in points})
    assert len(hours) >= 4 and len(points) == 2 * len(hours)
    assert [p["count"] for p in points if p["kind"] == "errors"][1:3] == [0, 0]


async def test_password_overlay_protects_the_dashboard(filled_db, monkeypatch):
    from datasette_auth_passwords.utils import hash_password

    from mitmflare.storage.dashboard import HASH_ENV, metadata

    monkeypatch.setenv(HASH_ENV, hash_password("s3cret"))
    ds = Datasette([str(filled_db)], metadata=metadata())
    assert "datasette-dashboards" in metadata()["plugins"]  # the recipe keeps the dashboards
    assert (await ds.client.get("/-/dashboards/overview")).status_code == 403
    login = await ds.client.get("/-/login")
    token = login.cookies["ds_csrftoken"]
    answer = await ds.client.post("/-/login", data={"username": "root", "password": "s3cret",
                                                    "csrftoken": token},
                                  cookies={"ds_csrftoken": token})
    assert answer.status_code == 302
    page = await ds.client.get("/-/dashboards/overview", cookies={"ds_actor": answer.cookies["ds_actor"]})
    assert page.status_code == 200 and "mitmflare overview" in page.text
