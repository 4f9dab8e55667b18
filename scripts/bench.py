#!/usr/bin/env python3
"""Overhead benchmark: the simulated upstream direct, behind a bare mitmdump, and behind
mitmflare (passing Anthropic Messages through, and converting them for an OpenAI-compatible
account), measured side by side in one run.

    .venv/bin/python scripts/bench.py [--requests 300] [--concurrency 1,8] [--rounds 3]
                                      [--soak 10000] [--payloads] [--json]

For each of JSON and SSE answers and each concurrency, the targets take turns in every
round (direct, bare, mitmflare, converted, then the next round), so drifts of the machine hit
all alike. ``converted`` is the same mitmflare on its compatibility route, served by an
``openai-compatible`` account: the request is converted to Chat Completions and every
upstream chunk back to Anthropic events. Printed per target: p50 / p90 / p99 latency and
time to first byte (ms), requests/s, the added delay per SSE chunk (ms), and the ratio to
bare. Then the proxies' RSS before and after, an RSS soak over ``--soak`` streamed requests,
and the database writer's rate. Exit status 1 when a target below is missed:

* p50 mitmflare / bare <= 1.15 at concurrency 1, JSON and SSE
* throughput mitmflare >= 0.85 x bare at the highest concurrency
* added delay per SSE chunk < 1 ms, passed through and converted
* RSS growth < 20 MB over the soak
* the writer sustains >= 5,000 rows/s
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BARE_ADDON = '''
def responseheaders(flow):
    if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
        flow.response.stream = True
'''
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64,
        "messages": [{"role": "user", "content": "benchmark " * 50}]}
SSE_CHUNK_DELAY_MS = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Sample:
    latency_ms: float
    ttfb_ms: float
    chunk_gaps_ms: list[float] = field(default_factory=list)


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0

    def pct(self, attr: str, q: float) -> float:
        values = sorted(getattr(s, attr) for s in self.samples)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    @property
    def rps(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else float("nan")

    @property
    def chunk_gap_ms(self) -> float:
        gaps = [g for s in self.samples for g in s.chunk_gaps_ms]
        return statistics.median(gaps) if gaps else float("nan")


async def one(client: httpx.AsyncClient, url: str, sse: bool) -> Sample:
    url, _, model = url.partition("#")  # "#model" asks for another model
    body = {**BODY, "stream": sse, **({"model": model} if model else {})}
    start = time.perf_counter()
    first = None
    arrivals = []
    async with client.stream("POST", url + "/v1/messages", json=body,
                             headers={"x-api-key": "bench-client"}) as response:
        async for chunk in response.aiter_raw():
            now = time.perf_counter()
            first = first or now
            if sse:
                arrivals.extend([now] * chunk.count(b"\n\n"))
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}")
    end = time.perf_counter()
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    return Sample((end - start) * 1000, ((first or end) - start) * 1000, gaps)


async def run_load(url: str, sse: bool, requests: int, concurrency: int, result: Result,
                   progress) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
        await one(client, url, sse)  # warm the connections
        queue = iter(range(requests))
        start = time.perf_counter()

        async def worker() -> None:
            for _ in queue:
                result.samples.append(await one(client, url, sse))
                progress()

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        result.seconds += time.perf_counter() - start


class Progress:
    """A progress bar on stderr, only when stderr is a terminal (never in logs)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done = total, 0
        self.quiet = quiet or not sys.stderr.isatty()

    def __call__(self) -> None:
        self.done += 1
        if not self.quiet and (self.done % 20 == 0 or self.done == self.total):
            width = 40
            filled = width * self.done // self.total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total} requests")
            sys.stderr.flush()
            if self.done == self.total:
                sys.stderr.write("\n")


