"""Addon: mitmproxy's events delivered from a table of the addons that implement each hook.

mitmproxy's :meth:`AddonManager.trigger_event <mitmproxy.addonmanager.AddonManager.trigger_event>`
visits every addon of its chain for every event (mitmdump has 36; a request makes eight
events: four flow hooks, each followed by an ``update``), and for each one makes a context
manager (``safecall``), a coroutine (``invoke_addon``) and two generators (``_iter_hooks``,
``traverse``) and looks the hook up by name — whether the addon implements it or not. That is
about half of what bare mitmdump spends per small request: 2.9 → 1.6 ms of CPU per request
with the table, mitmflare 3.3 → 2.1 ms (measured on the 2-core VM of 2026-12-07, c=8, CPU
time of the proxy process from ``/proc``; README "Performance").

:class:`HookTable` is a subclass of mitmproxy's ``AddonManager``; :class:`HookTableSwitch`
switches the running manager's class to it (``flare_hook_table``, on by default) and back
(option off, or the bundle unloaded). It keeps, per hook name, the chain's addons that
implement the hook (sub-addons included, in mitmproxy's order) and calls only those, with
mitmproxy's rules: a hook's awaitable is awaited; an exception is logged as mitmproxy logs it
(``Addon error: …``, through its own ``safecall``; the traceback shows this module's frames
too) and skips the rest of that top-level addon's hooks for this event; ``AddonHalt`` ends
the event; ``OptionsError`` propagates. The table is built on first use and again after
anything that can change which addons there are: ``register``/``add``/``remove``/``clear``
(scripts loaded, reloaded, removed) and option changes (``configure``). When that happens
while an event is being delivered (a hook awaited meanwhile), the rest of that event is
delivered the way mitmproxy delivers it: the chain the event started with, each addon's hooks
looked up at its turn (a script reloaded meanwhile gets the event in its new version, an
addon added meanwhile gets it), none called twice. One difference remains: a hook attribute
set on an addon object later than any such change is seen at the next one; and an event's
arguments are prepared once per event (mitmproxy: once per addon that implements it; they
are the same objects).
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall, traverse

log = logging.getLogger("mitmflare")

Hook = tuple[object, Callable[..., Any]]  # an addon and its implementation of a hook
Group = tuple[object, tuple[Hook, ...]]   # a top-level addon of the chain and its hooks


class HookTable(AddonManager):
    """mitmproxy's addon manager, delivering events from a per-hook table (module docstring).
    Never instantiated: :func:`install` switches an existing manager's class to it."""

    def _groups(self, name: str) -> list[Group]:
        """The implementations of hook ``name``, one entry per top-level addon that has any,
        in chain order (built on first use after a change)."""
        table: dict[str, list[Group]] | None = self.__dict__.get("_hook_table")
        if table is None:
            table = self.__dict__["_hook_table"] = {}
        groups = table.get(name)
        if groups is None:
            groups = table[name] = [(top, hooks) for top in self.chain
                                    if (hooks := _implementations(top, name))]
        return groups

    async def trigger_event(self, event: hooks.Hook) -> None:
        chain, generation = self.chain, _generation(self)
        groups = self._groups(event.name)
        if not groups:
            return
        args = event.args()
        for n, (top, group) in enumerate(groups):
            try:
                for i, (_, func) in enumerate(group):
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
                        if _generation(self) != generation:  # added, removed, reloaded
                            done = _called(groups[:n], group[:i + 1])
                            await self._rest(chain, _index(chain, top), event, args, done)
                            return
            except Exception as exc:
                if _halts(exc):
                    return
            if _generation(self) != generation:
                done = _called(groups[:n + 1], ())
                await self._rest(chain, _index(chain, top) + 1, event, args, done)
                return

    async def _rest(self, chain: list, start: int, event: hooks.Hook, args: list,
                    done: set[int]) -> None:
        """The rest of an event whose addons changed while it was delivered, as mitmproxy
        delivers it: the chain the event started with (and what was added to it) from
        ``start``, each addon's hooks looked up at its turn, none called twice."""
        position = start
        while position < len(chain):
            try:
                for addon, func in _implementations(chain[position], event.name):
                    if id(addon) in done:
                        continue
                    done.add(id(addon))
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except Exception as exc:
                if _halts(exc):
                    return
            position += 1

    def trigger(self, event: hooks.Hook) -> None:
        configure = isinstance(event, hooks.ConfigureHook)
        if configure:  # options decide which scripts there are (and may decide hooks)
            _changed(self)
        try:
            super().trigger(event)
        finally:
            if configure:
                _changed(self)

    def register(self, addon):
        _changed(self)
        try:
            return super().register(addon)
        finally:
            _changed(self)  # its load may have given mitmproxy's class back: not a method

    def remove(self, addon) -> None:
        _changed(self)
        try:
            super().remove(addon)
        finally:
            _changed(self)

    def add(self, *addons) -> None:
        try:
            super().add(*addons)
        finally:
            _changed(self)

    def clear(self) -> None:
        try:
            super().clear()
        finally:
            _changed(self)


