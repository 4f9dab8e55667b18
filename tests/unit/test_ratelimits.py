"""Reading limit headers (three time formats) and classifying failures."""

from __future__ import annotations

import json

import pytest
from mitmproxy.http import Headers

from mitmflare.routing.classify import FAILOVER, OK, RETURN, TRANSIENT, classify
from mitmflare.routing.ratelimits import parse_duration, parse_limits

NOW = 1_785_510_565.0
CAP = 6 * 3600.0


def h(**headers: str) -> Headers:
    return Headers(**{k.replace("_", "-"): v for k, v in headers.items()})


def test_unified_headers_epoch_seconds():
    limits = parse_limits("anthropic", Headers([
        (b"anthropic-ratelimit-unified-status", b"allowed_warning"),
        (b"anthropic-ratelimit-unified-reset", b"1785518400"),
        (b"anthropic-ratelimit-unified-5h-utilization", b"0.97"),
        (b"anthropic-ratelimit-unified-5h-reset", b"1785518400"),
        (b"anthropic-ratelimit-unified-7d_oi-status", b"allowed")]), NOW)
    assert limits.unified_reset == 1785518400.0
    assert limits.windows["5h"].utilization == 0.97
    assert limits.windows["7d_oi"].status == "allowed"
    assert limits.constrained(0.95, NOW)


def test_standard_headers_rfc3339_and_retry_after():
    limits = parse_limits("anthropic", h(anthropic_ratelimit_requests_limit="50",
                                         anthropic_ratelimit_requests_remaining="2",
                                         anthropic_ratelimit_requests_reset="2026-07-31T15:10:00Z",
                                         retry_after="12"), NOW)
    bucket = limits.buckets["requests"]
    assert (bucket.limit, bucket.remaining, bucket.reset) == (50, 2, 1785510600.0)
    assert limits.retry_after_s == 12
    assert limits.constrained(0.95, NOW)        # 2 of 50 left
    assert not limits.constrained(0.95, 1785510601.0)  # after the reset


def test_openai_duration_headers():
    limits = parse_limits("openai", h(x_ratelimit_limit_tokens="150000",
                                      x_ratelimit_remaining_tokens="149984",
                                      x_ratelimit_reset_tokens="6m0s",
                                      retry_after_ms="644"), NOW)
    assert limits.buckets["tokens"].reset == NOW + 360
    assert limits.retry_after_s == pytest.approx(0.644)
    assert not limits.constrained(0.95, NOW)


@pytest.mark.parametrize(("text", "seconds"), [("12ms", 0.012), ("1s", 1), ("6m0s", 360),
                                               ("1h2m3s", 3723), ("2.5s", 2.5), ("7", 7),
                                               ("bogus", None), ("", None)])
def test_go_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def verdict(status, headers=None, body=None, provider="anthropic"):
    raw_headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    limits = parse_limits(provider, Headers(raw_headers), NOW)
    raw = json.dumps(body).encode() if body is not None else None
    return classify(provider, status, limits, raw, NOW, CAP)


def unified(**windows):
    out = {"anthropic-ratelimit-unified-status": "rejected"}
    for name, (status, reset) in windows.items():
        out[f"anthropic-ratelimit-unified-{name.replace('oi', '_oi')}-status"] = status
        out[f"anthropic-ratelimit-unified-{name.replace('oi', '_oi')}-reset"] = str(int(NOW + reset))
    return out


def test_5h_rejected_is_account_wide_until_latest_reset():
    v = verdict(429, {**unified(**{"5h": ("rejected", 7835), "7d": ("allowed", 90000)}),
                      "retry-after": "100"})
    assert v.action == FAILOVER and v.cooldown_until == NOW + 7835 and not v.model_cooldown_until


def test_retry_after_longer_than_reset_wins():
    v = verdict(429, {**unified(**{"5h": ("rejected", 60)}), "retry-after": "300"})
    assert v.cooldown_until == NOW + 300


def test_cooldown_is_capped():
    v = verdict(429, unified(**{"7d": ("rejected", 30 * 86400)}))
    assert v.cooldown_until == NOW + CAP


def test_only_7d_oi_rejected_is_model_scoped():
    v = verdict(429, unified(**{"5h": ("allowed", 100), "7d": ("allowed", 100),
                                "7doi": ("rejected", 5000)}))
    assert v.action == FAILOVER and v.cooldown_until == 0 and v.model_cooldown_until == NOW + 5000


def test_out_of_credits_is_not_account_wide():
    v = verdict(429, {"anthropic-ratelimit-unified-status": "rejected",
                      "anthropic-ratelimit-unified-overage-disabled-reason": "out_of_credits"})
    assert v.action == FAILOVER and v.cooldown_until == 0


