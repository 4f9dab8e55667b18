"""The `mitmflare` command against real files and one running mitmdump for the module:
accounts, stats, tail, prune, vacuum, doctor; and the proxy's retention and payload capture."""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest
import sqlite_utils
import yaml
from datasette.app import Datasette
from typer.testing import CliRunner

from conftest import ROOT, Proxy, accounts_yaml, wait_for
from mitmflare.cli import app
from mitmflare.cli.data import span_seconds
from mitmflare.money import usd
from mitmflare.storage import retention
from mitmflare.storage.schema import ANALYTICS_TABLES, migrate

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


STYLED = """# team accounts
accounts:
  - name: key-a   # the main one
    provider: anthropic
    api_key: "${KEY_A_VAR}"
    weight: 2
    budget_usd:
        day: 5
"""


def edit(accounts, *args: str, stdin: str | None = None, **env: str):
    """Run `mitmflare ARGS` on the accounts file ``accounts`` (no proxy needed)."""
    return CliRunner().invoke(app, [*args], input=stdin, catch_exceptions=False,
                              env={"MITMFLARE_ACCOUNTS": str(accounts), **env})


def test_edits_write_through_a_symlink_and_keep_mode_owner_and_style(tmp_path):
    real = tmp_path / "secrets" / "accounts.yaml"
    real.parent.mkdir()
    real.write_text(STYLED)
    real.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(real, 4321, 4321)
    link = tmp_path / "config" / "accounts.yaml"
    link.parent.mkdir()
    link.symlink_to(real)
    (tmp_path / "config" / ".env").write_text("KEY_A_VAR=sk-a\nKEY_B_VAR=sk-b\n")
    assert edit(link, "accounts", "set", "key-a", "priority=3", "weight=3").exit_code == 0
    assert link.is_symlink() and real.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        assert (real.stat().st_uid, real.stat().st_gid) == (4321, 4321)
    assert real.read_text() == STYLED.replace("weight: 2", "weight: 3") + "    priority: 3\n"
    added = edit(link, "accounts", "add", "key-b", "--provider", "anthropic",
                 "--api-key-env", "KEY_B_VAR")
    assert added.exit_code == 0, added.output
    assert real.read_text().endswith("    priority: 3\n  - name: key-b\n    provider: anthropic\n"
                                      "    api_key: ${KEY_B_VAR}\n    priority: 0\n")
    assert sorted(p.name for p in real.parent.iterdir()) == ["accounts.yaml"]  # no temp left


def test_a_new_accounts_file_is_private(tmp_path):
    path = tmp_path / "accounts.yaml"
    assert edit(path, "accounts", "add", "k", "--provider", "anthropic", "--api-key-env",
                "K", K="sk").exit_code == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == "accounts:\n  - name: k\n    provider: anthropic\n" \
        "    api_key: ${K}\n    priority: 0\n"


def test_a_rejected_edit_writes_nothing_and_suggests_the_value_meant(tmp_path):
    path = tmp_path / "accounts.yaml"
    path.write_text(STYLED)
    dotenv = path.with_name(".env")
    dotenv.write_text("KEY_A_VAR=sk-a\n")
    for args, reason in [
            (("set", "key-a", "provider=anthropc"), "did you mean `anthropic`?"),
            (("set", "key-a", "auth=barer"), "did you mean `bearer`?"),
            (("set", "key-a", "prioirty=2"), "did you mean `priority`?"),
            (("set", "key-a", "paused=ture"), "did you mean `true`?"),
            (("set", "key-a", "provider=openai-compatible"), "needs base_url"),
            (("set", "key-a", "base_url=ftp://x"), "must be an http:// or https:// URL"),
            (("add", "key-b", "--provider", "anthropic", "--api-key-env", "UNSET"),
             "environment variable UNSET is not set"),
            (("add", "key-b", "--provider", "anthropc", "--api-key-env", "KEY_A_VAR"),
             "did you mean `anthropic`?"),
            (("add", "key b", "--provider", "anthropic", "--api-key-stdin"), "name:"),
            (("add", "key-c", "--provider", "openai-compatible", "--api-key-stdin"),
             "needs base_url")]:
        result = edit(path, "accounts", *args, stdin="sk-new\n")
        assert result.exit_code == 1 and reason in result.output, (args, result.output)
        assert result.output.startswith("error:") and "Traceback" not in result.output
        assert path.read_text() == STYLED, args
        assert dotenv.read_text() == "KEY_A_VAR=sk-a\n", args
    broken = STYLED + "  - name: old-broken\n    provider: nope\n    api_key: x\n"
    path.write_text(broken)  # an entry already left out does not block other edits
    assert edit(path, "accounts", "set", "key-a", "paused=yes").exit_code == 0
    assert yaml.safe_load(path.read_text())["accounts"][0]["paused"] is True


