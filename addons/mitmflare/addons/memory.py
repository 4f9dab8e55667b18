"""Addon: gives memory back to the system after large requests.

A finished flow is a reference cycle (flow, connections, layers): CPython frees it only in a
full garbage collection, which runs rarely when few objects are made, so the bodies of large
requests stay in memory long after they were answered; and what CPython frees, glibc keeps in
its heap unless asked to return it (``malloc_trim``). Measured on the 2-core VM after ten
10 MB requests (Claude Code-shaped, JSON and streamed): bare mitmdump's RSS +101 MB over its
start, of which a full collection frees 100 MB; mitmflare's proxy process 222 MB, 142 MB
after a full collection, 101 MB (its start) after ``malloc_trim`` (4 ms).

So, once :data:`DELAY_S` have passed since the last flow whose request body was at least
:data:`LARGE_BYTES` ended, with no such flow in flight, a full collection and, on glibc,
``malloc_trim(0)`` run on the event loop, off any hook (none for small requests). Not during
a burst of large requests: memory given back is asked for again by the next one (page faults:
``scripts/bench --sizes``, 10 MB at c=8, 2026-12-07, gave +100-147 ms over direct with a 1 s
delay against bare mitmdump's +18-89 ms, which keeps its memory), and the run itself pauses the
loop 2-5 ms. Claude Code's agent steps come seconds apart; a session's pause or its end
gives the memory back.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time

from mitmproxy import http

log = logging.getLogger("mitmflare")

LARGE_BYTES = 1024 * 1024  # a request body at least this large (bytes) asks for a run
DELAY_S = 15.0             # quiet this long after the last large request (s)


def _malloc_trim():
    """glibc's ``malloc_trim`` (returns memory at the top and inside the heap), or None."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


class MemoryReturn:
    """Schedules the collection and trim described in the module docstring."""

    def __init__(self) -> None:
        self._pending: asyncio.TimerHandle | None = None
        self._large: set[str] = set()  # ids of the large requests in flight
        self._trim = _malloc_trim()
        self.runs = 0  # how many times memory was given back (tests)

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

    def done(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _ended(self, flow: http.HTTPFlow) -> None:
        if len(flow.request.raw_content or b"") < LARGE_BYTES:
            return
        self._large.discard(flow.id)
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if not self._large:
            self._pending = asyncio.get_running_loop().call_later(DELAY_S, self.give_back)

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
