"""Reading untrusted values from the wire: JSON bodies and the scalars inside them.

Client and upstream bodies can be anything. ``json.loads`` raises ``RecursionError`` (not
``ValueError``) on deeply nested input such as ``[`` x 200,000, and decoded values may have any
type (``"model": {"a": 1}``, ``"input_tokens": "5"``, ``true`` where a count belongs). Every
parse of a body and every scalar that ends up in a row or a computation goes through here.
"""

from __future__ import annotations

import json
from typing import Any

from mitmproxy.http import Headers, Message

MAX_TEXT = 200  # characters kept of a text field (model names, session ids)


def json_object(data: bytes | str | None) -> dict[str, Any] | None:
    """The JSON object in ``data``, or None when it is empty, not JSON, too deeply nested,
    not UTF-8, or not an object."""
    if not data:
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object (a dict), else an empty one: for reading a nested
    field that may be missing or of another type (``data.get("error")``)."""
    return value if isinstance(value, dict) else {}


def header(headers: Headers, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), or None: one pass over the raw
    fields, cheaper than ``Headers.get`` on the hot path. Decoded as mitmproxy decodes
    header values (UTF-8, undecodable bytes kept as surrogates)."""
    for key, value in headers.fields:
        if key.lower() == name:
            return value.decode("utf-8", "surrogateescape")
    return None


def headers_named(headers: Headers, names: frozenset[bytes]) -> dict[bytes, str]:
    """The first value of each header in ``names`` (lower-case bytes) that is present, in one
    pass over the raw fields (:func:`header` for several names at once)."""
    found: dict[bytes, str] = {}
    for key, value in headers.fields:
        key = key.lower()
        if key in names and key not in found:
            found[key] = value.decode("utf-8", "surrogateescape")
    return found


def content(message: Message, strict: bool = True, encoded: bool | None = None) -> bytes | None:
    """The body of ``message`` as mitmproxy's ``get_content`` gives it, without its decoding
    step for the common body that has no ``content-encoding``. ``encoded``: whether it has
    one, when the caller already knows (None: looked up here)."""
    if encoded is None:
        encoded = header(message.headers, b"content-encoding") is not None
    if not encoded:
        return message.raw_content
    return message.get_content(strict=strict)


def count(value: Any) -> int | None:
    """A token count: a non-negative ``int`` (``bool`` excluded), else None."""
    return value if type(value) is int and value >= 0 else None


def text(value: Any) -> str | None:
    """A short text field (e.g. a model name): a non-empty ``str`` cut to ``MAX_TEXT``
    characters, else None."""
    return value[:MAX_TEXT] if isinstance(value, str) and value else None
