#!/usr/bin/env python3
"""Overhead benchmark: the simulated upstream direct, behind a bare mitmdump, behind
mitmflare (passing Anthropic Messages through, and converting them for an OpenAI-compatible
account) and, with ``--peer better-ccflare``, behind the product mitmflare replaces, measured
side by side in one run.

    ./scripts/bench [--requests 200] [--concurrency 1,8] [--rounds 3] [--soak 10000]
                    [--payloads] [--redis] [--peer better-ccflare] [--json]
                    [--sizes] [--size-rounds 3] [--size-scale 1] [--hold-streams 500]
                    [--hold-s 30]

For each of JSON and SSE answers and each concurrency, the targets take turns in every
round (direct, bare, mitmflare, converted, [payloads], [better-ccflare], then the next round),
so drifts of the machine hit all alike. ``converted`` is the same mitmflare on its
compatibility route, served by an ``openai-compatible`` account. ``--peer better-ccflare``
installs better-ccflare 3.5.4 with npm into ``.tools/peer`` (gitignored) on first use, starts
it with a temporary HOME and database and one ``anthropic-compatible`` account pointed at the
simulator (added through its REST API), and stops it afterwards. Printed per target: p50 /
p90 / p99 latency and time to first byte (ms), requests/s, the added delay per SSE chunk (ms);
then each ratio per round as min / median / max; RSS before and after, an RSS soak over
``--soak`` streamed requests (RSS counts the proxy and its writer process), the database
writer process's rate (rows with varied usage, through its pipe) and the
database's growth. Progress shows only on a terminal. Exit status 1 when a target below is
missed (ratios: the median of the rounds):

* p50 mitmflare / bare <= 1.10 and p99 <= 1.5 at concurrency 1, JSON and SSE
* throughput at the highest concurrency >= 0.90 x bare and >= 1.0 x better-ccflare
* added delay per SSE chunk < 1 ms, passed through and converted
* added delay per SSE event < 0.1 ms converting an Anthropic stream for an OpenAI client
  (Chat Completions and Responses; timed in-process, see ``conversion_ms_per_event``; the
  ``converted-openai`` column shows the same requests end to end through the compatibility
  route's ``anthropic/`` prefix)
* RSS growth < 20 MB over the soak
* the writer sustains >= 10,000 rows/s
* with ``--redis``: p50 at concurrency 1 within +0.3 ms of mitmflare without Redis, throughput
  >= 0.95 x, and <= 2 KB of Redis traffic per request (``scripts/bench_redis.py``; it also
  prints the cooldown propagation time between two workers)
* ``mitmflare --help`` and ``mitmflare accounts list`` take <= 0.3 s (median of
  ``--cli-rounds`` runs each, timed first, before anything else is started)

``--cli-only`` times just the two commands. ``--sizes`` runs only the part at Claude Code's
real sizes (``scripts/bench_sizes.py``: 100 KB-10 MB requests, a 2,000-event thinking stream,
``--hold-streams`` streams held open), which the default run also ends with (``--size-rounds
0`` skips it); its targets:

* p50 added over bare mitmdump at concurrency 1: <= 0.5 ms at 100 KB, <= 2 ms at 1 MB,
  <= 10 % at 10 MB, and at or below better-ccflare's; stream time to first byte within 0.5 ms
  of bare's
* peak RSS per in-flight MB of body <= 2 at 10 MB; RSS after the 10 MB rounds within 20 MB of
  the start
* the thinking stream arrives byte-exact, < 1 ms added per event
* open streams: <= 100 KB of RSS each, event-loop lag p99 <= 5 ms

``--cache-day`` runs a simulated day of prompt-cache economics instead
(``scripts/bench_cache_day.py``; its own options follow).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
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

import bench_redis
import bench_sizes
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


def stop(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """Interrupt every process (SIGINT: mitmdump writes its last rows), then wait for each
    up to ``timeout`` s and kill it if it has not ended by then."""
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its child processes (mitmflare's writer process), MB."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_mb(int(child))
    return total


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
    if url.startswith(OPENAI_CHAT):
        return await one_openai(client, url[len(OPENAI_CHAT):], sse)
    url, _, model = url.partition("#")  # "#model" asks for another model
    body = {**BODY, "stream": sse, **({"model": model} if model else {})}
    return await timed(client, url + "/v1/messages", body, {"x-api-key": "bench-client"}, sse)


async def timed(client: httpx.AsyncClient, url: str, body: dict, headers: dict[str, str],
                sse: bool) -> Sample:
    """POST ``body`` to ``url``: latency, time to first byte and (``sse``) the gaps between
    the events' arrivals, ms."""
    start = time.perf_counter()
    first = None
    arrivals = []
    async with client.stream("POST", url, json=body, headers=headers) as response:
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
        # open every connection before the clock starts: the rounds are short (200 requests
        # take ~0.3 s at c=8), and connection set-up would otherwise land in them unevenly
        await asyncio.gather(*[one(client, url, sse) for _ in range(concurrency)])
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
    """Rows/s the database writer process takes from the proxy's side and writes (pickled
    over its pipe, usage parsed, cost computed, hourly rollup), on rows whose token counts
    vary as real traffic's do (no two usages alike)."""
    from mitmflare.storage.writer_process import WriterProcess

    models = ["claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-4-5", "gpt-4o",
              "claude-sonnet-4-5"]  # the last one has long-context tiers
    with tempfile.TemporaryDirectory() as folder:
        writer = WriterProcess(f"{folder}/a.db", f"{folder}/s.db")
        writer.start()
        writer.ready.wait(30)
        start = time.perf_counter()
        for i in range(rows):
            writer.put("request", {
                "id": f"w{i}", "started_at": "2026-11-21T20:00:00.000Z", "provider": "anthropic",
                "account": f"acct-{i % 4}", "model": models[i % 5], "status": 200,
                "streamed": 1, "duration_ms": 812.5, "ttfb_ms": 91.0, "input_tokens": 1200 + i * 7,
                "output_tokens": 300 + i % 977, "cache_read_input_tokens": 40_000 + i % 5003,
                "cache_creation_input_tokens": i % 7 * 100, "attempts": 1, "failover": 0})
        writer.flush(300)
        elapsed = time.perf_counter() - start
        lost = writer.write_errors
        writer.stop()
        conn = sqlite3.connect(f"{folder}/a.db")
        written = conn.execute("select count(*) from requests").fetchone()[0]
        conn.close()
    if written != rows or lost:
        raise RuntimeError(f"writer bench: {written} of {rows} rows written, {lost} errors")
    return rows / elapsed


