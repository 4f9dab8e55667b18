"""Finishing `requests` rows in the database writer (its own process), off the event loop:
usage and model from a kept response body, the error text of an error body, and the cost in
USD."""

from __future__ import annotations

import json
import math
from typing import Any

from ..providers.sse import UsageTap
from ..providers.usage import usage_from_json
from ..providers.wire import json_object
from ..times import iso_utc
from . import schema
from .cache_forensics import STARTED_S, WRITE_PREMIUM
from .pricing import account_cost, cost_usd

BODY = "_body"          # raw response body kept for parsing here (bytes)
BODY_IS_SSE = "_sse"    # the kept body is an event stream
FORMAT = "_format"      # the wire format the kept body is in (anthropic/openai)
PRICE_PROVIDER = "_price"  # genai-prices provider id of the account (None: by model)
ACCOUNT_PRICE = "_account_price"  # the account's own `price:` (USD per MTok), or None
PAYLOAD = "_payload"    # captured bodies and headers (flare_payloads), see payload_row

LOG_FIELDS = ("flow_id", "account", "model", "status", "ms", "input_tokens", "output_tokens",
              "cost_usd", "failover", "user", "error")
"""The fields of a request's log line (``extra=`` of its log record) that the JSON log format
prints as keys (:mod:`mitmflare.addons.log_format`)."""


def complete(row: dict[str, Any]) -> dict[str, Any]:
    """Fill usage, model, error, ``cost_usd`` and ``cost_source`` of a row; drop the private
    keys; make every value fit its column's type (:func:`conform`). The cost comes from
    genai-prices, else from the account's ``price:`` (``cost_source`` says which; NULL when
    neither knows the model). Adds the private keys :data:`.cache_forensics.STARTED_S` (the
    start, epoch s) and, for a row with cache writes, :data:`.cache_forensics.WRITE_PREMIUM`
    (USD its writes cost above reading the same tokens, at the same prices) for
    :class:`.cache_forensics.CacheForensics`."""
    body: bytes | None = row.pop(BODY, None)
    is_sse = row.pop(BODY_IS_SSE, False)
    wire = row.pop(FORMAT, None) or row.get("wire_format") or ""
    price_provider = row.pop(PRICE_PROVIDER, None)
    account_price = row.pop(ACCOUNT_PRICE, None)
    reported = None
    if body:
        status = row.get("status") or 0
        if is_sse:
            tap = UsageTap(wire)
            tap.feed(body + b"\n\n")
            row.update({k: v for k, v in tap.usage.as_row().items() if v is not None})
            reported = tap.model
            row["error"] = row.get("error") or tap.error
        elif status < 400:
            usage, reported = usage_from_json(wire, body)
            if usage is not None:
                row.update(usage.as_row())
        elif not row.get("error"):
            row["error"] = error_text(status, body)
    row["model"] = row.get("model") or reported
    row["upstream_model"] = reported or row.get("upstream_model") or row["model"]
    if isinstance(row.get("started_at"), float):
        row[STARTED_S] = row["started_at"]
        row["started_at"] = iso_utc(row["started_at"])
    conform(row)
    counts = (row.get("input_tokens"), row.get("output_tokens"),
              row.get("cache_read_input_tokens"), row.get("cache_creation_input_tokens"))
    model, write_1h = row.get("upstream_model"), row.get("cache_creation_1h_input_tokens")
    cost = cost_usd(price_provider, model, *counts, write_1h)
    source = "genai-prices" if cost is not None else None
    if cost is None and account_price:
        cost = account_cost(account_price, *counts)
        source = "account" if cost is not None else None
    row["cost_usd"], row["cost_source"] = cost, source
    if cost is not None and counts[3]:
        # the same request had its writes been cache reads
        as_read = (counts[0], counts[1], (counts[2] or 0) + counts[3], 0)
        cost_read = cost_usd(price_provider, model, *as_read, 0) if source == "genai-prices" \
            else account_cost(account_price, *as_read)
        row[WRITE_PREMIUM] = max(cost - cost_read, 0.0) if cost_read is not None else None
    return row


TEXT_MAX = 2000  # characters kept of a text column


def conform(row: dict[str, Any], columns: dict[str, type] = schema.REQUESTS) -> dict[str, Any]:
    """Make each value fit its column in place: ``int`` columns take ints (``bool`` and whole
    finite floats converted), ``float`` columns finite numbers, ``str`` columns text (cut to
    ``TEXT_MAX``); anything else becomes NULL. Returns ``row``."""
    for column, kind in columns.items():
        value = row.get(column)
        if value is None or (type(value) is kind
                             and not (isinstance(value, str) and len(value) > TEXT_MAX)):
            continue
        if kind is str:
            row[column] = value[:TEXT_MAX] if isinstance(value, str) else None
        elif isinstance(value, bool | int | float) and math.isfinite(value):
            row[column] = kind(value)
        else:
            row[column] = None
    return row


def error_text(status: int, body: bytes) -> str:
    """``"429 rate_limit_error: message"`` from an Anthropic or OpenAI error body."""
    error = (json_object(body) or {}).get("error")
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return f"{status} {kind}: {error.get('message', '')}"[:500]
    return f"{status} {body[:200].decode('utf-8', 'replace')}"


def payload_row(request_id: str, created_at: str, captured: dict[str, Any]) -> dict[str, Any]:
    """The `payloads` row for a captured request: bodies as text (UTF-8, undecodable bytes
    replaced), each cut at ``captured["limit"]`` bytes with a marker naming its whole size
    (``request_size`` / ``response_size`` when the proxy sent only the first bytes); headers
    as JSON."""
    limit = captured["limit"]

    def body(raw: bytes, size: int | None) -> tuple[str, int]:
        size = len(raw) if size is None else size  # the proxy sends at most limit + 1 bytes
        if size <= limit:
            return raw.decode("utf-8", "replace"), 0
        return raw[:limit].decode("utf-8", "replace") + f"\n…[cut at {limit // 1024} KB of " \
            f"{size} bytes]", 1

    request_body, request_cut = body(captured["request_body"], captured.get("request_size"))
    response_body, response_cut = body(captured["response_body"],
                                       captured.get("response_size"))
    headers = captured.get("response_headers")
    return {"id": request_id, "created_at": created_at,
            "request_headers": json.dumps(captured["request_headers"]),
            "request_body": request_body, "request_truncated": request_cut,
            "response_headers": json.dumps(headers) if headers is not None else None,
            "response_body": response_body, "response_truncated": response_cut}
