"""Addon: the pool's headroom in the subscription rate-limit headers (``flare_pool_headers``).

Claude Code builds its statusline's ``rate_limits.five_hour`` / ``seven_day`` (and its "near
your limit" warnings) from the ``anthropic-ratelimit-unified-*`` headers of each answer
(``shared/reference/prompt-cache-limits-clients.md``, "Claude Code"). Behind mitmflare those
describe whichever account served the request, which says little about what the user can
still send. With ``flare_pool_headers=true`` (off by default) answers to Anthropic-format
clients carry the **pool's** figures there instead, and the serving account's own unified
headers move to ``x-mitmflare-account-unified-*`` (``x-mitmflare-account``: its name; absent
on mitmflare's own answers, e.g. its 429 when every account is limited).

The pool is the subscription (OAuth) accounts that can serve by themselves: not paused,
benched or waiting for a new login (cooling-down and over-budget accounts count: their
windows are the pool's). For each window (``5h``, ``7d``):

* ``utilization``: the **mean** of the accounts' latest utilizations, each capped to 0..1;
  an account whose window has reset since, or that has not reported the window yet, counts
  as 0. With accounts of one plan size this is the share of the pool's capacity used: 3
  accounts at 100 %, 50 % and 0 % make 50 %.
* ``reset``: the soonest reset (epoch s) of any account's live window: when capacity next
  comes back.
* ``status``: ``rejected`` when every account's window is rejected, ``allowed_warning`` when
  the mean is at or above ``flare_headroom``, else ``allowed``.

The aggregate ``-status`` is ``rejected`` when every account has some window rejected (then
``-reset`` is when the first of them is free again), else the worse of the two windows;
``-representative-claim`` is the window with the higher utilization (``five_hour`` /
``seven_day``) and ``-reset`` its reset. Header formats: ``upstream-apis.md`` section 1b.

Nothing is changed when the pool has no subscription account, for OpenAI-format clients, and
for requests mitmflare refused itself (bad key, over a cap, not an API request). Runs in
``responseheaders`` (a streamed answer's headers leave right after it) and again in
``response`` for an answer the failover fetched itself; no I/O, O(accounts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mitmproxy import ctx, http

from ..providers.presets import ANTHROPIC
from ..proxy_state import ProxyState
from ..routing.pool import BENCHED, NEEDS_REAUTH, PAUSED, Account

UNIFIED = b"anthropic-ratelimit-unified-"
ACCOUNT_PREFIX = "x-mitmflare-account-"
ACCOUNT_HEADER = "x-mitmflare-account"
WINDOWS = {"5h": "five_hour", "7d": "seven_day"}
OUT_OF_POOL = (PAUSED, NEEDS_REAUTH, BENCHED)


@dataclass(frozen=True, slots=True)
class PoolWindow:
    """One window over the pool: ``utilization`` 0..1 (mean), ``reset`` epoch s of the
    soonest live reset (None: none known), ``status``, ``accounts`` counted, and how many of
    them are ``rejected`` in it."""

    utilization: float
    reset: float | None
    status: str
    accounts: int
    rejected: int


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """The pool's figures: its windows by name (``5h``, ``7d``), the aggregate ``status``,
    ``reset`` (epoch s or None) and ``claim`` (``five_hour`` / ``seven_day``)."""

    windows: dict[str, PoolWindow]
    status: str
    reset: float | None
    claim: str

    def headers(self) -> list[tuple[str, str]]:
        """The ``anthropic-ratelimit-unified-*`` headers that say this."""
        out = [("anthropic-ratelimit-unified-status", self.status),
               ("anthropic-ratelimit-unified-representative-claim", self.claim)]
        if self.reset is not None:
            out.append(("anthropic-ratelimit-unified-reset", str(int(self.reset))))
        for name, w in self.windows.items():
            prefix = f"anthropic-ratelimit-unified-{name}-"
            out += [(prefix + "status", w.status), (prefix + "utilization",
                                                    str(round(w.utilization, 4)))]
            if w.reset is not None:
                out.append((prefix + "reset", str(int(w.reset))))
        return out

    def to_dict(self) -> dict:
        """For ``/health``: per window utilization, reset (epoch s), status and counts."""
        return {"status": self.status, "reset": self.reset, "representative_claim": self.claim,
                "windows": {n: {"utilization": round(w.utilization, 4), "reset": w.reset,
                                "status": w.status, "accounts": w.accounts,
                                "rejected": w.rejected} for n, w in self.windows.items()}}


def subscription_pool(accounts: list[Account], now: float) -> list[Account]:
    """The Claude subscription (OAuth) accounts that can serve by themselves (see the
    module); Codex subscriptions have windows of their own and are left out."""
    return [a for a in accounts if a.config.oauth is not None and a.wire == "anthropic"
            and a.status(now) not in OUT_OF_POOL]


def pool_limits(accounts: list[Account], now: float, headroom: float) -> PoolLimits | None:
    """The pool's figures (see the module docstring) at ``now`` (epoch s), ``headroom`` being
    ``flare_headroom``; None when the pool has no subscription account."""
    pool = subscription_pool(accounts, now)
    if not pool:
        return None
    windows: dict[str, PoolWindow] = {}
    free_at: list[float] = []  # per account: when its rejected windows all reset
    blocked = 0
    for account in pool:
        seen = account.state.limits.get("windows") or {}
        resets = [w.get("reset") or now for n, w in seen.items()
                  if n in WINDOWS and _live(w, now) and w.get("status") == "rejected"]
        if resets:
            blocked += 1
            free_at.append(max(resets))
    for name in WINDOWS:
        used, resets, rejected = 0.0, [], 0
        for account in pool:
            w = (account.state.limits.get("windows") or {}).get(name) or {}
            if not _live(w, now):
                continue
            used += min(max(float(w.get("utilization") or 0.0), 0.0), 1.0)
            if w.get("reset"):
                resets.append(float(w["reset"]))
            rejected += w.get("status") == "rejected"
        mean = used / len(pool)
        status = "rejected" if rejected == len(pool) else \
            "allowed_warning" if mean >= headroom else "allowed"
        windows[name] = PoolWindow(mean, min(resets, default=None), status, len(pool), rejected)
    top = max(windows, key=lambda n: (windows[n].utilization, n == "5h"))
    if blocked == len(pool):
        return PoolLimits(windows, "rejected", min(free_at), WINDOWS[top])
    status = "allowed_warning" if any(w.status != "allowed" for w in windows.values()) \
        else "allowed"
    return PoolLimits(windows, status, windows[top].reset, WINDOWS[top])


def _live(window: dict, now: float) -> bool:
    """True when the window's figures still hold at ``now`` (it has not reset since)."""
    reset = window.get("reset")
    return bool(window) and (reset is None or reset > now)


