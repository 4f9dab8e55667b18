"""Addon: per-user access keys (option ``flare_require_access_keys``, off by default).

With it on, every proxied request must carry a user's key (``x-api-key`` or
``Authorization: Bearer``, as Claude Code's ``ANTHROPIC_API_KEY`` / ``apiKeyHelper`` and the
SDKs send it); the key is removed with every other client credential before anything is
forwarded. The router asks :meth:`AccessKeys.check` which user a request belongs to and
whether it may go on: unknown or disabled key → 401 ``authentication_error``; a provider or
model the user may not use → 403 ``permission_error``; over a spend cap → 429
``rate_limit_error`` saying which cap and when it resets. Caps are enforced from recorded
costs (the writer's running totals), so requests in flight when a cap is crossed still finish.
Refusals for want of a valid key are counted rather than each recorded (:mod:`.refusals`).

Users are read from ``flare_state`` every second in a worker thread: a change made with
``mitmflare users …`` applies within 2 s. With ``flare_redis``, the users every host's
``mitmflare users … --redis`` wrote to Redis arrive by pub/sub
(:attr:`.shared_state.SharedState.users`) and are merged with these
(:func:`~..storage.users.merge_users`); while Redis is away the last ones known stay.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
from dataclasses import dataclass

from mitmproxy import ctx, http
from mitmproxy.utils import asyncio_utils

from ..money import usd
from ..providers.wire import header
from ..proxy_state import FlowContext, ProxyState
from ..routing.refusals import RefusalTally, source_of
from ..storage.users import User, find_user, merge_users, read_users
from ..times import iso_utc

log = logging.getLogger("mitmflare")

POLL_S = 1.0


@dataclass
class Refusal:
    """Why a request may not go on: HTTP ``status``, error ``kind`` (see
    :func:`.providers.error_response`), ``message``, and a ``retry_after`` in s (caps)."""

    status: int
    kind: str
    message: str
    retry_after: int | None = None


def keep_to_user_providers(proxy: ProxyState, fc: FlowContext, user: User | None) -> str | None:
    """Apply the user's ``allowed_providers`` (``mitmflare users set NAME --providers …``) to
    the request in ``fc``: accounts of other providers are left out of its choice. Returns the
    403 message when every account that could serve it is of another provider, else None."""
    if user is None or user.allowed_providers is None:
        return None
    allowed = ", ".join(user.allowed_providers) or "none"
    if not proxy.leave_out(fc, lambda a: not user.allows_provider(a.provider),
                           f"provider not allowed for user {user.name}"):
        return None
    return (f"mitmflare: user {user.name} may use only accounts of provider(s) {allowed}, and "
            f"no such account serves {fc.model or 'this request'}")


def presented_key(headers: http.Headers) -> str | None:
    """The client's credential: ``x-api-key``, else the token of ``Authorization: Bearer``."""
    key = header(headers, b"x-api-key")
    if key:
        return key.strip()
    auth = header(headers, b"authorization") or ""
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


