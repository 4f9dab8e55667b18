"""State shared by the bundle's addons: the pool, the selector, the writer, the state store
and flow contexts.

Runs on the event loop. Rows and account state are handed to the writer process
(:class:`~.storage.writer_process.WriterProcess`); reads and writes of users, OAuth pairs and
operator commands go to the state store (:mod:`.storage.state_store`) in worker threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from .addons.concurrency import Slots
from .money import usd
from .providers.oauth import OAuthManager, TokenSet
from .providers.presets import ANTHROPIC, OPENAI
from .providers.request_info import parse_source
from .providers.sse import UsageTap
from .routing.account_state import OUTLIER_ERRORS, Change  # noqa: F401 (re-exported)
from .routing.cache_affinity import CacheAffinity, CacheContext
from .routing.classify import Verdict
from .routing.pool import Account, AccountPool
from .routing.ratelimits import Limits
from .routing.selection import Selector
from .routing.usage_windows import BurnTracker, spent_within, window_rows
from .storage.state_store import SqliteStateStore
from .storage.writer_process import WriterProcess
from .times import iso_utc

if TYPE_CHECKING:
    from .addons.access import AccessKeys

log = logging.getLogger("mitmflare")

ACCOUNTS_SNAPSHOT_S = 5.0  # the `accounts` table is refreshed at most this often


@dataclass(slots=True)
class FlowContext:
    """What mitmflare knows about one client request while it is in flight.

    ``path``: the client's path (each attempt prefixes it with its account's base path).
    ``attempts``: rows for the ``attempts`` table.
    ``excluded``: accounts not to try again for this request. Times are epoch s.
    ``wire_format``: the client's wire format, ``anthropic`` or ``openai`` ("" when no
    format is known for the path); the account's provider is ``account.provider``, the format
    its upstream speaks ``account.wire``. ``error``: why mitmflare answered
    the request itself, recorded in the row. ``replay``: replayed from mitmweb/mitmdump.
    ``row_id``: the `requests` row's id: the flow id, with a suffix for a replay (a replayed
    flow keeps its id).
    """

    flow_id: str
    wire_format: str
    started: float
    path: str
    client_session: str | None
    model: str | None
    user_agent: str | None
    stream: bool = False
    account: Account | None = None
    limits: Limits | None = None
    same_account_retried: bool = False
    oauth_retried: bool = False
    attempt_started: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was not tried
    tap: UsageTap | None = None
    stream_copy: bytearray | None = None
    ttfb: float | None = None
    failover: bool = False
    replay: bool = False
    user: str | None = None
    convertible: bool = False       # an Anthropic Messages request (OpenAI accounts may serve it)
    family: str | None = None       # compatibility route: the model's provider prefix
    body: dict[str, Any] | None = None   # the client's JSON body, once request_json() parsed it
    raw_body: bytes = b""           # the client's body as sent
    body_source: bytes | None = None  # its decoded bytes when a JSON object (mostly raw_body)
    body_model: str | None = None   # the body's `model` when a string, uncut
    upstream_model: str | None = None    # model asked of the current account
    converted: bool = False         # the current attempt converts Anthropic ⇄ OpenAI
    upstream_body: bytes | None = None   # a converted whole answer as the upstream sent it
    upstream_sse: bool = False      # … and it was an event stream
    asked_model: str | None = None  # the client's model when a fallback model serves instead
    row_id: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    # transient upstream errors of this request, not yet charged to their accounts (see
    # .failover): charged when the request then succeeds elsewhere, counted toward the outlier
    # threshold when it ends without, never when the error followed it to a second account
    transient_errors: list[tuple[Account, Verdict]] = field(default_factory=list)
    had_transient: bool = False     # a transient error, here or before the client's retry
    request_fault: bool = False     # the same kind of error followed the request: its fault
    cache: CacheContext = field(default_factory=CacheContext)  # its prompt cache's history
    attempt_mono: float = 0.0       # monotonic s: when the current attempt was sent
    last_byte_mono: float = 0.0     # monotonic s: the streamed answer's latest piece
    timed_out: str | None = None    # which limit of .timeouts ended the attempt
    verdict: Verdict | None = None  # on the last upstream answer (set by .failover)

    def __post_init__(self) -> None:
        self.row_id = self.row_id or self.flow_id

    def request_json(self) -> dict[str, Any] | None:
        """The client's JSON object body, every value exact, parsed on first use: only a
        request that is converted or gets another model needs it (routing reads what it
        needs without keeping the parsed body, see :mod:`.providers.request_info`)."""
        if self.body is None and self.body_source is not None:
            self.body = parse_source(self.body_source)
        return self.body


class ProxyState:
    """The shared state. ``options`` mirrors the ``flare_*`` options as plain attributes."""

    def __init__(self) -> None:
        self.pool = AccountPool()
        self.selector = Selector()
        self.writer: WriterProcess | None = None
        self.store: SqliteStateStore | None = None  # flare_state (see open_store)
        self.flows: dict[str, FlowContext] = {}
        self.strategy = "session"
        self.session_hours = 5.0
        self.headroom = 0.95
        self.cache_ttl_scale = 1.0  # prompt-cache TTLs last this many times less (benchmarks)
        self.max_cooldown_s = 6 * 3600.0
        self.queue_s = 10.0  # hold a request this long (s) for a cooling account (flare_queue_s)
        self.config_errors: list[str] = []  # why the accounts file (or entries) were rejected
        self.fallbacks: dict[str, list[str]] = {}  # model -> models to serve instead (in order)
        self.tokens: dict[str, TokenSet] = {}  # OAuth pairs in force, by account name
        self.oauth: OAuthManager | None = None
        self.access: AccessKeys | None = None  # the AccessKeys addon (see .access)
        self.operations: Any = None  # the Operations addon (operator commands; .operations)
        self.require_keys = False
        self.oauth_clients = "any"  # flare_oauth_clients (see .oauth_clients)
        self.users: dict[str, Any] = {}  # access-key users by key hash (see .users)
        self._accounts_dirty = True
        self._accounts_written = 0.0
        self.burn = BurnTracker()  # utilization history per account and window (forecasts)
        self.affinity = CacheAffinity()  # conversations' prompt caches, by account
        self.slots = Slots()  # users' requests in flight; wakes requests waiting for a slot
        self.shared: Any = None  # the SharedState addon when flare_redis is set (.shared_state)
        # per-attempt limits, s: connect, headers, stream headers, stream idle (see .timeouts)
        self.timeouts: tuple[int, int, int, int] = (10, 600, 60, 60)

    def open_store(self, path: str) -> SqliteStateStore:
        """The state store of ``path`` (``flare_state``), one per process: made on the first
        call, again (the old one closed) when the path changes. Opens nothing yet."""
        if self.store is None or self.store.path != path:
            if self.store is not None:
                self.store.close()
            self.store = SqliteStateStore(path)
        return self.store

    # -- credentials ------------------------------------------------------------------------
    def secret(self, account: Account) -> str | None:
        """The credential to send for ``account``: its API key, or its OAuth access token
        (the rotated one in ``flare_state`` when there is one). None when it has none."""
        cfg = account.config
        if cfg.api_key is not None:
            return cfg.api_key
        tokens = self.tokens.get(cfg.name)
        return tokens.access_token if tokens else None

    def credential_fingerprint(self, account: Account) -> str:
        """A short hash of the credential in force (API key, or the OAuth pair's refresh
        token, else its access token); "" when there is none. Never the secret itself."""
        secret = account.config.api_key
        if secret is None:
            tokens = self.tokens.get(account.name)
            secret = (tokens.refresh_token or tokens.access_token) if tokens else None
        return hashlib.sha256(secret.encode()).hexdigest()[:16] if secret else ""

    def clear_stale_reauth(self) -> None:
        """End ``needs_reauth`` for accounts whose credential changed since it was rejected
        (a new API key in the YAML file, a new OAuth pair from a login)."""
        for account in self.pool.accounts.values():
            if account.state.needs_reauth:
                self.record(account, account.state.reauth_done(
                    self.credential_fingerprint(account)))

    def mark_accounts_changed(self) -> None:
        """The `accounts` table is stale (written at the next snapshot)."""
        self._accounts_dirty = True

    # -- persistence ------------------------------------------------------------------------
    def put(self, kind: str, payload: Any) -> None:
        if self.writer is not None:
            self.writer.put(kind, payload)

    def persist(self, account: Account) -> None:
        """Queue the account's state for ``flare_state`` and mark the accounts table stale."""
        self.put("state", {account.name: {"provider": account.provider,
                                          **account.state.to_persisted()}})
        self._accounts_dirty = True

    def record(self, account: Account, change: Change) -> None:
        """Record what a transition of ``account``'s state returned (:mod:`.account_state`):
        its events (``account_events`` rows, log lines, other processes), then its state in
        ``flare_state`` when persisted fields changed; the `accounts` table is stale."""
        for ev in change.events:
            self.event(account, ev.kind, ev.reason, ev.until, ev.limits)
        if change.persist:
            self.persist(account)
        elif change.events:
            self._accounts_dirty = True

    def event(self, account: Account, event: str, reason: str = "", until: float = 0.0,
              limits: Limits | None = None) -> None:
        """Record an ``account_events`` row and log it."""
        self.put("event", {"at": time.time(), "account": account.name, "event": event,
                           "until": float(until) or None, "reason": reason,
                           "headers": json.dumps(limits.to_dict()) if limits else None})
        log.info("account %s: %s%s%s", account.name, event, f" until {iso_utc(until)}"
                 if until else "", f" ({reason})" if reason else "")
        if self.shared is not None:  # every other process learns the change
            self.shared.account_changed(account)

    def snapshot_accounts(self, force: bool = False) -> None:
        """Queue the `accounts` table rows when something changed (at most every 5 s)."""
        now = time.time()
        if not force and (not self._accounts_dirty or now - self._accounts_written < ACCOUNTS_SNAPSHOT_S):
            return
        self._accounts_dirty = False
        self._accounts_written = now
        positions = self.positions(now)
        accounts = self.pool.accounts.values()
        self.put("accounts", [{**self.account_row(a, now), "position": positions.get(a.name)}
                              for a in accounts])
        self.put("windows", [row for a in accounts if a.state.limits
                             for row in window_rows(a.name, a.state.limits, self.burn, now)])

    def positions(self, now: float) -> dict[str, int]:
        """Account name -> 1 (the next request of its format would go there), 2 (next in
        line), …, from the strategy's current state. An account that takes Anthropic-format
        requests (converted or not) is ranked in that pool, others in the OpenAI one."""
        out: dict[str, int] = {}
        for client in (ANTHROPIC, OPENAI):
            order = self.selector.preview(self.pool, client, self.strategy, now,
                                          self.session_hours, convertible=client == ANTHROPIC)
            mine = [a for a in order if client == ANTHROPIC or not a.takes(ANTHROPIC, True)]
            for place, account in enumerate(mine, 1):
                out.setdefault(account.name, place)
        return out

    def spent(self, kind: str, name: str, now: float) -> tuple[float, float]:
        """(USD today, USD this month), UTC, recorded for a ``user`` or an ``account``."""
        spend = self.writer.spend if self.writer is not None else {}
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        return spend.get((kind, name, day), 0.0), spend.get((kind, name, day[:7]), 0.0)

    def account_row(self, account: Account, now: float) -> dict[str, Any]:
        """The public (secret-free) row describing ``account`` for the `accounts` table."""
        cfg, st = account.config, account.state
        tokens = self.tokens.get(cfg.name) if cfg.oauth else None
        budget = cfg.budget_usd
        today, month = self.spent("account", cfg.name, now)
        return {
            "name": cfg.name, "provider": cfg.provider, "credential": cfg.credential_kind,
            "base_url": cfg.upstream, "priority": cfg.priority, "weight": cfg.weight,
            "paused": int(account.paused), "status": account.status(now),
            "cooldown_until": iso_utc(st.cooldown_until) if st.cooldown_until > now else None,
            "cooldown_reason": st.cooldown_reason if st.cooldown_until > now else None,
            "needs_reauth": int(st.needs_reauth), "requests": st.requests,
            "failures": st.failures, "last_used_at": iso_utc(st.last_used),
            "limits": json.dumps(st.limits) if st.limits else None,
            "model_cooldowns": "; ".join(
                f"{m} until {iso_utc(t)}: {st.model_reasons.get(m, '')}"
                for m, t in st.model_cooldowns.items() if t > now) or None,
            "token_expires_at": iso_utc(tokens.expires_at) if tokens else None,
            "last_refresh_at": iso_utc(tokens.last_refresh_at) if tokens else None,
            "updated_at": iso_utc(now),
            "over_budget_until": iso_utc(st.over_budget_until) if st.over_budget_until > now
            else None,
            "budget_day_usd": budget.day if budget else None,
            "budget_month_usd": budget.month if budget else None,
            "spent_today_usd": round(today, 6), "spent_month_usd": round(month, 6),
            "window_started_at": iso_utc(st.window_started_at),
            "near_limit_until": iso_utc(st.constrained_until) if st.constrained_until > now
            else None,
            "clock_skew_s": _skew(st.last_date),
        }

    def leave_out(self, fc: FlowContext, unwanted: Callable[[Account], bool], reason: str) -> bool:
        """Leave out of ``fc``'s choice the accounts that could serve its request (its wire
        format, directly or converted; its model; its family) for which ``unwanted`` is true:
        they go into ``fc.excluded``, with ``reason`` in ``fc.skipped``. True when some account
        could serve it and every one of them was left out (the caller refuses the request)."""
        accounts = [a for a in self.pool.for_client(fc.wire_format, fc.convertible)
                    if a.serves(fc.model) and (fc.family is None or a.in_family(fc.family))]
        out = [a for a in accounts if unwanted(a)]
        for account in out:
            fc.excluded.add(account.name)
            fc.skipped[account.name] = reason
        return bool(out) and len(out) == len(accounts)

    def choose(self, fc: FlowContext) -> Account | None:
        """The account for the request in ``fc`` now, by ``strategy``; None if none is usable.
        A request that uses a prompt cache prefers the accounts where it (else its parent
        conversation) is warm, and treats as near a limit the accounts forecast to reach one
        before its cache would expire (the hand-off, :mod:`.routing.selection`)."""
        now = time.time()
        return self.selector.choose(self.pool, fc.wire_format, self.strategy, now,
                                    session_hours=self.session_hours,
                                    client_session=fc.client_session, model=fc.model,
                                    exclude=fc.excluded, convertible=fc.convertible,
                                    family=fc.family,
                                    warm=self.affinity.warm(fc.cache.conversation, now)
                                    or self.affinity.warm(fc.cache.parent, now),
                                    ending=self.ending(fc.cache.ttl_s, now)
                                    if fc.cache.conversation else ())

    def ending(self, horizon_s: float, now: float) -> list[str]:
        """Names of the accounts whose 5h or 7d window is forecast, at the last hour's burn
        rate, to reach its limit within ``horizon_s`` (s) of ``now`` (epoch s)."""
        return [a.name for a in self.pool.accounts.values() if a.state.limits
                and spent_within(self.burn, a.name, a.state.limits, now, horizon_s)]

    # -- learning from answers --------------------------------------------------------------
    def learn(self, account: Account, limits: Limits, now: float) -> None:
        """Keep the latest limit snapshot, whether the account is near a limit, and whether
        its plan is spent (it serves from overage): an account that may not use overage now
        (``overage: never``, or its ``overage_cap_usd`` spent this month) then cools down until
        the plan's window resets."""
        if not limits.present:
            return
        self.record(account, account.state.near_limit(
            limits, self.headroom, now, overage_allowed=account.config.overage == "allowed"))
        self.burn.observe(account.name, account.state.limits, now)
        self.check_overage(account, now, limits)
        self._accounts_dirty = True

    def check_overage(self, account: Account, now: float, limits: Limits | None = None) -> None:
        """Cool ``account`` down until its plan's window resets when it serves from overage
        but may not (:meth:`overage_refusal`). Called with each answer's limits, and every
        second (the cap is reached when the writer has counted the spend)."""
        st = account.state
        if st.overage_until <= now or st.cooldown_until >= st.overage_until:
            return  # (checked before the refusal, which reads the spend)
        self.record(account, st.overage_refused(self.overage_refusal(account, now), now,
                                                self.max_cooldown_s, limits))

    def overage_refusal(self, account: Account, now: float) -> str | None:
        """Why ``account`` may not serve from overage now (``overage: never``, or its
        ``overage_cap_usd`` reached this month, from the writer's running spend), else None."""
        cfg = account.config
        if cfg.overage == "never":
            return "plan_spent (overage: never)"
        if cfg.overage_cap_usd is not None:
            spent = self.spent("overage", cfg.name, now)[1]
            if spent >= cfg.overage_cap_usd:
                return f"plan_spent (overage cap {usd(cfg.overage_cap_usd)} reached: {usd(spent)})"
        return None

    def succeeded(self, account: Account, model: str | None = None) -> None:
        """A good answer: the exponential cooldowns (account, and the model's) start again
        from their base."""
        self.record(account, account.state.succeeded(model))

    def count_error(self, account: Account, verdict: Verdict, model: str | None,
                    limits: Limits | None, now: float) -> None:
        """A transient upstream error (5xx, 529, 408, a dropped connection) that is not known
        to be the account's: the request did not go on to succeed elsewhere. It counts toward
        the account's outlier threshold (:meth:`.AccountState.transient_error`). An error
        that followed the request to another account is the request's fault and is never
        counted (see :mod:`.failover`)."""
        self.record(account, account.state.transient_error(
            verdict, model, limits, now, paused=account.paused,
            max_cooldown_s=self.max_cooldown_s, fingerprint=self.credential_fingerprint(account)))

    def apply(self, account: Account, verdict: Verdict, model: str | None, limits: Limits | None,
              now: float) -> None:
        """Change the account's state as the verdict says (:meth:`.AccountState.cooled`) and
        record what happened."""
        self.record(account, account.state.cooled(
            verdict, model, limits, now, paused=account.paused,
            max_cooldown_s=self.max_cooldown_s, fingerprint=self.credential_fingerprint(account)))


def _skew(last_date: tuple[str | None, float]) -> float | None:
    """This machine's clock minus the upstream's (s), from its last ``Date`` header (1 s
    resolution); None when none was seen or it cannot be read."""
    header, local = last_date
    if not header:
        return None
    try:
        return round(local - parsedate_to_datetime(header).timestamp(), 1)
    except (TypeError, ValueError):
        return None