def test_a_control_character_in_the_file_is_one_error_line_not_a_traceback(tmp_path):
    path = tmp_path / "accounts.yaml"
    broken = STYLED.replace("name: key-a", "name: key-a\x1b[0m")
    path.write_text(broken)
    for args, start in [(("accounts", "list"), f"error: {path}: "),
                        (("accounts", "pause", "key-a"), f"error: {path} cannot be read as YAML: "),
                        (("doctor",), f"FAIL  accounts file: {path}: ")]:
        result = edit(path, *args, MITMFLARE_DB=str(tmp_path / "m.db"),
                      MITMFLARE_STATE=str(tmp_path / "s.db"))
        assert result.exit_code == 1 and "Traceback" not in result.output, (args, result.output)
        (line,) = [line for line in result.output.splitlines() if "#x001b" in line]
        assert line.startswith(start + "line 3, column 16: unacceptable character #x001b"), line
        assert path.read_text() == broken  # nothing written


def in_terminal(cwd, *args: str, answer: str, **env: str) -> tuple[int, str]:
    """Run `mitmflare ARGS` as a process whose stdin and stdout are a terminal (a pty), type
    ``answer``; returns its exit code and everything it printed (the typed answer too)."""
    main, side = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", "from mitmflare.cli import main; main()",
                             *args], stdin=side, stdout=side, stderr=side, cwd=cwd,
                            env={**os.environ, **env})
    os.close(side)
    os.write(main, answer.encode())  # the terminal keeps it until the prompt reads it
    output = b""
    deadline = time.time() + 30
    while time.time() < deadline and select.select([main], [], [], deadline - time.time())[0]:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    return proc.wait(timeout=10), output.decode(errors="replace")


