"""Failover: what happens after an upstream answer that is not a success.

Runs in the async ``response`` hook, so waiting here blocks only this flow.

* Non-streamed requests, and streamed ones from clients that do not retry by themselves: the
  proxy re-sends the same request bytes to the next account itself (with ``httpx``) and the
  client gets the good answer. A re-sent stream reaches the client in one piece.
* Streamed requests from clients that retry by themselves (the official SDKs and Claude Code
  send ``x-stainless-retry-count``): they get an ``overloaded_error`` marked
  ``x-should-retry: true`` with a tiny ``retry-after-ms``, and the retry is routed to another
  account, so the answer still streams chunk by chunk.
* Nothing left to try: an error in the upstream's own shape; for rate limits a ``retry-after``
  equal to the time until the soonest account is free again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time

import httpx
from mitmproxy import ctx, http

from ..config.option_types import decimal, whole
from ..providers import error_response
from ..proxy_state import FlowContext, ProxyState
from ..routing.classify import FAILOVER, OK, TRANSIENT, TRANSIENT_COOLDOWN_S, Verdict, classify
from ..routing.pool import BENCHED, NEEDS_REAUTH, OVER_BUDGET, PAUSED, Account
from ..routing.ratelimits import parse_limits
from ..times import iso_utc
from .attempt import attempt_account, attempt_response, free_at, resend, route
from .concurrency import in_flight
from .fallbacks import fallback_choice
from .http_clients import close_soon, open_client

log = logging.getLogger("mitmflare")

SELF_RETRY_MAX_COUNT = 2   # the SDKs' default max_retries: beyond it they would give up
LONG_RETRY_AFTER_S = 60.0
RETRY_SOON_S = 2  # retry-after (s) when every usable account refused a request only for now


class Failover:
    """Addon: retry budget and pacing (``flare_retry_*`` options) and the failover loop, in
    the ``response`` hook just before the router's (which reads ``fc.verdict``)."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.client: httpx.AsyncClient | None = None
        self.attempts = 3
        self.delay_ms = 1000.0
        self.backoff = 2.0

    def load(self, loader) -> None:
        loader.add_option("flare_retry_attempts", int, 3,
                          "Retries after the first attempt of a request (other accounts, or "
                          "the same one after a transient error).")
        loader.add_option("flare_retry_delay_ms", int, 1000,
                          "Delay before retrying after a transient error (529, 5xx), ms.")
        loader.add_option("flare_retry_backoff", str, "2",
                          "Factor (a decimal number >= 1) applied to the retry delay after "
                          "each retry.")

    def configure(self, updated: set[str]) -> None:
        self.attempts = whole("flare_retry_attempts", ctx.options.flare_retry_attempts, 0)
        self.delay_ms = whole("flare_retry_delay_ms", ctx.options.flare_retry_delay_ms, 0)
        self.backoff = decimal("flare_retry_backoff", ctx.options.flare_retry_backoff, 1,
                               low_inclusive=True)

    def running(self) -> None:
        self.client = open_client(httpx.Timeout(600.0, connect=10.0))

    def done(self) -> None:
        client, self.client = self.client, None
        close_soon(client, "failover")

    async def response(self, flow: http.HTTPFlow) -> None:
        fc = self.proxy.flows.get(flow.id)
        if fc is not None and fc.account is not None and flow.response is not None:
            fc.verdict = await self.handle(flow, fc)

    # -- the loop ---------------------------------------------------------------------------
    async def handle(self, flow: http.HTTPFlow, fc: FlowContext) -> Verdict:
        """Judge the answer in ``flow.response`` and fail over as needed; leaves the answer for
        the client in ``flow.response``. Returns the verdict on the last upstream answer.

        A transient error (529, 5xx, 408) is retried once on the same account, then on another
        one. If the request then succeeds elsewhere, the first account is charged (it cools
        down); if a second account fails it the same way, the error follows the request: it is
        the request's fault, the client gets the answer and no account is charged; otherwise
        (nothing else to try) the error counts toward the account's outlier threshold
        (:meth:`.proxy_state.ProxyState.count_error`)."""
        verdict = self._judge(flow, fc)
        retries = 0
        while verdict.action in (FAILOVER, TRANSIENT):
            account = attempt_account(fc)
            now = time.time()
            if verdict.needs_reauth and await self._refreshed_for_retry(fc, retries):
                # an OAuth 401/403: one refresh-and-retry on the same account first
                await route(self.proxy, flow, fc, account)
                retries += 1
                await resend(self.proxy, self.client, flow, fc)
                verdict = self._judge(flow, fc)
                continue
            same = verdict.action == TRANSIENT and not fc.same_account_retried
            if not same:
                if verdict.action == TRANSIENT:
                    if fc.transient_errors or fc.had_transient:
                        self._request_fault(flow, fc)
                        break
                    fc.transient_errors.append((account, verdict))
                else:
                    self.proxy.apply(account, verdict, fc.model, fc.limits, now)
                fc.excluded.add(account.name)
            if retries >= self.attempts:
                self._give_up(flow, fc)
                break
            if fc.stream and self._client_retries(flow) and not same:
                if self.proxy.choose(fc) is None and fallback_choice(self.proxy, fc) is None:
                    flow.response = no_account_response(self.proxy, fc)
                else:
                    self._ask_client_to_retry(flow, fc, verdict)
                break
            if same:
                fc.same_account_retried = True
                await route(self.proxy, flow, fc, account)
            elif not await route(self.proxy, flow, fc):
                flow.response = no_account_response(self.proxy, fc)
                break
            if verdict.action == TRANSIENT:
                await asyncio.sleep(self._delay(retries))
            retries += 1
            fc.failover = True
            await resend(self.proxy, self.client, flow, fc)
            verdict = self._judge(flow, fc)
        self._charge_transient(fc, proven=verdict.action == OK)
        if verdict.action == OK:
            self._after_stream(fc)
        self._comment(flow, fc)
        return verdict

    def _charge_transient(self, fc: FlowContext, proven: bool) -> None:
        """Charge the request's transient errors to their accounts (see :meth:`handle`)."""
        errors, fc.transient_errors = fc.transient_errors, []
        fc.had_transient = fc.had_transient or bool(errors)
        if fc.request_fault:
            return
        now = time.time()
        for account, verdict in errors:
            if proven:
                self.proxy.apply(account, verdict, fc.model, None, now)
            else:
                self.proxy.count_error(account, verdict, fc.model, None, now)

    def _request_fault(self, flow: http.HTTPFlow, fc: FlowContext) -> None:
        """A second account failed the request as the first did: hand the answer to the
        client, tell it not to retry, charge no account."""
        fc.request_fault = True
        fc.notes.append("the same error followed the request to a second account: the "
                        "request's fault, no account charged")
        attempt_response(flow).headers["x-mitmflare-error"] = "request_fault"
        self._give_up(flow, fc)

    def _after_stream(self, fc: FlowContext) -> None:
        """A 200 whose stream carried an error event: nothing can be retried once bytes went
        out, but the account's state still learns from it."""
        kind = fc.tap.error_type if fc.tap else None
        account = attempt_account(fc)
        now = time.time()
        if kind == "rate_limit_error":
            self.proxy.apply(account, Verdict(FAILOVER, "stream_rate_limit_error", backoff=True),
                            fc.model, fc.limits, now)
        elif kind == "overloaded_error":
            self.proxy.apply(account, Verdict(TRANSIENT, "stream_overloaded_error",
                                             cooldown_until=now + TRANSIENT_COOLDOWN_S),
                            fc.model, fc.limits, now)
        else:
            self.proxy.succeeded(account, fc.model)

    async def _refreshed_for_retry(self, fc: FlowContext, retries: int) -> bool:
        oauth = self.proxy.oauth
        account = attempt_account(fc)
        if fc.oauth_retried or account.config.oauth is None or oauth is None \
                or retries >= self.attempts:
            return False
        fc.oauth_retried = True
        return await oauth.refresh(account)

    def _judge(self, flow: http.HTTPFlow, fc: FlowContext) -> Verdict:
        """Classify the current answer and record it as an attempt."""
        now = time.time()
        response, account = attempt_response(flow), attempt_account(fc)
        if fc.limits is None:
            fc.limits = parse_limits(account.wire, response.headers, now)
        body = response.content if response.status_code >= 400 else None
        verdict = classify(account.wire, response.status_code, fc.limits, body, now,
                           self.proxy.max_cooldown_s)
        if response.status_code >= 400:
            fc.notes.append(f"{account.name}: {response.status_code} {verdict.reason}")
        self.proxy.put("attempt", {
            "request_id": fc.row_id, "attempt": len(fc.attempts) + 1, "account": account.name,
            "started_at": fc.attempt_started, "status": response.status_code,
            "reason": verdict.reason or None,
            "duration_ms": round((now - fc.attempt_started) * 1000, 3)})
        fc.attempts.append({"account": account.name, "status": response.status_code})
        return verdict

    def _delay(self, retry: int) -> float:
        """Seconds before a retry after a transient error: delay x backoff^n, +-25 % jitter."""
        base = self.delay_ms / 1000.0 * self.backoff ** retry
        return base * random.uniform(0.75, 1.25)

    @staticmethod
    def _client_retries(flow: http.HTTPFlow) -> bool:
        count = flow.request.headers.get("x-stainless-retry-count")
        return count is not None and count.isdigit() and int(count) < SELF_RETRY_MAX_COUNT

    @staticmethod
    def _ask_client_to_retry(flow: http.HTTPFlow, fc: FlowContext, verdict: Verdict) -> None:
        """Answer so that the client retries at once; the retry goes to another account.

        The answer is an ``overloaded_error`` (529; 503 for OpenAI), not the upstream's 429:
        the SDKs retry both, but Claude Code logged in as a subscriber does not retry 429s,
        while it does retry overloaded errors (``upstream-apis.md`` section 7)."""
        status = 529 if fc.wire_format == "anthropic" else 503
        flow.response = error_response(
            fc.wire_format, status, "overloaded",
            f"mitmflare: account {attempt_account(fc).name} answered "
            f"{attempt_response(flow).status_code} "
            f"({verdict.reason}); retry and another account will serve the request",
            {"x-should-retry": "true", "retry-after-ms": "1", "x-mitmflare-error": "failover"})
        fc.failover = True

    def _give_up(self, flow: http.HTTPFlow, fc: FlowContext) -> None:
        """Retry budget spent: hand back the last answer, telling the client not to retry."""
        headers = attempt_response(flow).headers
        headers["x-should-retry"] = "false"
        wait = fc.limits.retry_after_s if fc.limits else None
        if wait is not None and wait > LONG_RETRY_AFTER_S:
            headers.pop("retry-after", None)
            headers.pop("retry-after-ms", None)

    def _comment(self, flow: http.HTTPFlow, fc: FlowContext) -> None:
        """The flow's comment, shown in mitmweb's flow list: ``[account] tried …; skipped …``
        (skipped: accounts of this format whose ``models:`` cannot map the model)."""
        served = fc.account.name if fc.account else "none"
        text = f"[{served}]{' replay' if fc.replay else ''} mitmflare: account {served}"
        if fc.notes:
            text += "; tried " + "; ".join(fc.notes)
        if fc.model:
            skipped = [a.name for a in self.proxy.pool.for_client(fc.wire_format, fc.convertible,
                                                                  fc.family)
                       if not a.serves(fc.model)]
            if skipped:
                text += f"; skipped {', '.join(skipped)} (cannot serve {fc.model})"
        flow.comment = text


