"""The account's state transitions (:mod:`mitmflare.routing.account_state`): each changes
the state as documented and returns the events to record, without I/O."""

from __future__ import annotations

from mitmflare.routing.account_state import (
    AVAILABLE,
    BENCHED,
    COOLING_DOWN,
    NEEDS_REAUTH,
    OUTLIER_ERRORS,
    OVER_BUDGET,
    PAUSED,
    AccountState,
    Change,
    Event,
)
from mitmflare.routing.classify import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    FAILOVER,
    TRANSIENT,
    Verdict,
)
from mitmflare.routing.ratelimits import Limits, Window

NOW = 1_800_000_000.0
LIMITS = dict(paused=False, max_cooldown_s=3600.0)


def kinds(change: Change) -> list[str]:
    return [e.kind for e in change.events]


def test_a_reset_cooldown_is_taken_and_recorded_once():
    st = AccountState()
    change = st.cooled(Verdict(FAILOVER, "rate_limited", cooldown_until=NOW + 60), None, None,
                       NOW, **LIMITS)
    assert change.events == (Event("cooldown", "rate_limited", NOW + 60),) and change.persist
    assert st.status(NOW) == COOLING_DOWN and st.failures == 1
    # cooling already: a later reset extends it without a second event
    again = st.cooled(Verdict(FAILOVER, "rate_limited", cooldown_until=NOW + 90), None, None,
                      NOW, **LIMITS)
    assert kinds(again) == [] and again.persist and st.cooldown_until == NOW + 90


def test_a_paused_account_cools_down_without_an_event():
    st = AccountState()
    change = st.cooled(Verdict(FAILOVER, "x", cooldown_until=NOW + 60), None, None, NOW,
                       paused=True, max_cooldown_s=3600.0)
    assert kinds(change) == [] and st.cooldown_until == NOW + 60


def test_backoff_doubles_up_to_its_cap_and_a_good_answer_resets_it():
    st = AccountState()
    waits = []
    for _ in range(6):
        change = st.cooled(Verdict(FAILOVER, "headerless_429", backoff=True), None, None, NOW,
                           **LIMITS)
        assert kinds(change) == ["cooldown"]  # every growth is recorded
        waits.append(st.backoff_s)
    assert waits[0] == BACKOFF_START_S and waits[1] == 2 * BACKOFF_START_S
    assert waits[-1] == BACKOFF_MAX_S
    assert st.succeeded() == Change(persist=True) and st.backoff_s == 0.0
    assert not st.succeeded()  # nothing left to reset: nothing to store


def test_model_backoff_is_capped_by_max_cooldown_and_recovers():
    st = AccountState()
    verdict = Verdict(FAILOVER, "out_of_credits", model_backoff=True)
    for _ in range(5):
        change = st.cooled(verdict, "m", None, NOW, paused=False, max_cooldown_s=100.0)
    assert kinds(change) == ["model_cooldown"] and st.model_backoff_s["m"] == 100.0
    assert st.status(NOW) == AVAILABLE and st.model_cooldowns["m"] == NOW + 100.0
    early = st.recovered(NOW + 99)
    assert not early and "m" in st.model_cooldowns
    late = st.recovered(NOW + 100)
    assert late.events == (Event("model_recovered", "m"),) and late.persist
    assert st.model_cooldowns == {} and st.model_reasons == {}
    assert st.succeeded("m").persist and "m" not in st.model_backoff_s


def test_recovered_names_the_cooldown_reason():
    st = AccountState()
    st.cooled(Verdict(TRANSIENT, "http_529", cooldown_until=NOW + 10), None, None, NOW, **LIMITS)
    change = st.recovered(NOW + 10)
    assert change.events == (Event("recovered", "http_529"),)
    assert st.cooldown_until == 0.0 and st.cooldown_reason == ""


def test_reauth_needed_until_the_credential_changes():
    st = AccountState()
    change = st.cooled(Verdict(FAILOVER, "http_401_auth", needs_reauth=True), None, None, NOW,
                       paused=False, max_cooldown_s=3600.0, fingerprint="old")
    assert kinds(change) == ["needs_reauth"] and st.status(NOW) == NEEDS_REAUTH
    assert not st.reauth_done("old")  # the same credential: still logged out
    done = st.reauth_done("new")
    assert kinds(done) == ["reauthenticated"] and done.persist and st.status(NOW) == AVAILABLE


def test_benched_until_resumed():
    st = AccountState()
    change = st.cooled(Verdict(FAILOVER, "billing_error", bench=True), None, None, NOW, **LIMITS)
    assert kinds(change) == ["benched"] and st.status(NOW) == BENCHED
    assert kinds(st.cooled(Verdict(FAILOVER, "billing_error", bench=True), None, None, NOW,
                           **LIMITS)) == []  # benched once