def test_windowless_429_fails_over_only():
    v = verdict(429, {"x-should-retry": "true"})
    assert v.action == FAILOVER and v.reason == "windowless_429"
    assert not (v.cooldown_until or v.backoff or v.bench)


def test_openai_try_again_hint_is_used():
    v = verdict(429, body={"error": {"message": "Rate limit reached ... Please try again in 644ms.",
                                     "type": "tokens", "code": "rate_limit_exceeded"}},
                provider="openai")
    assert v.cooldown_until == pytest.approx(NOW + 0.644)


def test_headers_without_time_back_off():
    v = verdict(429, {"anthropic-ratelimit-unified-status": "rejected"})
    assert v.backoff and v.action == FAILOVER


@pytest.mark.parametrize("code", ["insufficient_quota", "credit_balance_exhausted"])
def test_openai_quota_benches(code):
    v = verdict(429, body={"error": {"message": "quota", "type": code, "code": code}},
                provider="openai")
    assert v.bench and v.action == FAILOVER


def test_spend_limit_and_credits_required():
    spend = verdict(429, body={"type": "error", "error": {
        "type": "rate_limit_error", "message": "x",
        "details": {"error_code": "enforced_spend_limit_reached"}}})
    assert spend.bench
    fast = verdict(429, body={"type": "error", "error": {
        "type": "rate_limit_error", "message": "Usage credits are required for fast mode"}})
    assert fast.action == RETURN


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 408])
def test_transient(status):
    v = verdict(status)
    assert v.action == TRANSIENT and 0 < v.cooldown_until - NOW <= 30


@pytest.mark.parametrize(("status", "action", "reauth"), [
    (401, FAILOVER, True), (403, FAILOVER, True), (400, RETURN, False), (404, RETURN, False),
    (413, RETURN, False), (200, OK, False)])
def test_other_statuses(status, action, reauth):
    v = verdict(status)
    assert v.action == action and v.needs_reauth is reauth


def zai(status: int, code: str, message: str = "x"):
    return verdict(status, body={"error": {"code": code, "message": message}})


def test_zai_usage_limit_cools_down_until_the_stated_reset():
    # NOW is 2026-07-31 15:09:25 UTC; the message's time is read as UTC+8 (23:09:25 there)
    v = zai(429, "1308", "Usage limit reached for 5 hour. Your limit will reset at "
                         "2026-08-01 01:09:25")
    assert v.action == FAILOVER and v.cooldown_until == pytest.approx(NOW + 2 * 3600)
    assert zai(429, "1310", "weekly limit, reset at 2027-01-01 00:00:00").cooldown_until == NOW + CAP
    assert zai(429, "1308", "no time given").backoff


@pytest.mark.parametrize(("code", "status"), [("1113", 429), ("1309", 429), ("1313", 403)])
def test_zai_balance_plan_and_fair_use_bench(code, status):
    v = zai(status, code)
    assert v.action == FAILOVER and v.bench and not v.needs_reauth


def test_zai_concurrency_and_plan_model_errors():
    busy = zai(429, "1302", "High concurrency usage of this API")
    assert busy.action == FAILOVER and 0 < busy.cooldown_until - NOW <= 30 and not busy.bench
    model = zai(403, "1311")
    assert model.model_backoff and not model.cooldown_until and not model.needs_reauth


def test_a_spent_plan_served_from_overage_and_an_overage_refusal_with_a_fine_plan():
    on_overage = parse_limits("anthropic", Headers([
        (b"anthropic-ratelimit-unified-status", b"rejected"),
        (b"anthropic-ratelimit-unified-5h-status", b"rejected"),
        (b"anthropic-ratelimit-unified-5h-reset", str(int(NOW + 600)).encode()),
        (b"anthropic-ratelimit-unified-7d-status", b"allowed"),
        (b"anthropic-ratelimit-unified-overage-status", b"allowed")]), NOW)
    assert on_overage.plan_spent_until(NOW) == NOW + 600 and on_overage.overage_status == "allowed"
    assert on_overage.plan_spent_until(NOW + 601) == 0.0
    v = verdict(429, {"anthropic-ratelimit-unified-status": "rejected",
                      "anthropic-ratelimit-unified-reset": str(int(NOW + 50_000)),
                      "anthropic-ratelimit-unified-representative-claim": "overage",
                      "anthropic-ratelimit-unified-5h-status": "allowed",
                      "anthropic-ratelimit-unified-overage-status": "rejected"})
    assert (v.action, v.reason, v.cooldown_until, v.model_cooldown_until, v.model_backoff) == \
        (FAILOVER, "overage_rejected", 0, 0, True)