def writer_rate(rows: int = 50_000) -> float:
    """Rows/s the database writer inserts (with cost computation and the hourly rollup)."""
    from mitmflare.writer import DatabaseWriter

    with tempfile.TemporaryDirectory() as folder:
        writer = DatabaseWriter(f"{folder}/a.db", f"{folder}/s.db")
        writer.start()
        writer.ready.wait(10)
        start = time.perf_counter()
        for i in range(rows):
            writer.put("request", {
                "id": f"w{i}", "started_at": "2026-11-21T20:00:00.000Z", "provider": "anthropic",
                "account": f"acct-{i % 4}", "model": "claude-sonnet-4-6", "status": 200,
                "streamed": 1, "duration_ms": 812.5, "ttfb_ms": 91.0, "input_tokens": 1200,
                "output_tokens": 300, "cache_read_input_tokens": 40_000,
                "cache_creation_input_tokens": 0, "attempts": 1, "failover": 0})
        writer.flush(120)
        elapsed = time.perf_counter() - start
        writer.stop()
    return rows / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="per target, kind and round")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soak", type=int, default=10_000, help="streamed requests (0: skip)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--payloads", action="store_true",
                        help="add a mitmflare with flare_payloads=all (cost of payload capture)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="mitmflare-bench-"))
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str], log: str) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=(tmp / log).open("wb"), stderr=subprocess.STDOUT,
                                cwd=tmp)
        procs.append(proc)
        return proc

    try:
        sim_port, bare_port, flare_port = free_port(), free_port(), free_port()
        spawn([str(BIN / "python"), "-m", "mitmflare.simulator", "--port", str(sim_port),
               "--chunk-delay-ms", str(SSE_CHUNK_DELAY_MS)], "sim.log")
        sim = f"http://127.0.0.1:{sim_port}"
        wait_http(sim + "/v1/models")
        (tmp / "bare.py").write_text(BARE_ADDON)
        (tmp / "accounts.yaml").write_text(
            "accounts:\n"
            f"  - {{name: bench-a, provider: anthropic, api_key: sk-ant-api03-A, base_url: {sim}}}\n"
            f"  - {{name: bench-b, provider: anthropic, api_key: sk-ant-api03-B, priority: 1, "
            f"base_url: {sim}}}\n"
            f"  - {{name: bench-conv, provider: openai-compatible, api_key: sk-conv, priority: 2, "
            f"base_url: {sim}/v1, models: {{sonnet: gpt-bench}}}}\n")
        quiet = ["-q", "--set", "connection_strategy=lazy"]
        bare = spawn([str(BIN / "mitmdump"), *quiet, "-s", str(tmp / "bare.py"), "--mode",
                      f"reverse:{sim}@127.0.0.1:{bare_port}"], "bare.log")
        def mitmflare(name: str, port: int, *options: str) -> subprocess.Popen:
            sets = [f"flare_accounts={tmp / 'accounts.yaml'}", f"flare_db={tmp / name}.db",
                    f"flare_state={tmp / name}-state.db", *options]
            return spawn([str(BIN / "mitmdump"), *quiet, "-s", str(ROOT / "addons" / "bundle.py"),
                          "--mode", f"reverse:https://api.anthropic.com@127.0.0.1:{port}",
                          *[a for s in sets for a in ("--set", s)]], f"{name}.log")

        flare = mitmflare("mitmflare", flare_port)
        targets = {"direct": sim, "bare": f"http://127.0.0.1:{bare_port}",
                   "mitmflare": f"http://127.0.0.1:{flare_port}",
                   "converted": f"http://127.0.0.1:{flare_port}/v1/mitmflare"
                                "#openai-compatible/claude-sonnet-4-6"}
        if args.payloads:
            payload_port = free_port()
            mitmflare("payloads", payload_port, "flare_payloads=all")
            targets["payloads"] = f"http://127.0.0.1:{payload_port}"
            wait_http(targets["payloads"] + "/health")
        wait_http(targets["bare"] + "/v1/models")
        wait_http(targets["mitmflare"] + "/health")
        rss_start = {"bare": rss_mb(bare.pid), "mitmflare": rss_mb(flare.pid)}

        results: dict[tuple[str, int, str], Result] = {}
        total = 2 * len(levels) * args.rounds * len(targets) * args.requests
        progress = Progress(total, args.json)
        for kind in ("json", "sse"):
            for level in levels:
                for _ in range(args.rounds):
                    for name, url in targets.items():
                        result = results.setdefault((kind, level, name), Result())
                        asyncio.run(run_load(url, kind == "sse", args.requests, level, result,
                                             progress))
        rss_after = {"bare": rss_mb(bare.pid), "mitmflare": rss_mb(flare.pid)}

        soak = None
        if args.soak:
            before = rss_mb(flare.pid)
            soak_result = Result()
            asyncio.run(run_load(targets["mitmflare"], True, args.soak, 8, soak_result,
                                 Progress(args.soak, args.json)))
            soak = {"requests": args.soak, "rss_before_mb": before,
                    "rss_after_mb": rss_mb(flare.pid)}
        rate = writer_rate()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    growth = {name: db_growth(tmp / f"{name}.db") for name in ("mitmflare", "payloads")
              if (tmp / f"{name}.db").exists()}
    return report(results, levels, rss_start, rss_after, soak, rate, growth, args.json)


