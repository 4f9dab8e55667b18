"""What mitmflare's hooks cost per small request, part by part, in-process (no network).

    .venv/bin/python scripts/bench_hooks.py [--repo PATH] [--requests N] [--size B] [--json]

Loads the bundle of the checkout at ``--repo`` (default: this one; e.g. a ``git worktree`` of
an older commit, to compare) into mitmproxy's test context with two API-key accounts and its
real database writer process, then drives ``--requests`` small Messages requests (the body and
headers of ``scripts/bench``'s JSON case) through the four flow hooks in the bundle's order:
``requestheaders``, ``request``, ``responseheaders``, ``response``, with a JSON answer shaped
like the simulator's. Prints, per part and hook, the median and the mean time (µs) per request
and the total per request. Times are per call (``perf_counter_ns``); the median resists a
loaded machine.

``--callgrind`` counts instructions instead, in situ: the simulator, then a real mitmdump with
the bundle of ``--repo`` (and, for comparison, a bare mitmdump reverse proxy) under
``valgrind --tool=callgrind`` with instrumentation off; after ``--warmup`` requests it is
turned on (``callgrind_control``) for ``--requests`` requests at concurrency 1 (httpx, the
body of ``scripts/bench``'s JSON case) and the proxy process's instructions per request are
printed (its database writer process is not counted). Instruction counts do not depend on
what else runs on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ("requestheaders", "request", "responseheaders", "response")
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64,
        "messages": [{"role": "user", "content": "benchmark " * 50}], "stream": False}
ANSWER = {"id": "msg_sim1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
          "content": [{"type": "text", "text": "Hello from the simulator."}],
          "stop_reason": "end_turn", "stop_sequence": None,
          "usage": {"input_tokens": 120, "output_tokens": 12, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0}}


def request_headers() -> list[tuple[bytes, bytes]]:
    """What httpx sends in ``scripts/bench``'s JSON case (values as sent)."""
    body = json.dumps(BODY).encode()
    return [(b"host", b"127.0.0.1:8080"), (b"accept", b"*/*"),
            (b"accept-encoding", b"gzip, deflate"), (b"connection", b"keep-alive"),
            (b"user-agent", b"python-httpx/0.28.1"), (b"x-api-key", b"bench-client"),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json")]


def write_accounts(path: Path, base_url: str) -> None:
    """Two Anthropic API-key accounts at ``base_url``, as ``scripts/bench`` has."""
    path.write_text("accounts:\n" + "".join(
        f"  - {{name: bench-{n}, provider: anthropic, api_key: sk-ant-api03-{n}, "
        f"priority: {i}, base_url: {base_url}}}\n" for i, n in enumerate("ab")))


def make_flow(tflow, tutils, http, size: int = 0, n: int = 0):
    """The bench's small JSON request, or (``size`` bytes) a Claude Code-shaped one
    (``bench_sizes.claude_code_body``, its session header too)."""
    headers = request_headers()
    if size:
        from bench_sizes import HEADERS, claude_code_body
        body = claude_code_body(size, n, False)
        fields = {**dict(headers), **{k.encode(): v.encode() for k, v in HEADERS.items()},
                  b"content-length": str(len(body)).encode()}
        headers = list(fields.items())
    else:
        body = json.dumps(BODY).encode()
    req = tutils.treq(method=b"POST", path=b"/v1/messages", content=body,
                      host="127.0.0.1", port=8080, scheme=b"http", authority=b"",
                      headers=http.Headers(headers))
    flow = tflow.tflow(req=req)
    flow.response = None
    return flow


def make_response(http, n: int):
    body = json.dumps(ANSWER).encode()
    return http.Response.make(200, body, [
        (b"date", b"Mon, 07 Dec 2026 12:00:00 GMT"), (b"server", b"uvicorn"),
        (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"),
        (b"request-id", f"req_sim{n}".encode())])


async def drive(args) -> dict:
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow, tutils

    from mitmflare.bundle import Bundle, make_addons

    tmp = Path(tempfile.mkdtemp(prefix="mitmflare-hooks-"))
    write_accounts(tmp / "accounts.yaml", "http://127.0.0.1:9")  # never connected to
    bundle = Bundle(make_addons())
    times: dict[tuple[str, str], list[int]] = defaultdict(list)
    with taddons.context(bundle) as tctx:
        tctx.configure(bundle, flare_accounts=str(tmp / "accounts.yaml"),
                       flare_db=str(tmp / "a.db"), flare_state=str(tmp / "s.db"))
        gc.collect()
        gc.freeze()
        clock = time.perf_counter_ns
        total = args.warmup + args.requests
        flows = [make_flow(tflow, tutils, http) for _ in range(0 if args.size else total)]
        answers = [make_response(http, n) for n in range(total)]  # made before, not counted
        for n in range(total):
            keep = n >= args.warmup
            if n == args.warmup and args.under_callgrind:
                _control_self("-z")
                _control_self("-i", "on")
            flow = make_flow(tflow, tutils, http, args.size, n) if args.size else flows[n]
            for hook in HOOKS:
                if hook == "responseheaders":
                    if flow.response is not None:
                        raise SystemExit(f"request {n} answered by the proxy: "
                                         f"{flow.response.status_code} {flow.response.text}")
                    flow.response = answers[n]
                for part in bundle._parts[hook]:
                    start = clock()
                    result = getattr(part, hook)(flow)
                    if result is not None:
                        await result
                    if keep:
                        times[(type(part).__name__, hook)].append(clock() - start)
        if args.under_callgrind:
            _control_self("-i", "off")
        for part in bundle._parts["done"]:
            part.done()
    return times


def _control_self(*command: str) -> None:
    """``callgrind_control`` on this very process (valgrind answers it between syscalls)."""
    proc = subprocess.Popen(["callgrind_control", *command, str(os.getpid())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
        time.sleep(0.01)
    out = proc.stdout.read() if proc.stdout else ""
    if "OK" not in out:
        raise RuntimeError(f"callgrind_control {' '.join(command)}: {out}")


def instructions(args) -> float:
    """Instructions per request of the four hooks (this harness under callgrind, counted
    from the first measured request to the last; flows and answers are made before)."""
    out = Path(tempfile.mkdtemp(prefix="mitmflare-hooks-cg-")) / "hooks.callgrind"
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", sys.executable, __file__,
                    "--repo", str(args.repo), "--requests", str(args.requests),
                    "--warmup", str(args.warmup), "--under-callgrind"],
                   check=True, capture_output=True)
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1]) / args.requests
    raise RuntimeError(f"no totals in {out}")


