"""Addon: records every client request as a `requests` row (``flare_db``).

On the event loop it only collects facts: timings, the account, and usage from the SSE tap.
Bodies that still need parsing, and the cost, are handled in the writer process
(:mod:`.rows`, :mod:`.writer_process`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from mitmproxy import ctx, http

from ..config.defaults import FILE_OPTIONS
from ..config.option_types import decimal, whole
from ..providers import CLIENT_CREDENTIAL_HEADERS
from ..providers.presets import CODEX
from ..providers.sse import UsageTap
from ..providers.wire import content, header
from ..proxy_state import FlowContext, ProxyState
from ..storage.row_stream import WORKER
from ..storage.rows import ACCOUNT_PRICE, BODY, BODY_IS_SSE, FORMAT, PAYLOAD, PRICE_PROVIDER
from ..storage.writer_process import WriterProcess

log = logging.getLogger("mitmflare")

SSE = "text/event-stream"
PAYLOAD_MODES = ("off", "errors", "all")
HIDDEN_HEADERS = (*CLIENT_CREDENTIAL_HEADERS, "cookie", "set-cookie")


def _headers(headers: http.Headers) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items(multi=True) if k.lower() not in HIDDEN_HEADERS]


class Recorder:
    """Owns the database writer process and turns finished flows into rows."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.copy_limit = 1024 * 1024
        self.payloads = "off"
        self.payload_limit = 256 * 1024

    def load(self, loader) -> None:
        loader.add_option("flare_db", str, *FILE_OPTIONS["flare_db"])
        loader.add_option("flare_request_log", bool, False,
                          "Log one line per request (account, model, status, tokens, cost, ms) "
                          "instead of mitmproxy's connect/disconnect lines.")
        loader.add_option("flare_payloads", str, "off",
                          "Capture request and response bodies for debugging into the "
                          "payloads table (headers without credentials): off | errors | all.",
                          choices=PAYLOAD_MODES)
        loader.add_option("flare_payload_max_kb", int, 256,
                          "Largest body kept per request or response, KB (cut with a marker).")
        loader.add_option("flare_payload_retention_days", str, "7",
                          "Captured payloads older than this many days are deleted (hourly).")
        loader.add_option("flare_retention_days", str, "0",
                          "Delete requests, attempts and account events older than this many "
                          "days, hourly in small batches (0: keep forever); the hourly rollup "
                          "behind the charts is always kept.")
        loader.add_option("flare_stream_copy_kb", int, 1024,
                          "Keep a copy of each streamed (SSE) answer, up to this many KB, so "
                          "mitmweb and saved flows can show it; 0 keeps none. Chunks are "
                          "never delayed.")

    def configure(self, updated: set[str]) -> None:
        self.payloads = ctx.options.flare_payloads
        self.payload_limit = whole("flare_payload_max_kb", ctx.options.flare_payload_max_kb, 1) * 1024
        self.copy_limit = whole("flare_stream_copy_kb", ctx.options.flare_stream_copy_kb, 0) * 1024
        if self.payloads != "off":
            self.copy_limit = max(self.copy_limit, self.payload_limit)
        if "flare_request_log" in updated:
            logging.getLogger("mitmproxy.proxy.server").setLevel(
                logging.WARNING if ctx.options.flare_request_log else logging.NOTSET)
        if {"flare_db", "flare_state"} & updated:
            self._stop_writer()
            for path in (ctx.options.flare_db, ctx.options.flare_state):
                folder = os.path.dirname(os.path.abspath(path))
                os.makedirs(folder, exist_ok=True)
            writer = WriterProcess(ctx.options.flare_db, ctx.options.flare_state)
            writer.start()
            if not writer.ready.wait(30):
                log.error("the database writer process did not start within 30 s")
            self.proxy.writer = writer
            self.proxy.snapshot_accounts(force=True)
        if self.proxy.writer is not None:
            self.proxy.writer.configure(
                request_log=ctx.options.flare_request_log,
                retention_days=decimal("flare_retention_days", ctx.options.flare_retention_days,
                                       0, low_inclusive=True),
                payload_retention_days=decimal("flare_payload_retention_days",
                                               ctx.options.flare_payload_retention_days, 0))

    def done(self) -> None:
        self.proxy.snapshot_accounts(force=True)
        self._stop_writer()

    def _stop_writer(self) -> None:
        writer, self.proxy.writer = self.proxy.writer, None
        if writer is not None:
            writer.flush()
            writer.stop()

    # -- hooks ------------------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        fc = self.proxy.flows.get(flow.id)
        response = flow.response
        if fc is None or fc.account is None or response is None or response.status_code >= 400:
            return
        if not response.headers.get("content-type", "").startswith(SSE):
            return
        if fc.account.wire == CODEX and not fc.stream:
            return  # Codex always streams: kept whole, answered as JSON (see .convert)
        # the usage as the upstream counts it: read in its own format, before the conversion
        # the router set up (.attempt.convert_stream), which this wraps
        tap = fc.tap = UsageTap(fc.account.wire if fc.converted else fc.wire_format)
        convert = response.stream if callable(response.stream) else None
        limit = self.copy_limit
        kept = fc.stream_copy = bytearray() if limit else None

        def forward(chunk: bytes) -> list[bytes]:
            tap.feed(chunk)
            if convert is not None:
                out = convert(chunk)  # b"" at the end closes the conversion
                chunk = out if isinstance(out, bytes) else b"".join(out)
            if kept is not None and len(kept) < limit:
                kept.extend(chunk[:limit - len(kept)])
            # Never hand mitmproxy an empty chunk: HTTP/1.1 chunked encoding would send it
            # as the terminating zero-length chunk and end the client's body early.
            return [chunk] if chunk else []

        response.stream = forward

    def response(self, flow: http.HTTPFlow) -> None:
        fc = self.proxy.flows.pop(flow.id, None)
        if fc is None:
            return
        self.proxy.put("request", self._row(flow, fc, None))
        if fc.stream_copy is not None and flow.response is not None and not flow.response.raw_content:
            flow.response.data.content = bytes(fc.stream_copy)  # for display only: already sent

    def error(self, flow: http.HTTPFlow) -> None:
        fc = self.proxy.flows.pop(flow.id, None)
        if fc is not None:
            self.proxy.put("request", self._row(flow, fc, flow.error.msg if flow.error else None))

    def _row(self, flow: http.HTTPFlow, fc: FlowContext, error: str | None) -> dict[str, Any]:
        now = time.time()
        started = flow.request.timestamp_start or fc.started
        response = flow.response
        row: dict[str, Any] = {
            "id": fc.row_id, "started_at": float(started),
            "provider": fc.account.provider if fc.account else None,
            "wire_format": fc.wire_format or None,
            "account": fc.account.name if fc.account else None,
            "method": flow.request.method, "path": fc.path.split("?", 1)[0],
            "model": fc.asked_model or fc.model, "upstream_model": fc.upstream_model,
            "status": response.status_code if response else None,
            "streamed": int(fc.stream), "duration_ms": round((now - started) * 1000, 3),
            "ttfb_ms": round((fc.ttfb - started) * 1000, 3) if fc.ttfb else None,
            "client_session": fc.client_session, "user_agent": fc.user_agent,
            "error": error or fc.error, "attempts": len(fc.attempts),
            "failover": int(fc.failover), "replay": int(fc.replay), "user": fc.user,
            "worker": WORKER,
            "overage": int(bool(fc.limits is not None and response is not None
                                and response.status_code < 400
                                and fc.limits.plan_spent_until(now))),
            "conversation": fc.cache.conversation,
            "cache_ttl_s": fc.cache.ttl_s if fc.cache.conversation else None,
            FORMAT: fc.wire_format,
            PRICE_PROVIDER: fc.account.config.preset.price_provider if fc.account else None,
            ACCOUNT_PRICE: fc.account.config.price.rates() if fc.account and
            fc.account.config.price else None,
        }
        if response is None:
            pass
        elif fc.tap is not None and response.stream:
            row.update({k: v for k, v in fc.tap.usage.as_row().items() if v is not None})
            row["model"] = fc.asked_model or fc.model or fc.tap.model
            row["upstream_model"] = fc.tap.model or fc.upstream_model
            row["error"] = error or fc.tap.error
        elif fc.upstream_body is not None:  # converted: read as the upstream sent it
            row[BODY], row[FORMAT] = fc.upstream_body, fc.account.wire if fc.account else None
            row[BODY_IS_SSE] = fc.upstream_sse
        elif response.raw_content:
            row[BODY] = content(response)
            row[BODY_IS_SSE] = (header(response.headers, b"content-type") or "").startswith(SSE)
        failed = row["error"] is not None or (row["status"] or 0) >= 400 or response is None
        if self.payloads == "all" or (self.payloads == "errors" and failed):
            row[PAYLOAD] = self._payload(flow, fc)
        return row

    def _payload(self, flow: http.HTTPFlow, fc: FlowContext) -> dict:
        """What the writer turns into a `payloads` row: the client's request body and the
        answer it got (a stream: the text sent, up to the copy kept), bytes cut at
        ``flare_payload_max_kb``; headers without any credential or cookie."""
        response = flow.response
        if response is None:
            answer = b""
        elif fc.stream_copy is not None and response.stream:
            answer = bytes(fc.stream_copy)
        else:
            answer = response.raw_content or b""
        limit = self.payload_limit  # cut here: no whole copy of a large body to the writer
        request_body = fc.raw_body or b""
        return {"limit": limit, "request_body": request_body[:limit + 1],
                "request_size": len(request_body),
                "response_body": answer[:limit + 1], "response_size": len(answer),
                "request_headers": _headers(flow.request.headers),
                "response_headers": _headers(response.headers) if response else None}