def no_account_response(proxy: ProxyState, fc: FlowContext) -> http.Response:
    """The answer when no account can take the request (in its wire format's error shape). The
    message names each account's reason; the status fits the reasons:

    * No account of the format (or the compatibility route's family) is configured, or
      none can serve the model: 404 ``not_found_error`` naming it (a client's or an
      operator's mistake, not worth a retry).
    * Every account that is not paused, benched or logged out is held only by rate limits
      (a limit's cooldown, a model limit, it refused this request for now, or it is at
      its ``max_concurrent``): 429
      ``rate_limit_error`` with ``retry-after`` = time until the soonest is free (a short
      one and ``x-should-retry: true`` when a retry may go to an account this request
      already tried).
    * Otherwise some account is out for an outage (unreachable, timed out, 5xx, its token
      could not be refreshed): 503 ``api_error``, with ``retry-after`` when one comes
      back at a known time; none at all (paused, needs login, benched): 503 without."""
    now = time.time()
    accounts = [a for a in proxy.pool.for_client(fc.wire_format, fc.convertible, fc.family)
                if fc.family is None or a.in_family(fc.family)]
    if not accounts:
        where = f"{fc.family} " if fc.family else ""
        return error_response(fc.wire_format, 404, "not_found",
                              f"mitmflare: no {where}account for {fc.wire_format} requests "
                              f"is configured (model {fc.model!r})")
    accounts = [a for a in accounts if a.serves(fc.model)]
    if not accounts:
        return error_response(fc.wire_format, 404, "not_found",
                              f"mitmflare: no account serves model {fc.model!r}")
    held = [_held(a, fc, now) for a in accounts]
    reasons = "; ".join(f"{a.name} ({why})" for a, (_, why, _) in zip(accounts, held,
                                                                      strict=True))
    waits = [(at, limit, a) for a, (at, _, limit) in zip(accounts, held, strict=True)
             if at is not None]
    soonest, _, first = min(waits, key=lambda w: w[0], default=(None, False, None))
    headers, then = {}, ""
    if soonest is not None and first is not None:
        wait = max(1, math.ceil(soonest - now))
        headers = {"retry-after": str(wait)}
        then = f"; {first.name} is free again in {wait} s (at {iso_utc(soonest)})"
    if waits and all(limit for _, limit, _ in waits):
        if soonest is not None and soonest <= now:  # refused only for now: retry anew
            headers = {"retry-after": str(RETRY_SOON_S), "x-should-retry": "true"}
            then = f"; retry in {RETRY_SOON_S} s"
        return error_response(fc.wire_format, 429, "rate_limit",
                              f"mitmflare: every {fc.wire_format} account is rate limited "
                              f"({reasons}){then}", headers)
    return error_response(fc.wire_format, 503, "unavailable",
                          f"mitmflare: no {fc.wire_format} account can serve now "
                          f"({reasons}){then}", headers)


