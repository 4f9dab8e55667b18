"""One account's live state and every transition of it, as pure methods (no I/O, no clock).

Every change to an account's cooldown, bench, re-login, budget and near-limit fields is a
method of :class:`AccountState` here. Each takes the time (``now``, epoch s) and whatever
else it needs as arguments and returns a :class:`Change`: the ``account_events`` rows to
record and whether the persisted fields changed. Whoever calls it records what it returns
(:meth:`mitmflare.proxy_state.ProxyState.record`): logs, ``account_events`` rows, ``flare_state`` and the
other processes (``flare_redis``). A shared store implements the same transitions.

Times are Unix epoch seconds; durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: `mitmflare accounts reset` imports this module
    from .classify import Verdict
    from .ratelimits import Limits

# Status names, as shown in /health, the `accounts` table and account_events.
AVAILABLE = "available"
COOLING_DOWN = "cooling_down"
PAUSED = "paused"
NEEDS_REAUTH = "needs_reauth"
BENCHED = "benched"
OVER_BUDGET = "over_budget"

OUTLIER_ERRORS = 3  # transient errors in a row, of unknown cause, that cool an account
NEAR_LIMIT_DEFAULT_S = 60.0  # near a limit with no reset known: chosen last this long (s)


@dataclass(frozen=True, slots=True)
class Event:
    """One ``account_events`` row: ``kind`` (``cooldown``, ``recovered``, ``benched``, …),
    why, until when (epoch s; 0 for none) and the rate-limit snapshot that caused it."""

    kind: str
    reason: str = ""
    until: float = 0.0
    limits: Limits | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """What a transition did: ``events`` to record, in order; ``persist``: a field of
    :attr:`AccountState.PERSISTED` changed (store the state). Falsy when nothing changed."""

    events: tuple[Event, ...] = ()
    persist: bool = False

    def __bool__(self) -> bool:
        return bool(self.events) or self.persist

    def __add__(self, other: Change) -> Change:
        return Change(self.events + other.events, self.persist or other.persist)


NOTHING = Change()


@dataclass
class AccountState:
    """Mutable state of one account. Persisted in ``flare_state`` (see :mod:`.state_store`).

    ``cooldown_until``: epoch s before which the account is not chosen (0 = none).
    ``backoff_s``: current exponential cooldown for 429s that carry no reset time, s.
    ``benched``: out of quota until an operator resumes it (``flare.resume``).
    ``limits``: the latest parsed rate-limit snapshot (see :mod:`.ratelimits`).
    ``constrained_until``: epoch s until which the account is near a limit (chosen last).
    ``overage_until``: epoch s until which its plan is spent and it serves from extra usage
    (overage); with ``overage: last_resort`` it is chosen after every account that can serve
    from its plan.
    ``model_cooldowns``: model -> epoch s, for model-scoped limits (e.g. the 7d_oi window).
    ``model_backoff_s``: model -> current exponential model cooldown (s) when no reset is known
    (e.g. ``out_of_credits``); ``model_reasons``: model -> why it cools down.
    ``operator_paused``: paused by ``mitmflare accounts pause`` through Redis (every host;
    the accounts file's ``paused`` pauses it on the hosts whose file says so).
    ``reauth_fingerprint``: fingerprint of the credential that was rejected (``needs_reauth``
    ends when the account's credential changes). ``identity``: the account's
    :attr:`~.config.AccountConfig.identity`, to recognise it after a rename.
    """

    cooldown_until: float = 0.0
    cooldown_reason: str = ""
    backoff_s: float = 0.0
    needs_reauth: bool = False
    benched: bool = False
    benched_reason: str = ""
    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    in_flight_elsewhere: int = 0  # in flight on it in the other processes (flare_redis)
    last_used: float = 0.0
    limits: dict[str, Any] = field(default_factory=dict)
    constrained_until: float = 0.0
    overage_until: float = 0.0
    model_cooldowns: dict[str, float] = field(default_factory=dict)
    model_backoff_s: dict[str, float] = field(default_factory=dict)
    model_reasons: dict[str, str] = field(default_factory=dict)
    reauth_fingerprint: str = ""
    identity: str = ""
    over_budget_until: float = 0.0  # epoch s: spent its day/month budget until then
    over_budget_reason: str = ""
    window_started_for: float = 0.0  # the 5h reset (epoch s) a window start was sent after
    window_started_at: float = 0.0   # when that request was sent (epoch s)
    last_date: tuple[str | None, float] = (None, 0.0)  # upstream Date header, local epoch s
    consecutive_errors: int = 0  # transient upstream errors since its last good answer
    operator_paused: bool = False

    PERSISTED = ("cooldown_until", "cooldown_reason", "backoff_s", "needs_reauth", "benched",
                 "benched_reason", "requests", "failures", "last_used", "limits",
                 "constrained_until", "overage_until", "model_cooldowns", "model_backoff_s",
                 "model_reasons", "reauth_fingerprint", "identity", "window_started_for",
                 "window_started_at", "operator_paused")

    def to_persisted(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.PERSISTED}

    def restore(self, data: dict[str, Any]) -> None:
        """Take the fields of :attr:`PERSISTED` in ``data`` (stored state, or a state another
        process published); others and None values are ignored. Records nothing."""
        for key in self.PERSISTED:
            if key in data and data[key] is not None:
                setattr(self, key, data[key])

    def status(self, now: float, paused: bool = False) -> str:
        """One of available / cooling_down / paused / needs_reauth / benched / over_budget
        (``paused``: the accounts file pauses the account; or :attr:`operator_paused`)."""
        if paused or self.operator_paused:
            return PAUSED
        if self.needs_reauth:
            return NEEDS_REAUTH
        if self.benched:
            return BENCHED
        if self.over_budget_until > now:
            return OVER_BUDGET
        if self.cooldown_until > now:
            return COOLING_DOWN
        return AVAILABLE

    # -- answers ------------------------------------------------------------------------------
    def near_limit(self, limits: Limits, headroom: float, now: float,
                   overage_allowed: bool = False) -> Change:
        """Keep the latest rate-limit snapshot, whether its plan is spent (``overage_until``:
        it serves from overage until then) and whether it is near a limit (utilization at or
        above ``headroom``, a fraction; not while it serves from overage it is
        ``overage_allowed`` to use): then ``constrained_until`` is the soonest known reset
        (else ``now`` + 60 s) and it is chosen last until then. Not persisted on its own (the
        next persisted change carries it)."""
        self.limits = limits.to_dict()
        self.overage_until = limits.plan_spent_until(now)
        if limits.constrained(headroom, now) and not (self.overage_until and overage_allowed):
            resets = [w.reset for w in limits.windows.values() if w.reset and w.reset > now]
            resets += [b.reset for b in limits.buckets.values() if b.reset and b.reset > now]
            self.constrained_until = limits.unified_reset or (
                min(resets) if resets else now + NEAR_LIMIT_DEFAULT_S)
        else:
            self.constrained_until = 0.0
        return NOTHING

    def succeeded(self, model: str | None = None) -> Change:
        """A good answer: the exponential cooldowns (the account's, and ``model``'s) start
        again from their base, and the outlier count from zero."""
        self.consecutive_errors = 0
        model_backoff = self.model_backoff_s.pop(model, None) if model else None
        if self.backoff_s or model_backoff:
            self.backoff_s = 0.0
            return Change(persist=True)
        return NOTHING

    def transient_error(self, verdict: Verdict, model: str | None, limits: Limits | None,
                        now: float, *, paused: bool, max_cooldown_s: float,
                        fingerprint: str = "") -> Change:
        """A transient upstream error (5xx, 529, 408, a dropped connection) not known to be
        the account's: it cools down as ``verdict`` says (:meth:`cooled`) only at the
        ``OUTLIER_ERRORS``-th such error in a row with no good answer between (as Envoy's
        outlier detection counts consecutive 5xx)."""
        self.consecutive_errors += 1
        if self.consecutive_errors < OUTLIER_ERRORS:
            return NOTHING
        self.consecutive_errors = 0
        return self.cooled(verdict, model, limits, now, paused=paused,
                           max_cooldown_s=max_cooldown_s, fingerprint=fingerprint)

    def cooled(self, verdict: Verdict, model: str | None, limits: Limits | None, now: float, *,
               paused: bool, max_cooldown_s: float, fingerprint: str = "") -> Change:
        """A failed answer judged by ``verdict`` (:mod:`.classify`): count the failure, then as
        it says cool the account down (until its reset, or an exponential backoff from
        ``BACKOFF_START_S`` to ``BACKOFF_MAX_S`` when none is known), cool ``model`` down
        (backoff capped at ``max_cooldown_s``), mark it ``needs_reauth`` (remembering
        ``fingerprint``, the credential that was rejected) or bench it. A ``cooldown`` event
        only when it was available (``paused``: the file pauses it) or the backoff grew."""
        from .classify import BACKOFF_MAX_S, BACKOFF_START_S  # imports mitmproxy: lazily

        events: list[Event] = []
        self.failures += 1
        until = verdict.cooldown_until
        if verdict.backoff:
            self.backoff_s = min(max(self.backoff_s * 2, BACKOFF_START_S), BACKOFF_MAX_S)
            until = now + self.backoff_s
        if until > now:
            was = self.status(now, paused)
            self.cooldown_until = max(self.cooldown_until, until)
            self.cooldown_reason = verdict.reason
            if was == AVAILABLE or verdict.backoff:
                events.append(Event("cooldown", verdict.reason, self.cooldown_until, limits))
        model_until = verdict.model_cooldown_until
        reason = f"{verdict.reason} ({model})"
        if verdict.model_backoff and model:
            wait = min(max(self.model_backoff_s.get(model, 0.0) * 2, BACKOFF_START_S),
                       max_cooldown_s)
            self.model_backoff_s[model] = wait
            model_until = now + wait
            reason = f"{verdict.reason} ({model}; no reset given, backoff {wait:.0f} s)"
        if model_until > now and model:
            self.model_cooldowns[model] = model_until
            self.model_reasons[model] = reason
            events.append(Event("model_cooldown", reason, model_until, limits))
        if verdict.needs_reauth and not self.needs_reauth:
            self.needs_reauth = True
            self.reauth_fingerprint = fingerprint
            events.append(Event("needs_reauth", verdict.reason))
        if verdict.bench and not self.benched:
            self.benched = True
            self.benched_reason = verdict.reason
            events.append(Event("benched", verdict.reason, limits=limits))
        return Change(tuple(events), persist=True)

    def overage_refused(self, refusal: str | None, now: float, max_cooldown_s: float,
                        limits: Limits | None = None) -> Change:
        """It serves from overage (its plan is spent until ``overage_until``) but may not
        (``refusal`` says why; None: it may): cool down until the plan's window resets, at
        most ``max_cooldown_s``. Nothing when it already cools down that long."""
        if not refusal or self.overage_until <= now or self.cooldown_until >= self.overage_until:
            return NOTHING
        self.cooldown_until = min(self.overage_until, now + max_cooldown_s)
        self.cooldown_reason = refusal
        return Change((Event("cooldown", refusal, self.cooldown_until, limits),), persist=True)

    # -- time passing -------------------------------------------------------------------------
    def recovered(self, now: float) -> Change:
        """End the cooldown and the model cooldowns that are over at ``now``: ``recovered``
        (with the cooldown's reason) and ``model_recovered`` (with the model) events."""
        events: list[Event] = []
        if self.cooldown_until and self.cooldown_until <= now:
            self.cooldown_until = 0.0
            reason, self.cooldown_reason = self.cooldown_reason, ""
            events.append(Event("recovered", reason))
        for model in [m for m, t in self.model_cooldowns.items() if t <= now]:
            del self.model_cooldowns[model]
            self.model_reasons.pop(model, None)
            events.append(Event("model_recovered", model))
        return Change(tuple(events), persist=bool(events))

    def budget(self, over: tuple[float, str] | None, now: float) -> Change:
        """The account's spend against its budget: ``over`` = (epoch s the day or month
        ends, why) when it spent its budget, None when it is within it. An ``over_budget``
        event when it starts, ``within_budget`` when it ends. Not persisted (spend is
        recounted at start)."""
        if over is not None and self.over_budget_until <= now:
            self.over_budget_until, self.over_budget_reason = over
            return Change((Event(OVER_BUDGET, self.over_budget_reason, self.over_budget_until),))
        if over is None and self.over_budget_until:
            self.over_budget_until, self.over_budget_reason = 0.0, ""
            return Change((Event("within_budget"),))
        return NOTHING

    def window_started(self, reset: float, now: float) -> Change:
        """A window-start request is sent at ``now`` for the 5-hour window after ``reset``
        (remembered across restarts: at most one per reset)."""
        self.window_started_for, self.window_started_at = reset, now
        return Change(persist=True)

    # -- operators and credentials ------------------------------------------------------------
    def resume(self, reason: str = "operator") -> Change:
        """What an operator's resume does: no cooldown, bench, ``needs_reauth``, near-limit or
        plan-spent mark, no model cooldowns or backoffs, the outlier count from zero (``flare.resume``,
        ``mitmflare accounts reset``). A ``resumed`` event."""
        self.cooldown_until, self.cooldown_reason, self.backoff_s = 0.0, "", 0.0
        self.benched, self.benched_reason, self.needs_reauth = False, "", False
        self.constrained_until, self.consecutive_errors, self.overage_until = 0.0, 0, 0.0
        self.model_cooldowns.clear()
        self.model_backoff_s.clear()
        self.model_reasons.clear()
        return Change((Event("resumed", reason),), persist=True)

    def pause(self, reason: str = "operator") -> Change:
        """An operator paused it on every host (``mitmflare accounts pause`` with Redis):
        never chosen until :meth:`unpause`. A ``paused`` event when it was not paused."""
        if self.operator_paused:
            return NOTHING
        self.operator_paused = True
        return Change((Event(PAUSED, reason),), persist=True)

    def unpause(self, reason: str = "operator") -> Change:
        """Undo :meth:`pause` (``mitmflare accounts resume``): an ``unpaused`` event when it
        was paused."""
        if not self.operator_paused:
            return NOTHING
        self.operator_paused = False
        return Change((Event("unpaused", reason),), persist=True)

    def reauth_done(self, fingerprint: str) -> Change:
        """End ``needs_reauth`` when the credential in force (its ``fingerprint``) is not the
        one that was rejected (a new API key, a new OAuth pair): a ``reauthenticated``
        event."""
        if not self.needs_reauth or self.reauth_fingerprint == fingerprint:
            return NOTHING
        self.needs_reauth = False
        self.reauth_fingerprint = ""
        return Change((Event("reauthenticated", "new credentials"),), persist=True)
