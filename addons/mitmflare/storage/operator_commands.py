"""Commands an operator queues for running proxies: ``mitmflare accounts reset NAME`` writes
one into the state database (``flare_state``, table ``operator_commands``), which the proxy's
Operations addon polls every second; the same command also changes the stored account state,
so a proxy started later sees it too. With Redis (``flare_redis``), the command is also
published to every process on every host, and ``accounts pause`` / ``resume`` are too
(:mod:`.redis_store`). All go through the :class:`~.state_store.StateStore` interface."""

from __future__ import annotations

from .redis_store import open_store


def queue_reset(path: str, account: str, redis_url: str = "") -> bool:
    """Queue ``reset`` for ``account`` in the state database at ``path`` (and through Redis
    at ``redis_url`` when given) and clear its stored cooldown, bench, ``needs_reauth`` and
    near-limit marks (:meth:`~.state_store.StateStore.queue_reset`). True when stored state
    existed for it. Raises :class:`~.state_store.StoreUnavailable` (with Redis: after the
    local part was done)."""
    store = open_store(path, redis_url)
    try:
        return store.queue_reset(account)
    finally:
        store.close()


def share_pause(path: str, account: str, paused: bool, redis_url: str) -> None:
    """Pause (``paused``) or unpause ``account`` on every host through the Redis at
    ``redis_url`` (the accounts file does it on this host). Raises
    :class:`~.state_store.StoreUnavailable`."""
    from .redis_store import RedisStateStore, SqliteStateStore

    store = RedisStateStore(SqliteStateStore(path), redis_url)
    try:
        store.queue_command("pause" if paused else "unpause", account)
    finally:
        store.close()
