"""What an upstream answer means for the account and the request.

The table (kept in sync with README "Failure classification"); sources in
``shared/reference/upstream-apis.md`` sections 1, 2, 5 and 7:

====================================================  =========  ==============================
answer                                                request    account
====================================================  =========  ==============================
2xx / 3xx                                             OK         learn limits
429, 5h or 7d window rejected; API-key 429 with        failover   cooldown until latest reset
retry-after or reset headers                                     (>= header, <= cap)
429, only 7d_oi rejected / ``out_of_credits``         failover   model cooldown only (until
                                                                 reset; none known: 30 s
                                                                 doubling up to the cap)
429 "windowless" (no limit header)                    failover   none
429 with headers but no usable time                   failover   exponential 30 s → 5 min
429 ``credits_required`` (fast mode etc.)             return     none
429 ``enforced_spend_limit_reached``;                 failover   benched until resumed
OpenAI ``insufficient_quota`` family
529, 500, 502, 503, 504, 408                          retry      short cooldown
401 / 403                                             failover   needs_reauth (OAuth: refresh)
402                                                   failover   benched until resumed
other 4xx (400, 404, 413, …)                          return     none
====================================================  =========  ==============================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .ratelimits import Limits
from .wire import json_object

OK = "ok"
RETURN = "return"        # hand the answer to the client untouched
FAILOVER = "failover"    # try another account
TRANSIENT = "transient"  # retry the same account once after a short delay, then others

TRANSIENT_STATUSES = (408, 500, 502, 503, 504, 529)
TRANSIENT_COOLDOWN_S = 10.0
BACKOFF_START_S = 30.0
BACKOFF_MAX_S = 300.0
OPENAI_QUOTA_CODES = ("insufficient_quota", "credit_balance_exhausted",
                      "organization_spend_limit_exceeded", "project_spend_limit_exceeded",
                      "organization_usage_limit_exceeded")
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)(ms|s)\b", re.IGNORECASE)


@dataclass
class Verdict:
    """The classification of one upstream answer.

    ``action``: ok / return / failover / transient. ``cooldown_until``: epoch s to bench the
    whole account until (0 = no account cooldown). ``backoff``: apply the exponential cooldown.
    ``model_cooldown_until``: epoch s the request's model is unavailable on this account.
    ``model_backoff``: no reset known: the model cools down exponentially (30 s doubling up to
    ``flare_max_cooldown_s``).
    ``bench``: out of quota until an operator resumes it. ``needs_reauth``: credential
    rejected. ``reason``: short machine-friendly text for tables and flow comments.
    """

    action: str
    reason: str = ""
    cooldown_until: float = 0.0
    backoff: bool = False
    model_cooldown_until: float = 0.0
    bench: bool = False
    needs_reauth: bool = False
    model_backoff: bool = False


def classify(provider: str, status: int, limits: Limits, body: bytes | None, now: float,
             max_cooldown_s: float) -> Verdict:
    """Classify an upstream answer (see the module table). ``body`` is the (small, non-streamed)
    error body or None; ``max_cooldown_s`` caps any cooldown taken from headers."""
    if status < 400:
        return Verdict(OK)
    error_type, code, message = _error_fields(body)
    if status == 429:
        return _classify_429(provider, limits, error_type, code, message, now, max_cooldown_s)
    if status in TRANSIENT_STATUSES:
        return Verdict(TRANSIENT, f"http_{status}", cooldown_until=now + TRANSIENT_COOLDOWN_S)
    if status in (401, 403):
        return Verdict(FAILOVER, f"http_{status}_{error_type or 'auth'}", needs_reauth=True)
    if status == 402:
        return Verdict(FAILOVER, "billing_error", bench=True)
    return Verdict(RETURN, f"http_{status}")


def _classify_429(provider: str, limits: Limits, error_type: str, code: str, message: str,
                  now: float, cap: float) -> Verdict:
    def until(*resets: float | None) -> float:
        times = [r for r in resets if r is not None]
        return min(max(times), now + cap) if times else 0.0

    retry_at = now + limits.retry_after_s if limits.retry_after_s is not None else None
    if code == "credits_required" or "usage credits are required" in message.lower():
        return Verdict(RETURN, "credits_required")
    if code == "enforced_spend_limit_reached":
        return Verdict(FAILOVER, "spend_limit_reached", bench=True)
    if provider == "openai" and (code in OPENAI_QUOTA_CODES or error_type in OPENAI_QUOTA_CODES):
        return Verdict(FAILOVER, code or error_type, bench=True)

    rejected = limits.rejected_windows()
    shared = {n: w for n, w in rejected.items() if n in ("5h", "7d")}
    if shared:
        names = "+".join(sorted(shared))
        return Verdict(FAILOVER, f"rate_limited_{names}",
                       cooldown_until=until(retry_at, *(w.reset for w in shared.values())))
    if "7d_oi" in rejected or limits.overage_disabled_reason == "out_of_credits":
        window = rejected.get("7d_oi")
        reset = window.reset if window and window.reset else limits.unified_reset
        reason = "out_of_credits" if window is None else "model_scoped_limit"
        if reset:
            return Verdict(FAILOVER, reason, model_cooldown_until=until(reset))
        return Verdict(FAILOVER, reason, model_backoff=True)
    if not limits.present:
        hint = _TRY_AGAIN.search(message)
        if hint:
            wait = float(hint.group(1)) / (1000.0 if hint.group(2).lower() == "ms" else 1.0)
            return Verdict(FAILOVER, "rate_limited", cooldown_until=until(now + wait))
        return Verdict(FAILOVER, "windowless_429")
    if limits.unified_status == "rejected" and limits.unified_reset:
        return Verdict(FAILOVER, "rate_limited",
                       cooldown_until=until(retry_at, limits.unified_reset))
    exhausted = [b.reset for b in limits.buckets.values() if b.remaining == 0 and b.reset]
    resets = exhausted or [b.reset for b in limits.buckets.values() if b.reset]
    if retry_at is not None or resets:
        return Verdict(FAILOVER, "rate_limited", cooldown_until=until(retry_at, *resets))
    return Verdict(FAILOVER, "rate_limited_no_reset", backoff=True)


def _error_fields(body: bytes | None) -> tuple[str, str, str]:
    """(error type, error code, message) from an Anthropic or OpenAI error body."""
    if not body:
        return "", "", ""
    data = json_object(body)
    if data is None:
        return "", "", body[:200].decode("utf-8", "replace")
    error = data.get("error")
    if not isinstance(error, dict):
        return "", "", ""
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    code = error.get("code") or details.get("error_code") or ""
    return str(error.get("type") or ""), str(code), str(error.get("message") or "")
