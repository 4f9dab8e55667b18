"""The ``--sizes`` part of ``scripts/bench``: Claude Code's real sizes (issue 26).

* **Sizes**: Claude Code-shaped requests (a ~20 KB system prompt and ~40 KB of tool
  definitions with ``cache_control``, the session in ``metadata.user_id`` and its header, a
  history grown turn by turn: user turns, assistant text and tool uses, tool results holding
  file contents) of 100 KB, 1 MB and 10 MB, JSON and streamed answers, at concurrency 1 and 8,
  the targets taking turns in every round (at concurrency 1 request by request: each body
  goes to every target in turn). Per cell: p50 / p99 latency added over direct
  (ms), stream time to first byte, and the proxy's peak RSS over the round (sampled every
  5 ms) above its RSS before the round, per MB of body in flight.
* **Thinking stream**: one answer of 2,000 events (thinking deltas, a signature, text, a tool
  use) 1 ms apart: time per event added over direct, total, and whether the client got the
  simulator's bytes exactly (``/_sim/sent``).
* **Open streams**: ``--hold-streams`` streams (opened 25 every 100 ms) held ``--hold-s``
  seconds (a ping a second) on each proxy in turn: RSS per open stream, open file
  descriptors, and the event loop's lag while all are open (p99 of a 10 ms timer's delay,
  measured inside the proxy by ``scripts/bench_lag.py``).

Imported by ``scripts/bench.py``; the figures land in its report and checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx

KB, MB = 1024, 1024 * 1024
SIZES = {"100KB": 100 * KB, "1MB": MB, "10MB": 10 * MB}
REQUESTS = {"100KB": 30, "1MB": 24, "10MB": 12}  # per round, target, kind and concurrency
THINKING_EVENTS = 2000
SESSION = "6d1b2c3a-0f4e-4b7d-9a51-2f0c8e7d5b11"
WORDS = ["the", "proxy", "reads", "a", "request", "and", "routes", "it", "to", "an", "account",
         "whose", "prompt", "cache", "is", "still", "warm", "while", "others", "cool", "down"]


def _text(n: int, seed: int) -> str:
    """About ``n`` characters of prose, different per ``seed``."""
    words, size, i = [], 0, seed
    while size < n:
        word = WORDS[i % len(WORDS)] + ("" if i % 11 else f"{i}")
        words.append(word)
        size += len(word) + 1
        i += 7
    return " ".join(words)


def claude_code_body(size: int, variant: int, stream: bool) -> bytes:
    """A Messages request shaped as Claude Code sends it, about ``size`` bytes: system prompt
    ~20 KB, tools ~40 KB (both with ``cache_control``), then the conversation turn by turn
    until the size is reached; ``variant`` changes the last turn (each request differs)."""
    system = [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI."},
              {"type": "text", "text": _text(20 * KB, 1),
               "cache_control": {"type": "ephemeral"}}]
    tools = [{"name": f"Tool{i}", "description": _text(1200, i),
              "input_schema": {"type": "object", "$schema": "http://json-schema.org/draft-07/schema#",
                               "properties": {"file_path": {"type": "string",
                                                            "description": _text(200, i + 3)},
                                              "limit": {"type": "number"}},
                               "required": ["file_path"], "additionalProperties": False}}
             for i in range(26)]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    body = {"model": "claude-sonnet-4-6", "max_tokens": 32000, "stream": stream,
            "system": system, "tools": tools, "messages": [],
            "metadata": {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "",
                                                "session_id": SESSION})},
            "thinking": {"type": "enabled", "budget_tokens": 31999}}
    base = len(json.dumps(body))
    messages, used, turn = body["messages"], base, 0
    while used < size - 2 * KB:
        turn += 1
        chunk = min(12 * KB + (turn % 5) * 4 * KB, max(size - used - 2 * KB, 200))
        step = [{"role": "user", "content": [{"type": "text", "text": _text(300, turn)}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": _text(200, turn + 1)},
                    {"type": "tool_use", "id": f"toolu_{turn:06d}", "name": "Read",
                     "input": {"file_path": f"/src/module_{turn}.py"}}]},
                {"role": "user", "content": [{"type": "tool_result",
                                              "tool_use_id": f"toolu_{turn:06d}",
                                              "content": _text(chunk, turn + 2)}]}]
        messages.extend(step)
        used += len(json.dumps(step))
    messages.append({"role": "user", "content": [
        {"type": "text", "text": f"turn {turn} variant {variant}: go on",
         "cache_control": {"type": "ephemeral"}}]})
    return json.dumps(body).encode()


class RssSampler:
    """Peak RSS (MB, with child processes) of ``pid`` while running, sampled every 5 ms."""

    def __init__(self, pid: int | None, rss_mb) -> None:
        self.pid, self.rss_mb = pid, rss_mb
        self.start = self.peak = rss_mb(pid) if pid else 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        if self.pid:
            self._thread.join()


async def _one(client: httpx.AsyncClient, url: str, body: bytes, headers: dict) -> tuple:
    start = time.perf_counter()
    first = None
    async with client.stream("POST", url + "/v1/messages", content=body,
                             headers=headers) as response:
        async for _ in response.aiter_raw():
            first = first or time.perf_counter()
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}")
    end = time.perf_counter()
    return (end - start) * 1000, ((first or end) - start) * 1000


WARM = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
HEADERS = {"x-api-key": "bench-client", "content-type": "application/json",
           "anthropic-version": "2023-06-01", "x-claude-code-session-id": SESSION,
           "user-agent": "claude-cli/2.0.14 (external, cli)"}


async def _interleaved(urls: dict[str, str], bodies: list[bytes]) -> dict[str, list[tuple]]:
    """Concurrency 1, request by request: each body goes to every target in turn (one open
    connection each), so a slow spell of the machine lands on all targets alike; at 10 MB a
    round per target took seconds and the spells decided which target looked faster."""
    out: dict[str, list[tuple]] = {name: [] for name in urls}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = {name: httpx.AsyncClient(limits=limits, timeout=120, trust_env=False)
               for name in urls}
    try:
        for name, url in urls.items():
            await _one(clients[name], url, WARM, HEADERS)  # connections open first
        for body in bodies:
            for name, url in urls.items():
                out[name].append(await _one(clients[name], url, body, HEADERS))
    finally:
        for client in clients.values():
            await client.aclose()
    return out


async def _load(url: str, bodies: list[bytes], concurrency: int) -> list[tuple]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    out: list[tuple] = []
    async with httpx.AsyncClient(limits=limits, timeout=120, trust_env=False) as client:
        await asyncio.gather(*[_one(client, url, WARM, HEADERS)
                               for _ in range(concurrency)])  # connections open first
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                out.append(await _one(client, url, body, HEADERS))

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sizes(targets: dict[str, str], pids: dict[str, int], rss_mb, rounds: int, scale: float,
          progress=print) -> dict:
    """The sizes matrix: ``{size: {kind: {c: {target: [round, …]}}}}``, each round
    ``{"p50", "p99", "ttfb50", "rss_per_mb"}`` (ms; RSS growth per in-flight MB), plus the
    proxies' RSS at the start and after the 10 MB cells."""
    out: dict = {"cells": {}, "rss_start": {n: rss_mb(p) for n, p in pids.items()}}
    for label, size in SIZES.items():
        n = max(2, round(REQUESTS[label] * scale))
        for kind in ("json", "sse"):
            bodies = [claude_code_body(size, i, kind == "sse") for i in range(n)]
            for concurrency in (1, 8):
                cell = out["cells"].setdefault(f"{label} {kind} c={concurrency}", {})
                progress(f"sizes: {label} {kind} c={concurrency}")
                for _ in range(rounds):
                    if concurrency == 1:
                        with contextlib.ExitStack() as stack:
                            samplers = {name: stack.enter_context(RssSampler(pids.get(name),
                                                                              rss_mb))
                                        for name in targets}
                            by_target = asyncio.run(_interleaved(targets, bodies))
                    else:
                        samplers, by_target = {}, {}
                        for name, url in targets.items():
                            with RssSampler(pids.get(name), rss_mb) as samplers[name]:
                                by_target[name] = asyncio.run(_load(url, bodies, concurrency))
                    for name, samples in by_target.items():
                        rss = samplers[name]
                        lat = [s[0] for s in samples]
                        growth = (rss.peak - rss.start) / (concurrency * size / MB)
                        cell.setdefault(name, []).append({
                            "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99),
                            "ttfb50": _pct([s[1] for s in samples], 0.5),
                            "rss_per_mb": growth if pids.get(name) else None})
        if label == "10MB":
            from mitmflare.addons.memory import DELAY_S
            time.sleep(DELAY_S + 2)  # mitmflare gives memory back once large requests pause
            out["rss_after_10mb"] = {n: rss_mb(p) for n, p in pids.items()}
    return out


