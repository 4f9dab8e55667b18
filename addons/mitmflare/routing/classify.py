"""What an upstream answer means for the account and the request.

The table (kept in sync with README "Failure classification"); sources in
``shared/reference/upstream-apis.md`` sections 1, 2, 5 and 7:

====================================================  =========  ==============================
answer                                                request    account
====================================================  =========  ==============================
2xx / 3xx                                             OK         learn limits
429, 5h or 7d window rejected; API-key 429 with        failover   cooldown until latest reset
retry-after or reset headers                                     (>= header, <= cap)
429, only 7d_oi rejected                              failover   model cooldown only (until
                                                                 reset; none known: 30 s
                                                                 doubling up to the cap)
429, overage refused (``out_of_credits``, claim       failover   model backoff only (30 s
``overage``, overage status rejected) while the                  doubling, never until the
5h / 7d windows are fine                                         overage reset): a spent
                                                                 overage pool never benches an
                                                                 account whose plan can serve
429 "windowless" (no limit header)                    failover   none
429 with headers but no usable time                   failover   exponential 30 s → 5 min
429 ``credits_required`` (fast mode etc.)             return     none
429 ``enforced_spend_limit_reached``;                 failover   benched until resumed
OpenAI ``insufficient_quota`` family
529, 500, 502, 503, 504, 408                          retry      short cooldown
401 / 403                                             failover   needs_reauth (OAuth: refresh)
402                                                   failover   benched until resumed
z.ai / Zhipu business code (any 4xx):                 failover
  1302 concurrency, 1303 frequency too high                      short cooldown
  1308 / 1310 usage limit "will reset at <time>"                 cooldown until that time
                                                                 (UTC+8 assumed, capped)
  1311 model not in the coding plan                              model cooldown (backoff)
  1113 balance exhausted, 1309 plan expired, 1313                benched until resumed
  fair-use restriction
Codex 429 ``usage_limit_reached``                      failover   cooldown until ``resets_at``
                                                                 (or a spent window's reset)
Codex ``usage_not_included``                          failover   benched until resumed
other 4xx (400, 404, 413, …)                          return     none
====================================================  =========  ==============================

The z.ai codes come from z.ai's "API code" page (docs.z.ai/api-reference/api-code) and
Zhipu's (docs.bigmodel.cn/cn/api/api-code); the reset time's zone is not documented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..providers.wire import json_object, obj
from .ratelimits import Limits

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
ZAI_BENCH_CODES = {"1113": "zai_balance_exhausted", "1309": "zai_plan_expired",
                   "1313": "zai_fair_use_restricted"}
_ZAI_RESET = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")
_ZAI_ZONE = timezone(timedelta(hours=8))  # assumed: the docs give no zone (China Standard Time)
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


def classify(wire_format: str, status: int, limits: Limits, body: bytes | None, now: float,
             max_cooldown_s: float) -> Verdict:
    """Classify an upstream answer (see the module table). ``body`` is the (small, non-streamed)
    error body or None; ``max_cooldown_s`` caps any cooldown taken from headers."""
    if status < 400:
        return Verdict(OK)
    error_type, code, message = _error_fields(body)
    if 400 <= status < 500:
        zai = _classify_zai(code or error_type, message, now, max_cooldown_s)
        if zai is not None:
            return zai
    if wire_format == "codex":
        codex = _classify_codex(status, error_type or code, limits, body, now, max_cooldown_s)
        if codex is not None:
            return codex
    if status == 429:
        return _classify_429(wire_format, limits, error_type, code, message, now, max_cooldown_s)
    if status in TRANSIENT_STATUSES:
        return Verdict(TRANSIENT, f"http_{status}", cooldown_until=now + TRANSIENT_COOLDOWN_S)
    if status in (401, 403):
        return Verdict(FAILOVER, f"http_{status}_{error_type or 'auth'}", needs_reauth=True)
    if status == 402:
        return Verdict(FAILOVER, "billing_error", bench=True)
    return Verdict(RETURN, f"http_{status}")


def _classify_429(wire_format: str, limits: Limits, error_type: str, code: str, message: str,
                  now: float, cap: float) -> Verdict:
    def until(*resets: float | None) -> float:
        times = [r for r in resets if r is not None]
        return min(max(times), now + cap) if times else 0.0

    retry_at = now + limits.retry_after_s if limits.retry_after_s is not None else None
    if code == "credits_required" or "usage credits are required" in message.lower():
        return Verdict(RETURN, "credits_required")
    if code == "enforced_spend_limit_reached":
        return Verdict(FAILOVER, "spend_limit_reached", bench=True)
    if wire_format == "openai" and (code in OPENAI_QUOTA_CODES or error_type in OPENAI_QUOTA_CODES):
        return Verdict(FAILOVER, code or error_type, bench=True)

    rejected = limits.rejected_windows()
    shared = {n: w for n, w in rejected.items() if n in ("5h", "7d")}
    if shared:
        names = "+".join(sorted(shared))
        return Verdict(FAILOVER, f"rate_limited_{names}",
                       cooldown_until=until(retry_at, *(w.reset for w in shared.values())))
    if "7d_oi" in rejected:
        window = rejected["7d_oi"]
        reset = window.reset or limits.unified_reset
        if reset:
            return Verdict(FAILOVER, "model_scoped_limit", model_cooldown_until=until(reset))
        return Verdict(FAILOVER, "model_scoped_limit", model_backoff=True)
    if limits.overage_disabled_reason == "out_of_credits" or \
            limits.representative_claim == "overage" or limits.overage_status == "rejected":
        # the plan's windows are fine (checked above): only this request needed extra usage
        # (long context, fast mode); its overage reset may be weeks away (better-ccflare #404)
        reason = "out_of_credits" if limits.overage_disabled_reason == "out_of_credits" \
            else "overage_rejected"
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


def _classify_codex(status: int, kind: str, limits: Limits, body: bytes | None, now: float,
                    cap: float) -> Verdict | None:
    """The verdict for a Codex (ChatGPT subscription) answer the general rules do not cover,
    else None: ``usage_limit_reached`` (429) cools the account until its ``resets_at`` (epoch
    s, in the error body), or the reset of a spent window, or ``retry-after``; with none
    known, the exponential cooldown. ``usage_not_included`` (the plan has no Codex) benches
    it until resumed. Codes from the Codex CLI (``codex-rs/codex-api/src/api_bridge.rs``)."""
    if kind == "usage_not_included":
        return Verdict(FAILOVER, "codex_usage_not_included", bench=True)
    if status != 429 or kind != "usage_limit_reached":
        return None
    error = (json_object(body) or {}).get("error")
    reset = error.get("resets_at") if isinstance(error, dict) else None
    resets = [float(reset)] if isinstance(reset, int | float) and not isinstance(reset, bool) \
        else []
    resets += [w.reset for w in limits.rejected_windows().values() if w.reset]
    if limits.retry_after_s is not None:
        resets.append(now + limits.retry_after_s)
    resets = [r for r in resets if r > now]
    if not resets:
        return Verdict(FAILOVER, "codex_usage_limit", backoff=True)
    return Verdict(FAILOVER, "codex_usage_limit", cooldown_until=min(max(resets), now + cap))


def _classify_zai(code: str, message: str, now: float, cap: float) -> Verdict | None:
    """The verdict for a z.ai / Zhipu business error code (module table), else None."""
    if code in ZAI_BENCH_CODES:
        return Verdict(FAILOVER, ZAI_BENCH_CODES[code], bench=True)
    if code in ("1302", "1303"):
        return Verdict(FAILOVER, "zai_rate_limited", cooldown_until=now + TRANSIENT_COOLDOWN_S)
    if code == "1311":
        return Verdict(FAILOVER, "zai_model_not_in_plan", model_backoff=True)
    if code in ("1308", "1310"):
        found = _ZAI_RESET.search(message)
        reset = None
        if found:
            reset = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(
                tzinfo=_ZAI_ZONE).timestamp()
        if reset is None or reset <= now:
            return Verdict(FAILOVER, "zai_usage_limit", backoff=True)
        return Verdict(FAILOVER, "zai_usage_limit", cooldown_until=min(reset, now + cap))
    return None


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
    details = obj(error.get("details"))
    code = error.get("code") or details.get("error_code") or ""
    return str(error.get("type") or ""), str(code), str(error.get("message") or "")
