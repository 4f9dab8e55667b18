"""Addon: what an operator asks the running proxy: ``GET /health``, connectivity probes, and
the ``flare.*`` commands (mitmweb's command bar and REST API, the console's ``:`` prompt).

Runs before the router: a flow answered here is never routed, recorded or sent upstream.
Command output is a list of lines (aligned with spaces), which both mitmweb and the console
render as text.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from mitmproxy import command, ctx, exceptions, flow, http
from mitmproxy.utils import asyncio_utils

from .. import __version__
from ..providers import strip_client_credentials
from ..providers.presets import ANTHROPIC, OPENAI
from ..proxy_state import ProxyState
from ..routing.pool import AVAILABLE, COOLING_DOWN, Account
from ..storage.redis_store import COMMANDS, transition
from ..storage.state_store import StoreUnavailable
from ..times import iso_utc
from .access import presented_key
from .guard import ROUTED
from .pool_headers import pool_limits
from .router import REPLAY_ACCOUNT

PROBE_BODY = b'{"status":"ok","service":"mitmflare"}'
COMMAND_POLL_S = 1.0
APPLIED_MAX = 1000  # operator command ids remembered (each is applied once)
log = logging.getLogger("mitmflare")


class Operations:
    """``/health``, ``HEAD /`` / ``GET /`` probes and the operator commands."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        proxy.operations = self
        self._task: asyncio.Task | None = None
        self._applied: OrderedDict[str, None] = OrderedDict()  # command ids applied here

    def running(self) -> None:
        # mitmweb: show each flow's comment (it names the serving account) in the flow list
        if "web_columns" in ctx.options and "comment" not in ctx.options.web_columns:
            ctx.options.web_columns = [*ctx.options.web_columns, "comment"]
        self._task = asyncio_utils.create_task(self._watch_commands(),
                                               name="mitmflare: operator commands", keep_ref=True)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch_commands(self) -> None:
        """Apply what ``mitmflare accounts reset`` queued in ``flare_state`` (table
        ``operator_commands``), polled every second in a worker thread; only commands queued
        after this proxy started (:meth:`apply`)."""
        store = self.proxy.open_store(ctx.options.flare_state)
        try:
            seen = await asyncio.to_thread(store.latest_command_id)
        except StoreUnavailable:  # no file or table yet: every command is new
            seen = 0
        while True:
            await asyncio.sleep(COMMAND_POLL_S)
            try:
                queued = await asyncio.to_thread(store.commands_since, seen)
            except Exception as exc:  # a locked or missing file: try again next second
                log.debug("operator commands not read: %s", exc)
                continue
            for command_id, name, account, uid in queued:
                seen = max(seen, command_id)
                self.apply(name, account, uid, "flare_state")

    def apply(self, command: str, account: str, uid: str = "", source: str = "") -> None:
        """Apply operator ``command`` (``reset``, ``pause``, ``unpause``) to ``account``
        through its state transition (:func:`~..storage.redis_store.transition`), once per
        ``uid`` (the same command can arrive from ``flare_state`` and through Redis);
        ``source`` says where it came from (log). An unknown account or command is logged."""
        if uid:
            if uid in self._applied:
                return
            self._applied[uid] = None
            while len(self._applied) > APPLIED_MAX:
                self._applied.popitem(last=False)
        target = self.proxy.pool.get(account)
        if target is None or command not in COMMANDS:
            log.warning("operator command %s %s (from %s): no such %s", command, account,
                        source or "?", "account" if target is None else "command")
            return
        self.proxy.record(target, transition(target.state, command))
        self.proxy.snapshot_accounts(force=True)

    def request(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        path = request.path.split("?", 1)[0]
        if path == "/health":
            body = self.health()
            user = self.proxy.access.user_for(presented_key(request.headers)) \
                if self.proxy.access is not None else None
            if self.proxy.require_keys and user is None:
                body = {"status": body["status"]}  # account data only for key holders
            else:
                body.update(self.serving(request.query.get("session"), user))
            answer = http.Response.make(200, json.dumps(body),
                                        {"content-type": "application/json"})
        elif path == "/" and request.method in ("GET", "HEAD"):
            # connectivity probe (Claude Code sends HEAD / at start): answered here, unrecorded
            answer = http.Response.make(200, b"" if request.method == "HEAD" else PROBE_BODY,
                                        {"content-type": "application/json"})
        else:
            return
        strip_client_credentials(request.headers)
        flow.metadata[ROUTED] = True
        flow.response = answer

    def health(self) -> dict:
        """The ``GET /health`` body: status (``ok`` when an account is available, else
        ``degraded``, also when the writer is not ``ok``), version, strategy, account counts in
        total and per provider, ``in_flight`` (requests on accounts; holding a user's slot;
        with ``flare_redis``, ``elsewhere``: on accounts in the other processes of the pool),
        the accounts file's rejected entries, the database writer's
        state (``ok``, ``degraded (reason)``, ``down``), ``rows_lost`` (`requests` rows not
        written since start) and ``write_errors`` (all items not written), the requests refused
        for want of a valid access key since start (``auth_refusals``), and the analytics
        database's size and its WAL's (bytes, refreshed every 10 s) and how often its file was
        found deleted and created again; ``rows_stream`` with ``flare_redis`` (state, writer,
        backlog, buffered, lost: :meth:`~..storage.row_stream.StreamSender.status`); ``pool``:
        the subscription accounts' windows (:func:`.pool_headers.pool_limits`), when there are
        any."""
        now = time.time()
        accounts = list(self.proxy.pool.accounts.values())
        statuses = [a.status(now) for a in accounts]
        available = statuses.count(AVAILABLE)
        body: dict[str, Any] = {
            "status": "ok" if available else "degraded",
            "version": __version__,
            "strategy": self.proxy.strategy,
            "accounts": {"total": len(accounts), "available": available,
                         "cooling_down": statuses.count(COOLING_DOWN)},
            "in_flight": {"accounts": sum(a.state.in_flight for a in accounts),
                          "users": sum(self.proxy.slots.users.values())},
            "providers": {p: {"total": sum(a.provider == p for a in accounts),
                              "available": sum(a.provider == p and s == AVAILABLE
                                               for a, s in zip(accounts, statuses, strict=True))}
                          for p in sorted({a.provider for a in accounts})},
        }
        if self.proxy.config_errors:
            body["config_error"] = "; ".join(self.proxy.config_errors)
            body["config_errors"] = self.proxy.config_errors
        shared = self.proxy.shared
        body["shared_state"] = shared.status() if shared is not None else "off"
        if shared is not None:
            body["worker"] = shared.worker
            body["in_flight"]["elsewhere"] = sum(a.state.in_flight_elsewhere for a in accounts)
        writer = self.proxy.writer
        body["writer"] = writer.state if writer else "down"
        body["rows_lost"] = writer.rows_lost if writer else 0
        body["write_errors"] = writer.write_errors if writer else 0
        body["auth_refusals"] = self.proxy.access.refusals.total if self.proxy.access else 0
        sender = getattr(writer, "sender", None)
        if sender is not None:  # rows through Redis (.row_stream)
            body["rows_stream"] = sender.status()
        if writer is not None:  # sizes measured by the writer process (no file I/O here)
            body["database"] = {"bytes": writer.db_bytes, "wal_bytes": writer.wal_bytes,
                                "recreated": writer.recreated}
        if body["writer"] != "ok":
            body["status"] = "degraded"
        pool = pool_limits(accounts, now, self.proxy.headroom)
        if pool is not None:
            body["pool"] = pool.to_dict()
        return body

    def serving(self, session: str | None, user) -> dict:
        """What ``mitmflare statusline`` shows besides the pool: ``serving_account``, the
        account that last served Claude Code session ``session`` (its prompt-cache
        conversation), else the one the next Anthropic-format request goes to;
        ``spent_today_usd``, the recorded cost today (UTC) of ``user`` when a key named one
        (then also ``user``), else of every account."""
        now = time.time()
        proxy = self.proxy
        account = proxy.affinity.last(session) if session else None
        if account is None:
            order = proxy.selector.preview(proxy.pool, ANTHROPIC, proxy.strategy, now,
                                          proxy.session_hours, convertible=True)
            account = order[0].name if order else None
        if user is not None:
            spent = proxy.spent("user", user.name, now)[0]
        else:
            spent = sum(proxy.spent("account", name, now)[0] for name in proxy.pool.accounts)
        return {"serving_account": account, "spent_today_usd": round(spent, 6),
                **({"user": user.name} if user is not None else {})}

    @command.command("flare.accounts")
    def accounts_command(self) -> Sequence[str]:
        """Each account on one line: name, provider, status, cooling down until, and why."""
        now = time.time()
        rows = [("ACCOUNT", "PROVIDER", "STATUS", "UNTIL", "WHY")]
        for a in self.proxy.pool.accounts.values():
            st = a.state
            models = "; ".join(f"{m} until {iso_utc(t)}" for m, t in st.model_cooldowns.items()
                               if t > now)
            until, why = a.blocked(now)
            rows.append((a.name, a.provider, a.status(now), iso_utc(until) or "-",
                         "; ".join(x for x in (why, models) if x) or "-"))
        return _aligned(rows)

    @command.command("flare.why")
    def why(self, model: str) -> Sequence[str]:
        """For every account: would it serve the next request for ``model``, and if not, why.
        The strategy's choice is computed on a copy: nothing changes."""
        now = time.time()
        lines = []
        for client in (ANTHROPIC, OPENAI):
            convertible = True  # Messages / Chat Completions: accounts that map models convert
            accounts = self.proxy.pool.for_client(client, convertible)
            if not accounts:
                continue
            chosen = copy.deepcopy(self.proxy.selector).choose(
                self.proxy.pool, client, self.proxy.strategy, now, convertible=convertible,
                session_hours=self.proxy.session_hours, model=model or None)
            for account in accounts:
                verdict = _verdict(account, chosen, model, now)
                if self.proxy.oauth_clients == "claude-code" and account.config.oauth is not None:
                    verdict += "; Claude Code only (flare_oauth_clients=claude-code)"
                lines.append((account.name, account.provider, f"{client} requests", verdict))
        return _aligned([("ACCOUNT", "PROVIDER", "CLIENT FORMAT",
                          f"NEXT REQUEST FOR {model or 'any model'}"), *lines])

    @command.command("flare.replay")
    def replay(self, flows: Sequence[flow.Flow], account: str) -> None:
        """Replay flows through the router on ``account`` (``*`` for the strategy's choice),
        with that account's real credentials; each replay is recorded as such."""
        if account != "*" and self.proxy.pool.get(account) is None:
            raise exceptions.CommandError(f"no account named {account!r}")
        for f in flows:
            f.metadata[REPLAY_ACCOUNT] = None if account == "*" else account
        ctx.master.commands.call("replay.client", flows)

    @command.command("flare.resume")
    def resume(self, name: str) -> None:
        """Clear an account's cooldown, bench and needs_reauth mark now (``*`` for all)."""
        targets = list(self.proxy.pool.accounts.values()) if name == "*" else \
            [a for a in [self.proxy.pool.get(name)] if a is not None]
        if not targets:
            raise exceptions.CommandError(f"no account named {name!r}")
        for account in targets:
            self.proxy.record(account, account.state.resume())
        self.proxy.snapshot_accounts(force=True)


def _verdict(account: Account, chosen: Account | None, model: str | None, now: float) -> str:
    st = account.state
    status = account.status(now)
    if status != AVAILABLE:
        until, why = account.blocked(now)
        return f"no: {status}" + (f" until {iso_utc(until)}" if until else "") + \
            (f" ({why})" if why else "")
    if model and not account.serves(model):
        return f"no: does not serve {model} (its models: {', '.join(account.config.models or {})})"
    if model and st.model_cooldowns.get(model, 0) > now:
        return (f"no: {model} cools down until {iso_utc(st.model_cooldowns[model])} "
                f"({st.model_reasons.get(model, '')})")
    if account.full():
        return (f"no: at its cap, {account.busy} in flight "
                f"(max_concurrent {account.config.max_concurrent})")
    if chosen is not None and chosen.name == account.name:
        return "yes: the strategy's choice for the next request"
    near = " and near a limit" if st.constrained_until > now else ""
    return f"not next: available (priority {account.config.priority}{near})"


def _aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