def test_transient_errors_cool_only_at_the_outlier_threshold():
    st = AccountState()
    verdict = Verdict(TRANSIENT, "http_503", cooldown_until=NOW + 10)
    for _ in range(OUTLIER_ERRORS - 1):
        assert not st.transient_error(verdict, None, None, NOW, **LIMITS)
    assert kinds(st.transient_error(verdict, None, None, NOW, **LIMITS)) == ["cooldown"]
    assert st.consecutive_errors == 0


def test_near_limit_until_the_soonest_reset_and_cleared_by_a_calm_answer():
    st = AccountState()
    near = Limits(observed_at=NOW, windows={"5h": Window(status="allowed", utilization=0.97,
                                                          reset=NOW + 600)})
    assert not st.near_limit(near, 0.95, NOW)  # no event, not stored on its own
    assert st.constrained_until == NOW + 600 and st.limits
    calm = Limits(observed_at=NOW, windows={"5h": Window(status="allowed", utilization=0.2,
                                                          reset=NOW + 600)})
    st.near_limit(calm, 0.95, NOW)
    assert st.constrained_until == 0.0


def test_resume_clears_every_mark_including_near_limit():
    """The issue's bug: a resumed account kept ``constrained_until`` and stayed ranked
    behind every other account."""
    st = AccountState(cooldown_until=NOW + 60, cooldown_reason="x", backoff_s=60.0,
                      benched=True, benched_reason="y", needs_reauth=True,
                      constrained_until=NOW + 600, consecutive_errors=2,
                      model_cooldowns={"m": NOW + 60}, model_backoff_s={"m": 30.0},
                      model_reasons={"m": "z"})
    change = st.resume()
    assert change.events == (Event("resumed", "operator"),) and change.persist
    assert st.constrained_until == 0.0
    assert st == AccountState(requests=0)  # every mark gone, counters kept
    assert st.status(NOW) == AVAILABLE


def test_budget_reached_and_ended():
    st = AccountState()
    change = st.budget((NOW + 3600, "spent $5.00 of its $5.00 day budget"), NOW)
    assert change.events == (Event(OVER_BUDGET, "spent $5.00 of its $5.00 day budget",
                                   NOW + 3600),) and not change.persist
    assert st.status(NOW) == OVER_BUDGET
    assert not st.budget((NOW + 3600, "again"), NOW)  # already over: recorded once
    assert kinds(st.budget(None, NOW + 3601)) == ["within_budget"]
    assert st.status(NOW + 3601) == AVAILABLE and not st.budget(None, NOW + 3602)


def test_status_order_and_paused():
    st = AccountState(needs_reauth=True, benched=True, cooldown_until=NOW + 1)
    assert st.status(NOW, paused=True) == PAUSED
    assert st.status(NOW) == NEEDS_REAUTH


def test_restore_takes_only_persisted_fields():
    st = AccountState()
    st.restore({"cooldown_until": NOW + 5, "in_flight": 7, "benched": None})
    assert st.cooldown_until == NOW + 5 and st.in_flight == 0 and st.benched is False


def test_overage_refused_cools_until_the_plan_resets_and_resume_clears_it():
    st = AccountState(overage_until=NOW + 600)
    assert not st.overage_refused(None, NOW, 3600.0)  # overage allowed: nothing
    change = st.overage_refused("plan_spent (overage: never)", NOW, 3600.0)
    assert change.events == (Event("cooldown", "plan_spent (overage: never)", NOW + 600),)
    assert change.persist and st.status(NOW) == COOLING_DOWN
    assert not st.overage_refused("again", NOW, 3600.0)  # cooling that long already
    short = AccountState(overage_until=NOW + 600)
    short.overage_refused("x", NOW, 60.0)
    assert short.cooldown_until == NOW + 60  # never beyond flare_max_cooldown_s
    st.resume()
    assert st.overage_until == 0.0 and st.status(NOW) == AVAILABLE


def test_an_operators_pause_holds_until_unpaused_and_is_shared_and_persisted():
    st = AccountState()
    change = st.pause()
    assert change.events == (Event(PAUSED, "operator"),) and change.persist
    assert st.status(NOW) == PAUSED and not st.pause()  # already paused: nothing
    assert st.to_persisted()["operator_paused"] is True
    st.resume()  # a reset clears cooldowns, not a pause
    assert st.status(NOW) == PAUSED
    assert st.unpause().events == (Event("unpaused", "operator"),)
    assert st.status(NOW) == AVAILABLE and not st.unpause()