async def _thinking_once(url: str, sim: str) -> dict:
    answer = json.dumps({"thinking_events": THINKING_EVENTS, "event_delay_ms": 1})
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "think"}]}).encode()
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        await client.post(url + "/v1/messages", content=WARM, headers=HEADERS)  # connection
        start = time.perf_counter()
        got = bytearray()
        async with client.stream("POST", url + "/v1/messages", content=body,
                                 headers={**HEADERS, "x-sim-answer": answer}) as response:
            async for chunk in response.aiter_raw():
                got.extend(chunk)
            request_id = response.headers.get("request-id", "")
        total = (time.perf_counter() - start) * 1000
        sent = (await client.get(sim + "/_sim/sent", params={"id": request_id})).content
    return {"total_ms": total, "events": bytes(got).count(b"\n\n"),
            "byte_exact": bool(sent) and bytes(got) == sent}


def thinking(targets: dict[str, str], sim: str, rounds: int) -> dict:
    """Per target and round: total ms of the 2,000-event stream, events received, byte-exact."""
    out: dict[str, list] = {}
    for _ in range(rounds):
        for name, url in targets.items():
            out.setdefault(name, []).append(asyncio.run(_thinking_once(url, sim)))
    return out


def _lag(port: int | None) -> dict | None:
    if not port:
        return None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return json.loads(conn.makefile().readline())


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def _hold_load(url: str, streams: int, hold_s: float, opened: list[int],
                     all_open: asyncio.Event) -> list:
    answer = json.dumps({"hold_s": hold_s})
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "hold"}]}).encode()
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=hold_s + 60, trust_env=False) as client:

        async def one() -> bool:
            async with client.stream("POST", url + "/v1/messages", content=body,
                                     headers={**HEADERS, "x-sim-answer": answer}) as response:
                first = True
                async for _ in response.aiter_raw():
                    if first:
                        first, opened[0] = False, opened[0] + 1
                        if opened[0] == streams:
                            all_open.set()
                return response.status_code == 200

        tasks = []
        for i in range(streams):  # opened 25 at a time, as sessions come, not in one burst
            tasks.append(asyncio.create_task(one()))
            if i % 25 == 24:
                await asyncio.sleep(0.1)
        return await asyncio.gather(*tasks, return_exceptions=True)


