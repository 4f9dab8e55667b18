"""The state store shared by every host through Redis (``flare_redis``): users and operator
commands reach every mitmflare process, whichever host's ``mitmflare`` command made them.

:class:`RedisStateStore` implements :class:`~.state_store.StateStore` as a layer over the
host's own :class:`~.state_store.SqliteStateStore` (``flare_state``):

- **Users** are written to both: the local ``users`` table and the Redis hash
  :data:`USERS_KEY` (user name -> its ``users`` row as JSON, key hash only; a removed user
  leaves a tombstone ``{"name", "removed": true, "updated_at"}``), then announced on
  :data:`CHANNEL` (``{"k": "user", "n": name, "row": …}``). They are read merged
  (:func:`~.users.merge_users`: by name, the latest ``updated_at`` wins, Redis on a tie).
- **Operator commands** (``reset``, ``pause``, ``unpause``) are queued in the local table
  (``reset``; ``pause`` is the accounts file's job on this host) and published on
  :data:`CHANNEL` as ``{"k": "command", "c": …, "n": account, "id": uid}``; the proxies apply
  them through :mod:`~..routing.account_state`'s transitions, once per ``id`` (a proxy that
  also reads the local table skips the copy). The command's transition is applied to the
  account's state in Redis (:data:`ACCOUNT_KEY`) too, so a process started later finds it.
- Account state and OAuth pairs stay with the local store here (the proxies share them
  themselves: :mod:`~..addons.shared_state`).

Every method blocks (redis-py's synchronous client, :data:`TIMEOUT_S` per command): the
``mitmflare`` command calls it, never a proxy's event loop. Redis unreachable:
:class:`~.state_store.StoreUnavailable` after the local write was done (its message says so).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from ..config.redis_url import redacted
from ..providers.oauth import TokenSet
from ..routing.account_state import AccountState
from ..times import iso_utc
from .state_store import SqliteStateStore, StoreUnavailable
from .users import User, merge_users

CHANNEL = "mitmflare:events"              # every change one process tells the others
ACCOUNT_KEY = "mitmflare:account:"        # + name: an account's latest shared state (JSON)
USERS_KEY = "mitmflare:users"             # hash: user name -> users row or tombstone (JSON)
SHARED_FIELDS = tuple(f for f in AccountState.PERSISTED
                      if f not in ("requests", "failures", "last_used", "identity"))
COMMANDS = ("reset", "pause", "unpause")
TIMEOUT_S = 2.0


def shared_fields(state: AccountState) -> dict[str, Any]:
    """The fields of ``state`` every process shares (:data:`SHARED_FIELDS`)."""
    return {f: getattr(state, f) for f in SHARED_FIELDS}


def transition(state: AccountState, command: str):
    """Apply operator ``command`` (one of :data:`COMMANDS`) to ``state``: the
    :class:`~..routing.account_state.Change`. Raises ValueError for another command."""
    if command == "reset":
        return state.resume()
    if command == "pause":
        return state.pause()
    if command == "unpause":
        return state.unpause()
    raise ValueError(f"unknown operator command {command!r}")


class RedisStateStore:
    """:class:`~.state_store.StateStore` over ``local`` that shares users and operator
    commands through the Redis at ``url`` (see the module docstring)."""

    def __init__(self, local: SqliteStateStore, url: str) -> None:
        self.local = local
        self.url = url
        self.path = local.path
        self.me = f"cli:{socket.gethostname()}:{os.getpid()}"
        self._client: Any = None

    # -- Redis ----------------------------------------------------------------------------
    def _redis(self):
        import redis

        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=TIMEOUT_S,
                                                socket_timeout=TIMEOUT_S, decode_responses=True)
        return self._client

    def _do(self, what: str, action):
        """Run ``action(client)``; Redis errors become :class:`StoreUnavailable`."""
        import redis

        try:
            return action(self._redis())
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis {redacted(self.url)}: {what} not shared with the "
                                   f"other hosts ({exc})") from exc

    def open(self) -> None:
        self.local.open()

    def close(self) -> None:
        self.local.close()
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- what stays local -----------------------------------------------------------------
    def account_states(self) -> dict[str, dict[str, Any]]:
        return self.local.account_states()

    def save_account_states(self, states: dict[str, dict[str, Any]]) -> None:
        self.local.save_account_states(states)

    def tokens(self) -> dict[str, TokenSet]:
        return self.local.tokens()

    def save_tokens(self, name: str, tokens: TokenSet) -> None:
        self.local.save_tokens(name, tokens)

    def latest_command_id(self) -> int:
        return self.local.latest_command_id()

    def commands_since(self, after: int) -> list[tuple[int, str, str, str]]:
        return self.local.commands_since(after)

    # -- users ----------------------------------------------------------------------------
    def users(self) -> list[User]:
        shared = self._do("users", lambda r: r.hgetall(USERS_KEY))
        rows = {name: json.loads(text) for name, text in shared.items()}
        return sorted(merge_users(self.local.users(), rows).values(), key=lambda u: u.name)

    def save_user(self, user: User) -> None:
        self.local.save_user(user)
        self._share_user(user.name, user.row())

    def remove_user(self, name: str) -> None:
        self.local.remove_user(name)
        self._share_user(name, {"name": name, "removed": True,
                                "updated_at": iso_utc(time.time())})

    def _share_user(self, name: str, row: dict[str, Any]) -> None:
        text = json.dumps(row, separators=(",", ":"))
        message = json.dumps({"k": "user", "n": name, "w": self.me, "row": row},
                             separators=(",", ":"))

        def send(client) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.hset(USERS_KEY, name, text)
            pipe.publish(CHANNEL, message)
            pipe.execute()
        self._do(f"user {name}", send)

    # -- operator commands ----------------------------------------------------------------
    def queue_reset(self, account: str, uid: str = "") -> bool:
        uid = uid or uuid.uuid4().hex
        known = self.local.queue_reset(account, uid)
        self.queue_command("reset", account, uid)
        return known

    def queue_command(self, command: str, account: str, uid: str = "") -> None:
        """Publish operator ``command`` for ``account`` to every process (once per ``uid``)
        and apply its transition to the account's state in Redis. Raises
        :class:`StoreUnavailable` (Redis unreachable) and ValueError (unknown command)."""
        if command not in COMMANDS:
            raise ValueError(f"unknown operator command {command!r}")
        now = time.time()
        message = json.dumps({"k": "command", "c": command, "n": account, "w": self.me,
                              "id": uid or uuid.uuid4().hex, "at": now},
                             separators=(",", ":"))

        def send(client) -> None:
            stored = client.get(ACCOUNT_KEY + account)
            data = json.loads(stored) if stored else {}
            state = AccountState()
            state.restore(data.get("s") or {})
            transition(state, command)
            pipe = client.pipeline(transaction=False)
            pipe.set(ACCOUNT_KEY + account, json.dumps(
                {"k": "account", "n": account, "w": self.me, "at": now,
                 "s": shared_fields(state)}, separators=(",", ":")))
            pipe.publish(CHANNEL, message)
            pipe.execute()
        self._do(f"{command} of {account}", send)


def open_store(path: str, redis_url: str = "") -> SqliteStateStore | RedisStateStore:
    """The state store the ``mitmflare`` command uses: the SQLite file at ``path``, shared
    through Redis when ``redis_url`` (``--redis`` / ``MITMFLARE_REDIS_URL``) is set. Opens
    nothing yet."""
    local = SqliteStateStore(path)
    return RedisStateStore(local, redis_url) if redis_url else local
