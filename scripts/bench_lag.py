"""Test-only mitmproxy addon for ``scripts/bench``: measures the event loop's lag inside the
proxy, without a hook on any flow.

    mitmdump -s scripts/bench_lag.py --set bench_lag_port=PORT …

A task sleeps 10 ms at a time and records how late each wake-up came (ms); the garbage
collector's pauses are timed too (``gc.callbacks``). A client that connects to
127.0.0.1:PORT gets one JSON line, ``{"samples": n, "p50_ms", "p99_ms", "max_ms",
"gc_runs", "gc_full", "gc_max_ms", "gc_total_ms"}``, over the wake-ups and collections since
the previous reading (which starts a new one).
Loaded by the benchmark into bare mitmdump and mitmflare alike; never part of mitmflare.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time

from mitmproxy import ctx

TIMER_S = 0.010


class EventLoopLag:
    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self._tasks: list[asyncio.Task] = []
        self._server: asyncio.Server | None = None
        self.gc_ms: list[tuple[int, float]] = []  # (generation, pause ms)
        self._gc_start = 0.0

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_ms.append((info["generation"], (time.perf_counter() - self._gc_start) * 1000))

    def load(self, loader) -> None:
        loader.add_option("bench_lag_port", int, 0, "Port for event-loop lag readings (0: off).")

    async def running(self) -> None:
        if not ctx.options.bench_lag_port:
            return
        gc.callbacks.append(self._gc)
        self._tasks.append(asyncio.get_running_loop().create_task(self._timer()))
        self._server = await asyncio.start_server(self._answer, "127.0.0.1",
                                                  ctx.options.bench_lag_port)

    async def _timer(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(TIMER_S)
            self.lags_ms.append((time.perf_counter() - start - TIMER_S) * 1000)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lags, self.lags_ms = sorted(self.lags_ms), []
        pauses, self.gc_ms = self.gc_ms, []

        def pct(q: float) -> float | None:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))], 3) if lags else None

        writer.write(json.dumps({"samples": len(lags), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                                 "max_ms": pct(1.0), "gc_runs": len(pauses),
                                 "gc_full": sum(g == 2 for g, _ in pauses),
                                 "gc_max_ms": round(max((ms for _, ms in pauses), default=0), 3),
                                 "gc_total_ms": round(sum(ms for _, ms in pauses), 3)}
                                ).encode() + b"\n")
        await writer.drain()
        writer.close()

    def done(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()


addons = [EventLoopLag()]
