"""Addon: every upstream wait has a timeout, per attempt.

mitmproxy itself waits for an upstream as long as its ``tcp_timeout`` (600 s of silence on the
client's connection), with no separate limit for connecting or for the answer's headers, so
one hung account would hold every request sent to it. Four options bound each attempt:

============================  =======  ==================================================
option                        default  bounds
============================  =======  ==================================================
flare_connect_timeout_s       10       opening the upstream connection (TCP)
flare_headers_timeout_s       600      the answer's headers, non-streamed request (a long
                                       non-streamed answer is sent whole, after minutes)
flare_stream_headers_timeout_s 60      the answer's headers, streamed request (sent at once)
flare_stream_idle_timeout_s   60       silence between two pieces of a streamed answer
                                       (Anthropic sends ``ping`` events every few seconds)
============================  =======  ==================================================

Sources for the defaults: the Anthropic SDKs wait 10 minutes for a non-streamed answer and
recommend streaming for long ones; a stream's headers and ``message_start`` come first, then
events or pings (``shared/reference/upstream-apis.md``, section 4).

No timer per request: the router stamps the attempt's start (:attr:`FlowContext.attempt_mono`)
and the stream tap the last piece's arrival; one sweep (every quarter of the smallest timeout,
at most 1 s) finds attempts past their limit. Such an attempt's upstream connection is closed;
its account cools down briefly (``upstream_timeout``, ``upstream_connect_timeout`` or
``upstream_idle_timeout`` in ``account_events``) and the row's ``error`` says which limit.
Before any byte reached the client, the client gets a retryable error (the SDKs and Claude
Code retry it, and the retry goes to another account, the hung one cooling); after bytes
were sent, the stream ends there.

The re-sent attempts of a failover go through ``httpx`` in :mod:`.failover`, which applies the
same limits itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from mitmproxy import ctx, http
from mitmproxy.utils import asyncio_utils

from ..config.option_types import whole
from ..proxy_state import FlowContext, ProxyState
from ..routing.classify import TRANSIENT, TRANSIENT_COOLDOWN_S, Verdict
from ..routing.pool import Account

log = logging.getLogger("mitmflare")

OPTIONS = (("flare_connect_timeout_s", 10, "opening an upstream connection"),
           ("flare_headers_timeout_s", 600, "an answer's headers (non-streamed request)"),
           ("flare_stream_headers_timeout_s", 60, "an answer's headers (streamed request)"),
           ("flare_stream_idle_timeout_s", 60,
            "silence between two pieces of a streamed answer"))
MAX_SWEEP_S = 1.0


class Timeouts:
    """The per-attempt limits above, enforced by one periodic sweep."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.flows: dict[str, http.HTTPFlow] = {}  # flows with an attempt in flight, by id
        self._sweeper: asyncio.Task | None = None

    def load(self, loader) -> None:
        for name, default, what in OPTIONS:
            loader.add_option(name, int, default, f"Seconds an attempt may wait for {what} "
                                                  f"before its account is given up on.")

    def configure(self, updated: set[str]) -> None:
        for name, _, _ in OPTIONS:
            whole(name, getattr(ctx.options, name), 1)
        o = ctx.options
        self.proxy.timeouts = (o.flare_connect_timeout_s, o.flare_headers_timeout_s,
                              o.flare_stream_headers_timeout_s, o.flare_stream_idle_timeout_s)

    def running(self) -> None:
        self._sweeper = asyncio_utils.create_task(self._sweep_forever(),
                                                  name="mitmflare: timeout sweep", keep_ref=True)

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- hooks (cheap: a dict entry and a float per attempt) --------------------------------
    def request(self, f: http.HTTPFlow) -> None:
        fc = self.proxy.flows.get(f.id)
        if fc is not None and fc.account is not None and f.response is None:
            self.flows[f.id] = f

    def responseheaders(self, f: http.HTTPFlow) -> None:
        fc = self.proxy.flows.get(f.id)
        if fc is None or f.id not in self.flows:
            return
        response = f.response
        stream = response.stream if response is not None else None
        if response is None or not callable(stream):
            del self.flows[f.id]  # a whole answer follows: mitmproxy reads it without a limit
            return
        fc.last_byte_mono = time.monotonic()

        def tapped(chunk: bytes) -> Iterable[bytes] | bytes:
            fc.last_byte_mono = time.monotonic()
            return stream(chunk)

        response.stream = tapped

    def response(self, f: http.HTTPFlow) -> None:
        self.flows.pop(f.id, None)

    def error(self, f: http.HTTPFlow) -> None:
        self.flows.pop(f.id, None)

    # -- the sweep --------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(MAX_SWEEP_S, min(self.proxy.timeouts) / 4))
            try:
                self.sweep(time.monotonic())
            except Exception:
                log.exception("mitmflare timeout sweep")

    def sweep(self, now: float) -> list[str]:
        """End the attempts that are past a limit at monotonic time ``now``; returns their
        flow ids."""
        ended = []
        for flow_id, f in list(self.flows.items()):
            fc = self.proxy.flows.get(flow_id)
            account = fc.account if fc is not None else None
            if fc is None or account is None or not f.live:
                del self.flows[flow_id]
                continue
            reason = overdue(fc, f, now, self.proxy.timeouts)
            if reason is not None:
                del self.flows[flow_id]
                self._end(f, fc, account, reason)
                ended.append(flow_id)
        return ended

    def _end(self, f: http.HTTPFlow, fc: FlowContext, account: Account, reason: str) -> None:
        fc.timed_out = reason
        now = time.time()
        self.proxy.apply(account, Verdict(TRANSIENT, reason,
                                            cooldown_until=now + TRANSIENT_COOLDOWN_S),
                        fc.model, None, now)
        log.warning("flow %s: %s on account %s; closing its upstream connection", f.id, reason,
                    account.name)
        if not close_upstream(f, reason):
            f.kill()


def overdue(fc: FlowContext, f: http.HTTPFlow, now: float,
            timeouts: tuple[int, int, int, int]) -> str | None:
    """Which limit the attempt in ``fc`` is past at monotonic time ``now`` (s), or None.
    ``timeouts``: (connect, headers, stream headers, stream idle) in s."""
    connect, headers, stream_headers, idle = timeouts
    if f.response is not None:
        if fc.last_byte_mono and now - fc.last_byte_mono > idle:
            return "upstream_idle_timeout"
        return None
    waited = now - fc.attempt_mono
    if f.server_conn.timestamp_tcp_setup is None and waited > connect:
        return "upstream_connect_timeout"
    if waited > (stream_headers if fc.stream else headers):
        return "upstream_timeout"
    return None


def close_upstream(f: http.HTTPFlow, reason: str) -> bool:
    """Close ``f``'s upstream connection (connecting or open), as mitmproxy does itself when it
    cannot write to a connection: cancel the task that serves it. mitmproxy then ends the
    flow (``error`` hook) and answers the client with an error if nothing was sent yet.
    Returns False when the connection is not found (mitmproxy's internals changed: checked
    against mitmproxy 12.2 and 12.3 by ``tests/unit/test_timeouts.py``)."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(f.client_conn.id)
    io = getattr(handler, "transports", {}).get(f.server_conn)
    task = getattr(io, "handler", None)
    if task is None:
        return False
    with contextlib.suppress(RuntimeError):
        task.cancel(reason)
    return True