async def _hold_one(url: str, pid: int, lag_port: int | None, rss_mb, streams: int,
                    hold_s: float) -> dict:
    before, fds_before = rss_mb(pid), _fds(pid)
    opened, all_open = [0], asyncio.Event()
    task = asyncio.create_task(_hold_load(url, streams, hold_s, opened, all_open))
    with contextlib.suppress(TimeoutError):  # they open (or fail) in the hold's first third
        await asyncio.wait_for(all_open.wait(), timeout=hold_s / 3)
    await asyncio.to_thread(_lag, lag_port)  # a new reading: while they are open
    open_at, counted = time.monotonic(), opened[0]
    peak, fds = 0.0, 0
    while time.monotonic() - open_at < hold_s / 2 and not task.done():
        peak, fds = max(peak, rss_mb(pid)), max(fds, _fds(pid))
        await asyncio.sleep(0.5)
    lag = await asyncio.to_thread(_lag, lag_port)
    done = await task
    errors = sorted({type(d).__name__ for d in done if isinstance(d, BaseException)})
    return {"rss_kb_per_stream": (peak - before) * 1024 / max(counted, 1), "fds_open": fds,
            "fds_before": fds_before, "lag": lag, "opened": counted, "streams": streams,
            "ok": sum(d is True for d in done), "errors": errors}


