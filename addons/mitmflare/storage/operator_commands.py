"""Commands an operator queues for a running proxy in the state database (``flare_state``,
table ``operator_commands``): ``mitmflare accounts reset NAME`` writes one, the proxy's
Operations addon polls the table every second and applies the new ones. The same command
also changes the stored account state, so a proxy started later sees it too. Both go through
:mod:`.state_store`."""

from __future__ import annotations

from .state_store import SqliteStateStore


def queue_reset(path: str, account: str) -> bool:
    """Queue ``reset`` for ``account`` in the state database at ``path`` and clear its stored
    cooldown, bench, ``needs_reauth`` and near-limit marks
    (:meth:`~.state_store.StateStore.queue_reset`). True when stored state existed for it.
    Raises :class:`~.state_store.StoreUnavailable`."""
    store = SqliteStateStore(path)
    try:
        return store.queue_reset(account)
    finally:
        store.close()
