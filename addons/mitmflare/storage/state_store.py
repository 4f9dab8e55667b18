"""The state database (``flare_state``): the one module that opens it.

It holds what must survive a restart and never be served: each account's persisted state
(cooldowns, marks, counters: :attr:`~mitmflare.routing.account_state.AccountState.PERSISTED`),
OAuth token pairs, access-key users and the commands operators queue for a running proxy.
:class:`StateStore` is the interface every caller uses; :class:`SqliteStateStore` keeps it in
one SQLite file (created with mode 0600, WAL); :class:`~.redis_store.RedisStateStore` layers
Redis over it so that users and operator commands reach every host (``flare_redis``).

Who calls it, and from where:

* the database writer (:mod:`.writer`, in its own process) stores account state;
* the proxy reads users, token pairs and queued commands every second and stores rotated
  OAuth pairs, always in a worker thread (``asyncio.to_thread``), never on the event loop;
  it reads account state and pairs once in ``configure``, before traffic;
* the ``mitmflare`` command adds users, stores pairs from a login and queues resets.

One writer connection per process and store, opened on first use and shared by threads under
a lock; each write is one short transaction. Reads polled while the proxy serves use their own
read-only connection (2 s busy timeout), so they never wait for the lock, never create the
file, and a missing or locked file is :class:`StoreUnavailable`, tried again a second later.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import sqlite_utils

from ..providers.oauth import TokenSet
from ..routing.account_state import AccountState
from ..times import iso_utc
from . import schema
from .users import User

READ_TIMEOUT_S = 2.0    # a polled read gives up after this (s) on a locked file
WRITE_TIMEOUT_S = 10.0  # a write waits this long (s) for another process's write


class StoreUnavailable(OSError):
    """The store cannot be read or written now (SQLite: the file is missing, locked, on a full
    or read-only disk, or not a database); the message says why, without secrets. An
    ``OSError``, so code that must not import storage (``providers.oauth``) can catch it."""


class StateStore(Protocol):
    """What mitmflare keeps in the state database. Every method blocks (call it from a
    worker thread on the proxy's event loop) and raises :class:`StoreUnavailable` when the
    store cannot be used now. Names are account or user names."""

    def account_states(self) -> dict[str, dict[str, Any]]:
        """Every account's persisted state: name -> the fields of
        :attr:`AccountState.PERSISTED` plus ``provider`` (startup, before traffic)."""
        ...

    def save_account_states(self, states: dict[str, dict[str, Any]]) -> None:
        """Store the latest state of some accounts (name -> fields plus ``provider``), all
        of it or nothing."""
        ...

    def tokens(self) -> dict[str, TokenSet]:
        """Every OAuth account's stored pair, by account name."""
        ...

    def save_tokens(self, name: str, tokens: TokenSet) -> None:
        """Store ``name``'s pair (the rotated refresh token is stored before it is used)."""
        ...

    def users(self) -> list[User]:
        """Every access-key user, by name."""
        ...

    def save_user(self, user: User) -> None:
        """Create or replace ``user`` (by name)."""
        ...

    def remove_user(self, name: str) -> None:
        """Delete the user ``name`` (nothing when there is none)."""
        ...

    def latest_command_id(self) -> int:
        """The id of the newest queued operator command (0 when none)."""
        ...

    def commands_since(self, after: int) -> list[tuple[int, str, str, str]]:
        """(id, command, account, uid) of the commands queued after id ``after``, oldest
        first (``uid``: the command's id everywhere, "" for commands queued before it)."""
        ...

    def queue_reset(self, account: str, uid: str = "") -> bool:
        """Queue ``reset`` for ``account`` (a running proxy resumes it; ``uid`` names the
        command, so a proxy that also gets it through Redis applies it once) and resume its
        stored state (:meth:`AccountState.resume`), so a proxy started later finds it
        resumed. True when state was stored for it."""
        ...

    def close(self) -> None:
        """Close the connections (the store can be used again: it reopens them)."""
        ...


class SqliteStateStore:
    """:class:`StateStore` in the SQLite file at ``path`` (created with mode 0600, its schema
    migrated, on the first write or :meth:`account_states`). ``synchronous``: SQLite's
    ``synchronous`` pragma for the writer connection (``normal`` is durable across crashes,
    not power cuts; ``full``, the default, across both)."""

    def __init__(self, path: str, synchronous: str = "full") -> None:
        self.path = path
        self.synchronous = synchronous
        self._db: sqlite_utils.Database | None = None
        self._opened: tuple[int, int] = (0, 0)  # (device, inode) of the open file
        self._lock = threading.Lock()

    # -- connections ----------------------------------------------------------------------
    def open(self) -> None:
        """Open (again) the writer connection, creating the file and its tables: at once
        instead of on first use. Raises :class:`StoreUnavailable`."""
        with self._lock:
            self._reopen()

    def replaced(self) -> bool:
        """True when the file at ``path`` is no longer the one open (deleted or replaced
        while open); the next write opens the new one."""
        return self._db is not None and file_identity(self.path) != self._opened

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.conn.close()

    def _reopen(self) -> sqlite_utils.Database:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.conn.close()  # the last connection of an unlinked file: its WAL goes
            self._db = None
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
            db = sqlite_utils.Database(sqlite3.connect(self.path, timeout=WRITE_TIMEOUT_S,
                                                       check_same_thread=False))
            db.enable_wal()
            db.execute(f"pragma synchronous={self.synchronous}")
            schema.migrate(db, schema.STATE_TABLES)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"state database {self.path}: {exc}") from exc
        self._db, self._opened = db, file_identity(self.path)
        return db

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside one transaction, under the lock; a file deleted or
        replaced since it was opened is opened again (tables created) first."""
        with self._lock:
            db = self._db if self._db is not None and not self.replaced() else self._reopen()
            try:
                with db.conn:
                    yield db.conn
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"state database {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own (rows by name); never creates the file."""
        try:
            conn = read_only(self.path, READ_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state database {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state database {self.path}: {exc}") from exc
        finally:
            conn.close()

    # -- account state --------------------------------------------------------------------
    def account_states(self) -> dict[str, dict[str, Any]]:
        with self._writing() as conn:
            rows = conn.execute("select name, provider, data from account_state").fetchall()
        return {name: {**json.loads(data or "{}"), "provider": provider}
                for name, provider, data in rows}

    def save_account_states(self, states: dict[str, dict[str, Any]]) -> None:
        now = iso_utc(time.time())
        with self._writing() as conn:
            conn.executemany(
                "insert into account_state (name, provider, data, updated_at) values "
                "(?, ?, ?, ?) on conflict (name) do update set provider = excluded.provider, "
                "data = excluded.data, updated_at = excluded.updated_at",
                [(name, d.get("provider"),
                  json.dumps({k: v for k, v in d.items() if k != "provider"}), now)
                 for name, d in states.items()])

    # -- OAuth pairs ----------------------------------------------------------------------
    def tokens(self) -> dict[str, TokenSet]:
        with self._reading() as conn:
            return {r["name"]: TokenSet.from_row(dict(r))
                    for r in conn.execute("select * from oauth_tokens")}

    def save_tokens(self, name: str, tokens: TokenSet) -> None:
        self._upsert("oauth_tokens", tokens.row(name))

    # -- users ----------------------------------------------------------------------------
    def users(self) -> list[User]:
        with self._reading() as conn:
            return [User.from_row(dict(r))
                    for r in conn.execute("select * from users order by name")]

    def save_user(self, user: User) -> None:
        self._upsert("users", user.row())

    def remove_user(self, name: str) -> None:
        with self._writing() as conn:
            conn.execute("delete from users where name = ?", [name])

    # -- operator commands ----------------------------------------------------------------
    def latest_command_id(self) -> int:
        with self._reading() as conn:
            return conn.execute("select coalesce(max(id), 0) from operator_commands"
                                ).fetchone()[0]

    def commands_since(self, after: int) -> list[tuple[int, str, str, str]]:
        with self._reading() as conn:
            return [(r[0], r[1], r[2], r[3] or "") for r in conn.execute(
                "select id, command, account, uid from operator_commands where id > ? "
                "order by id", [after])]

    def queue_reset(self, account: str, uid: str = "") -> bool:
        with self._writing() as conn:
            conn.execute("insert into operator_commands (command, account, created_at, uid) "
                         "values ('reset', ?, ?, ?)", [account, iso_utc(time.time()), uid])
            row = conn.execute("select data from account_state where name = ?",
                               [account]).fetchone()
            if row is None:
                return False
            stored = json.loads(row[0] or "{}")
            state = AccountState()
            state.restore(stored)
            state.resume()
            conn.execute("update account_state set data = ? where name = ?",
                         [json.dumps({**stored, **state.to_persisted()}), account])
            return True

    def _upsert(self, table: str, row: dict[str, Any]) -> None:
        """Insert ``row`` into ``table``, replacing the row with the same primary key."""
        with self._writing() as conn:
            conn.execute(f"insert or replace into {table} ({', '.join(row)}) "
                         f"values ({', '.join('?' * len(row))})", list(row.values()))


def read_only(path: str, timeout: float = 10.0) -> sqlite3.Connection:
    """A read-only connection to the state database at ``path``, for checks that read its
    schema (start-up, ``mitmflare doctor``); never creates it. Raises ``sqlite3.Error``."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)


def file_identity(path: str) -> tuple[int, int]:
    """(device, inode) of the file at ``path``; (0, 0) when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return 0, 0
    return st.st_dev, st.st_ino