def rewrite(headers: http.Headers, limits: PoolLimits, account: str | None) -> None:
    """Move the serving account's ``anthropic-ratelimit-unified-*`` headers to
    ``x-mitmflare-account-unified-*``, name ``account`` (None: none) in
    ``x-mitmflare-account`` and put the pool's figures in their place."""
    fields: list[tuple[bytes, bytes]] = []
    for key, value in headers.fields:
        low = key.lower()
        if low.startswith(UNIFIED):
            fields.append((ACCOUNT_PREFIX.encode() + low[len(b"anthropic-ratelimit-"):], value))
        elif low != ACCOUNT_HEADER.encode():
            fields.append((key, value))
    if account is not None:
        fields.append((ACCOUNT_HEADER.encode(), account.encode()))
    fields += [(k.encode(), v.encode()) for k, v in limits.headers()]
    headers.fields = tuple(fields)


class PoolHeaders:
    """The ``flare_pool_headers`` option and the header rewrite (see the module)."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.enabled = False
        self._rewritten: dict[str, int] = {}  # flow id -> id() of the answer rewritten

    def load(self, loader) -> None:
        loader.add_option("flare_pool_headers", bool, False,
                          "Answers to Anthropic-format clients carry the pool's headroom in "
                          "the anthropic-ratelimit-unified-* headers (mean utilization of the "
                          "subscription accounts, soonest reset), which Claude Code's "
                          "statusline shows; the serving account's own values move to "
                          "x-mitmflare-account-* headers.")

    def configure(self, updated: set[str]) -> None:
        self.enabled = ctx.options.flare_pool_headers

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.enabled:
            self._apply(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        done = self._rewritten.pop(flow.id, None)
        if self.enabled and flow.response is not None and done != id(flow.response):
            self._apply(flow)  # an answer the failover fetched, or mitmflare's own 429/503
            self._rewritten.pop(flow.id, None)

    def error(self, flow: http.HTTPFlow) -> None:
        self._rewritten.pop(flow.id, None)

    def _apply(self, flow: http.HTTPFlow) -> None:
        fc = self.proxy.flows.get(flow.id)
        if fc is None or fc.wire_format != ANTHROPIC or fc.error is not None \
                or flow.response is None:
            return
        limits = pool_limits(list(self.proxy.pool.accounts.values()), time.time(),
                             self.proxy.headroom)
        if limits is None:
            return
        own = "x-mitmflare-error" in flow.response.headers  # mitmflare's answer, no account's
        rewrite(flow.response.headers, limits,
                fc.account.name if fc.account is not None and not own else None)
        self._rewritten[flow.id] = id(flow.response)
