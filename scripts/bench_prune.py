#!/usr/bin/env python3
"""Prune under load: does ``mitmflare prune`` on a large database slow the proxy down?

    .venv/bin/python scripts/bench_prune.py [--rows 1000000] [--days 60] [--older-than 30d]

Fills a synthetic analytics database (``--rows`` over ``--days``, as ``bench_dashboard.py``
does), starts the simulated upstream and a mitmflare on that database, measures JSON requests
at concurrency 1 (p50 / p99, ms) without a prune, then again while ``mitmflare prune`` deletes
every row older than ``--older-than``. Exit status 1 when the p99 during the prune is more
than twice the p99 without it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from bench import BIN, ROOT, Result, free_port, one, wait_http
from bench_dashboard import fill


async def measure(url: str, seconds: float | None, until: subprocess.Popen | None) -> Result:
    """JSON requests one after another for ``seconds``, or until ``until`` exits."""
    result = Result()
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        await one(client, url, False)
        start = time.perf_counter()
        while (until.poll() is None) if until else (time.perf_counter() - start < seconds):
            result.samples.append(await one(client, url, False))
        result.seconds = time.perf_counter() - start
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--older-than", default="30d")
    parser.add_argument("--baseline-s", type=float, default=20.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mitmflare-prune-"))
    db = tmp / "mitmflare.db"
    fill(db, args.rows, args.days)
    procs = []
    try:
        sim_port, port = free_port(), free_port()
        procs.append(subprocess.Popen([str(BIN / "python"), "-m", "mitmflare.demo.simulator",
                                       "--port", str(sim_port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{sim_port}/v1/models")
        (tmp / "accounts.yaml").write_text(
            f"accounts:\n  - {{name: a, provider: anthropic, api_key: sk-ant-api03-A, base_url: "
            f"http://127.0.0.1:{sim_port}}}\n")
        procs.append(subprocess.Popen(
            [str(BIN / "mitmdump"), "-q", "-s", str(ROOT / "addons" / "bundle.py"), "--mode",
             f"reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}", "--set",
             f"flare_accounts={tmp / 'accounts.yaml'}", "--set", f"flare_db={db}", "--set",
             f"flare_state={tmp / 'state.db'}"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", timeout=120)
        quiet = asyncio.run(measure(url, args.baseline_s, None))
        started = time.perf_counter()
        prune = subprocess.Popen([str(BIN / "mitmflare"), "prune", "--older-than",
                                  args.older_than, "--yes", "--db", str(db)], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        during = asyncio.run(measure(url, None, prune))
        took = time.perf_counter() - started
        print(prune.communicate()[0].strip())
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(30)
    ratio = during.pct("latency_ms", 0.99) / quiet.pct("latency_ms", 0.99)
    print(f"prune of a {args.rows:,}-row database took {took:.1f} s")
    for name, r in (("without prune", quiet), ("during prune", during)):
        print(f"{name:>14}: {len(r.samples):5d} requests, p50 {r.pct('latency_ms', 0.5):6.2f} ms,"
              f" p99 {r.pct('latency_ms', 0.99):6.2f} ms")
    ok = ratio <= 2.0
    print(f"{'PASS' if ok else 'FAIL'}  p99 during prune / without <= 2: {ratio:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
