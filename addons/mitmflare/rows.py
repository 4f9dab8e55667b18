"""Finishing `requests` rows in the database writer thread, off the event loop: usage and
model from a kept response body, the error text of an error body, and the cost in USD."""

from __future__ import annotations

import json
from typing import Any

from .pricing import cost_usd
from .sse import UsageTap
from .usage import usage_from_json

BODY = "_body"          # raw response body kept for parsing here (bytes)
BODY_IS_SSE = "_sse"    # the kept body is an event stream


def complete(row: dict[str, Any]) -> dict[str, Any]:
    """Fill usage, model, error and ``cost_usd`` of a row; drop the private keys."""
    body: bytes | None = row.pop(BODY, None)
    is_sse = row.pop(BODY_IS_SSE, False)
    provider = row.get("provider") or ""
    if body:
        status = row.get("status") or 0
        if is_sse:
            tap = UsageTap(provider)
            tap.feed(body + b"\n\n")
            row.update({k: v for k, v in tap.usage.as_row().items() if v is not None})
            row["model"] = tap.model or row.get("model")
            row["error"] = row.get("error") or tap.error
        elif status < 400:
            usage, model = usage_from_json(provider, body)
            if usage is not None:
                row.update(usage.as_row())
            row["model"] = model or row.get("model")
        elif not row.get("error"):
            row["error"] = error_text(status, body)
    row["cost_usd"] = cost_usd(provider, row.get("model"), row.get("input_tokens"),
                               row.get("output_tokens"), row.get("cache_read_input_tokens"),
                               row.get("cache_creation_input_tokens"),
                               row.get("cache_creation_1h_input_tokens"))
    return row


def error_text(status: int, body: bytes) -> str:
    """``"429 rate_limit_error: message"`` from an Anthropic or OpenAI error body."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError):
        error = None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return f"{status} {kind}: {error.get('message', '')}"[:500]
    return f"{status} {body[:200].decode('utf-8', 'replace')}"
