"""The simulated upstream's prompt caches: one per credential (account), with TTLs, so a
conversation moved to another account really reports cache-creation tokens.

Modelled on Anthropic's prompt caching (``shared/reference/prompt-cache-limits-clients.md``,
"Prompt caching"): a request's prompt is its ``tools``, ``system`` and ``messages`` blocks in
that order; a block with ``cache_control`` is a breakpoint. The longest prefix ending at an
earlier breakpoint that this credential cached and whose TTL has not passed is read; the
tokens from there to the last breakpoint are written; the tokens after it are plain input.
Every read or write starts the TTL again (5 minutes, or 1 hour for ``"ttl": "1h"``), measured
from the request's arrival. Caches are per credential: another account's cache never hits.

Simplifications: a block's size is its JSON's length / 4 tokens (at least 1); there is no
minimum cacheable length and no 20-block lookback limit.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

TTLS_S = {"5m": 300.0, "1h": 3600.0}
ENTRIES_MAX = 50_000  # cached prefixes kept per credential before expired ones are dropped


class PromptCaches:
    """credential -> {prefix hash: epoch s until which it lives}.

    ``ttl_scale``: TTLs last that many times less (like the simulator's ``window_scale``)."""

    def __init__(self, ttl_scale: float = 1.0) -> None:
        self.ttl_scale = ttl_scale
        self._caches: dict[str, dict[bytes, float]] = {}

    def clear(self) -> None:
        self._caches.clear()

    def usage(self, credential: str, body: dict[str, Any], now: float) -> dict[str, Any] | None:
        """The Anthropic ``usage`` input fields (``input_tokens``, ``cache_read_input_tokens``,
        ``cache_creation_input_tokens``, ``cache_creation`` with the 5m / 1h split, tokens) of
        ``body`` sent with ``credential`` at ``now`` (epoch s), caching its breakpoints; None
        when the request has no ``cache_control`` (its usage is not simulated here)."""
        prefixes = list(_prefixes(body))
        breakpoints = [i for i, (_, _, ttl) in enumerate(prefixes) if ttl]
        if not breakpoints:
            return None
        cache = self._caches.setdefault(credential, {})
        last = breakpoints[-1]
        read_at = next((i for i in range(last, -1, -1)
                        if cache.get(prefixes[i][0], 0.0) > now), None)
        read = prefixes[read_at][1] if read_at is not None else 0
        written = {"5m": 0, "1h": 0}
        start = read
        for i in breakpoints:
            digest, tokens, ttl = prefixes[i]
            if tokens > start:
                written[ttl] += tokens - start
                start = tokens
            cache[digest] = max(cache.get(digest, 0.0), now + TTLS_S[ttl] / self.ttl_scale)
        if len(cache) > ENTRIES_MAX:
            for digest in [d for d, until in cache.items() if until <= now]:
                del cache[digest]
        total = prefixes[-1][1]
        return {"input_tokens": total - prefixes[last][1], "cache_read_input_tokens": read,
                "cache_creation_input_tokens": written["5m"] + written["1h"],
                "cache_creation": {"ephemeral_5m_input_tokens": written["5m"],
                                   "ephemeral_1h_input_tokens": written["1h"]}}


def _prefixes(body: dict[str, Any]):
    """(hash of the prompt up to and including this block, tokens so far, the block's TTL
    key when it is a breakpoint else None) for every block, in prompt order."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(body.get("model", "")).encode())
    tokens = 0
    for role, block in _blocks(body):
        control = block.get("cache_control") if isinstance(block, dict) else None
        plain = {k: v for k, v in block.items() if k != "cache_control"} \
            if isinstance(block, dict) else block
        text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
        digest.update(role.encode() + b"\0" + text.encode() + b"\0")
        tokens += max(1, len(text) // 4)
        ttl = None
        if isinstance(control, dict):
            ttl = "1h" if control.get("ttl") == "1h" else "5m"
        yield digest.copy().digest(), tokens, ttl


def _blocks(body: dict[str, Any]):
    """(role, block) in prompt order: tools, system, then each message's content blocks (a
    string content or system prompt is one text block)."""
    for tool in body.get("tools") or []:
        yield "tool", tool
    system = body.get("system")
    if isinstance(system, str):
        yield "system", {"type": "text", "text": system}
    elif isinstance(system, list):
        yield from (("system", b) for b in system)
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        role, content = str(message.get("role")), message.get("content")
        if isinstance(content, list):
            yield from ((role, b) for b in content)
        else:
            yield role, {"type": "text", "text": content}