def test_env_files_are_not_committed():
    ignored = subprocess.run(["git", "check-ignore", ".env", "config/.env"], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == [".env", "config/.env"]


def test_remove_offers_to_drop_the_key_variable_no_other_account_uses(tmp_path):
    path = tmp_path / "config" / "accounts.yaml"
    path.parent.mkdir()
    path.write_text("accounts:\n" + "".join(
        f"  - name: {n}\n    provider: anthropic\n    api_key: ${{{v}}}\n"
        for n, v in (("a", "ONLY_A"), ("b", "SHARED"), ("c", "SHARED"))))
    dotenv = path.with_name(".env")
    dotenv.write_text("ONLY_A=1\nSHARED=2\nOTHER=3\n")
    dotenv.chmod(0o644)
    added = edit(path, "accounts", "add", "d", "--provider", "anthropic", "--api-key-stdin",
                 stdin="sk-d\n")
    assert added.exit_code == 0 and dotenv.stat().st_mode & 0o777 == 0o600
    assert dotenv.read_text() == "ONLY_A=1\nSHARED=2\nOTHER=3\nMITMFLARE_KEY_D=sk-d\n"
    assert edit(path, "accounts", "remove", "b", "--yes").exit_code == 0  # c still uses it
    kept = edit(path, "accounts", "remove", "a")  # no terminal, no --yes: nothing asked
    assert kept.exit_code == 0 and "Kept ONLY_A" in kept.output
    assert dotenv.read_text() == "ONLY_A=1\nSHARED=2\nOTHER=3\nMITMFLARE_KEY_D=sk-d\n"
    code, shown = in_terminal(tmp_path, "accounts", "remove", "c", answer="y\n",
                              MITMFLARE_ACCOUNTS=str(path))
    assert code == 0 and "Remove SHARED (the key only c used)" in shown, shown
    assert edit(path, "accounts", "remove", "d", "--yes").exit_code == 0
    assert dotenv.read_text() == "ONLY_A=1\nOTHER=3\n"
    assert dotenv.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(path.read_text()) == {"accounts": []}


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


def asked_and_recorded(p) -> None:
    """Send one request and wait for its own row (found by its session id). Rows are queued in
    the order requests finish, so every earlier request's row (and hourly total) is there too."""
    marker = f"cli-test-{time.time_ns()}"
    ask(p, metadata={"user_id": json.dumps({"session_id": marker})})
    p.wait_rows(1, f"select id from requests where client_session = '{marker}'")


def test_accounts_list_shows_requests_and_cost_today(running):
    p = running
    asked_and_recorded(p)
    total = p.query("select count(*) as n, sum(cost_usd) as c from requests "
                    "where account = 'key-a'")[0]
    row = json.loads(cli(p, "accounts", "list", "--json").output)[0]
    assert row["requests_today"] == total["n"]
    assert row["cost_today_usd"] == pytest.approx(total["c"], abs=1e-4)
    table = cli(p, "accounts", "list").output
    assert "key-a" in table and "requests today" in table


def test_accounts_list_says_an_expired_token_needs_a_login(tmp_path):
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text("accounts:\n  - name: max\n    provider: anthropic\n"
                        "    oauth: {from_state: true}\n")
    db = sqlite_utils.Database(tmp_path / "mitmflare.db")
    migrate(db, ANALYTICS_TABLES)
    db["accounts"].insert({"name": "max", "provider": "anthropic", "credential": "oauth",
                           "status": "available", "position": 1,
                           "token_expires_at": retention.cutoff(1)})  # yesterday
    listed = edit(accounts, "accounts", "list", "--json", MITMFLARE_DB=str(tmp_path / "mitmflare.db"))
    (row,) = json.loads(listed.output)
    assert row["status"] == "token expired — run `mitmflare accounts login max`"
    table = edit(accounts, "accounts", "list", MITMFLARE_DB=str(tmp_path / "mitmflare.db"))
    assert "(expired)" in table.output and "in 0 min" not in table.output


@pytest.mark.parametrize(("amount", "shown"), [
    (0, "$0.00"), (0.004, "$0.004"), (0.0001, "$0.0001"), (0.0151234, "$0.0151"),
    (0.5, "$0.50"), (12.345, "$12.35"), (1250, "$1,250.00")])
def test_amounts_below_a_cent_keep_their_digits(amount, shown):
    assert usd(amount) == shown


def test_users_list_shows_a_cap_below_a_cent(tmp_path):
    state = str(tmp_path / "state.db")
    assert edit(tmp_path / "a.yaml", "users", "add", "eve", "--daily-cap", "0.004",
                "--monthly-cap", "0.25", MITMFLARE_STATE=state).exit_code == 0
    listed = edit(tmp_path / "a.yaml", "users", "list", MITMFLARE_STATE=state).output
    assert "$0.004" in listed and "$0.25" in listed and "$0.00 " not in listed


def test_stats_match_the_rows_by_account_and_model(running):
    p = running
    asked_and_recorded(p)
    rows = p.query("select * from requests")
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
    refused = cli(p, "prune", "--older-than", "30d")  # most rows, no terminal, no --yes
    assert refused.exit_code == 1 and "add --yes" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    code, shown = in_terminal(ROOT, "prune", "--older-than", "30d", answer="n\n",
                              MITMFLARE_DB=str(p.db))
    assert code == 1 and "more than half" in shown and "nothing deleted" in shown, shown
    assert p.query("select count(*) as n from requests where account = 'old'")[0]["n"] == 5000
    done = cli(p, "prune", "--older-than", "30d", "--yes")
    assert done.exit_code == 0 and "5,000 requests" in done.output
    assert p.query("select count(*) as n from requests where account = 'old'")[0]["n"] == 0
    assert p.query("select sum(requests) as n from usage_hourly where account = 'old'")[0]["n"] == 5000
    assert p.query("select count(*) as n from requests where account = 'key-a'")[0]["n"] > 0
    assert "vacuumed" in cli(p, "vacuum").output


@pytest.mark.parametrize(("text", "seconds"), [("90min", 5400), ("12h", 43200),
                                               ("30d", 2592000), ("2w", 1209600)])
def test_spans_take_unambiguous_units(text, seconds):
    assert span_seconds(text) == seconds


def test_a_span_in_m_is_refused_naming_the_units(tmp_path):
    result = edit(tmp_path / "a.yaml", "prune", "--older-than", "1m", MITMFLARE_DB="x.db")
    assert result.exit_code == 1
    assert "m could mean minutes or months" in result.output and "90min, 12h, 30d" in result.output


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
