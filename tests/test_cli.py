"""The `mitmflare` command against real files and one running mitmdump for the module:
accounts, stats, tail, prune, vacuum, doctor; and the proxy's retention and payload capture."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest
import yaml
from datasette.app import Datasette
from typer.testing import CliRunner

from conftest import ROOT, Proxy, accounts_yaml
from mitmflare import retention
from mitmflare.cli import app

KEY_A, KEY_B = "sk-ant-api03-CLI-A", "sk-ant-api03-CLI-B"
MSG = [{"role": "user", "content": "hello"}]
METADATA = yaml.safe_load((ROOT / "datasette-metadata.yml").read_text())


@pytest.fixture(scope="module")
def running(sim_server, tmp_path_factory) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("cli")
    text = "# team accounts\n" + accounts_yaml(sim_server.url, {"name": "key-a", "api_key": KEY_A})
    p = Proxy(folder, text, {"flare_payloads": "errors", "flare_retry_attempts": "0"}, None)
    yield p.start()
    p.stop()


def cli(p: Proxy, *args: str, stdin: str | None = None):
    result = CliRunner().invoke(app, [*args], input=stdin, env={
        "MITMFLARE_ACCOUNTS": str(p.accounts), "MITMFLARE_DB": str(p.db),
        "MITMFLARE_STATE": str(p.state)}, catch_exceptions=False)
    return result


def ask(p: Proxy, **kwargs) -> anthropic.types.Message:
    return anthropic.Anthropic(base_url=p.url, api_key="c", max_retries=0).messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=MSG, **kwargs)


def wait_for(check, timeout: float = 10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_accounts_add_edit_and_remove_keep_the_file_and_reach_the_proxy(sim, running):
    p = running
    added = cli(p, "accounts", "add", "key-b", "--provider", "anthropic", "--api-key-stdin",
                "--priority", "1", "--base-url", sim.url, stdin=KEY_B + "\n")
    assert added.exit_code == 0, added.output
    text = p.accounts.read_text()
    assert text.startswith("# team accounts") and KEY_B not in text
    assert "${MITMFLARE_KEY_KEY_B}" in text
    env_file = p.accounts.with_name(".env")
    assert KEY_B in env_file.read_text() and oct(env_file.stat().st_mode & 0o777) == "0o600"
    wait_for(lambda: p.health()["accounts"]["total"] == 2)
    assert cli(p, "accounts", "pause", "key-a").exit_code == 0
    wait_for(lambda: p.health()["accounts"]["available"] == 1)
    ask(p)
    assert sim.requests[-1].credential == KEY_B
    assert cli(p, "accounts", "resume", "key-a").exit_code == 0
    assert cli(p, "accounts", "set", "key-b", "priority=3", "weight=2").exit_code == 0
    entry = yaml.safe_load(p.accounts.read_text())["accounts"][1]
    assert (entry["priority"], entry["weight"], "paused" in yaml.safe_load(
        p.accounts.read_text())["accounts"][0]) == (3, 2.0, False)
    duplicate = cli(p, "accounts", "add", "key-b", "--provider", "anthropic",
                    "--api-key-env", "X")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    bad = cli(p, "accounts", "set", "key-b", "colour=red")
    assert bad.exit_code == 1 and "FIELD=VALUE" in bad.output
    assert cli(p, "accounts", "remove", "key-b").exit_code == 0
    wait_for(lambda: p.health()["accounts"]["total"] == 1)


def test_accounts_reset_clears_a_cooldown_in_the_running_proxy(sim, running):
    p = running
    sim.script(KEY_A, {"status": 429, "headers": {"retry-after": "600"}})
    with pytest.raises(anthropic.RateLimitError):
        ask(p)
    wait_for(lambda: p.health()["accounts"]["cooling_down"] == 1)
    listed = json.loads(wait_for(lambda: (lambda r: r.output if '"cooling down' in r.output
                                          else None)(cli(p, "accounts", "list", "--json"))))
    assert listed[0]["name"] == "key-a" and listed[0]["cooldown_until"]
    assert cli(p, "accounts", "reset", "key-a").exit_code == 0
    wait_for(lambda: p.health()["accounts"]["available"] == 1, timeout=5)
    ask(p)
    events = p.wait_rows(1, "select * from account_events where event = 'resumed'")
    assert events[-1]["account"] == "key-a"


def test_accounts_list_shows_requests_and_cost_today(running):
    p = running
    ask(p)
    wait_for(lambda: p.query("select 1 from usage_hourly where account = 'key-a'"))
    total = p.query("select count(*) as n, sum(cost_usd) as c from requests "
                    "where account = 'key-a'")[0]
    row = json.loads(cli(p, "accounts", "list", "--json").output)[0]
    assert row["requests_today"] == total["n"]
    assert row["cost_today_usd"] == pytest.approx(total["c"], abs=1e-4)
    table = cli(p, "accounts", "list").output
    assert "key-a" in table and "requests today" in table


def test_stats_match_the_rows_by_account_and_model(running):
    p = running
    ask(p)
    rows = p.wait_rows(1, "select * from requests")
    by_account = {r["group"]: r for r in json.loads(cli(p, "stats", "--json").output)}
    mine = [r for r in rows if r["account"] == "key-a"]
    assert by_account["key-a"]["requests"] == len(mine)
    assert by_account["key-a"]["cost_usd"] == pytest.approx(
        round(sum(r["cost_usd"] or 0 for r in mine), 4))
    assert by_account["key-a"]["p50_ms"] is not None
    by_model = json.loads(cli(p, "stats", "--by", "model", "--since", "1h", "--json").output)
    assert {r["group"] for r in by_model} == {r["model"] for r in rows}
    assert cli(p, "stats", "--by", "colour").exit_code == 1


def test_tail_follows_new_requests(running):
    p = running
    p.wait_rows(1)
    sender = threading.Timer(1.0, lambda: [ask(p), ask(p)])
    sender.start()
    result = cli(p, "tail", "--last", "0", "--count", "2")
    sender.join()
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(" key-a claude-sonnet-4-6 200 " in line for line in lines)


def test_error_payloads_are_captured_without_credentials(sim, running):
    p = running
    before = len(p.query("select id from payloads"))
    sim.script(KEY_A, {"status": 400})
    with pytest.raises(anthropic.BadRequestError):
        anthropic.Anthropic(base_url=p.url, api_key="sk-ant-api03-CLIENT-SECRET",
                            max_retries=0).messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user",
                                                                "content": "find me"}])
    (row,) = p.wait_rows(1, "select * from payloads where request_body like '%find me%'")
    assert "find me" in row["request_body"] and "invalid_request_error" in row["response_body"]
    stored = json.dumps(row)
    assert "CLIENT-SECRET" not in stored and KEY_A not in stored
    ask(p)  # a success is not captured in the errors mode
    time.sleep(1)
    assert len(p.query("select * from payloads")) == before + 1


async def test_request_by_id_and_health_sizes(running):
    p = running
    (row,) = p.wait_rows(1, "select id from payloads where request_body like '%find me%'")
    ds = Datasette([str(p.db)], metadata=METADATA)
    answer = await ds.client.get("/mitmflare/request_by_id.json",
                                 params={"id": row["id"], "_shape": "array"})
    (shown,) = answer.json()
    assert shown["status"] == 400 and "find me" in shown["request_body"]
    sizes = wait_for(lambda: p.health().get("database", {}).get("bytes"), timeout=15)
    assert sizes == pytest.approx(p.db.stat().st_size, rel=0.5)


def test_doctor_passes_a_good_install_and_names_what_to_fix(running):
    p = running
    wait_for(lambda: (p.tmp / "mitmflare-runtime.json").exists())  # written once it runs
    ok = cli(p, "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(ok.output)}
    assert ok.exit_code == 0, ok.output
    assert checks["proxy port"]["detail"] == \
        f"{p.port}: mitmflare's own proxy listener (pid {p.proc.pid})"
    assert checks["analytics database integrity"]["level"] == "ok"
    assert checks["clock"]["level"] == "ok"
    os.chmod(p.state, 0o644)
    try:
        bad = cli(p, "doctor", "--port", str(p.port))
    finally:
        os.chmod(p.state, 0o600)
    assert bad.exit_code == 1 and "FAIL  state database mode: 644: it holds secrets" in bad.output


PROXY_ONLY = {"mitmproxy", "httpx", "sqlite_utils", "genai_prices", "asyncio", "OpenSSL"}


def modules_loaded(folder, *args: str) -> set[str]:
    """Top-level packages loaded by ``mitmflare ARGS`` run in ``folder`` (a fresh process)."""
    code = ("import sys\nfrom mitmflare.cli import main\nsys.argv = ['mitmflare', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=folder, capture_output=True,
                          text=True, timeout=60)
    return set(done.stderr.strip().splitlines()[-1].split())


def test_help_and_accounts_list_load_none_of_the_proxys_heavy_modules(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "accounts.yaml").write_text("accounts: []\n")
    assert modules_loaded(tmp_path, "--help") & (PROXY_ONLY | {"pydantic", "yaml"}) == set()
    assert modules_loaded(tmp_path, "accounts", "list") & PROXY_ONLY == set()


def old_rows(db, count: int, days_ago: float) -> None:
    """Insert ``count`` requests (with attempts) ``days_ago`` days old, as the writer would."""
    at = retention.cutoff(days_ago)
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany("insert into requests (id, started_at, account, model, status, "
                         "cost_usd) values (?, ?, 'old', 'm', 200, 0.01)",
                         [(f"old-{days_ago}-{i}", at) for i in range(count)])
        conn.executemany("insert into attempts (request_id, attempt, account, started_at, "
                         "status) values (?, 1, 'old', ?, 200)",
                         [(f"old-{days_ago}-{i}", at) for i in range(count)])
        conn.execute("insert into usage_hourly (hour, provider, account, model, requests) "
                     "values (?, 'anthropic', 'old', 'm', ?)", [at[:13], count])
    conn.close()


def test_prune_deletes_old_rows_in_batches_and_keeps_the_rollup(running):
    p = running
    old_rows(p.db, 5000, 40)
    dry = cli(p, "prune", "--older-than", "30d", "--dry-run")
    assert "5,000 requests, 5,000 attempts" in dry.output
    done = cli(p, "prune", "--older-than", "30d")
    assert done.exit_code == 0 and "5,000 requests" in done.output
    assert p.query("select count(*) as n from requests where account = 'old'")[0]["n"] == 0
    assert p.query("select sum(requests) as n from usage_hourly where account = 'old'")[0]["n"] == 5000
    assert p.query("select count(*) as n from requests where account = 'key-a'")[0]["n"] > 0
    assert "vacuumed" in cli(p, "vacuum").output


def test_the_proxy_applies_flare_retention_days_itself(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "key-a", "api_key": KEY_A}))
    ask(p)
    p.wait_rows(1)
    p.stop()
    old_rows(p.db, 3000, 10)
    p.options["flare_retention_days"] = "7"
    p.start()
    wait_for(lambda: p.query("select count(*) as n from requests where account = 'old'")[0][
        "n"] == 0, timeout=15)
    assert p.query("select count(*) as n from requests where account = 'key-a'")[0]["n"] == 1
    wait_for(lambda: p.query("select count(*) as n from attempts where account = 'old'")[0][
        "n"] == 0, timeout=10)
    assert httpx.get(p.url + "/health").json()["write_errors"] == 0


def test_json_logs_carry_the_request_fields(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "key-a", "api_key": KEY_A}),
              flare_log_format="json", flare_request_log="true")
    ask(p)
    line = wait_for(lambda: next((json.loads(x) for x in p.log_text().splitlines()
                                  if x.startswith("{") and '"flow_id"' in x), None))
    row = p.wait_rows(1)[0]
    assert (line["flow_id"], line["account"], line["status"]) == (row["id"], "key-a", 200)
    assert line["level"] == "info" and line["ms"] > 0 and KEY_A not in p.log_text()
