"""The pool's windows (flare_pool_headers, /health) and the statusline's line."""

from __future__ import annotations

from mitmflare.addons.pool_headers import pool_limits
from mitmflare.cli.statusline import render
from mitmflare.config.accounts import AccountConfig, OAuthConfig
from mitmflare.routing.pool import AccountPool

NOW = 1_000_000.0


def pool(*names: str, api_key: str | None = None) -> AccountPool:
    p = AccountPool()
    configs = [AccountConfig(name=n, provider="anthropic",
                             oauth=OAuthConfig(access_token=f"sk-ant-oat01-{n}")) for n in names]
    if api_key:
        configs.append(AccountConfig(name=api_key, provider="anthropic", api_key="sk-ant-api03-x"))
    p.replace(configs)
    return p


def seen(p: AccountPool, name: str, **windows: tuple[float, float, str]) -> None:
    p.get(name).state.limits = {"windows": {
        w: {"utilization": u, "reset": r, "status": s} for w, (u, r, s) in windows.items()}}


def test_mean_of_capped_utilizations_soonest_reset_and_reset_windows_count_as_zero():
    p = pool("a", "b", "c", "d", api_key="k")
    seen(p, "a", **{"5h": (1.01, NOW + 100, "rejected"), "7d": (0.2, NOW + 900, "allowed")})
    seen(p, "b", **{"5h": (0.5, NOW + 50, "allowed")})
    seen(p, "c", **{"5h": (0.9, NOW - 1, "allowed")})  # reset since: counts as 0
    p.get("d").config = p.get("d").config.model_copy(update={"paused": True})  # not in the pool
    limits = pool_limits(list(p.accounts.values()), NOW, 0.95)
    five, seven = limits.windows["5h"], limits.windows["7d"]
    assert (five.utilization, five.reset, five.status, five.accounts) == (0.5, NOW + 50,
                                                                          "allowed", 3)
    assert (round(seven.utilization, 4), seven.reset) == (0.0667, NOW + 900)
    assert (limits.status, limits.claim, limits.reset) == ("allowed", "five_hour", NOW + 50)


def test_rejected_only_when_every_account_is_rejected_somewhere():
    p = pool("a", "b")
    seen(p, "a", **{"5h": (1.0, NOW + 100, "rejected")})
    seen(p, "b", **{"5h": (0.3, NOW + 50, "allowed"), "7d": (1.0, NOW + 7000, "rejected")})
    limits = pool_limits(list(p.accounts.values()), NOW, 0.95)
    assert limits.status == "rejected" and limits.reset == NOW + 100  # a is free first
    assert (limits.windows["5h"].status, limits.windows["5h"].rejected) == ("allowed", 1)
    seen(p, "b", **{"5h": (0.3, NOW + 50, "allowed")})  # b can serve again: mean 0.65
    assert pool_limits(list(p.accounts.values()), NOW, 0.7).status == "allowed"
    assert pool_limits(list(p.accounts.values()), NOW, 0.65).status == "allowed_warning"


def test_no_subscription_account_no_pool():
    assert pool_limits(list(pool(api_key="k").accounts.values()), NOW, 0.95) is None


def test_statusline_line_without_a_pool_and_without_a_key():
    health = {"status": "ok", "accounts": {"total": 3, "available": 2, "cooling_down": 1},
              "serving_account": "k1", "spent_today_usd": 3.2}
    assert render(health) == "pool 2/3 accounts available · on k1 · $3.20 today"
    assert "MITMFLARE_ACCESS_KEY" in render({"status": "ok"})
