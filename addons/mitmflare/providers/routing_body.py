"""What routing reads of a request body, without building the whole body as Python objects.

Claude Code sends its system prompt, tools and the whole conversation on every turn (100 KB to
10 MB), while routing reads only the top-level ``model``, ``stream``, ``metadata`` and
``stream_options``, the blocks' ``cache_control`` in ``system``, ``tools`` and the latest
turns, and (to tell a conversation without a session) ``system`` and the first user turn
(:mod:`..routing.cache_affinity`). :func:`routing_body` decodes the body with msgspec into
typed views of those keys: every other value is checked and skipped in C, never made into
Python objects. Measured on Claude Code-shaped bodies (2-core VM, best of 7, see
``scripts/bench --sizes``): 1 MB 0.27 ms (``json`` 0.78, orjson 0.38), 10 MB 2.7 ms (``json``
10.4, orjson 10.3), with a few hundred objects instead of ~1.1 times the body's size.

Acceptance: msgspec checks the whole body as JSON (grammar, escapes, numbers, nesting) and
whatever it refuses or cannot type (``NaN``, lone surrogate escapes, a byte-order mark,
numbers past a double, UTF-16, a ``messages`` that is not a list of objects, ...) is read by
``json`` instead, so a body ``json`` takes is never refused and routing reads the same values.
One difference, kept on purpose: msgspec does not check the UTF-8 of strings it skips, and
checking it in Python costs more than the whole read (4-7 ms at 10 MB of real, partly
non-ASCII text). Such a body goes to the upstream as the client sent it, as it would through
any proxy; the upstream refuses it (a 400 to the client, which changes no account's state),
and a request that must be re-encoded (conversion, a mapped model) is sent as is too, since
``json`` cannot read it (``addons/attempt.py``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .wire import json_object

_UNSET: Any = msgspec.UNSET
LATEST_TURNS = 4
"""Turns whose blocks' ``cache_control`` routing reads (:func:`..routing.cache_affinity.cache_ttl`:
breakpoints sit on the latest turns)."""


class _Block(msgspec.Struct):
    cache_control: Any = _UNSET


class _Turn(msgspec.Struct):
    role: Any = _UNSET
    content: msgspec.Raw | msgspec.UnsetType = _UNSET


class _Body(msgspec.Struct):
    model: Any = _UNSET
    stream: Any = _UNSET
    metadata: Any = _UNSET
    stream_options: Any = _UNSET
    system: Any = _UNSET
    tools: list[_Block] | msgspec.UnsetType | None = _UNSET
    messages: list[_Turn] | msgspec.UnsetType | None = _UNSET


_BODY = msgspec.json.Decoder(_Body)
_ANY = msgspec.json.Decoder()
_BLOCKS = msgspec.json.Decoder(list[_Block])
_TOP = ("model", "stream", "metadata", "stream_options", "system")


def routing_body(data: bytes | None) -> dict[str, Any] | None:
    """The request body ``data`` abridged to what routing reads, as a dict shaped like the
    body (:func:`abridged`). None when ``data`` is not a JSON object: the same answer as
    :func:`.wire.json_object` (but for bytes that are not UTF-8 in a string routing does not
    read, see the module), whose values it gives where it keeps them. A body msgspec cannot
    read this way is parsed whole by ``json`` and then abridged."""
    if not data:
        return None
    try:
        view = _BODY.decode(data)
        body: dict[str, Any] = {}  # (spelled out: this runs on every request)
        if view.model is not _UNSET:
            body["model"] = view.model
        if view.stream is not _UNSET:
            body["stream"] = view.stream
        if view.metadata is not _UNSET:
            body["metadata"] = view.metadata
        if view.stream_options is not _UNSET:
            body["stream_options"] = view.stream_options
        if view.system is not _UNSET:
            body["system"] = view.system
        tools, turns = view.tools, view.messages
        if tools is not _UNSET:
            body["tools"] = [_control(b.cache_control) for b in tools] \
                if isinstance(tools, list) else None
        if turns is not _UNSET:
            body["messages"] = _kept_turns(turns, _view_role, _view_turn) \
                if isinstance(turns, list) else None
        return body
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return abridged(json_object(data))


def abridged(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """``body`` (a parsed request body) with what routing reads: the top-level ``model``,
    ``stream``, ``metadata``, ``stream_options`` and ``system`` as sent; ``tools`` with one
    ``{"cache_control": …}`` (or ``{}``) per tool object; ``messages`` with the first user turn
    whole, then the :data:`LATEST_TURNS` latest turns with their ``role`` and, when their
    ``content`` is a list, one ``{"cache_control": …}`` (or ``{}``) per block object, in their
    order and without repeating a turn; what is not an object (a tool, a turn, a block) as
    sent. Keys the body lacks are absent."""
    if body is None:
        return None
    out = {key: body[key] for key in _TOP if key in body}
    if "tools" in body:
        out["tools"] = _controls(body["tools"])
    if "messages" in body:
        turns = body["messages"]
        out["messages"] = _kept_turns(turns, _dict_role, _dict_turn) \
            if isinstance(turns, list) else turns
    return out


def _kept_turns(turns: list, role, turn) -> list:
    """The first user turn (``turn(t, True)``) and the latest ones (``turn(t, False)``)."""
    first = None
    for i, t in enumerate(turns):
        if _is_turn(t) and role(t) == "user":
            first = i
            break
    start = max(0, len(turns) - LATEST_TURNS)
    kept = [turn(turns[first], True)] if first is not None and first < start else []
    for i in range(start, len(turns)):
        kept.append(turn(turns[i], i == first))
    return kept


def _view_role(turn: _Turn) -> Any:
    return turn.role


def _dict_role(turn: dict) -> Any:
    return turn.get("role")


def _is_turn(turn: Any) -> bool:
    return isinstance(turn, (dict, _Turn))


def _dict_turn(turn: Any, whole: bool) -> Any:
    if not isinstance(turn, dict):
        return turn
    out = {"role": turn["role"]} if "role" in turn else {}
    if "content" in turn:
        content = turn["content"]
        if whole:
            out["content"] = content
        elif isinstance(content, list):
            out["content"] = _controls(content)
    return out


def _view_turn(turn: _Turn, whole: bool) -> dict[str, Any]:
    out = {} if turn.role is _UNSET else {"role": turn.role}
    raw = turn.content  # the turn's bytes within the body (no copy)
    if not isinstance(raw, msgspec.Raw):
        return out
    if whole:
        out["content"] = _ANY.decode(raw)
    elif memoryview(raw)[:1] == b"[":
        try:
            out["content"] = [_control(b.cache_control) for b in _BLOCKS.decode(raw)]
        except msgspec.ValidationError:  # not every block an object: read them all
            out["content"] = _controls(_ANY.decode(raw))
    return out


def _controls(blocks: Any) -> Any:
    if not isinstance(blocks, list):
        return blocks
    return [_control(b.get("cache_control", _UNSET)) if isinstance(b, dict) else b
            for b in blocks]


def _control(control: Any) -> dict[str, Any]:
    return {} if control is _UNSET else {"cache_control": control}
