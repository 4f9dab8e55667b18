"""Prompt-cache affinity: a conversation stays on the account where its prompt cache lives.

A prompt cache belongs to one organization / API key, so a conversation moved to another
account writes its whole context again at the cache-write price (1.25x input for a 5-minute
write, 2x for a 1-hour one, against 0.1x for a read). Facts: ``shared/reference/
prompt-cache-limits-clients.md`` ("Prompt caching"): the TTL is 5 minutes unless
``cache_control`` asks ``"ttl": "1h"``; every read refreshes it.

* The **conversation** is Claude Code's session (``x-claude-code-session-id``, else the session
  in ``metadata.user_id``: :mod:`.request_info`), else a hash of the system prompt and the first
  user turn — never of the last turn, which carries ``cache_control`` and changes every time.
  A Claude Code sub-agent (``x-claude-code-agent-id``; its session header is its parent's) is
  a conversation of its own, ``SESSION:agent:ID`` (its prompt, so its cache, differs), whose
  **parent** is ``SESSION:agent:PARENT`` (``x-claude-code-parent-agent-id``) or, without that
  header, the session's main conversation. Facts: ``shared/reference/upstream-apis.md``
  section 8 and ``prompt-cache-limits-clients.md`` ("Claude Code").
* The **TTL** is read from each request's ``cache_control`` blocks (the longest asked), and
  every request of the conversation starts it again. A request without ``cache_control`` uses
  no cache: nothing holds it to an account.
* Within the TTL the conversation goes to the account it was last served by, whatever the
  strategy, while that account can serve; when it cannot (failover), the accounts where the
  conversation's cache may still be warm come first. After the TTL the strategy decides.
* A sub-agent whose own cache is warm nowhere follows its parent: the accounts where the
  parent's cache is warm come first, so a session's agents share its account.

Everything here is in memory and does no I/O; :class:`CacheAffinity` is bounded (LRU).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..providers.routing_body import LATEST_TURNS

DEFAULT_TTL_S = 300.0   # "ephemeral" cache without a ttl: 5 minutes
LONG_TTL_S = 3600.0     # "ttl": "1h"
CONVERSATIONS_MAX = 20_000
_TTLS = {"5m": DEFAULT_TTL_S, "1h": LONG_TTL_S}


@dataclass(slots=True)
class Visit:
    """Where a conversation's cache may be warm: ``accounts`` maps account name -> epoch s
    until which its cache there may live; ``last``: the account of its latest request;
    ``seen``: epoch s of that request."""

    last: str
    seen: float
    accounts: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class CacheContext:
    """A request's prompt-cache facts: its conversation (None: it uses no prompt cache), the
    TTL (s) its ``cache_control`` asks for, and the conversation it follows when its own
    cache is warm nowhere (a sub-agent's parent; else None). Why a request wrote to the cache
    is worked out later, in the database writer (:mod:`.storage.cache_forensics`), off the
    hot path."""

    conversation: str | None = None
    ttl_s: float = DEFAULT_TTL_S
    parent: str | None = None


class CacheAffinity:
    """conversation -> :class:`Visit`, least recently seen dropped past ``limit``."""

    def __init__(self, limit: int = CONVERSATIONS_MAX) -> None:
        self.limit = limit
        self._visits: OrderedDict[str, Visit] = OrderedDict()

    def warm(self, conversation: str | None, now: float) -> list[str]:
        """Accounts where ``conversation``'s cache may still be warm at ``now``, the one of
        its latest request first, then by how long the cache there still lives."""
        visit = self._visits.get(conversation) if conversation else None
        if visit is None:
            return []
        live = {name: until for name, until in visit.accounts.items() if until > now}
        order = sorted(live, key=lambda name: (name != visit.last, -live[name]))
        return order

    def last(self, conversation: str) -> str | None:
        """The account of ``conversation``'s latest answered request, or None."""
        visit = self._visits.get(conversation)
        return visit.last if visit is not None else None

    def served(self, conversation: str | None, account: str, ttl_s: float, now: float) -> None:
        """``account`` answered a request of ``conversation`` at ``now``: its cache there lives
        ``ttl_s`` from now."""
        if not conversation:
            return
        visit = self._visits.get(conversation)
        if visit is None:
            visit = self._visits[conversation] = Visit(account, now)
        visit.last, visit.seen = account, now
        visit.accounts[account] = now + ttl_s
        if len(visit.accounts) > 4:  # keep the freshest few
            for name in sorted(visit.accounts, key=visit.accounts.__getitem__)[:-4]:
                del visit.accounts[name]
        self._visits.move_to_end(conversation)
        while len(self._visits) > self.limit:
            self._visits.popitem(last=False)


def conversation_key(client_session: str | None, body: dict[str, Any] | None,
                     agent: str | None = None) -> str | None:
    """The conversation a request belongs to (see the module docstring): the session, a
    sub-agent's ``SESSION:agent:AGENT``, else a hash; None when the request says nothing to
    tell (no session, no messages)."""
    if client_session:
        return f"{client_session}:agent:{agent}" if agent else client_session
    if not body:
        return None
    messages = body.get("messages")
    first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"),
                 None) if isinstance(messages, list) else None
    if first is None:
        return None
    digest = hashlib.blake2b(digest_size=12)
    digest.update(_stable(body.get("system")))
    digest.update(b"\0")
    digest.update(_stable(_without_cache_control(first.get("content"))))
    return "h:" + digest.hexdigest()


def parent_key(client_session: str | None, agent: str | None,
               parent_agent: str | None) -> str | None:
    """The conversation a sub-agent's request follows: its parent agent's
    (``SESSION:agent:PARENT``), else its session's main conversation; None for a request that
    is no sub-agent's (no ``agent``) or has no session."""
    if not client_session or not agent:
        return None
    return f"{client_session}:agent:{parent_agent}" if parent_agent else client_session


def cache_ttl(body: dict[str, Any] | None) -> float:
    """The longest prompt-cache TTL (s) a request's ``cache_control`` blocks ask for (in
    ``system``, ``tools`` and the latest messages' content; 300 s for one without ``ttl``);
    0 when it has none: such a request writes and reads no cache, so nothing holds it."""
    if not body:
        return 0.0
    best = 0.0
    for block in _blocks(body):
        control = block.get("cache_control")
        if isinstance(control, dict):
            best = max(best, _TTLS.get(str(control.get("ttl") or "5m"), DEFAULT_TTL_S))
    return best


def _blocks(body: dict[str, Any]):
    for key in ("system", "tools"):
        part = body.get(key)
        if isinstance(part, list):
            yield from (b for b in part if isinstance(b, dict))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages[-LATEST_TURNS:]:  # breakpoints sit on the latest turns
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                yield from (b for b in content if isinstance(b, dict))


def _without_cache_control(content: Any) -> Any:
    if isinstance(content, list):
        return [{k: v for k, v in b.items() if k != "cache_control"} if isinstance(b, dict)
                else b for b in content]
    return content


def _stable(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