def _generation(manager: AddonManager) -> int:
    return manager.__dict__.get("_hook_generation", 0)


def _index(chain: list, top: object) -> int:
    """Where ``top`` (by identity) is in ``chain``; 0 if it is not (nothing is called twice)."""
    return next((n for n, addon in enumerate(chain) if addon is top), 0)


def _called(groups: list[Group], group: tuple[Hook, ...]) -> set[int]:
    """Ids of the addons whose hook an event has called: all of ``groups``, then ``group``."""
    return {id(addon) for _, hooks in groups for addon, _ in hooks} | {
        id(addon) for addon, _ in group}


def _halts(error: Exception) -> bool:
    """What a hook's exception does to its event, by mitmproxy's rules (its ``safecall``):
    ``AddonHalt`` ends the event (True); ``OptionsError`` is raised again; any other error is
    logged as mitmproxy logs it (``Addon error: …``; the traceback shows this module's frames
    too) and ends only its addon's turn (False)."""
    if isinstance(error, exceptions.AddonHalt):
        return True
    with safecall():  # re-raises OptionsError, logs the rest
        raise error
    return False


def _changed(manager: AddonManager) -> None:
    """Forget the table (built again on the next event; none kept once mitmproxy's class is
    back) and count a change (an event being delivered notices it)."""
    manager.__dict__["_hook_generation"] = _generation(manager) + 1
    if type(manager) is HookTable:
        manager.__dict__["_hook_table"] = None
    else:
        manager.__dict__.pop("_hook_table", None)


def _implementations(top: object, name: str) -> tuple[Hook, ...]:
    """``top``'s and its sub-addons' callables for hook ``name`` (mitmproxy's ``_iter_hooks``
    order); a module of that name is skipped as mitmproxy skips it; any other attribute that is
    not callable raises mitmproxy's ``AddonManagerError`` when the event comes, as there, and
    an error raised while looking (a property, ``__getattr__``) is raised then too."""
    found: list[Hook] = []
    try:
        for addon in traverse([top]):
            func = getattr(addon, name, None)
            if not func or isinstance(func, types.ModuleType):
                continue
            found.append((addon, func if callable(func) else _raiser(
                exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable"))))
    except Exception as exc:  # a property or __getattr__ that raises: logged at each event
        found.append((top, _raiser(exc)))
    return tuple(found)


def _raiser(error: Exception) -> Callable[..., None]:
    """A hook that raises ``error`` (what mitmproxy's dispatch would have raised there)."""
    def fail(*_: Any) -> None:
        raise error
    return fail


def install(manager: AddonManager) -> bool:
    """Switch ``manager`` (mitmproxy's own class, exactly) to :class:`HookTable`; True when it
    is one now. Another class (a subclass someone else made) is left alone, with a warning."""
    if type(manager) is HookTable:
        return True
    if type(manager) is not AddonManager:
        log.warning("mitmproxy's addon manager is a %s, not its own: events are delivered "
                    "its way (flare_hook_table has no effect)", type(manager).__name__)
        return False
    manager.__class__ = HookTable
    _changed(manager)
    return True


def uninstall(manager: AddonManager) -> None:
    """Give ``manager`` mitmproxy's own dispatch back (no-op if it has it)."""
    if type(manager) is HookTable:
        manager.__class__ = AddonManager  # type: ignore[assignment]
    _changed(manager)


class HookTableSwitch:
    """Adds ``flare_hook_table`` and switches the running addon manager to :class:`HookTable`
    while it is on (and back when it is turned off or the bundle is unloaded)."""

    def __init__(self) -> None:
        self._manager: AddonManager | None = None

    def load(self, loader) -> None:
        loader.add_option("flare_hook_table", bool, True,
                          "Deliver mitmproxy's events from a table of the addons that implement "
                          "each hook instead of visiting every addon for every event (same "
                          "order and error handling; about half of mitmproxy's CPU per "
                          "request). Off: mitmproxy's own dispatch.")
        self._manager = loader.master.addons
        install(self._manager)  # from the start; configure turns it off if asked

    def configure(self, updated: set[str]) -> None:
        if "flare_hook_table" not in updated or self._manager is None:
            return
        from mitmproxy import ctx

        if ctx.options.flare_hook_table:
            install(self._manager)
        else:
            uninstall(self._manager)

    def done(self) -> None:
        if self._manager is not None:
            uninstall(self._manager)