def hold(targets: dict[str, str], pids: dict[str, int], lag_ports: dict[str, int], rss_mb,
         streams: int, hold_s: float) -> dict:
    """Per proxy: RSS per open stream (KB), file descriptors while open, event-loop lag
    while they run (ms, from ``scripts/bench_lag.py``), and how many finished with 200."""
    out = {}
    for name, url in targets.items():
        if name in pids:
            out[name] = asyncio.run(_hold_one(url, pids[name], lag_ports.get(name), rss_mb,
                                              streams, hold_s))
            time.sleep(1)
    return out


def summarize(result: dict) -> dict:
    """Medians of rounds: added latency over direct (ms), over bare, per-event delay."""
    table = {}
    for cell, by in result["sizes"]["cells"].items():
        direct = by["direct"]
        row = {}
        for name, rounds in by.items():
            added50 = [r["p50"] - d["p50"] for r, d in zip(rounds, direct, strict=True)]
            added99 = [r["p99"] - d["p99"] for r, d in zip(rounds, direct, strict=True)]
            ttfb = [r["ttfb50"] - d["ttfb50"] for r, d in zip(rounds, direct, strict=True)]
            rss = [r["rss_per_mb"] for r in rounds if r["rss_per_mb"] is not None]
            row[name] = {"p50": statistics.median(r["p50"] for r in rounds),
                         "added_p50": statistics.median(added50),
                         "added_p99": statistics.median(added99),
                         "added_ttfb50": statistics.median(ttfb),
                         "rss_per_mb_max": max(rss) if rss else None,
                         "added_p50_rounds": added50}
        table[cell] = row
    thinking_table = {}
    direct = result["thinking"]["direct"]
    for name, rounds in result["thinking"].items():
        added = [(r["total_ms"] - d["total_ms"]) for r, d in zip(rounds, direct, strict=True)]
        thinking_table[name] = {"total_ms": statistics.median(r["total_ms"] for r in rounds),
                                "added_ms": statistics.median(added),
                                "added_ms_per_event": statistics.median(added) / THINKING_EVENTS,
                                "events": min(r["events"] for r in rounds),
                                "byte_exact": all(r["byte_exact"] for r in rounds)}
    return {"cells": table, "thinking": thinking_table}


