"""The ``--redis`` part of ``scripts/bench``: a real ``redis-server`` for a mitmflare with
``flare_redis`` set (the ``redis`` column), Redis's own counters of the work it did per request,
and how fast a cooldown one worker learns reaches another.

Imported by ``scripts/bench.py``; needs ``redis-server`` on PATH (apt-get install
redis-server)."""

from __future__ import annotations

import shutil
import socket
import statistics
import time
from pathlib import Path

import httpx


def start_redis(tmp: Path, port: int, spawn) -> str:
    """Start ``redis-server`` on ``port`` (no persistence) with ``spawn``; its URL. Raises
    SystemExit with what to install when it is missing."""
    if shutil.which("redis-server") is None:
        raise SystemExit("--redis needs redis-server (apt-get install redis-server)")
    spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(tmp)], "redis.log")
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def counters(url: str) -> dict[str, int]:
    """Redis's totals so far: commands processed and bytes in and out (``INFO stats``)."""
    import redis

    with redis.Redis.from_url(url) as client:
        stats = client.info("stats")
    return {"commands": int(stats["total_commands_processed"]),
            "bytes": int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])}


def per_request(before: dict[str, int], after: dict[str, int], requests: int) -> dict[str, float]:
    """Commands and bytes per request between two :func:`counters` readings (the reading
    itself, one command, is left out)."""
    return {"commands": (after["commands"] - before["commands"] - 1) / max(requests, 1),
            "bytes": (after["bytes"] - before["bytes"]) / max(requests, 1)}


def propagation_ms(sim: str, first: str, second: str, samples: int = 10) -> list[float]:
    """Milliseconds from the answer of a request that ``first`` served through a 429 (the
    account cooling for 2 s) until ``second``'s ``/health`` counts a cooling account, polled
    every millisecond; ``samples`` times, each after the cooldown ended."""
    body = {"model": "claude-sonnet-4-6", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}
    found = []
    with httpx.Client(timeout=10) as client:
        for _ in range(samples):
            while client.get(second + "/health").json()["accounts"]["cooling_down"]:
                time.sleep(0.05)  # the previous cooldown still runs
            reset = str(int(time.time()) + 2)
            client.post(sim + "/_sim/script", json={"credential": "sk-ant-api03-A", "answers": [
                {"status": 429, "headers": {
                    "anthropic-ratelimit-unified-status": "rejected",
                    "anthropic-ratelimit-unified-5h-status": "rejected",
                    "anthropic-ratelimit-unified-5h-reset": reset,
                    "anthropic-ratelimit-unified-reset": reset, "retry-after": "2"}}]})
            client.post(first + "/v1/messages", json=body)
            start = time.perf_counter()
            while not client.get(second + "/health").json()["accounts"]["cooling_down"]:
                if time.perf_counter() - start > 5:
                    break
                time.sleep(0.001)
            found.append((time.perf_counter() - start) * 1000)
    return found


def summary(values: list[float]) -> dict[str, float]:
    """p50 and p99 (max of the samples when fewer than 100) in ms."""
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)}


def start_second_worker(mitmflare, port: int, url: str) -> None:
    """A second mitmflare on the same Redis (for :func:`propagation_ms`)."""
    mitmflare("redis2", port, f"flare_redis={url}")

