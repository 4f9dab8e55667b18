"""The bundle: mitmflare's addons, wired to one shared :class:`~.proxy_state.ProxyState`, behind one addon
object that mitmproxy sees.

mitmproxy visits every addon object on every event (about eight per request: four flow hooks,
each followed by an ``update``), through a generator per nesting level, and prepares the
arguments once per implementation of a hook; nine nested addons cost ~20 µs per request that
one object dispatching to them in a fixed order does not. The parts stay addon classes
(``load``/``configure``/hooks) and can be loaded one by one (the in-process tests do). Once
running, the bundle moves the objects made at startup out of the garbage collector's sight
(:func:`gc.freeze`), which keeps full collections short.

Fail closed at start: ``flare_*`` values given on the command line are deferred by mitmproxy
until the script has added its options; if one cannot be applied (a value given twice, a bad
value), mitmproxy drops the error and leaves the script unconfigured (its issue #8013). The
bundle applies them itself in ``load`` and, on an error, logs it (mitmdump and mitmweb then
exit at startup with status 1) and serves nothing but a 503 to every request meanwhile.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import sqlite3
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, hooks, http
from mitmproxy.proxy import layer

from .addons.access import AccessKeys
from .addons.account_health import AccountHealth
from .addons.accounts_file import AccountsFile
from .addons.concurrency import SlotRelease
from .addons.failover import Failover
from .addons.guard import Guard, Refusal
from .addons.hook_table import HookTableSwitch
from .addons.listener import Listener
from .addons.log_format import LogFormat
from .addons.memory import MemoryReturn
from .addons.oauth_clients import OAuthClients
from .addons.operations import Operations
from .addons.pool_headers import PoolHeaders
from .addons.recorder import Recorder
from .addons.refresher import TokenRefresher
from .addons.router import Router
from .addons.row_stream import RowStream
from .addons.runtime_file import RuntimeFile
from .addons.shared_state import SharedState
from .addons.timeouts import Timeouts
from .proxy_state import ProxyState
from .storage import state_store

log = logging.getLogger("mitmflare")

LIFECYCLE = ("load", "configure", "running", "done")
SYNC_HOOKS = ("requestheaders", "responseheaders", "error", "next_layer")
ASYNC_HOOKS = ("request", "response")


def make_addons() -> list[object]:
    """The parts in hook order: mitmproxy's events from a table (:mod:`.addons.hook_table`),
    the listener's proxy-core settings, the fail-closed guard, the
    log format, accounts, access keys, shared state (Redis), token refresh, account health
    (budgets, window start), which clients subscription accounts serve, operations
    (``/health``, probes, commands), the runtime file (where the ``mitmflare`` command finds
    this proxy), failover (its ``response`` hook judges the answer and retries before the
    router's reads the verdict), routing, the pool's limit headers (after the router has read the
    account's own), giving back users' slots, recording (its rows through Redis when
    ``flare_redis`` is set), then the per-attempt timeouts (after
    the recorder, whose stream tap they watch), and last giving memory back after large
    requests."""
    proxy = ProxyState()
    return [HookTableSwitch(), Listener(), Guard(proxy), LogFormat(), AccountsFile(proxy),
            AccessKeys(proxy), SharedState(proxy), TokenRefresher(proxy), AccountHealth(proxy),
            OAuthClients(proxy), Operations(proxy), RuntimeFile(), Failover(proxy), Router(proxy),
            PoolHeaders(proxy), SlotRelease(proxy), Recorder(proxy), RowStream(proxy),
            Timeouts(proxy), MemoryReturn()]


class Bundle:
    """The addon mitmproxy loads: calls each part's hook, in the parts' order.

    Raises TypeError at construction when a part implements a mitmproxy hook the bundle does
    not forward, or a coroutine for one it calls synchronously (it would never run)."""

    def __init__(self, parts: list[object]) -> None:
        self.parts = parts
        handled = {*LIFECYCLE, *SYNC_HOOKS, *ASYNC_HOOKS}
        for part in parts:
            for name in hooks.all_hooks.keys() - handled:
                if callable(getattr(part, name, None)):
                    raise TypeError(f"{type(part).__name__}.{name}: not forwarded by Bundle")
            for name in (*LIFECYCLE, *SYNC_HOOKS):
                if inspect.iscoroutinefunction(getattr(part, name, None)):
                    raise TypeError(f"{type(part).__name__}.{name} must not be async")
        self.refusal: str | None = None  # why the bundle serves no request (see the module)
        self.choices: dict[str, Sequence[str]] = {}  # option -> its allowed values
        self._configuring = False      # inside configure (see there)
        self._pending: set[str] = set()  # options set by a part meanwhile
        self._dispatch(parts)

    def _dispatch(self, parts: list[object]) -> None:
        # parts by hook; the method is looked up at each call (a patched method takes effect)
        handled = {*LIFECYCLE, *SYNC_HOOKS, *ASYNC_HOOKS}
        self._parts = {name: [p for p in parts if hasattr(p, name)] for name in handled}

    def _call(self, name: str, *args) -> None:
        for part in self._parts[name]:
            getattr(part, name)(*args)

    async def _await(self, name: str, flow: http.HTTPFlow) -> None:
        for part in self._parts[name]:
            result = getattr(part, name)(flow)
            if result is not None:
                await result

    # -- lifecycle --------------------------------------------------------------------------
    def load(self, loader) -> None:
        self._call("load", _ChoiceRecorder(loader, self.choices))
        for part in self.parts:  # mitmproxy collects commands only from addons it visits
            loader.master.commands.collect_commands(part)
        self.refusal = apply_deferred(loader.master.options)
        fix = "fix the command line (each --set flare_… once, with a valid value)"
        if self.refusal is None:
            self.refusal = corrupt_database(loader.master.options)
            fix = ("move the file aside and start again (a new one is made; for the state "
                   "database that loses cooldowns, stored OAuth tokens and users) or restore a "
                   "backup; `mitmflare doctor` checks both databases")
        if self.refusal is not None:
            log.error("mitmflare cannot start: %s. Nothing will be routed; %s.", self.refusal,
                      fix)
            self._dispatch([p for p in self.parts if isinstance(p, (HookTableSwitch, Listener))]
                           + [Refusal(self.refusal)])

    def configure(self, updated: set[str]) -> None:
        """Check the options' choices, then configure the parts in order. A part that sets an
        option while configuring (the listener does) makes mitmproxy call this again inside
        this call: those options are configured after this call's parts, never inside it, so
        an OptionsError raised for a bad value cannot loop through mitmproxy's rollback (which
        configures again, and the listener sets its option again, …)."""
        if self._configuring:
            self._pending |= updated
            return
        self._configuring = True
        try:
            # mitmproxy checks an option's choices only when its own command line parser reads
            # it (not for a script's deferred --set, nor for :set in mitmweb): checked here
            for name in updated & self.choices.keys():
                value = getattr(ctx.options, name)
                if value not in self.choices[name]:
                    raise exceptions.OptionsError(f"{name}={value!r}: choose one of "
                                                  f"{', '.join(self.choices[name])}")
            self._call("configure", updated)
            while self._pending:
                again, self._pending = self._pending, set()
                self._call("configure", again)
        finally:
            self._configuring, self._pending = False, set()

    def running(self) -> None:
        self._call("running")
        if self.refusal is not None:
            return
        # What startup made lives as long as the process: out of the collector's sight, a full
        # collection scans only what came later (measured: a 43 ms pause becomes < 7 ms).
        gc.collect()
        gc.freeze()

    def done(self) -> None:
        self._call("done")

    # -- proxy hooks ------------------------------------------------------------------------
    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        self._call("next_layer", nextlayer)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._call("requestheaders", flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        await self._await("request", flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._call("responseheaders", flow)

    async def response(self, flow: http.HTTPFlow) -> None:
        await self._await("response", flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._call("error", flow)


class _ChoiceRecorder:
    """The loader the parts see: mitmproxy's, noting each option's ``choices``."""

    def __init__(self, loader, choices: dict[str, Sequence[str]]) -> None:
        self.loader, self.choices, self.master = loader, choices, loader.master

    def add_option(self, name: str, typespec: type, default, help: str,
                   choices: Sequence[str] | None = None) -> None:
        if choices:
            self.choices[name] = choices
        self.loader.add_option(name, typespec, default, help, choices)

    def add_command(self, path: str, func) -> None:
        self.loader.add_command(path, func)


def corrupt_database(options) -> str | None:
    """Why ``flare_state`` or ``flare_db`` cannot be opened as SQLite (e.g. overwritten with
    other bytes: "file is not a database"), naming the file, or None when both can (or do not
    exist yet: they are created). Reads only the schema, so it is quick on a large file;
    ``mitmflare doctor`` runs the full integrity check."""
    for option, what, connect in (("flare_state", "state database", state_store.read_only),
                                  ("flare_db", "analytics database", _analytics_read_only)):
        path = getattr(options, option, None)
        if not path or not os.path.isfile(path) or os.path.getsize(path) == 0:
            continue
        try:
            conn = connect(path)
            try:
                conn.execute("select count(*) from sqlite_master").fetchone()
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:  # locked, unreadable: the writer reports it
            log.debug("%s %s not checked: %s", what, path, exc)
        except sqlite3.DatabaseError as exc:
            return f"the {what} {os.path.abspath(path)} ({option}) is corrupt ({exc})"
    return None


def _analytics_read_only(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def apply_deferred(options) -> str | None:
    """Apply the option values mitmproxy deferred until now (``--set flare_…`` given before the
    script added its options) and return the error text if that fails, else None. On an error
    the ``flare_*`` values are dropped from the deferred set (mitmproxy would otherwise fail on
    them again, silently), so every ``flare_*`` option keeps its default: the caller must not
    serve with them."""
    try:
        options.process_deferred()
    except exceptions.OptionsError as exc:
        for name in [n for n in options.deferred if n.startswith("flare_")]:
            del options.deferred[name]
        return str(exc)
    return None
