"""End to end: usage windows as data (`account_windows`), the account health query and the
live dashboard cards (headless Chromium), budgets, and window start."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import anthropic
import httpx
import pytest
import yaml
from datasette.app import Datasette

from conftest import ROOT, Proxy, accounts_yaml, free_port, wait_for

METADATA = yaml.safe_load((ROOT / "datasette-metadata.yml").read_text())
KEY = "sk-ant-api03-HEALTH"
MSG = [{"role": "user", "content": "hello"}]


def ask(p: Proxy, max_tokens: int = 5, retries: int = 0) -> None:
    anthropic.Anthropic(base_url=p.url, api_key="c", max_retries=retries).messages.create(
        model="claude-sonnet-4-6", max_tokens=max_tokens, messages=MSG)


def oauth(pair: dict) -> dict:
    return {"access_token": pair["access_token"], "refresh_token": pair["refresh_token"],
            "expires_at": "2099-01-01T00:00:00Z"}


def windows(p: Proxy, account: str, count: int, timeout: float = 15.0) -> dict[str, dict]:
    rows = p.wait_rows(count, f"select * from account_windows where account = '{account}'",
                       timeout=timeout)
    return {r["window"]: r for r in rows}



@pytest.fixture(scope="module")
def served(sim_server, tmp_path_factory) -> Iterator[tuple[Proxy, str]]:
    """An API key (preferred) and a Max account; the key is rate limited, Max takes over. The
    simulator sends limit headers with every answer, as the real API does."""
    sim = sim_server
    sim.reset()
    sim.windows = True
    pair = sim.issue_tokens()
    p = Proxy(tmp_path_factory.mktemp("health"), accounts_yaml(
        sim.url, {"name": "key", "api_key": KEY},
        {"name": "max", "oauth": oauth(pair), "priority": 1}), {}, None)
    p.start()
    for _ in range(2):
        ask(p)
    sim.script(KEY, {"status": 429, "headers": {"retry-after": "600",
                                                "anthropic-ratelimit-requests-remaining": "0"}})
    for _ in range(3):
        ask(p, max_tokens=500)
    yield p, pair["access_token"]
    p.stop()
    sim.windows = False


def test_account_windows_hold_the_last_headers_each_account_saw(sim_server, served):
    p, token = served
    used = sim_server._used[token][1]
    rows = wait_for(lambda: (lambda w: w if abs((w.get("5h") or {}).get(
        "utilization", -1) - round(used / 400_000, 4)) < 1e-9 else None)(windows(p, "max", 2)))
    assert rows["5h"]["kind"] == "unified" and rows["5h"]["status"] == "allowed"
    assert rows["7d"]["utilization"] == pytest.approx(round(used / 4_000_000, 4))
    reset = datetime.fromisoformat(rows["5h"]["reset_at"].replace("Z", "+00:00"))
    assert abs(reset.timestamp() - (time.time() + 5 * 3600)) < 120
    key = windows(p, "key", 1)
    assert key["requests"]["kind"] == "bucket" and key["requests"]["remaining"] == 0


async def test_account_health_names_who_serves_who_cools_down_and_the_forecast(served):
    p, _ = served
    wait_for(lambda: p.query("select 1 from accounts where name = 'max' and position = 1"))
    ds = Datasette([str(p.db)], metadata=METADATA)
    response = await ds.client.get("/mitmflare/account_health.json", params={"_shape": "array"})
    health = {r["account"]: r for r in response.json()}
    assert health["max"]["health"] == "serving"
    until = p.query("select cooldown_until from accounts where name = 'key'")[0]["cooldown_until"]
    assert health["key"]["health"] == f"cooling down until {until[11:16]}"
    assert health["max"]["used_5h"] > 0 and health["max"]["forecast_5h"]
    assert health["max"]["token_health"].startswith("expires in")
    total = p.query("select sum(cost_usd) as c from requests where account = 'max'")[0]["c"]
    assert health["max"]["cost_today_usd"] == pytest.approx(total, abs=1e-4)
    assert health["key"]["last_error"].startswith("rate_limited")


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Chromium (apt-get install chromium)")
def test_dashboard_cards_show_every_account_and_follow_the_traffic(served, tmp_path):
    p, _ = served
    windows(p, "max", 2)
    wait_for(lambda: p.query("select 1 from accounts where name = 'max' and position = 1"))
    port = free_port()
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/datasette"), "serve", str(p.db), "-m",
         str(ROOT / "datasette-metadata.yml"), "--static", f"assets:{ROOT / 'datasette-assets'}",
         "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/-/dashboards/overview"
    try:
        wait_for(lambda: _up(url), timeout=30)

        def look(name: str) -> tuple[str, float]:
            dom_file = tmp_path / f"{name}.html"
            shot = subprocess.run([sys.executable, str(ROOT / "scripts/screenshot_dashboard.py"),
                                   url, "--out", str(tmp_path / f"{name}.png"),
                                   "--dom", str(dom_file)], capture_output=True, text=True,
                                  timeout=240)
            assert shot.returncode == 0, shot.stdout + shot.stderr
            dom = dom_file.read_text()
            shown = re.search(r'data-account="max".*?5h (\d+) %', dom, re.S)
            db = p.query("select utilization from account_windows "
                         "where account = 'max' and window = '5h'")[0]["utilization"]
            assert shown and int(shown.group(1)) == round(db * 100), (shown, db)
            return dom, db

        before, used_before = look("before")
        assert len(re.findall(r'class="mf-card ', before)) == 2
        assert "next request → max" in before and 'class="mf-recent"' in before
        for _ in range(4):
            ask(p, max_tokens=2000)  # +0.2 of the simulated 5h window
        wait_for(lambda: p.query("select utilization from account_windows where account = "
                                 "'max' and window = '5h'")[0]["utilization"] > used_before + 0.3)
        _, used_after = look("after")
        assert used_after > used_before
    finally:
        server.terminate()
        server.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_account_over_its_budget_is_skipped_until_the_day_ends(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "cheap", "api_key": "sk-ant-api03-CHEAP",
                                      "budget_usd": {"day": 0.05}},
                            {"name": "spare", "api_key": "sk-ant-api03-SPARE", "priority": 1}))
    sim.script("sk-ant-api03-CHEAP", {"usage": {"input_tokens": 20_000, "output_tokens": 100}})
    ask(p)  # $0.06 at Sonnet's $3 / M input: over the $0.05 day budget
    (event,) = p.wait_rows(1, "select * from account_events where event = 'over_budget'")
    assert event["account"] == "cheap" and "$0.05 day budget" in event["reason"]
    assert event["until"].endswith("T00:00:00.000Z")
    ask(p)
    assert sim.requests[-1].credential == "sk-ant-api03-SPARE"
    row = wait_for(lambda: p.query("select * from accounts where name = 'cheap' and "
                                   "status = 'over_budget'"))[0]
    assert row["spent_today_usd"] >= 0.05 and row["budget_day_usd"] == 0.05
    p.accounts.write_text(p.accounts.read_text().replace("day: 0.05", "day: 5"))
    p.wait_rows(1, "select * from account_events where event = 'within_budget'")
    ask(p)
    assert sim.requests[-1].credential == "sk-ant-api03-CHEAP"


def test_window_start_sends_one_tiny_request_per_reset_for_subscriptions_only(sim, proxy):
    pair = sim.issue_tokens()
    p = proxy(accounts_yaml(sim.url, {"name": "max", "oauth": oauth(pair)},
                            {"name": "key", "api_key": KEY}),
              flare_window_start="on-reset", flare_strategy="round-robin")
    reset = str(int(time.time()) + 2)
    window = {"headers": {"anthropic-ratelimit-unified-status": "allowed",
                          "anthropic-ratelimit-unified-5h-status": "allowed",
                          "anthropic-ratelimit-unified-5h-utilization": "0.4",
                          "anthropic-ratelimit-unified-5h-reset": reset}}
    sim.script(pair["access_token"], window)
    sim.script(KEY, window)
    ask(p)
    ask(p)
    assert {r.credential for r in sim.requests} == {pair["access_token"], KEY}
    (row,) = p.wait_rows(1, "select * from requests where purpose = 'window_start'", timeout=15)
    starts = [r for r in sim.requests if r.body and r.body.get("max_tokens") == 1]
    assert [(r.credential, r.body["model"]) for r in starts] == [
        (pair["access_token"], "claude-haiku-4-5")]
    assert "oauth-2025-04-20" in starts[0].headers["anthropic-beta"]
    assert row["account"] == "max" and row["status"] == 200 and row["model"] == "claude-haiku-4-5"
    assert datetime.fromisoformat(row["started_at"].replace("Z", "+00:00")) >= datetime.fromtimestamp(
        int(reset), UTC)
    time.sleep(2.5)
    assert len([r for r in sim.requests if r.body and r.body.get("max_tokens") == 1]) == 1
