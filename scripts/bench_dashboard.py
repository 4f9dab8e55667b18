#!/usr/bin/env python3
"""Dashboard query benchmark: fill a synthetic analytics database, then time every chart and
canned query of ``datasette-metadata.yml`` and show the plan SQLite chose for it.

    .venv/bin/python scripts/bench_dashboard.py [--rows 1000000] [--db bench.db] [--days 30]

The rows are spread over ``--days`` days ending now, over 6 accounts and 6 models. Chart
queries run with the overview dashboard's filters set to the last 7 days; canned queries with
their defaults. Exit status 1 when any query is slower than ``--limit-ms`` (500).
"""

from __future__ import annotations

import argparse
import random
import re
import sqlite3
import sys
import time
import uuid
from pathlib import Path

import yaml
from datasette_dashboards import replace_opts_in_query

from mitmflare.storage import schema
from mitmflare.storage.writer import open_analytics_db

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = ["max-1", "max-2", "max-3", "key-team", "key-ci", "openai-main"]
MODELS = ["claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-4-5", "claude-sonnet-5-5",
          "gpt-4o", "gpt-5-mini"]


def fill(path: Path, rows: int, days: float) -> None:
    if path.exists():
        path.unlink()
    db = open_analytics_db(str(path))
    now = time.time()
    start = now - days * 86400
    rng = random.Random(7)
    sessions = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2000)]
    batch = []
    conn = db.conn
    t0 = time.perf_counter()
    for i in range(rows):
        ts = start + (now - start) * i / rows
        status = rng.choices([200, 429, 529, 400], [0.95, 0.03, 0.01, 0.01])[0]
        duration = rng.lognormvariate(8, 0.8)
        batch.append((
            f"{i:08x}-bench", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".000Z",
            "anthropic", rng.choice(ACCOUNTS), "POST", "/v1/messages", rng.choice(MODELS), status,
            rng.random() < 0.7, duration, duration * rng.uniform(0.05, 0.3),
            rng.randint(5, 5000), rng.randint(1, 2000), rng.choice([0, 0, 20000, 80000]),
            rng.choice([0, 0, 0, 3000]), rng.random() * 0.05, rng.choice(sessions),
            "claude-cli/2.1.330", None if status == 200 else f"{status} error", 1,
            int(status != 200)))
        if len(batch) == 20000:
            conn.executemany(INSERT, batch)
            conn.commit()
            batch.clear()
    if batch:
        conn.executemany(INSERT, batch)
        conn.commit()
    conn.executemany("insert into accounts (name, provider, credential, priority, status)"
                     " values (?, ?, ?, ?, 'available')",
                     [(a, "openai" if a.startswith("openai") else "anthropic",
                       "oauth" if a.startswith("max") else "api_key", i)
                      for i, a in enumerate(ACCOUNTS)])
    with conn:
        schema.rebuild_rollup(conn)
    conn.execute("analyze")
    conn.commit()
    conn.close()
    print(f"filled {rows:,} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


INSERT = """insert into requests (id, started_at, provider, account, method, path, model, status,
  streamed, duration_ms, ttfb_ms, input_tokens, output_tokens, cache_read_input_tokens,
  cache_creation_input_tokens, cost_usd, client_session, user_agent, error, attempts, failover)
  values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""


def queries() -> list[tuple[str, str, dict]]:
    meta = yaml.safe_load((ROOT / "datasette-metadata.yml").read_text())
    out = []
    week_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 7 * 86400))
    filters = {"date_start": week_ago, "date_end": "", "account": ""}
    for chart_id, chart in meta["plugins"]["datasette-dashboards"]["overview"]["charts"].items():
        if "query" not in chart:  # markdown cards the overview's script fills
            continue
        sql = replace_opts_in_query(chart["query"], filters)
        out.append((f"chart {chart_id}", sql, {k: v for k, v in filters.items() if v}))
    for name, query in meta["databases"]["mitmflare"]["queries"].items():
        out.append((f"query {name}", query["sql"], {p: "" for p in query.get("params", [])}))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", default="bench-dashboard.db")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--limit-ms", type=float, default=500.0)
    parser.add_argument("--reuse", action="store_true", help="keep an existing --db")
    args = parser.parse_args()
    path = Path(args.db)
    if not (args.reuse and path.exists()):
        fill(path, args.rows, args.days)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    slow = 0
    print(f"{'query':<38} {'ms':>8}  plan")
    for name, sql, params in queries():
        plan = conn.execute(f"explain query plan {sql}", params).fetchall()
        indexes = sorted({m.group(1) for row in plan
                          for m in [re.search(r"USING (?:COVERING )?INDEX (\w+)", row[3])] if m})
        scans = [row[3] for row in plan if row[3].startswith("SCAN") and "INDEX" not in row[3]]
        t0 = time.perf_counter()
        conn.execute(sql, params).fetchall()
        ms = (time.perf_counter() - t0) * 1000
        slow += ms > args.limit_ms
        summary = ", ".join(indexes) or "no index"
        if scans:
            summary += "; " + "; ".join(scans[:2])
        print(f"{name:<38} {ms:8.1f}  {summary}{'  <-- SLOW' if ms > args.limit_ms else ''}")
    print(f"{slow} queries over {args.limit_ms:.0f} ms")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
