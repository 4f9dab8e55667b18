"""Addon: ``flare_log_format = text | json``. With ``json`` every log line (mitmproxy's and
mitmflare's) is one JSON object for log shippers: ``time`` (ISO 8601 UTC), ``level``,
``logger``, ``message``, plus ``flow_id``, ``account``, ``status``, ``ms`` (and the other
fields of a request) on the lines of ``flare_request_log``."""

from __future__ import annotations

import json
import logging

from mitmproxy import ctx

from ..storage.rows import LOG_FIELDS as FIELDS
from ..times import iso_utc

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the request fields when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        data = {"time": iso_utc(record.created), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage()}
        data.update({f: getattr(record, f) for f in FIELDS if getattr(record, f, None) is not None})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class LogFormat:
    """Swaps the formatter of the root logger's handlers (mitmproxy's terminal log among
    them) for :class:`JsonFormatter`, and back."""

    def __init__(self) -> None:
        self._saved: dict[logging.Handler, logging.Formatter | None] = {}

    def load(self, loader) -> None:
        loader.add_option("flare_log_format", str, "text",
                          "Log lines as text, or as one JSON object each (json) for log "
                          "shippers; pair json with flow_detail=0 and flare_request_log=true.",
                          choices=FORMATS)

    def configure(self, updated: set[str]) -> None:
        if "flare_log_format" not in updated:
            return
        wanted = ctx.options.flare_log_format
        handlers = logging.getLogger().handlers
        if wanted == "json":
            for handler in handlers:
                if handler not in self._saved:
                    self._saved[handler] = handler.formatter
                handler.setFormatter(JsonFormatter())
        else:
            for handler, formatter in self._saved.items():
                handler.setFormatter(formatter)
            self._saved.clear()