PEER_VERSION = "better-ccflare@3.5.4"
PEER_DIR = ROOT / ".tools" / "peer"
PEER_BIN = PEER_DIR / "node_modules" / "better-ccflare" / "dist" / "better-ccflare"


def peer_binary() -> Path | None:
    """better-ccflare's binary, installed with npm into .tools/peer on first use; None (with
    a message) where npm or the registry is missing."""
    if not PEER_BIN.exists():
        if not shutil.which("npm"):
            print("--peer better-ccflare: npm is not installed; measuring without the peer",
                  file=sys.stderr)
            return None
        print(f"installing {PEER_VERSION} into {PEER_DIR} (npm)", file=sys.stderr)
        done = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund",
                               "--prefix", str(PEER_DIR), PEER_VERSION], capture_output=True,
                              text=True, timeout=600)
        if done.returncode or not PEER_BIN.exists():
            print(f"--peer better-ccflare: npm install failed: {done.stderr.strip()[-300:]}",
                  file=sys.stderr)
            return None
    PEER_BIN.chmod(0o755)
    return PEER_BIN


def start_peer(binary: Path, home: Path, port: int, sim: str, spawn) -> str:
    """Start better-ccflare (temporary HOME and database) with one anthropic-compatible
    account pointed at the simulator, added through its REST API; returns its URL."""
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.Popen([str(binary), "--serve", "--port", str(port)], cwd=home, env=env,
                            stdout=(home / "peer.log").open("wb"), stderr=subprocess.STDOUT)
    spawn(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/accounts", timeout=60)
    added = httpx.post(url + "/api/accounts/anthropic-compatible", timeout=10, json={
        "name": "bench-sim", "apiKey": "sk-ant-api03-PEER", "priority": 0,
        "customEndpoint": sim})
    added.raise_for_status()
    return url


def main() -> int:
    if "--cache-day" in sys.argv[1:]:  # dollars lost to cache misses per routing, not overhead
        import bench_cache_day
        return bench_cache_day.main([a for a in sys.argv[1:] if a != "--cache-day"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000,
                        help="JSON requests per target, concurrency and round (a round at c=1 "
                             "takes ~1.5 s: shorter ones made two runs disagree by 10-15 %%)")
    parser.add_argument("--sse-requests", type=int, default=200,
                        help="streamed requests per target, concurrency and round (~40 ms each)")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; each ratio is reported as min/median/max")
    parser.add_argument("--soak", type=int, default=10_000, help="streamed requests (0: skip)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--save", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--payloads", action="store_true",
                        help="add a mitmflare with flare_payloads=all (cost of payload capture)")
    parser.add_argument("--redis", action="store_true",
                        help="add a mitmflare with flare_redis (a real redis-server): its "
                             "cost per request, Redis work per request, cooldown propagation")
    parser.add_argument("--peer", choices=["better-ccflare"],
                        help="add the product mitmflare replaces as a column")
    parser.add_argument("--cli-rounds", type=int, default=10,
                        help="runs of each timed mitmflare command")
    parser.add_argument("--cli-only", action="store_true",
                        help="time only `mitmflare --help` and `mitmflare accounts list`")
    parser.add_argument("--sizes", action="store_true",
                        help="only the part at Claude Code's sizes (bench_sizes.py)")
    parser.add_argument("--size-rounds", type=int, default=3,
                        help="interleaved rounds of the sizes part (0: skip it)")
    parser.add_argument("--size-scale", type=float, default=1.0,
                        help="requests per size cell and round, times this (longer rounds)")
    parser.add_argument("--hold-streams", type=int, default=500,
                        help="streams held open at once (0: skip)")
    parser.add_argument("--hold-s", type=float, default=30.0,
                        help="seconds the streams are held open")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    cli = {} if args.sizes else cli_timing(args.cli_rounds)  # first: nothing else runs yet
    if args.cli_only:
        checks = cli_checks(cli)
        if args.json:
            print(json.dumps({"cli_s": cli, "checks": checks}, indent=2))
        else:
            print_cli(cli)
            for c in checks:
                print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['value']}")
        return 0 if all(c["ok"] for c in checks) else 1

    tmp = Path(tempfile.mkdtemp(prefix="mitmflare-bench-"))
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str] | subprocess.Popen, log: str = "") -> subprocess.Popen:
        proc = cmd if isinstance(cmd, subprocess.Popen) else subprocess.Popen(
            cmd, stdout=(tmp / log).open("wb"), stderr=subprocess.STDOUT, cwd=tmp)
        procs.append(proc)
        return proc

    try:
        sim_port, bare_port, flare_port = free_port(), free_port(), free_port()
        spawn([str(BIN / "python"), "-m", "mitmflare.demo.simulator", "--port", str(sim_port),
               "--chunk-delay-ms", str(SSE_CHUNK_DELAY_MS), "--forget-requests"], "sim.log")
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
        lag_ports = {"bare": free_port(), "mitmflare": free_port()}

        def lag(name: str) -> list[str]:  # the event-loop lag reader, in both alike
            return ["-s", str(ROOT / "scripts" / "bench_lag.py"),
                    "--set", f"bench_lag_port={lag_ports[name]}"]

        bare = spawn([str(BIN / "mitmdump"), *quiet, "-s", str(tmp / "bare.py"), *lag("bare"),
                      "--mode", f"reverse:{sim}@127.0.0.1:{bare_port}"], "bare.log")

        def mitmflare(name: str, port: int, *options: str) -> subprocess.Popen:
            sets = [f"flare_accounts={tmp / 'accounts.yaml'}", f"flare_db={tmp / name}.db",
                    f"flare_state={tmp / name}-state.db", *options]
            return spawn([str(BIN / "mitmdump"), *quiet, "-s", str(ROOT / "addons" / "bundle.py"),
                          *(lag(name) if name in lag_ports else []),
                          "--mode", f"reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}",
                          *[a for s in sets for a in ("--set", s)]], f"{name}.log")

        flare = mitmflare("mitmflare", flare_port)
        converted_openai = {"converted-openai": openai_target(flare_port)}
        targets = {"direct": sim, "bare": f"http://127.0.0.1:{bare_port}",
                   "mitmflare": f"http://127.0.0.1:{flare_port}",
                   "converted": f"http://127.0.0.1:{flare_port}/v1/mitmflare"
                                "#openai-compatible/claude-sonnet-4-6", **converted_openai}
        if args.payloads:
            payload_port = free_port()
            mitmflare("payloads", payload_port, "flare_payloads=all")
            targets["payloads"] = f"http://127.0.0.1:{payload_port}"
            wait_http(targets["payloads"] + "/health")
        shared = None
        if args.redis:
            redis_url = bench_redis.start_redis(tmp, free_port(), spawn)
            redis_port = free_port()
            mitmflare("redis", redis_port, f"flare_redis={redis_url}")
            targets["redis"] = f"http://127.0.0.1:{redis_port}"
            wait_http(targets["redis"] + "/health")
        binary = peer_binary() if args.peer else None
        if binary is not None:
            targets["better-ccflare"] = start_peer(binary, tmp / "peer-home", free_port(), sim,
                                                   spawn)
        wait_http(targets["bare"] + "/v1/models")
        wait_http(targets["mitmflare"] + "/health")
        rss_start = {"bare": rss_mb(bare.pid), "mitmflare": rss_mb(flare.pid)}

        sized = None
        if args.sizes or args.size_rounds:
            sized = run_sizes(args, targets, sim, {"bare": bare.pid, "mitmflare": flare.pid},
                              lag_ports)
        if args.sizes:
            return report_sizes(sized, args.json, args.save)

        traffic = bench_redis.counters(redis_url) if args.redis else None
        rounds: dict[tuple[str, int, str], list[Result]] = {}
        counts = {"json": args.requests, "sse": args.sse_requests}
        total = len(levels) * args.rounds * len(targets) * sum(counts.values())
        progress = Progress(total, args.json)
        for kind in ("json", "sse"):
            for level in levels:
                for _ in range(args.rounds):
                    for name, url in targets.items():
                        result = Result()
                        asyncio.run(run_load(url, kind == "sse", counts[kind], level, result,
                                             progress))
                        rounds.setdefault((kind, level, name), []).append(result)
        rss_after = {"bare": rss_mb(bare.pid), "mitmflare": rss_mb(flare.pid)}
        if args.redis:
            sent = sum(len(r.samples) for (_, _, name), rs in rounds.items() if name == "redis"
                       for r in rs)
            shared = {"per_request": bench_redis.per_request(
                traffic, bench_redis.counters(redis_url), sent)}
            second = free_port()
            bench_redis.start_second_worker(mitmflare, second, redis_url)
            wait_http(f"http://127.0.0.1:{second}/health")
            shared["propagation_ms"] = bench_redis.summary(bench_redis.propagation_ms(
                sim, targets["redis"], f"http://127.0.0.1:{second}"))

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
        stop(procs)

    growth = {name: db_growth(tmp / f"{name}.db") for name in ("mitmflare", "payloads")
              if (tmp / f"{name}.db").exists()}
    return report(rounds, levels, rss_start, rss_after, soak, rate, growth, cli, args.json,
                  shared, sized, args.save)