def db_growth(path: Path) -> float:
    """Bytes of the analytics database per 1,000 recorded requests (after the proxy closed
    it, so the WAL is checkpointed)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("select count(*) from requests").fetchone()[0]
    finally:
        conn.close()
    size = path.stat().st_size + (path.with_name(path.name + "-wal").stat().st_size
                                  if path.with_name(path.name + "-wal").exists() else 0)
    return size / max(rows, 1) * 1000


def report(results, levels, rss_start, rss_after, soak, rate, growth, as_json: bool) -> int:
    figures = []
    for (kind, level, name), r in results.items():
        figures.append({"kind": kind, "concurrency": level, "target": name,
                        "requests": len(r.samples), "rps": round(r.rps, 1),
                        **{f"{a}_p{int(q * 100)}": round(r.pct(a, q), 3)
                           for a in ("latency_ms", "ttfb_ms") for q in (0.5, 0.9, 0.99)},
                        "sse_chunk_gap_ms": round(r.chunk_gap_ms, 3) if kind == "sse" else None})
    by = {(f["kind"], f["concurrency"], f["target"]): f for f in figures}
    checks = []

    def check(label: str, value: float, ok: bool) -> None:
        checks.append({"check": label, "value": round(value, 3), "ok": ok})

    for kind in ("json", "sse"):
        if 1 in levels:
            ratio = by[(kind, 1, "mitmflare")]["latency_ms_p50"] / by[(kind, 1, "bare")]["latency_ms_p50"]
            check(f"{kind} p50 mitmflare/bare at concurrency 1 <= 1.15", ratio, ratio <= 1.15)
        top = max(levels)
        ratio = by[(kind, top, "mitmflare")]["rps"] / by[(kind, top, "bare")]["rps"]
        check(f"{kind} throughput mitmflare/bare at concurrency {top} >= 0.85", ratio, ratio >= 0.85)
    for target in ("mitmflare", "converted"):
        added = by[("sse", levels[0], target)]["sse_chunk_gap_ms"] - \
            by[("sse", levels[0], "direct")]["sse_chunk_gap_ms"]
        check(f"added delay per SSE chunk, {target}, < 1 ms", added, added < 1.0)
    if soak:
        growth = soak["rss_after_mb"] - soak["rss_before_mb"]
        check(f"RSS growth over {soak['requests']} streamed requests < 20 MB", growth, growth < 20)
    check("database writer >= 5000 rows/s", rate, rate >= 5000)
    out = {"figures": figures, "rss_mb": {"start": rss_start, "after_load": rss_after},
           "soak": soak, "writer_rows_per_s": round(rate), "checks": checks,
           "db_bytes_per_1000_requests": {k: round(v) for k, v in growth.items()},
           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        head = (f"{'kind':<5} {'c':>2} {'target':<10} {'p50':>7} {'p90':>7} {'p99':>7} "
                f"{'ttfb50':>7} {'ttfb99':>7} {'req/s':>7} {'gap':>6} {'x bare':>7}")
        print(head)
        for f in figures:
            bare = by[(f["kind"], f["concurrency"], "bare")]
            ratio = f["latency_ms_p50"] / bare["latency_ms_p50"]
            gap = f"{f['sse_chunk_gap_ms']:6.2f}" if f["sse_chunk_gap_ms"] is not None else "     -"
            print(f"{f['kind']:<5} {f['concurrency']:>2} {f['target']:<10} "
                  f"{f['latency_ms_p50']:7.2f} {f['latency_ms_p90']:7.2f} {f['latency_ms_p99']:7.2f} "
                  f"{f['ttfb_ms_p50']:7.2f} {f['ttfb_ms_p99']:7.2f} {f['rps']:7.1f} {gap} {ratio:7.2f}")
        print(f"RSS MB: start {rss_start}, after load {rss_after}")
        if soak:
            print(f"soak: {soak}")
        print(f"writer: {rate:,.0f} rows/s")
        for name, size in growth.items():
            print(f"database growth ({name}): {size / 1e6:.2f} MB per 1,000 requests")
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['value']}")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