def report(times: dict, requests: int, as_json: bool) -> None:
    rows = []
    for (part, hook), ns in times.items():
        rows.append({"part": part, "hook": hook, "median_us": statistics.median(ns) / 1000,
                     "mean_us": sum(ns) / len(ns) / 1000})
    total_median = sum(r["median_us"] for r in rows)
    total_mean = sum(r["mean_us"] for r in rows)
    if as_json:
        print(json.dumps({"requests": requests, "parts": rows, "total_median_us": total_median,
                          "total_mean_us": total_mean}, indent=2))
        return
    print(f"{'part':<16} {'hook':<16} {'median µs':>10} {'mean µs':>10}")
    for r in rows:
        print(f"{r['part']:<16} {r['hook']:<16} {r['median_us']:>10.2f} {r['mean_us']:>10.2f}")
    by_hook = defaultdict(float)
    for r in rows:
        by_hook[r["hook"]] += r["median_us"]
    print("per hook (sum of medians): " + ", ".join(f"{h} {by_hook[h]:.1f}" for h in HOOKS))
    print(f"total per request: median-sum {total_median:.1f} µs, mean-sum {total_mean:.1f} µs")


def _control(pid: int, *command: str) -> None:
    done = subprocess.run(["callgrind_control", *command, str(pid)], capture_output=True,
                          text=True, timeout=120)
    if "OK" not in done.stdout:  # it exits 0 when it finds no such run
        raise RuntimeError(f"callgrind_control {' '.join(command)}: {done.stdout}{done.stderr}")