def run_sizes(args, targets: dict[str, str], sim: str, pids: dict[str, int],
              lag_ports: dict[str, int]) -> dict:
    """The ``--sizes`` part (``bench_sizes``) on direct, bare, mitmflare [, better-ccflare]."""
    chosen = {n: u for n, u in targets.items()
              if n in ("direct", "bare", "mitmflare", "better-ccflare")}

    def progress(text: str) -> None:
        if not args.json and sys.stderr.isatty():
            sys.stderr.write(f"\r{text:<60}")
            sys.stderr.flush()

    result = {}
    if args.hold_streams:  # first, on fresh processes: RSS per stream is not hidden by frees
        result["hold"] = bench_sizes.hold({n: u for n, u in chosen.items() if n != "direct"},
                                          pids, lag_ports, rss_mb, args.hold_streams,
                                          args.hold_s)
    result["thinking"] = bench_sizes.thinking(chosen, sim, max(args.size_rounds, 1))
    result["sizes"] = bench_sizes.sizes(chosen, pids, rss_mb, max(args.size_rounds, 1),
                                        args.size_scale, progress)
    result["summary"] = bench_sizes.summarize(result)
    return result


def report_sizes(sized: dict, as_json: bool, save: Path | None = None) -> int:
    """Report of ``--sizes`` alone; exit status 1 when one of its targets is missed."""
    checks: list[dict] = []
    bench_sizes.checks(sized, sized["summary"], lambda label, value, ok: checks.append(
        {"check": label, "value": round(value, 3), "ok": bool(ok)}))
    if save is not None:
        save.write_text(json.dumps({**sized, "checks": checks}, indent=2))
    if as_json:
        print(json.dumps({**sized, "checks": checks}, indent=2))
    else:
        bench_sizes.print_report(sized, sized["summary"])
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['value']}")
    return 0 if all(c["ok"] for c in checks) else 1


