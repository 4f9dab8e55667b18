"""Account health in routing: spend budgets, overage caps and (opt-in) window start.

* **Budgets** (``budget_usd: {day, month}`` in the accounts file): an account whose recorded
  spend today / this month (UTC) reached its budget is skipped like a cooling account until
  the day or month ends (status ``over_budget``, ``account_events`` rows ``over_budget`` and
  ``within_budget``). Spend is the writer's running sum of ``cost_usd``, so it lags an
  answer by the writer's batch time (about 0.5 s).
* **Window start** (``flare_window_start=on-reset``): a subscription (OAuth) account whose
  5-hour window has reset while it sits idle gets the cheapest possible request
  (``flare_window_start_model``, ``max_tokens: 1``), so its next window's clock starts while
  the user is away. Never for API-key accounts; at most once per reset (remembered across
  restarts); recorded in ``requests`` with ``purpose = 'window_start'``.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import time
import uuid

import httpx
from mitmproxy import ctx
from mitmproxy.http import Headers
from mitmproxy.utils import asyncio_utils

from ..money import usd
from ..providers import OAUTH_BETA
from ..proxy_state import ProxyState
from ..routing.pool import AVAILABLE, Account
from ..routing.ratelimits import parse_limits
from ..storage.rows import BODY, FORMAT, PRICE_PROVIDER
from .http_clients import close_soon, open_client

log = logging.getLogger("mitmflare")

TICK_S = 1.0
WINDOW_START_MODES = ("off", "on-reset")
ANTHROPIC_VERSION = "2023-06-01"


def period_end(now: float, period: str) -> float:
    """Epoch s when the UTC ``day`` or calendar ``month`` containing ``now`` ends."""
    t = time.gmtime(now)
    if period == "day":
        return calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400.0
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


class AccountHealth:
    """Addon: budgets and window start, checked every second on the event loop."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._starting: set[str] = set()

    def load(self, loader) -> None:
        loader.add_option("flare_window_start", str, "off",
                          "Start an idle subscription account's next 5-hour window as soon as "
                          "the last one resets, with a 1-token request: off | on-reset.",
                          choices=WINDOW_START_MODES)
        loader.add_option("flare_window_start_model", str, "claude-haiku-4-5",
                          "Model of the window-start request (the cheapest documented one).")

    def running(self) -> None:
        self._client = open_client(60.0)
        self._task = asyncio_utils.create_task(self._loop(),
                                               name="mitmflare: account health loop", keep_ref=True)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        client, self._client = self._client, None
        close_soon(client, "window start")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                now = time.time()
                self.check_budgets(now)
                for account in self.proxy.pool.accounts.values():  # overage_cap_usd
                    self.proxy.check_overage(account, now)
                if ctx.options.flare_window_start == "on-reset":
                    for account in self.due_for_window_start(now):
                        self._starting.add(account.name)
                        asyncio_utils.create_task(self._start_window(account),
                                                  name="mitmflare: window start", keep_ref=True)
            except Exception:
                log.exception("mitmflare account health")

    # -- budgets ----------------------------------------------------------------------------
    def check_budgets(self, now: float) -> None:
        """Mark accounts over their day or month budget until the period ends; lift it when
        the period ended (or the budget was raised)."""
        for account in self.proxy.pool.accounts.values():
            st, budget = account.state, account.config.budget_usd
            today, month = self.proxy.spent("account", account.name, now)
            spent = None
            if budget is not None and budget.month is not None and month >= budget.month:
                spent = ("month", month, budget.month)
            elif budget is not None and budget.day is not None and today >= budget.day:
                spent = ("day", today, budget.day)
            over = None
            if spent is not None:
                period, amount, limit = spent
                over = (period_end(now, period),
                        f"spent {usd(amount)} of its {usd(limit)} {period} budget")
            self.proxy.record(account, st.budget(over, now))

    # -- window start -----------------------------------------------------------------------
    def due_for_window_start(self, now: float) -> list[Account]:
        """Subscription accounts whose 5-hour window reset (a known reset time has passed)
        with nothing sent since (idle: no client request started the new window), that are
        available, and got no window start for that reset yet."""
        due = []
        for account in self.proxy.pool.accounts.values():
            st = account.state
            if account.config.credential_kind != "oauth" or account.wire != "anthropic":
                continue
            reset = ((st.limits.get("windows") or {}).get("5h") or {}).get("reset")
            if (reset and st.last_used < reset <= now and st.window_started_for != reset
                    and account.status(now) == AVAILABLE and st.in_flight == 0
                    and account.name not in self._starting):
                due.append(account)
        return due

    async def _start_window(self, account: Account) -> None:
        st = account.state
        reset = st.limits["windows"]["5h"]["reset"]
        self.proxy.record(account, st.window_started(reset, time.time()))
        model = ctx.options.flare_window_start_model
        body = {"model": model, "max_tokens": 1,
                "messages": [{"role": "user", "content": "."}]}
        started = time.time()
        row = {"id": f"window-start-{uuid.uuid4()}", "started_at": started, "method": "POST",
               "path": "/v1/messages", "provider": account.provider, "account": account.name,
               "model": model, "upstream_model": model, "streamed": 0, "attempts": 1,
               "failover": 0, "purpose": "window_start", "wire_format": "anthropic",
               FORMAT: "anthropic",
               PRICE_PROVIDER: account.config.preset.price_provider}
        try:
            secret = self.proxy.secret(account)
            if not secret or self._client is None:
                raise RuntimeError("no credential")
            answer = await self._client.post(
                account.config.upstream + "/v1/messages", content=json.dumps(body),
                headers={"authorization": f"Bearer {secret}", "anthropic-beta": OAUTH_BETA,
                         "anthropic-version": ANTHROPIC_VERSION,
                         "content-type": "application/json"})
            now = time.time()
            headers = Headers([(k.encode(), v.encode()) for k, v in answer.headers.multi_items()])
            self.proxy.learn(account, parse_limits("anthropic", headers, now), now)
            row.update({"status": answer.status_code, BODY: answer.content,
                        "duration_ms": (now - started) * 1000.0})
            log.info("account %s: started its 5-hour window (%s)", account.name,
                     answer.status_code)
        except Exception as exc:  # the next reset tries again; never retried in a loop
            row.update({"error": f"window start failed: {type(exc).__name__}",
                        "duration_ms": (time.time() - started) * 1000.0})
            log.warning("account %s: window start failed: %s", account.name, type(exc).__name__)
        finally:
            self._starting.discard(account.name)
        self.proxy.put("request", row)
        self.proxy.mark_accounts_changed()
