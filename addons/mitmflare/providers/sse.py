"""Incremental reading of Server-Sent Events for usage accounting.

:class:`UsageTap` is fed the raw response chunks as mitmproxy forwards them. It never holds a
chunk back: it only buffers the unfinished tail of the current event and decodes JSON for the
few events that carry usage, the model or an error. Event formats: Anthropic Messages
streaming (``message_start``, cumulative ``message_delta``, ``error``), OpenAI Chat
Completions (data-only chunks, final ``usage`` chunk, ``[DONE]``) and OpenAI Responses
(``response.created`` / ``response.completed`` / ``incomplete`` / ``failed``, ``error``);
``shared/reference/upstream-apis.md`` section 4.
"""

from __future__ import annotations

import re
from typing import Any

from .usage import Usage
from .wire import json_object, obj, text

_ANTHROPIC_EVENTS = (b"message_start", b"message_delta", b"error")
_RESPONSES_EVENTS = (b"response.created", b"response.completed", b"response.incomplete",
                     b"response.failed", b"error")
_HAS_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_HAS_ERROR = re.compile(rb'^\s*\{\s*"error"\s*:')


class UsageTap:
    """Collects usage, model and mid-stream errors from an SSE byte stream.

    Attributes after feeding: ``usage`` (:class:`Usage`), ``model`` (str or None), ``error``
    (``"<type>: <message>"`` of an error event, or None), ``error_type``, ``events`` (count).
    """

    __slots__ = ("_buf", "_wire_format", "error", "error_type", "events", "model", "usage")

    def __init__(self, wire_format: str) -> None:
        self._wire_format = wire_format
        self._buf = b""
        self.usage = Usage()
        self.model: str | None = None
        self.error: str | None = None
        self.error_type: str | None = None
        self.events = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next raw chunk (any split, ``\\n`` or ``\\r\\n`` line ends)."""
        if not chunk:
            return
        blocks, self._buf = split_events(self._buf + chunk)
        for block in blocks:
            if block:
                self.events += 1
                self._event(block)

    def _event(self, block: bytes) -> None:
        name = b""
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].lstrip() if not data else data + b"\n" + line[5:].lstrip()
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data:
            return
        if self._wire_format == "anthropic":
            if name in _ANTHROPIC_EVENTS:
                self._anthropic(_loads(data))
        elif name:
            if name in _RESPONSES_EVENTS:
                self._responses(_loads(data))
        elif _HAS_USAGE.search(data) or _HAS_ERROR.match(data):
            self._chat(_loads(data))

    def _anthropic(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            message = message if isinstance(message, dict) else {}
            self.model = text(message.get("model")) or self.model
            self.usage.merge_anthropic(obj(message.get("usage")))
        elif kind == "message_delta":
            self.usage.merge_anthropic(obj(event.get("usage")))
        elif kind == "error":
            self._set_error(obj(event.get("error")))

    def _responses(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "error":
            self._set_error(event)
            return
        response = obj(event.get("response"))
        self.model = text(response.get("model")) or self.model
        if isinstance(response.get("usage"), dict):
            self.usage.merge_openai(response["usage"])
        if kind == "response.failed" and isinstance(response.get("error"), dict):
            self._set_error(response["error"])

    def _chat(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("error"), dict):
            self._set_error(chunk["error"])
            return
        self.model = text(chunk.get("model")) or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage.merge_openai(chunk["usage"])

    def _set_error(self, error: dict[str, Any]) -> None:
        self.error_type = text(error.get("type")) or text(error.get("code")) or "error"
        self.error = f"{self.error_type}: {error.get('message', '')}"[:500]


def split_events(buf: bytes) -> tuple[list[bytes], bytes]:
    """(the complete events in ``buf``, each without its blank line, and the unfinished
    rest); ``\r\n`` line ends are read as ``\n``."""
    if b"\r" in buf:
        buf = buf.replace(b"\r\n", b"\n")
    end = buf.rfind(b"\n\n")
    if end < 0:
        return [], buf
    return buf[:end].split(b"\n\n"), buf[end + 2:]


def _loads(data: bytes) -> dict[str, Any]:
    return json_object(data) or {}