# -- converted-OpenAI column: OpenAI SDK-style SSE served by an Anthropic account -------------
OPENAI_CHAT = "openai-chat:"  # a target URL so marked is sent Chat Completions requests
OPENAI_BODY = {"model": "anthropic/claude-sonnet-4-6", "max_completion_tokens": 64,
               "messages": [{"role": "user", "content": "benchmark " * 50}]}
CONVERSION_LIMIT_MS = 0.1  # added delay per SSE event of a converted OpenAI stream


def openai_target(port: int) -> str:
    """The ``converted-openai`` target: Chat Completions on mitmflare's compatibility route,
    whose ``anthropic/`` model prefix picks the Anthropic accounts (converted both ways)."""
    return f"{OPENAI_CHAT}http://127.0.0.1:{port}/v1/mitmflare"


async def one_openai(client: httpx.AsyncClient, url: str, sse: bool) -> Sample:
    """One Chat Completions request, as :func:`one` (SSE: the usage chunk asked for, as the
    ``openai`` SDK does with ``stream_options``)."""
    body = {**OPENAI_BODY, **({"stream": True, "stream_options": {"include_usage": True}}
                               if sse else {})}
    return await timed(client, url + "/v1/chat/completions", body,
                       {"authorization": "Bearer bench-client"}, sse)


