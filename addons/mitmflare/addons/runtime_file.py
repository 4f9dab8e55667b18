"""Addon: the runtime file (:mod:`.runtime`): written once the proxy runs, in a worker thread
(never on the event loop), rewritten when the files or listeners it names change, removed at
a clean shutdown.

Option ``flare_runtime_info``: what ``mitmflare run`` started along with the proxy, copied into
the file (the proxy cannot see it otherwise): ``NAME=PORT`` pairs and the word ``demo``,
comma-separated, e.g. ``demo,dashboard=8001,simulated upstream=9099``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.utils import asyncio_utils

from .. import __version__, runtime
from ..times import iso_utc

log = logging.getLogger("mitmflare")
NAMED = {"flare_accounts", "flare_db", "flare_state", "flare_runtime_info", "mode", "web_port",
         "listen_host", "listen_port"}


class RuntimeFile:
    """Writes and removes this proxy's runtime file."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.demo = False
        self.paths: list[Path] = []
        self.started_at = iso_utc(time.time())
        self._running = False
        self._tasks: set[asyncio.Task] = set()

    def load(self, loader) -> None:
        loader.add_option(
            "flare_runtime_info", str, "",
            "Set by `mitmflare run`: what it started with the proxy, for the runtime file "
            "the mitmflare command reads (NAME=PORT pairs and the word demo, comma-separated, "
            "e.g. demo,dashboard=8001).")

    def configure(self, updated: set[str]) -> None:
        if "flare_runtime_info" in updated:
            try:
                self.ports, self.demo = runtime.parse_info(ctx.options.flare_runtime_info)
            except ValueError as exc:
                raise exceptions.OptionsError(f"flare_runtime_info: {exc}") from None
        if self._running and updated & NAMED:
            self._write()

    def running(self) -> None:
        self._running = True
        self._write()

    def done(self) -> None:
        if self.paths:  # at shutdown: nothing else runs on the loop any more
            runtime.remove(self.paths, os.getpid())

    def facts(self) -> dict:
        """What the runtime file says (see :mod:`.runtime`), from the options (no I/O)."""
        options = ctx.options
        listeners = []
        for spec in options.mode:
            mode = ProxyMode.parse(spec)
            port = mode.listen_port(options.listen_port)
            if port is not None:
                listeners.append({"mode": spec.rpartition("@")[0] or spec,
                                  "host": mode.listen_host(options.listen_host), "port": port})
        ports = dict(self.ports)
        if "web_port" in options:
            ports["mitmweb"] = options.web_port
        return {"pid": os.getpid(), "started_at": self.started_at, "version": __version__,
                "cwd": os.getcwd(), "accounts": os.path.abspath(options.flare_accounts),
                "db": os.path.abspath(options.flare_db),
                "state": os.path.abspath(options.flare_state), "demo": self.demo,
                "listeners": listeners, "ports": ports}

    def _write(self) -> None:
        facts = self.facts()
        old = self.paths
        self.paths = runtime.paths_for(facts["state"], facts["pid"])
        task = asyncio_utils.create_task(self._save(facts, old),
                                         name="mitmflare: runtime file", keep_ref=True)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _save(self, facts: dict, old: list[Path]) -> None:
        moved = [p for p in old if p not in self.paths]
        if moved:
            await asyncio.to_thread(runtime.remove, moved, facts["pid"])
        for problem in await asyncio.to_thread(runtime.write, facts, self.paths):
            log.info("runtime file not written (the mitmflare command will not find this "
                        "proxy from other folders): %s", problem)