def _callgrind(cmd: list[str], url: str, health: str, args, tmp: Path, name: str,
               env: dict[str, str]) -> float:
    """Instructions (Ir) per request of the process started by ``cmd`` (under callgrind)."""
    import httpx
    from bench import wait_http

    out = tmp / f"{name}.callgrind"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                             f"--callgrind-out-file={out}", *cmd],
                            stdout=(tmp / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
                            cwd=tmp, env=env)
    try:
        wait_http(health, 300)
        with httpx.Client(timeout=120) as client:
            if args.size:
                from bench_sizes import HEADERS, claude_code_body
                bodies = [claude_code_body(args.size, i, False) for i in range(4)]
            else:
                bodies, HEADERS = [json.dumps(BODY).encode()], {"x-api-key": "bench-client",
                                                                "content-type": "application/json"}

            def load(n: int) -> None:
                for i in range(n):
                    r = client.post(url + "/v1/messages", content=bodies[i % len(bodies)],
                                    headers=HEADERS)
                    if r.status_code != 200:
                        raise RuntimeError(f"{name}: HTTP {r.status_code} {r.text[:200]}")
            load(args.warmup)
            _control(proc.pid, "-z")
            _control(proc.pid, "-i", "on")
            load(args.requests)
            _control(proc.pid, "-i", "off")
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    total = 0
    for dump in tmp.glob(f"{name}.callgrind*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
                break
    return total / args.requests


def callgrind(args) -> dict[str, float]:
    """Ir per request: bare mitmdump and mitmflare (``--repo``'s bundle), one after the other."""
    from bench import BARE_ADDON, free_port, wait_http

    tmp = Path(tempfile.mkdtemp(prefix="mitmflare-cg-"))
    py = Path(sys.executable)
    sim_port = free_port()
    sim = subprocess.Popen([str(py), "-m", "mitmflare.demo.simulator", "--port", str(sim_port),
                            "--forget-requests"], stdout=(tmp / "sim.log").open("wb"),
                           stderr=subprocess.STDOUT)
    sim_url = f"http://127.0.0.1:{sim_port}"
    try:
        wait_http(sim_url + "/v1/models", 60)
        (tmp / "bare.py").write_text(BARE_ADDON)
        write_accounts(tmp / "accounts.yaml", sim_url)
        mitmdump = str(py.parent / "mitmdump")
        quiet = ["-q", "--set", "connection_strategy=lazy"]
        repo = args.repo.resolve()
        env = {**os.environ, "PYTHONPATH": str(repo / "addons")}
        result = {}
        for name in args.targets.split(","):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            if name == "bare":
                cmd = [mitmdump, *quiet, "-s", str(tmp / "bare.py"),
                       "--mode", f"reverse:{sim_url}@127.0.0.1:{port}"]
                health = url + "/v1/models"
            else:
                cmd = [mitmdump, *quiet, "-s", str(repo / "addons" / "bundle.py"),
                       "--mode", f"reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}",
                       "--set", f"flare_accounts={tmp / 'accounts.yaml'}",
                       "--set", f"flare_db={tmp / 'a.db'}",
                       "--set", f"flare_state={tmp / 's.db'}"]
                health = url + "/health"
            result[name] = _callgrind(cmd, url, health, args, tmp, name, env)
            print(f"{name}: {result[name]:,.0f} instructions per request "
                  f"({args.requests} requests, {repo.name})", flush=True)
        if {"bare", "mitmflare"} <= result.keys():
            print(f"mitmflare - bare: {result['mitmflare'] - result['bare']:,.0f} per request, "
                  f"ratio {result['mitmflare'] / result['bare']:.3f}")
        return result
    finally:
        sim.kill()  # keeps nothing
        sim.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT,
                        help="checkout whose addons/ is measured (default: this one)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--size", type=int, default=0,
                        help="bytes of a Claude Code-shaped request instead of the small one "
                             "(scripts/bench --sizes), e.g. 1048576 with --requests 50")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions per request in a real mitmdump (see above)")
    parser.add_argument("--targets", default="bare,mitmflare",
                        help="with --callgrind: bare and/or mitmflare")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per request of the in-process run (callgrind)")
    parser.add_argument("--under-callgrind", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.callgrind:
        callgrind(args)
        return 0
    if args.instructions:
        print(f"{instructions(args):,.0f} instructions per request in the hooks "
              f"({args.requests} requests, {args.repo.resolve().name})")
        return 0
    sys.path.insert(0, str(args.repo.resolve() / "addons"))
    times = asyncio.run(drive(args))
    report(times, args.requests, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
