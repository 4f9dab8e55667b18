"""Per-user access keys (opt-in: ``flare_require_access_keys``), kept in ``flare_state``.

A key is ``mfk_`` + 64 hex digits (256 random bits), shown once when created. Only its
SHA-256 is stored (a fast hash suffices for a random 256-bit secret; nothing to brute-force),
with its first 8 characters to tell keys apart. The proxy reads the ``users`` table every
second (:func:`read_users`, in a worker thread), so changes apply within 2 s; the ``mitmflare
users`` commands write it (:class:`UsersStore`). Both go through :mod:`.state_store`; with
Redis (``flare_redis``) the commands also write the users there (:mod:`.redis_store`) and every
proxy on every host merges them with its own (:func:`merge_users`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, TypeGuard

from ..times import iso_utc

KEY_PREFIX = "mfk_"
_KEY_LENGTH = len(KEY_PREFIX) + 64


class UserError(Exception):
    """A users command cannot be done (unknown or duplicate name, bad value); the message
    says why in one line."""


@dataclass
class User:
    """One user. ``allowed_models`` / ``allowed_providers``: None allows all. Caps in USD per
    UTC day / calendar month (None: no cap). ``disabled`` users are refused, history kept.
    ``max_concurrent``: at most this many requests in flight (None: no cap). ``updated_at``:
    ISO time of its last change (which copy wins in :func:`merge_users`)."""

    name: str
    key_hash: str
    key_prefix: str
    disabled: bool = False
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    daily_cap_usd: float | None = None
    monthly_cap_usd: float | None = None
    created_at: str | None = None
    max_concurrent: int | None = None
    updated_at: str | None = None

    def row(self) -> dict[str, Any]:
        """The ``users`` row in ``flare_state``."""
        return {"name": self.name, "key_hash": self.key_hash, "key_prefix": self.key_prefix,
                "disabled": int(self.disabled),
                "allowed_models": json.dumps(self.allowed_models)
                if self.allowed_models is not None else None,
                "allowed_providers": json.dumps(self.allowed_providers)
                if self.allowed_providers is not None else None,
                "daily_cap_usd": self.daily_cap_usd, "monthly_cap_usd": self.monthly_cap_usd,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "max_concurrent": self.max_concurrent}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> User:
        def listed(value: str | None) -> list[str] | None:
            return json.loads(value) if value else None

        return cls(row["name"], row["key_hash"], row["key_prefix"] or "", bool(row["disabled"]),
                   listed(row["allowed_models"]), listed(row["allowed_providers"]),
                   row["daily_cap_usd"], row["monthly_cap_usd"], row["created_at"],
                   row.get("max_concurrent"),  # None in a file from before the column
                   row.get("updated_at"))

    def allows_provider(self, provider: str) -> bool:
        """True when accounts of ``provider`` (an account's provider: anthropic, openai, zai,
        codex, …) may serve this user's requests."""
        return self.allowed_providers is None or provider in self.allowed_providers

    def allows(self, model: str | None) -> str | None:
        """None when the user may ask for ``model`` (None: a request naming none), else why not
        (one line). Providers are judged per account (:meth:`allows_provider`)."""
        if self.allowed_models is not None and model is not None and not any(
                model == m or (m.endswith("*") and model.startswith(m[:-1]))
                for m in self.allowed_models):
            return f"user {self.name} may not use model {model}"
        return None


def new_key() -> str:
    """A fresh access key: ``mfk_`` + 64 hex digits."""
    return KEY_PREFIX + secrets.token_hex(32)


def key_hash(key: str) -> str:
    """SHA-256 (hex) of a key: what is stored and compared."""
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(value: str | None) -> TypeGuard[str]:
    """True for a string shaped like an access key (``mfk_`` and its length)."""
    return value is not None and len(value) == _KEY_LENGTH and value.startswith(KEY_PREFIX)


def find_user(users: dict[str, User], presented: str | None) -> User | None:
    """The user whose key is ``presented`` (``users`` is keyed by key hash), compared in
    constant time; None when the key is absent, malformed or unknown."""
    if not looks_like_key(presented):
        return None
    digest = key_hash(presented)
    user = users.get(digest)
    return user if user is not None and hmac.compare_digest(user.key_hash, digest) else None


def merge_users(local: list[User], shared: dict[str, dict[str, Any]]) -> dict[str, User]:
    """This host's users (``local``, from ``flare_state``) merged with those in Redis
    (``shared``: name -> a ``users`` row, or a tombstone ``{"removed": true, "updated_at"}``),
    keyed by key hash: by name, the copy with the latest ``updated_at`` wins, Redis's on a
    tie; a newer tombstone removes the user."""
    by_name = {u.name: u for u in local}
    for name, row in shared.items():
        mine = by_name.get(name)
        if mine is not None and (mine.updated_at or "") > (row.get("updated_at") or ""):
            continue
        if row.get("removed"):
            by_name.pop(name, None)
        else:
            by_name[name] = User.from_row(row)
    return {u.key_hash: u for u in by_name.values()}


def read_users(store) -> list[User]:
    """Every user in ``store`` (:class:`~.state_store.StateStore`; blocking: call from a
    worker thread). [] when the store cannot be read now (a missing or locked file)."""
    from .state_store import StoreUnavailable

    try:
        return store.users()
    except StoreUnavailable:
        return []


class UsersStore:
    """Read and change users in the state database at ``path`` (created with mode 0600),
    and in Redis at ``redis_url`` when given, through their
    :class:`~.state_store.StateStore`."""

    def __init__(self, path: str, redis_url: str = "") -> None:
        from .redis_store import open_store

        self.store = open_store(path, redis_url)
        self.store.open()  # creates the file (0600) and its tables

    def close(self) -> None:
        self.store.close()

    def all(self) -> list[User]:
        return self.store.users()

    def get(self, name: str) -> User:
        user = next((u for u in self.store.users() if u.name == name), None)
        if user is None:
            raise UserError(f"no user named {name!r}")
        return user

    def add(self, name: str, **settings: Any) -> tuple[User, str]:
        """Create ``name``; returns the user and its key (the only time the key exists)."""
        if not name or not all(c.isalnum() or c in "-_." for c in name) or len(name) > 64:
            raise UserError(f"user name {name!r}: use letters, digits, '-', '_' or '.'")
        if any(u.name == name for u in self.store.users()):
            raise UserError(f"user {name!r} exists already (rotate its key with `users rotate`)")
        key = new_key()
        user = User(name, key_hash(key), key[:8], created_at=iso_utc(time.time()), **settings)
        self._save(user)
        return user, key

    def rotate(self, name: str) -> tuple[User, str]:
        """A new key for ``name``; the old one stops working within 2 s."""
        user = self.get(name)
        key = new_key()
        user.key_hash, user.key_prefix = key_hash(key), key[:8]
        self._save(user)
        return user, key

    def update(self, name: str, **changes: Any) -> User:
        user = self.get(name)
        for attr, value in changes.items():
            setattr(user, attr, value)
        self._save(user)
        return user

    def _save(self, user: User) -> None:
        user.updated_at = iso_utc(time.time())
        self.store.save_user(user)

    def remove(self, name: str) -> None:
        self.get(name)
        self.store.remove_user(name)
