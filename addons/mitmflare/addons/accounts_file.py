"""Addon: the accounts YAML (``flare_accounts``) and the persisted state (``flare_state``).

Every second a background task checks the accounts file and the ``.env`` file beside it (stat
and read in a worker thread), so an edit takes effect within 2 s. A bad account entry is left
out and reported (log and ``/health``) while the valid ones serve; a file that cannot be read
as a whole keeps the last good configuration. The same task reads the OAuth pairs in
``flare_state``, so tokens stored by a login (or another proxy) are used within 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from mitmproxy import ctx
from mitmproxy.utils import asyncio_utils

from ..config.accounts import AccountsLoad, ConfigError, env_file, load_accounts
from ..config.defaults import FILE_OPTIONS
from ..providers.oauth import TokenSet, resolve_tokens
from ..proxy_state import ProxyState
from ..storage.state_store import StoreUnavailable

log = logging.getLogger("mitmflare")

POLL_S = 1.0
Stamp = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]


class AccountsFile:
    """Loads accounts into ``proxy.pool`` and keeps them in step with the files."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self._stamp: Stamp | None = None
        self._task: asyncio.Task | None = None
        self._persisted: dict[str, dict] = {}
        self._stored_tokens: dict[str, TokenSet] = {}
        self._running = False

    def load(self, loader) -> None:
        for name in ("flare_accounts", "flare_state"):
            loader.add_option(name, str, *FILE_OPTIONS[name])

    def configure(self, updated: set[str]) -> None:
        if "flare_state" in updated:
            store = self.proxy.open_store(ctx.options.flare_state)
            self._persisted = store.account_states()  # creates the file and its tables
            self._stored_tokens = store.tokens()
            self.proxy.tokens.clear()
        if "flare_accounts" in updated or "flare_state" in updated:
            self._stamp = None
            path = ctx.options.flare_accounts
            stamp = _stamp(path)
            try:
                self._install(load_accounts(path), stamp)
            except ConfigError as exc:
                self._rejected(str(exc), stamp)

    def running(self) -> None:
        self._running = True
        self._task = asyncio_utils.create_task(self._watch(),
                                               name="mitmflare: accounts file watch", keep_ref=True)

    def done(self) -> None:
        if self._task:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._poll()
            except Exception:  # the watcher must outlive any surprise
                log.exception("accounts file watcher")

    async def _poll(self) -> None:
        path = ctx.options.flare_accounts
        stamp = await asyncio.to_thread(_stamp, path)
        if stamp != self._stamp:
            try:
                loaded = await asyncio.to_thread(load_accounts, path)
            except ConfigError as exc:
                self._rejected(str(exc), stamp)
            else:
                self._install(loaded, stamp)
        if any(a.config.oauth for a in self.proxy.pool.accounts.values()):
            try:
                stored = await asyncio.to_thread(self.proxy.open_store(ctx.options.flare_state)
                                                 .tokens)
            except StoreUnavailable:  # missing or locked now: the next second tries again
                return
            self._adopt_tokens(stored)

    def _rejected(self, message: str, stamp: Stamp) -> None:
        self._stamp = stamp
        self.proxy.config_errors = [message]
        kept = len(self.proxy.pool.accounts)
        # Before the proxy runs this is a warning: mitmdump exits on errors logged during
        # startup, and a first run should wait for the file to be fixed, not stop.
        log.log(self._level, "accounts file rejected, keeping the last good configuration "
                "(%d accounts): %s", kept, message)

    @property
    def _level(self) -> int:
        return logging.ERROR if self._running else logging.WARNING

    def _install(self, loaded: AccountsLoad, stamp: Stamp) -> None:
        configs = loaded.accounts
        first = self._stamp is None and not self.proxy.pool.accounts
        self._stamp = stamp
        self.proxy.config_errors = loaded.errors
        self.proxy.fallbacks = loaded.fallbacks
        for error in loaded.errors:
            log.log(self._level, "account entry left out: %s", error)
        added, removed, renamed = self.proxy.pool.replace(configs)
        for name in added:
            account = self.proxy.pool.accounts[name]
            saved = self._persisted_state(name, account.config.identity)
            if saved and saved.get("provider") == account.provider:
                account.state.restore(saved)
        for new, old in renamed.items():
            log.info("account %s renamed to %s: its state (cooldowns, counters) is kept", old, new)
        self._install_tokens(configs)
        self.proxy.clear_stale_reauth()
        log.info("accounts %s: %d (%s)%s", "loaded" if first else "reloaded", len(configs),
                 ", ".join(f"{c.name}:{c.provider}" for c in configs) or "none",
                 f"; removed {', '.join(removed)}" if removed else "")
        if not configs:
            log.warning("no account is configured yet: add one to %s (see the comments in it); "
                        "it is picked up within 2 s", ctx.options.flare_accounts)
        self.proxy.snapshot_accounts(force=True)

    def _persisted_state(self, name: str, identity: str | None) -> dict | None:
        """The state saved in ``flare_state`` under ``name``, else under the account's
        former name (same identity), taken once."""
        saved = self._persisted.pop(name, None)
        if saved is None and identity:
            former = next((n for n, d in self._persisted.items() if d.get("identity") == identity),
                          None)
            if former is not None:
                saved = self._persisted.pop(former)
                log.info("account %s was %s: its saved state is kept", name, former)
        return saved

    def _install_tokens(self, configs) -> None:
        """Decide each OAuth account's token pair (see :mod:`.oauth` for the rule)."""
        tokens = self.proxy.tokens
        for cfg in configs:
            current = tokens.get(cfg.name) or self._stored_tokens.pop(cfg.name, None)
            resolved = resolve_tokens(cfg, current)
            if resolved is None:
                tokens.pop(cfg.name, None)
                if cfg.oauth is not None:
                    log.log(self._level, "account %s: oauth from_state, but flare_state has no "
                            "tokens for it; run `mitmflare accounts login %s`", cfg.name, cfg.name)
            else:
                tokens[cfg.name] = resolved
        names = {c.name for c in configs}
        for name in [n for n in tokens if n not in names]:
            del tokens[name]

    def _adopt_tokens(self, stored: dict[str, TokenSet]) -> None:
        """Use pairs that another process (a login, another proxy) wrote to ``flare_state``."""
        changed = False
        for account in self.proxy.pool.accounts.values():
            cfg = account.config
            pair = stored.get(cfg.name)
            current = self.proxy.tokens.get(cfg.name)
            if cfg.oauth is None or pair is None or (current is not None and (
                    pair.refresh_token, pair.access_token) == (current.refresh_token,
                                                               current.access_token)):
                continue
            if resolve_tokens(cfg, pair) is pair:
                self.proxy.tokens[cfg.name] = pair
                log.info("account %s: new OAuth tokens from %s", cfg.name, ctx.options.flare_state)
                changed = True
        if changed:
            self.proxy.clear_stale_reauth()
            self.proxy.mark_accounts_changed()


def _stat(path: str) -> tuple[int, int, int] | None:
    with contextlib.suppress(OSError):
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    return None


def _stamp(path: str) -> Stamp:
    """What changes when the accounts file or its ``.env`` file changes."""
    return _stat(path), _stat(env_file(path))
