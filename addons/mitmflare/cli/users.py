"""``mitmflare users …``: per-user access keys in the state database (``flare_state``).

Changes apply to a running proxy within 2 s (it reads the ``users`` table every second); with
``--redis`` / ``MITMFLARE_REDIS_URL``, to every proxy on every host sharing that Redis.
"""

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from .options import STATE_DEFAULT, Json, Redis, State, creatable_state, fail

if TYPE_CHECKING:  # imported by the commands (the command starts faster)
    from ..storage.users import User, UsersStore

users_app = typer.Typer(no_args_is_help=True,
                        help="Per-user access keys (with --set flare_require_access_keys=true). "
                             "Keys are shown once; only their hash is stored.")

Models = Annotated[str | None, typer.Option(
    "--models", help="Comma-separated models the user may use (a trailing * matches a "
                     "prefix, e.g. claude-sonnet-*); '' allows all.")]
Providers = Annotated[str | None, typer.Option(
    "--providers", help="Comma-separated providers whose accounts may serve the user "
                        "(anthropic, openai, codex, zai, …); '' allows all.")]
DailyCap = Annotated[float | None, typer.Option(
    "--daily-cap", min=0, help="Spend cap in USD per UTC day (recorded costs).")]
MonthlyCap = Annotated[float | None, typer.Option(
    "--monthly-cap", min=0, help="Spend cap in USD per calendar month (UTC).")]
MaxConcurrent = Annotated[int | None, typer.Option(
    "--max-concurrent", min=0, help="At most this many requests in flight (0: no limit).")]


@contextlib.contextmanager
def _store(state: str, redis: str = "") -> Iterator["UsersStore"]:
    """The users of ``state`` (created when missing), and of Redis at ``redis`` when given,
    closed afterwards; a :class:`UserError` (or Redis unreachable) inside exits 1 with its
    one-line reason."""
    from ..storage.state_store import StoreUnavailable
    from ..storage.users import UserError, UsersStore

    creatable_state(state)
    store = UsersStore(state, redis)
    try:
        yield store
    except (UserError, StoreUnavailable) as exc:
        fail(exc)
    finally:
        store.close()


def _listed(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] or None if text else None


def _show_key(user: "User", key: str, what: str) -> None:
    typer.echo(f"{what} {user.name}. Its access key (shown only now; store it safely):")
    typer.echo(key)
    typer.echo("Clients send it as x-api-key or Authorization: Bearer "
               "(Claude Code: ANTHROPIC_API_KEY; SDKs: api_key).", err=True)


@users_app.command("add")
def add(name: str, models: Models = None, providers: Providers = None,
        daily_cap: DailyCap = None, monthly_cap: MonthlyCap = None,
        max_concurrent: MaxConcurrent = None, state: State = STATE_DEFAULT,
        redis: Redis = "") -> None:
    """Create a user and print its access key once.

    Example: mitmflare users add alice --daily-cap 5 --models 'claude-sonnet-*'
    """
    with _store(state, redis) as store:
        user, key = store.add(name, allowed_models=_listed(models),
                              allowed_providers=_listed(providers), daily_cap_usd=daily_cap,
                              monthly_cap_usd=monthly_cap, max_concurrent=max_concurrent or None)
    _show_key(user, key, "Created user")


@users_app.command("list")
def list_users(as_json: Json = False, state: State = STATE_DEFAULT,
        redis: Redis = "") -> None:
    """List users (never their keys: only the first 8 characters).

    Example: mitmflare users list --json
    """
    with _store(state, redis) as store:
        users = store.all()
    if as_json:
        typer.echo(json.dumps([{"name": u.name, "key_prefix": u.key_prefix,
                                "disabled": u.disabled, "allowed_models": u.allowed_models,
                                "allowed_providers": u.allowed_providers,
                                "daily_cap_usd": u.daily_cap_usd,
                                "monthly_cap_usd": u.monthly_cap_usd,
                                "max_concurrent": u.max_concurrent,
                                "created_at": u.created_at} for u in users], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from ..money import usd

    table = Table("user", "key", "status", "models", "providers", "daily cap", "monthly cap",
                  "max concurrent", "created")
    for u in users:
        table.add_row(u.name, u.key_prefix + "…", "disabled" if u.disabled else "enabled",
                      ", ".join(u.allowed_models or ["all"]),
                      ", ".join(u.allowed_providers or ["all"]),
                      usd(u.daily_cap_usd) if u.daily_cap_usd is not None else "-",
                      usd(u.monthly_cap_usd) if u.monthly_cap_usd is not None else "-",
                      str(u.max_concurrent or "-"), u.created_at or "")
    Console().print(table)


def _update(name: str, state: str, redis: str, done: str, **changes) -> None:
    with _store(state, redis) as store:
        store.update(name, **changes)
    typer.echo(f"{done} {name} (running proxies apply it within 2 s)")


@users_app.command("disable")
def disable(name: str, state: State = STATE_DEFAULT,
        redis: Redis = "") -> None:
    """Refuse the user's key; its history stays. Example: mitmflare users disable alice"""
    _update(name, state, redis, "Disabled", disabled=True)


@users_app.command("enable")
def enable(name: str, state: State = STATE_DEFAULT,
        redis: Redis = "") -> None:
    """Accept a disabled user's key again. Example: mitmflare users enable alice"""
    _update(name, state, redis, "Enabled", disabled=False)


@users_app.command("set")
def set_limits(name: str, models: Models = None, providers: Providers = None,
               daily_cap: DailyCap = None, monthly_cap: MonthlyCap = None,
               no_caps: Annotated[bool, typer.Option("--no-caps", help="Remove both caps.")] = False,
               max_concurrent: MaxConcurrent = None, state: State = STATE_DEFAULT,
        redis: Redis = "") -> None:
    """Change a user's allowed models/providers, spend caps and concurrency limit (options
    not given stay).

    Example: mitmflare users set alice --monthly-cap 100 --providers anthropic --max-concurrent 4
    """
    changes: dict = {}
    if models is not None:
        changes["allowed_models"] = _listed(models)
    if providers is not None:
        changes["allowed_providers"] = _listed(providers)
    if daily_cap is not None or no_caps:
        changes["daily_cap_usd"] = None if no_caps else daily_cap
    if monthly_cap is not None or no_caps:
        changes["monthly_cap_usd"] = None if no_caps else monthly_cap
    if max_concurrent is not None:
        changes["max_concurrent"] = max_concurrent or None
    _update(name, state, redis, "Updated", **changes)


@users_app.command("rotate")
def rotate(name: str, state: State = STATE_DEFAULT,
        redis: Redis = "") -> None:
    """Give the user a new key; the old one stops working within 2 s.

    Example: mitmflare users rotate alice
    """
    with _store(state, redis) as store:
        user, key = store.rotate(name)
    _show_key(user, key, "New key for")


@users_app.command("remove")
def remove(name: str, state: State = STATE_DEFAULT,
        redis: Redis = "") -> None:
    """Delete the user (its rows in the analytics database keep its name).

    Example: mitmflare users remove alice
    """
    with _store(state, redis) as store:
        store.remove(name)
    typer.echo(f"Removed {name} (a running proxy refuses its key within 2 s)")