OUTAGE_PREFIXES = ("http_", "connect_", "upstream_", "stream_overloaded", "refresh_failed",
                   "no_credential")
"""Cooldown reasons that mean an outage, not a rate limit (see :mod:`.classify`)."""


def _held(account: Account, fc: FlowContext, now: float) -> tuple[float | None, str, bool]:
    """Why ``account`` cannot take ``fc``'s request now: (epoch s it can again, or None when
    unknown or never by itself; the reason in words; True when a rate limit holds it)."""
    status = account.status(now)
    if status == PAUSED:
        return None, "paused", False
    if status == NEEDS_REAUTH:
        return None, f"needs a new login (mitmflare accounts login {account.name})", False
    if status == BENCHED:
        return None, f"benched: {account.state.benched_reason}", False
    if status == OVER_BUDGET:
        return account.state.over_budget_until, "over its budget", False
    free = free_at(account, fc.model, now)
    if free > now:
        st = account.state
        reason = st.cooldown_reason if st.cooldown_until >= free else \
            st.model_reasons.get(fc.model or "", "model limit")
        return free, f"cooling down until {iso_utc(free)} ({reason})", \
            not reason.startswith(OUTAGE_PREFIXES)
    skipped = fc.skipped.get(account.name)
    if skipped:
        return None, skipped, False
    if account.name in fc.excluded:
        return now, "refused this request for now", True
    if account.full():
        return now, f"{in_flight(account.busy)}, its limit (max_concurrent)", True
    return None, "not usable", False
