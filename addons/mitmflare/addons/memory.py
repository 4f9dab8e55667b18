"""Addon: keeps the memory of large requests reusable while they come, gives it back after.

A finished flow is a reference cycle (flow, connections, layers): CPython frees it only in a
garbage collection of the generation it has reached, and a flow that lived through a 10 MB
upload has reached the oldest, collected rarely; so each large request's body stayed in memory
after it was answered, and the next one's was written to memory the system had to hand over
afresh (page faults: mitmproxy's copy of a 10 MB body took 4 ms, 0.5 ms into reused memory).
And what CPython frees, glibc keeps in its heap unless asked to return it (``malloc_trim``).
Measured on the 2-core VM after ten 10 MB requests (Claude Code-shaped, JSON and streamed):
bare mitmdump's RSS +101 MB over its start, of which a full collection frees 100 MB.

So:

* At start (``running``): the objects made while loading (mitmproxy, its addons, this
  bundle's modules) are moved out of the collector's sight (``gc.freeze``; back in
  ``done``), so a full collection scans only what requests made since: 0.1-0.6 ms instead of
  ~50 ms. And on glibc, blocks up to :data:`HEAP_BLOCK_BYTES` come from the heap and freed
  memory stays there up to :data:`KEEP_FREE_BYTES` (``mallopt``; glibc's defaults move both
  with the traffic and handed a 10 MB body to ``mmap``, paged in and returned each time), so
  a body's memory is reused by the next one.
* :data:`COLLECT_AFTER_S` after a flow whose request body was at least :data:`LARGE_BYTES`
  ended: a full collection (one pending at a time), which frees its body for the next. Not
  under mitmweb, whose flow list keeps every flow (and its body) anyway. Measured
  (2026-12-07, 10 MB streams at c=1, fresh processes; README "Performance"): the time from a
  body's last byte to the end of the ``request`` hooks 6.4-6.9 -> 3.0-3.4 ms (bare mitmdump
  4.0-4.5), the proxy's peak growth per MB in flight 7.5 -> 2.7 on the first round, then ~0.
* Once :data:`DELAY_S` have passed since the last large flow ended, with none in flight, a
  full collection and ``malloc_trim(0)`` give the memory back to the system. Not during a
  burst of large requests: memory given back is asked for again by the next one (10 MB at
  c=8 with a 1 s delay: +100-147 ms over direct against bare mitmdump's +18-89 ms). Claude
  Code's agent steps come seconds apart; a session's pause or its end gives the memory back.

All of it runs on the event loop, off any hook; none of it for small requests.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import time

from mitmproxy import ctx, http

log = logging.getLogger("mitmflare")

LARGE_BYTES = 1024 * 1024  # a request body at least this large (bytes) asks for a run
COLLECT_AFTER_S = 0.005    # a large flow's end to the collection that frees it (s)
DELAY_S = 15.0             # quiet this long after the last large request (s)
HEAP_BLOCK_BYTES = 32 * 1024 * 1024  # glibc's M_MMAP_THRESHOLD (its largest allowed value)
KEEP_FREE_BYTES = 256 * 1024 * 1024  # glibc's M_TRIM_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc's malloc.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (``find_library`` runs ``ldconfig``), or None."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _libc_function(name: str):
    """The C library's function ``name`` (glibc's ``malloc_trim``, ``mallopt``), or None
    where there is none (musl, macOS)."""
    return getattr(_libc(), name, None)


def keep_heap() -> bool:
    """Sets glibc's malloc to serve blocks up to :data:`HEAP_BLOCK_BYTES` from its heap and
    keep up to :data:`KEEP_FREE_BYTES` of freed memory (see the module). True when set."""
    mallopt = _libc_function("mallopt")
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)) \
        and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_BYTES))


class MemoryReturn:
    """Schedules the collection and trim described in the module docstring."""

    def __init__(self) -> None:
        self._pending: asyncio.TimerHandle | None = None
        self._collect: asyncio.TimerHandle | None = None
        self._large: set[str] = set()  # ids of the large requests in flight
        self._trim = _libc_function("malloc_trim")
        self.runs = 0  # how many times memory was given back (tests)
        self.collections = 0  # collections after a large request (tests)
        self.collect_each = True  # False under a flow list (mitmweb's view): see running

    def request(self, flow: http.HTTPFlow) -> None:
        if len(flow.request.raw_content or b"") >= LARGE_BYTES:
            self._large.add(flow.id)
            if self._pending is not None:  # not while it runs: it would ask for it again
                self._pending.cancel()
                self._pending = None

    def response(self, flow: http.HTTPFlow) -> None:
        self._ended(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._ended(flow)

    def running(self) -> None:
        gc.collect()  # (once, ~50 ms) so that no garbage of the start-up is frozen with it
        gc.freeze()
        keep_heap()
        # mitmweb keeps each flow in its list: a collection frees no body there, and costs
        # more with every flow kept; only the quiet-time run (DELAY_S) is left
        master = getattr(ctx, "master", None)
        self.collect_each = master is None or master.addons.get("view") is None

    def done(self) -> None:
        gc.unfreeze()
        if self._collect is not None:
            self._collect.cancel()
            self._collect = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _ended(self, flow: http.HTTPFlow) -> None:
        if len(flow.request.raw_content or b"") < LARGE_BYTES:
            return
        self._large.discard(flow.id)
        if self._collect is None and self.collect_each:
            self._collect = asyncio.get_running_loop().call_later(COLLECT_AFTER_S,
                                                                  self._collected)
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if not self._large:
            self._pending = asyncio.get_running_loop().call_later(DELAY_S, self.give_back)

    def _collected(self) -> None:
        self._collect = None
        start = time.perf_counter()
        gc.collect()
        self.collections += 1
        log.debug("collection after a large request: %.2f ms",
                  (time.perf_counter() - start) * 1000)

    def give_back(self) -> None:
        """A full garbage collection, then ``malloc_trim(0)`` where glibc has it."""
        self._pending = None
        start = time.perf_counter()
        gc.collect()
        collected = time.perf_counter()
        if self._trim is not None:
            self._trim(0)
        self.runs += 1
        log.debug("memory given back after a large request: collection %.1f ms, trim %.1f ms",
                  (collected - start) * 1000, (time.perf_counter() - collected) * 1000)
