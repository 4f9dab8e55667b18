"""Addon: the accounts YAML (``flare_accounts``) and the persisted state (``flare_state``).

The file is checked every second from a background task (stat and read in a worker thread);
an edit takes effect within 2 s. A file that fails validation keeps the last good
configuration in force and logs the error with its line number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from mitmproxy import ctx

from .config import AccountConfig, ConfigError, load_accounts
from .core import Core
from .oauth import TokenSet, resolve_tokens
from .writer import load_state

log = logging.getLogger("mitmflare")

POLL_S = 1.0


class AccountsFile:
    """Loads accounts into ``core.pool`` and keeps them in step with the file."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._stamp: tuple[int, int, int] | None = None
        self._task: asyncio.Task | None = None
        self._persisted: dict[str, dict] = {}
        self._stored_tokens: dict[str, TokenSet] = {}
        self._running = False

    def load(self, loader) -> None:
        loader.add_option("flare_accounts", str, "config/accounts.yaml",
                          "Path of the accounts YAML file; edits take effect within 2 s.")
        loader.add_option("flare_state", str, "mitmflare-state.db",
                          "Path of the SQLite file with account state and secrets "
                          "(cooldowns, OAuth tokens). Created with mode 0600; never serve it.")

    def configure(self, updated: set[str]) -> None:
        if "flare_state" in updated:
            self._persisted, rows = load_state(ctx.options.flare_state)
            self._stored_tokens = {name: TokenSet.from_row(row) for name, row in rows.items()}
            self.core.tokens.clear()
        if "flare_accounts" in updated or "flare_state" in updated:
            self._stamp = None
            self._reload_now()

    def running(self) -> None:
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._task:
            self._task.cancel()

    def _reload_now(self) -> None:
        path = ctx.options.flare_accounts
        stamp = _stat(path)
        try:
            configs = load_accounts(path)
        except ConfigError as exc:
            self._rejected(str(exc), stamp)
            return
        self._install(configs, stamp)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            path = ctx.options.flare_accounts
            try:
                stamp = await asyncio.to_thread(_stat, path)
                if stamp == self._stamp:
                    continue
                configs = await asyncio.to_thread(load_accounts, path)
            except ConfigError as exc:
                self._rejected(str(exc), stamp)
                continue
            except Exception:  # the watcher must outlive any surprise
                log.exception("accounts file watcher")
                continue
            self._install(configs, stamp)

    def _rejected(self, message: str, stamp: tuple[int, int, int] | None) -> None:
        self._stamp = stamp
        self.core.config_error = message
        kept = len(self.core.pool.accounts)
        # Before the proxy runs this is a warning: mitmdump exits on errors logged during
        # startup, and a first run should wait for the file to be fixed, not stop.
        level = logging.ERROR if self._running else logging.WARNING
        log.log(level, "accounts file rejected, keeping the last good configuration "
                "(%d accounts): %s", kept, message)

    def _install(self, configs: list[AccountConfig], stamp: tuple[int, int, int] | None) -> None:
        first = self._stamp is None and not self.core.pool.accounts
        self._stamp = stamp
        self.core.config_error = None
        added, removed = self.core.pool.replace(configs)
        for name in added:
            account = self.core.pool.get(name)
            saved = self._persisted.pop(name, None)
            if account and saved and saved.get("provider") == account.provider:
                account.state.restore(saved)
        self._install_tokens(configs)
        log.info("accounts %s: %d (%s)%s", "loaded" if first else "reloaded", len(configs),
                 ", ".join(f"{c.name}:{c.provider}" for c in configs) or "none",
                 f"; removed {', '.join(removed)}" if removed else "")
        self.core.snapshot_accounts(force=True)


    def _install_tokens(self, configs: list[AccountConfig]) -> None:
        """Decide each OAuth account's token pair (see :mod:`.oauth` for the rule)."""
        tokens = self.core.tokens
        for cfg in configs:
            current = tokens.get(cfg.name) or self._stored_tokens.pop(cfg.name, None)
            resolved = resolve_tokens(cfg, current)
            if resolved is None:
                tokens.pop(cfg.name, None)
                if cfg.oauth is not None:
                    log.error("account %s: oauth from_state, but flare_state has no tokens for it; "
                              "run scripts/oauth_login.py %s", cfg.name, cfg.name)
            else:
                tokens[cfg.name] = resolved
        names = {c.name for c in configs}
        for name in [n for n in tokens if n not in names]:
            del tokens[name]


def _stat(path: str) -> tuple[int, int, int] | None:
    with contextlib.suppress(OSError):
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    return None