def conversion_ms_per_event(path: str, streams: int = 300) -> float:
    """Median time (ms) the conversion adds per upstream SSE event of an Anthropic stream
    converted for an OpenAI client at ``path`` (``/v1/chat/completions`` or
    ``/v1/responses``): each of ``streams`` simulated answers (17 events, the simulator's) is
    fed event by event, as mitmproxy hands the chunks over, through a new converter. The
    end-to-end ``converted-openai`` column cannot show it: the conversion sends fewer events
    than it gets, which changes the gaps between them."""
    sys.path.insert(0, str(ROOT / "addons"))
    from mitmflare.demo.simulator import DEFAULT_USAGE, _anthropic_events
    from mitmflare.providers.convert import stream_converter

    events = _anthropic_events("claude-sonnet-4-6", DEFAULT_USAGE, {})
    body = {**OPENAI_BODY, "stream": True, "stream_options": {"include_usage": True}}
    per_event = []
    for _ in range(streams):
        feed = stream_converter(path, body, "claude-sonnet-4-6")
        start = time.perf_counter()
        for event in events:
            feed(event)
        feed(b"")
        per_event.append((time.perf_counter() - start) * 1000 / len(events))
    return statistics.median(per_event)


def conversion_checks() -> list[dict]:
    out = []
    for path in ("/v1/chat/completions", "/v1/responses"):
        value = conversion_ms_per_event(path)
        out.append({"check": f"added delay per SSE event, Anthropic stream converted for "
                             f"{path} < {CONVERSION_LIMIT_MS} ms", "value": round(value, 4),
                    "ok": value < CONVERSION_LIMIT_MS})
    return out


CLI_COMMANDS = (["--help"], ["accounts", "list"])
CLI_LIMIT_S = 0.3


