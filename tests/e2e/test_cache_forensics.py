"""End to end: every prompt-cache write through a real mitmdump gets its cause and its cost,
and the dashboard's Prompt cache page and `mitmflare stats --cache` add up to the rows.

The simulated upstream keeps a prompt cache per account (credential) with TTLs, so a
conversation moved to another account really writes its whole context again there."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import pytest
import yaml
from datasette.app import Datasette
from datasette_dashboards import replace_opts_in_query
from typer.testing import CliRunner

from conftest import ROOT, Proxy, accounts_yaml
from mitmflare.cli import app

KEYS = {"k0": "sk-ant-api03-CF-0", "k1": "sk-ant-api03-CF-1", "k2": "sk-ant-api03-CF-2"}
METADATA = yaml.safe_load((ROOT / "datasette-metadata.yml").read_text())
SYSTEM = "You are a careful coding agent. " * 300  # ~2,300 tokens, as Claude Code's is larger
TURNS, FAILOVER_TURN = 20, 12
# Sonnet 4.6, USD per token: a 5-minute cache write and a cache read (genai-prices)
WRITE_5M, READ = 3.75e-6, 0.30e-6


def messages(n: int) -> list[dict]:
    """Turn ``n`` of a Claude Code-like conversation: the history, then the new user turn
    carrying the cache breakpoint."""
    out: list[dict] = []
    for i in range(n + 1):
        out.append({"role": "user", "content": [{"type": "text", "text": f"step {i}: " + "edit "
                                                 * 40}]})
        if i < n:
            out.append({"role": "assistant", "content": [{"type": "text", "text": f"did {i}"}]})
    out[-1]["content"][0]["cache_control"] = {"type": "ephemeral"}
    return out


@pytest.fixture(scope="module")
def served(sim_server, tmp_path_factory) -> Iterator[tuple[Proxy, list[dict], list[dict]]]:
    """A 20-turn conversation whose account fails at turn 12 (the proxy fails it over), and
    a streamed one whose account fails at turn 3 (the SDK client retries elsewhere)."""
    sim = sim_server
    sim.reset()
    folder = tmp_path_factory.mktemp("forensics")
    p = Proxy(folder, accounts_yaml(sim.url, *({"name": n, "api_key": k} for n, k in KEYS.items())),
              {"flare_strategy": "round-robin"}, None)
    p.start()
    try:
        session = {"x-claude-code-session-id": "conv-failover", "x-api-key": "client"}
        for n in range(TURNS):
            if n == FAILOVER_TURN:
                (account,) = {r.credential for r in sim.requests[-3:]}
                sim.script(account, {"status": 429, "headers": {"retry-after": "600"}})
            answer = httpx.post(p.url + "/v1/messages", headers=session, timeout=30, json={
                "model": "claude-sonnet-4-6", "max_tokens": 5,
                "system": [{"type": "text", "text": SYSTEM}], "messages": messages(n)})
            assert answer.status_code == 200, answer.text
        first = p.wait_rows(TURNS, "select * from requests where conversation = 'conv-failover' "
                                   "order by started_at")
        client = anthropic.Anthropic(base_url=p.url, api_key="c", max_retries=2,
                                     default_headers={"x-claude-code-session-id": "conv-sdk"})
        for n in range(5):
            if n == 3:
                sim.script(sim.requests[-1].credential,
                           {"status": 429, "headers": {"retry-after": "600"}})
            with client.messages.stream(model="claude-sonnet-4-6", max_tokens=5, system=SYSTEM,
                                        messages=messages(n)) as stream:
                stream.get_final_message()
        second = p.wait_rows(6, "select * from requests where conversation = 'conv-sdk' "
                                "order by started_at")
        yield p, first, second
    finally:
        p.stop()


def test_the_switch_loss_is_on_exactly_the_failover_request(served):
    _, rows, _ = served
    events = [(r["cache_event"], r["failover"]) for r in rows]
    assert events[0] == ("first", 0)
    assert events[FAILOVER_TURN] == ("switch", 1)
    assert [e for i, (e, _) in enumerate(events) if i not in (0, FAILOVER_TURN)] == \
        [None] * (TURNS - 2)  # the others only added their new turn to the cache
    before, moved = rows[FAILOVER_TURN - 1], rows[FAILOVER_TURN]
    assert moved["account"] != before["account"]
    assert moved["cache_read_input_tokens"] == 0  # the new account's cache was empty
    assert moved["cache_creation_input_tokens"] > before["cache_read_input_tokens"] > 2000
    assert moved["cache_loss_usd"] == pytest.approx(
        moved["cache_creation_input_tokens"] * (WRITE_5M - READ), rel=1e-6)
    after = rows[FAILOVER_TURN + 1]
    assert after["account"] == moved["account"] and after["cache_read_input_tokens"] > 0
    assert all(r["cache_loss_usd"] is None for r in rows if r["cache_event"] is None)


def test_a_client_retried_failover_puts_the_switch_on_the_retry(served):
    _, _, rows = served
    assert [r["cache_event"] for r in rows] == ["first", None, None, None, "switch", None]
    refused, retried = rows[3], rows[4]
    assert refused["status"] >= 500 and refused["failover"] == 1  # told the client to retry
    assert retried["account"] != refused["account"] and retried["cache_loss_usd"] > 0


@pytest.fixture
def ds(served) -> Datasette:
    return Datasette([str(served[0].db)], metadata=METADATA, settings={"sql_time_limit_ms": 5000})


async def get_json(ds: Datasette, path: str, **params) -> list[dict]:
    response = await ds.client.get(path, params={"_shape": "array", **params})
    assert response.status_code == 200, (path, response.text[:500])
    return response.json()


async def test_the_prompt_cache_page_adds_up_to_the_rows(ds, served):
    _, first, second = served
    losses = [r["cache_loss_usd"] for r in first + second if r["cache_loss_usd"]]
    assert len(losses) == 4  # two first writes, two switches
    board = METADATA["plugins"]["datasette-dashboards"]["prompt-cache"]
    assert {c for row in board["layout"] for c in row} == set(board["charts"])
    page = await ds.client.get("/-/dashboards/prompt-cache")
    assert page.status_code == 200 and "Prompt cache" in page.text
    filters = {"date_start": "2000-01-01", "date_end": "2999-12-31"}
    results = {}
    for chart_id, chart in board["charts"].items():
        sql = replace_opts_in_query(chart["query"], filters)
        results[chart_id] = await get_json(ds, "/mitmflare.json", sql=sql,
                                           **{k: v for k, v in filters.items() if f":{k}" in sql})
    assert float(results["cache-loss"][0]["value"]) == pytest.approx(sum(losses), abs=1e-4)
    assert results["cache-writes"] == [{"value": 4}]
    switches = [r["cache_loss_usd"] for r in first + second if r["cache_event"] == "switch"]
    assert float(results["cache-switch-loss"][0]["value"]) == pytest.approx(sum(switches), abs=1e-4)
    assert 0 < results["cache-hit"][0]["value"] < 100
    by_cause = {r["cause"]: r["loss_usd"] for r in results["cache-loss-per-day"]}
    assert set(by_cause) == {"first", "switch"}
    failovers = results["cache-costly-failovers"]
    assert {(f["conversation"], f["why"]) for f in failovers} == {
        ("conv-failover", "failover"), ("conv-sdk", "client retry")}
    assert all(f["from_account"] != f["to_account"] for f in failovers)
    raw = await get_json(ds, "/mitmflare/cache_losses.json", since="2000-01-01")
    assert sorted(r["id"] for r in raw) == sorted(r["id"] for r in first + second
                                                  if r["cache_event"])
    for name in ("cache_hit_rate", "cache_loss_by_cause", "cache_loss_by_account",
                 "cache_loss_by_user", "cache_loss_by_conversation", "cache_failovers"):
        assert await get_json(ds, f"/mitmflare/{name}.json", since="2000-01-01"), name


def test_stats_cache_prints_the_same(served):
    p, first, second = served
    result = CliRunner().invoke(app, ["stats", "--cache", "--json", "--db", str(p.db)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    total = sum(r["cache_loss_usd"] or 0 for r in first + second)
    assert sum(r["loss_usd"] for r in found["cache_loss_by_cause"]) == pytest.approx(total,
                                                                                     abs=1e-4)
    top = found["cache_loss_by_conversation"]
    assert {t["conversation"] for t in top} == {"conv-failover", "conv-sdk"}
    text = CliRunner().invoke(app, ["stats", "--cache", "--db", str(p.db)]).output
    assert "lost to prompt-cache misses" in text and "conv-failover" in text