class AccessKeys:
    """Keeps ``proxy.users`` in step with ``flare_state`` and judges requests against them."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        proxy.access = self
        self.refusals = RefusalTally()
        self.local: list[User] = []  # this host's users (flare_state)
        self._task: asyncio.Task | None = None

    def load(self, loader) -> None:
        loader.add_option("flare_require_access_keys", bool, False,
                          "Require a user's access key (mfk_…, from `mitmflare users add`) on "
                          "every proxied request; /health then shows account data only to "
                          "key holders.")

    def configure(self, updated: set[str]) -> None:
        self.proxy.require_keys = ctx.options.flare_require_access_keys
        if "flare_state" in updated or "flare_require_access_keys" in updated:
            self.local = read_users(self.proxy.open_store(ctx.options.flare_state))
            self.merge()

    def running(self) -> None:
        self._task = asyncio_utils.create_task(self._watch(),
                                               name="mitmflare: access keys watch", keep_ref=True)

    def done(self) -> None:
        if self._task:
            self._task.cancel()
        self._record_refusals(None)  # before the recorder stops the writer

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            self._record_refusals(time.time())
            if not self.proxy.require_keys:
                continue
            try:
                self.local = await asyncio.to_thread(
                    read_users, self.proxy.open_store(ctx.options.flare_state))
                self.merge()
            except Exception:  # the watcher must outlive any surprise
                log.exception("users watcher")

    def merge(self) -> None:
        """``proxy.users``: this host's users merged with Redis's (when ``flare_redis``)."""
        shared = self.proxy.shared.users if self.proxy.shared is not None else {}
        self.proxy.users = merge_users(self.local, shared)

    def user_for(self, presented: str | None) -> User | None:
        """The enabled user owning ``presented``, or None."""
        user = find_user(self.proxy.users, presented)
        return user if user is not None and not user.disabled else None

    def authenticate(self, presented: str | None) -> tuple[User | None, Refusal | None]:
        """(user, None) when the key is valid, else (user or None, 401 refusal). With keys
        not required: (None, None)."""
        if not self.proxy.require_keys:
            return None, None
        user = find_user(self.proxy.users, presented)
        if user is None:
            return None, Refusal(401, "authentication",
                                 "mitmflare: a valid access key is required (x-api-key or "
                                 "Authorization: Bearer); ask the operator for one")
        if user.disabled:
            return user, Refusal(401, "authentication", f"mitmflare: user {user.name} is disabled")
        return user, None

    def refused(self, flow: http.HTTPFlow, fc: FlowContext) -> None:
        """Account for a request answered 401 (no valid key) through the tally: its row is
        queued now when it is its source's first this minute, else only counted. The
        recorder records no row of its own for it."""
        self.proxy.flows.pop(flow.id, None)
        row = {"id": fc.row_id, "started_at": fc.started, "wire_format": fc.wire_format or None,
               "method": flow.request.method, "path": fc.path.split("?", 1)[0],
               "status": 401, "error": fc.error, "user": fc.user, "replay": int(fc.replay),
               "user_agent": header(flow.request.headers, b"user-agent"), "attempts": 0}
        first = self.refusals.note(source_of(flow.client_conn.peername), row, fc.started)
        if first is not None:
            self.proxy.put("request", first)

    def _record_refusals(self, now: float | None) -> None:
        for row in self.refusals.due(now):
            self.proxy.put("request", row)

    def authorize(self, user: User | None, model: str | None, now: float) -> Refusal | None:
        """None when ``user`` may send a request for ``model`` now, else why not (403: a model
        the user may not use, 429 over a spend cap). The user's ``allowed_providers``
        (``--providers``) are applied per account when one is chosen
        (:func:`keep_to_user_providers`)."""
        if user is None:
            return None
        why = user.allows(model)
        if why:
            return Refusal(403, "permission", f"mitmflare: {why}")
        return self._over_cap(user, now)

    def _over_cap(self, user: User, now: float) -> Refusal | None:
        writer = self.proxy.writer
        if writer is None:
            return None
        day, month = time.strftime("%Y-%m-%d", time.gmtime(now)), time.strftime("%Y-%m", time.gmtime(now))
        for period, cap, key, resets in (
                ("daily", user.daily_cap_usd, day, _next_day(now)),
                ("monthly", user.monthly_cap_usd, month, _next_month(now))):
            spent = writer.spend.get(("user", user.name, key), 0.0)
            if cap is not None and spent >= cap:
                wait = max(1, math.ceil(resets - now))
                return Refusal(429, "rate_limit",
                               f"mitmflare: user {user.name} reached the {period} spend cap of "
                               f"{usd(cap)} (spent {usd(spent)}); it resets at "
                               f"{iso_utc(resets)}", wait)
        return None


def _next_day(now: float) -> float:
    return (math.floor(now / 86400) + 1) * 86400.0


def _next_month(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))