def cli_timing(rounds: int) -> dict[str, dict[str, float]]:
    """Wall time (s) of each of :data:`CLI_COMMANDS` as an operator types it (the installed
    ``mitmflare`` script, in a folder with an accounts file, bytecode cached as Python does by
    default: one untimed run first), min and median of ``rounds`` runs, the commands taking
    turns."""
    folder = Path(tempfile.mkdtemp(prefix="mitmflare-cli-bench-"))
    (folder / "config").mkdir()
    shutil.copy(ROOT / "config" / "accounts.example.yaml", folder / "config" / "accounts.yaml")
    env = {k: v for k, v in os.environ.items() if k not in (
        "MITMFLARE_ACCOUNTS", "MITMFLARE_DB", "MITMFLARE_STATE", "PYTHONDONTWRITEBYTECODE")}
    times: dict[str, list[float]] = {" ".join(args): [] for args in CLI_COMMANDS}
    try:
        for n in range(rounds + 1):
            for args in CLI_COMMANDS:
                start = time.perf_counter()
                subprocess.run([str(BIN / "mitmflare"), *args], cwd=folder, env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if n:  # the first round writes the bytecode caches
                    times[" ".join(args)].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {name: {"min": round(min(t), 3), "median": round(statistics.median(t), 3)}
            for name, t in times.items()}


def cli_checks(cli: dict[str, dict[str, float]]) -> list[dict]:
    return [{"check": f"mitmflare {name} (median) <= {CLI_LIMIT_S} s", "value": t["median"],
             "ok": t["median"] <= CLI_LIMIT_S} for name, t in cli.items()]


def print_cli(cli: dict[str, dict[str, float]]) -> None:
    for name, t in cli.items():
        print(f"CLI: mitmflare {name:<14} median {t['median']:.3f} s, min {t['min']:.3f} s")


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


def merged(results: list[Result]) -> Result:
    return Result([s for r in results for s in r.samples], sum(r.seconds for r in results))


def spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


def report(rounds, levels, rss_start, rss_after, soak, rate, growth, cli, as_json: bool,
           shared: dict | None = None, sized: dict | None = None,
           save: Path | None = None) -> int:
    figures = []
    for (kind, level, name), results in rounds.items():
        r = merged(results)
        figures.append({"kind": kind, "concurrency": level, "target": name,
                        "requests": len(r.samples), "rps": round(r.rps, 1),
                        **{f"{a}_p{int(q * 100)}": round(r.pct(a, q), 3)
                           for a in ("latency_ms", "ttfb_ms") for q in (0.5, 0.9, 0.99)},
                        "sse_chunk_gap_ms": round(r.chunk_gap_ms, 3) if kind == "sse" else None})
    by = {(f["kind"], f["concurrency"], f["target"]): f for f in figures}
    top = max(levels)
    ratios: dict[str, dict[str, float]] = {}

    def ratio(label: str, kind: str, level: int, target: str, other: str, measure) -> None:
        if (kind, level, target) in rounds and (kind, level, other) in rounds:
            pairs = zip(rounds[(kind, level, target)], rounds[(kind, level, other)], strict=True)
            ratios[label] = spread([measure(a) / measure(b) for a, b in pairs])

    def p50(r: Result) -> float:
        return r.pct("latency_ms", 0.5)

    def p99(r: Result) -> float:
        return r.pct("latency_ms", 0.99)

    def rps(r: Result) -> float:
        return r.rps

    for kind in ("json", "sse"):
        if 1 in levels:
            ratio(f"{kind} c=1 p50 mitmflare/bare", kind, 1, "mitmflare", "bare", p50)
            ratio(f"{kind} c=1 p99 mitmflare/bare", kind, 1, "mitmflare", "bare", p99)
        ratio(f"{kind} c={top} req/s mitmflare/bare", kind, top, "mitmflare", "bare", rps)
        ratio(f"{kind} c={top} req/s mitmflare/better-ccflare", kind, top, "mitmflare",
              "better-ccflare", rps)
        ratio(f"{kind} c={top} req/s payloads/mitmflare", kind, top, "payloads", "mitmflare", rps)
        ratio(f"{kind} c={top} req/s redis/mitmflare", kind, top, "redis", "mitmflare", rps)
    checks = []

    def check(label: str, value: float, ok: bool) -> None:
        checks.append({"check": label, "value": round(value, 3), "ok": ok})

    limits = {"c=1 p50 mitmflare/bare": ("<=", 1.10), "c=1 p99 mitmflare/bare": ("<=", 1.5),
              f"c={top} req/s mitmflare/bare": (">=", 0.90),
              f"c={top} req/s mitmflare/better-ccflare": (">=", 1.0)}
    for label, spread_ in ratios.items():
        for suffix, (op, limit) in limits.items():
            if label.endswith(suffix):
                value = spread_["median"]
                check(f"{label} (median of rounds) {op} {limit}", value,
                      value <= limit if op == "<=" else value >= limit)
    for target in ("mitmflare", "converted"):
        if ("sse", levels[0], target) in by:
            added = by[("sse", levels[0], target)]["sse_chunk_gap_ms"] - \
                by[("sse", levels[0], "direct")]["sse_chunk_gap_ms"]
            check(f"added delay per SSE chunk, {target}, < 1 ms", added, added < 1.0)
    if soak:
        growth_mb = soak["rss_after_mb"] - soak["rss_before_mb"]
        check(f"RSS growth over {soak['requests']} streamed requests < 20 MB", growth_mb,
              growth_mb < 20)
    check("database writer >= 10000 rows/s", rate, rate >= 10_000)
    if shared is not None:
        for kind in ("json", "sse"):
            if (kind, 1, "redis") in rounds:
                added = statistics.median(p50(a) - p50(b) for a, b in zip(
                    rounds[(kind, 1, "redis")], rounds[(kind, 1, "mitmflare")], strict=True))
                check(f"{kind} c=1 p50 redis - mitmflare (median of rounds) <= 0.3 ms", added,
                      added <= 0.3)
            label = f"{kind} c={top} req/s redis/mitmflare"
            if label in ratios:
                check(f"{label} (median of rounds) >= 0.95", ratios[label]["median"],
                      ratios[label]["median"] >= 0.95)
        per = shared["per_request"]
        check("Redis bytes per request <= 2048", per["bytes"], per["bytes"] <= 2048)
    if sized is not None:
        bench_sizes.checks(sized, sized["summary"], check)
    checks += cli_checks(cli)
    checks += conversion_checks()
    out = {"sizes": sized, "figures": figures, "ratios": ratios,
           "rss_mb": {"start": rss_start, "after_load": rss_after},
           "soak": soak, "writer_rows_per_s": round(rate), "cli_s": cli, "checks": checks,
           "shared_state": shared,
           "db_bytes_per_1000_requests": {k: round(v) for k, v in growth.items()},
           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    if save is not None:
        save.write_text(json.dumps(out, indent=2))
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'kind':<5} {'c':>2} {'target':<15} {'p50':>7} {'p90':>7} {'p99':>7} "
              f"{'ttfb50':>7} {'req/s':>7} {'gap':>6} {'x bare':>7}")
        for f in figures:
            bare = by[(f["kind"], f["concurrency"], "bare")]
            gap = f"{f['sse_chunk_gap_ms']:6.2f}" if f["sse_chunk_gap_ms"] is not None else "     -"
            print(f"{f['kind']:<5} {f['concurrency']:>2} {f['target']:<15} "
                  f"{f['latency_ms_p50']:7.2f} {f['latency_ms_p90']:7.2f} "
                  f"{f['latency_ms_p99']:7.2f} {f['ttfb_ms_p50']:7.2f} {f['rps']:7.1f} {gap} "
                  f"{f['latency_ms_p50'] / bare['latency_ms_p50']:7.2f}")
        print("ratios per round (min / median / max):")
        for label, v in ratios.items():
            print(f"  {label:<45} {v['min']:6.3f} / {v['median']:6.3f} / {v['max']:6.3f}")
        print(f"RSS MB: start {rss_start}, after load {rss_after}")
        if soak:
            print(f"soak: {soak}")
        print(f"writer: {rate:,.0f} rows/s")
        if shared is not None:
            per = shared["per_request"]
            print(f"redis: {per['commands']:.2f} commands and {per['bytes']:.0f} bytes per "
                  f"request; cooldown propagation between workers p50 "
                  f"{shared['propagation_ms']['p50']} ms, p99 {shared['propagation_ms']['p99']} ms")
        for name, size in growth.items():
            print(f"database growth ({name}): {size / 1e6:.2f} MB per 1,000 requests")
        if sized is not None:
            bench_sizes.print_report(sized, sized["summary"])
        print_cli(cli)
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['value']}")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