def checks(result: dict, summary: dict, check) -> None:
    """The issue's targets, judged on medians of rounds (``check(label, value, ok)``)."""
    cells = summary["cells"]
    limits = {"100KB": ("<= 0.5 ms", lambda d, b: d <= 0.5),
              "1MB": ("<= 2 ms", lambda d, b: d <= 2.0),
              "10MB": ("<= 10 % of bare's p50", lambda d, b: d <= 0.10 * b)}
    for label, (text, ok) in limits.items():
        for kind in ("json", "sse"):
            cell = cells.get(f"{label} {kind} c=1")
            if not cell or "mitmflare" not in cell:
                continue
            rounds = result["sizes"]["cells"][f"{label} {kind} c=1"]
            over = statistics.median(f["p50"] - b["p50"] for f, b in zip(
                rounds["mitmflare"], rounds["bare"], strict=True))
            check(f"sizes {label} {kind} c=1 p50 mitmflare - bare {text}", over,
                  ok(over, cell["bare"]["p50"]))
            if "better-ccflare" in cell:
                peer = statistics.median(f["p50"] - b["p50"] for f, b in zip(
                    rounds["mitmflare"], rounds["better-ccflare"], strict=True))
                check(f"sizes {label} {kind} c=1 p50 mitmflare - better-ccflare <= 0 ms",
                      peer, peer <= 0)
            if kind == "sse":
                ttfb = statistics.median(f["ttfb50"] - b["ttfb50"] for f, b in zip(
                    rounds["mitmflare"], rounds["bare"], strict=True))
                check(f"sizes {label} sse c=1 ttfb mitmflare - bare <= 0.5 ms", ttfb,
                      ttfb <= 0.5)
    for concurrency in (1, 8):
        cell = cells.get(f"10MB json c={concurrency}", {}).get("mitmflare")
        if cell and cell["rss_per_mb_max"] is not None:
            check(f"sizes 10MB json c={concurrency} mitmflare peak RSS per in-flight MB <= 2",
                  cell["rss_per_mb_max"], cell["rss_per_mb_max"] <= 2)
    after = result["sizes"].get("rss_after_10mb", {}).get("mitmflare")
    if after is not None:
        grown = after - result["sizes"]["rss_start"]["mitmflare"]
        check("sizes mitmflare RSS after the 10 MB rounds - at start <= 20 MB", grown,
              grown <= 20)
    flare = summary["thinking"].get("mitmflare")
    if flare:
        check("thinking stream mitmflare byte-exact", float(flare["byte_exact"]),
              flare["byte_exact"] and flare["events"] == THINKING_EVENTS)
        check("thinking stream mitmflare added ms per event < 1", flare["added_ms_per_event"],
              flare["added_ms_per_event"] < 1)
    held = result.get("hold", {}).get("mitmflare")
    if held:
        check("open streams mitmflare: all finished with 200", held["ok"],
              held["ok"] == held["streams"] and not held["errors"])
        check("open streams mitmflare RSS per stream <= 100 KB", held["rss_kb_per_stream"],
              held["rss_kb_per_stream"] <= 100)
        p99 = (held["lag"] or {}).get("p99_ms")
        check("open streams mitmflare event-loop lag p99 <= 5 ms", p99 if p99 is not None
              else float("nan"), p99 is not None and p99 <= 5)


def print_report(result: dict, summary: dict) -> None:
    print("sizes (median of rounds; ms added over direct; ttfb = streams' time to first byte "
          "added; RSS = the proxy's peak growth per MB of body in flight, max of rounds):")
    print(f"  {'cell':<18} {'target':<15} {'p50':>8} {'+p50':>8} {'+p99':>8} {'+ttfb':>8} "
          f"{'RSS/MB':>7}   +p50 per round")
    for cell, row in summary["cells"].items():
        for name, f in row.items():
            rss = f"{f['rss_per_mb_max']:7.2f}" if f["rss_per_mb_max"] is not None else "      -"
            rounds = " ".join(f"{v:.2f}" for v in f["added_p50_rounds"])
            print(f"  {cell:<18} {name:<15} {f['p50']:8.2f} {f['added_p50']:8.2f} "
                  f"{f['added_p99']:8.2f} {f['added_ttfb50']:8.2f} {rss}   {rounds}")
    sizes = result["sizes"]
    print(f"  RSS MB at start {sizes['rss_start']}, after the 10 MB cells "
          f"{sizes.get('rss_after_10mb')}")
    print(f"thinking stream ({THINKING_EVENTS} events 1 ms apart; median of rounds):")
    for name, t in summary["thinking"].items():
        print(f"  {name:<15} total {t['total_ms']:8.1f} ms, added {t['added_ms']:7.1f} ms "
              f"({t['added_ms_per_event'] * 1000:6.1f} µs per event), events {t['events']}, "
              f"byte-exact {t['byte_exact']}")
    for name, h in result.get("hold", {}).items():
        lag = h["lag"] or {}
        print(f"open streams, {name:<15} {h['opened']} open at once, {h['ok']} finished "
              f"{h['errors'] or ''}; RSS {h['rss_kb_per_stream']:.1f} KB "
              f"per stream; fds {h['fds_before']} -> {h['fds_open']}; event-loop lag p50 "
              f"{lag.get('p50_ms')} / p99 {lag.get('p99_ms')} / max {lag.get('max_ms')} ms")
