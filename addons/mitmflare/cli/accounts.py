"""``mitmflare accounts …``: see and edit the accounts without opening the YAML file.

Edits keep the file's comments and order and replace it atomically; a running proxy applies
them within 2 s. Secrets never come from the command line (shell history): an API key is
written as a ``${VAR}`` reference (``--api-key-env``) or read from stdin into ``.env`` beside
the accounts file (``--api-key-stdin``).
"""

import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer

from ..config.words import AUTH_STYLES, did_you_mean, env_file, one_of
from ..providers.presets import PRESETS
from .options import (
    ACCOUNTS_DEFAULT,
    DB_DEFAULT,
    STATE_DEFAULT,
    Accounts,
    Db,
    Json,
    Redis,
    State,
    Yes,
    canned_sql,
    fail,
    interactive,
    no_pydantic_plugins,
)

if TYPE_CHECKING:  # the commands import what only they use (ruamel.yaml, OAuth, Rich)
    from ..providers import oauth

accounts_app = typer.Typer(no_args_is_help=True,
                           help="See, add, change and log in accounts (the YAML file stays "
                                "the source of truth; a running proxy applies edits in 2 s).")



def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be an integer") from None


def number(text: str) -> int | float:
    """``2`` as the integer 2 (so the file keeps ``weight: 2``), ``0.5`` as a float.
    Raises ``ValueError`` (why) for anything else."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError("must be a number") from None


def _flag(text: str) -> bool:
    """``true``/``yes``/``1`` or ``false``/``no``/``0`` (any case); else ``ValueError``."""
    word = text.lower()
    if word in ("true", "yes", "1", "false", "no", "0"):
        return word in ("true", "yes", "1")
    raise ValueError(one_of(word, ("true", "false")))


def _choice(choices) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(one_of(text, choices))
        return text
    return parse


SETTABLE: dict[str, Callable[[str], Any]] = {
    "priority": _integer, "weight": number, "paused": _flag, "base_url": str,
    "default_model": str, "provider": _choice(PRESETS), "auth": _choice(AUTH_STYLES)}


def _edit(accounts: str, action, *args) -> None:
    """Run an :mod:`.accounts_edit` edit; exit 1 with the reason (nothing written) when it
    is rejected."""
    from ..config.accounts_edit import AccountsEditError

    try:
        action(Path(accounts), *args)
    except AccountsEditError as exc:
        fail(exc)


def _models(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        fail("--models takes client=upstream pairs, e.g. opus=glm-4.6,sonnet=glm-4.6")
    return {k.strip(): v.strip() for k, v in pairs}


@accounts_app.command("list")
def list_accounts(as_json: Json = False, accounts: Accounts = ACCOUNTS_DEFAULT,
                  db: Db = DB_DEFAULT) -> None:
    """Every account with its status, limits and cost today.

    Provider, priority, status, cooldown end (local time and "in N min"), 5h / 7d
    utilization, OAuth token expiry, requests and cost today. Works with or without a running
    proxy (reads the accounts file and the analytics database).

    Example: mitmflare accounts list --json
    """
    with no_pydantic_plugins():
        from ..config.accounts import ConfigError, load_accounts

    try:
        configured = load_accounts(accounts).accounts
    except ConfigError as exc:
        fail(exc)
    health: dict[str, dict[str, Any]] = {}
    if Path(db).exists():
        import sqlite3

        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            health = {r["account"]: dict(r) for r in conn.execute(canned_sql("account_health"))}
        except sqlite3.OperationalError:
            health = {}  # no snapshot written yet
        finally:
            conn.close()
    now = time.time()
    rows: list[dict[str, Any]] = []
    for cfg in configured:
        h = health.get(cfg.name, {})
        cooling = h.get("cooldown_until")
        if cooling and datetime.fromisoformat(cooling.replace("Z", "+00:00")).timestamp() <= now:
            cooling = None
        rows.append({"name": cfg.name, "provider": cfg.provider, "priority": cfg.priority,
                     "paused": cfg.paused, "status": "paused" if cfg.paused else
                     (h.get("health") if cooling or not h.get("cooldown_until") else "available")
                     or "not seen yet",
                     "cooldown_until": cooling, "used_5h": h.get("used_5h"),
                     "used_7d": h.get("used_7d"), "token_expires_at": h.get("token_expires_at"),
                     "requests_today": h.get("requests_today") or 0,
                     "cost_today_usd": h.get("cost_today_usd") or 0.0})
    if as_json:
        import json

        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from ..money import usd

    table = Table("account", "provider", "prio", "status", "cooldown until", "5h", "7d",
                  "token expires", "requests today", "cost today")
    for r in rows:
        table.add_row(r["name"], r["provider"], str(r["priority"]), r["status"],
                      _local(r["cooldown_until"], now), _pct(r["used_5h"]), _pct(r["used_7d"]),
                      _local(r["token_expires_at"], now), str(r["requests_today"]),
                      usd(r["cost_today_usd"]))
    Console(width=160).print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _local(iso: str | None, now: float) -> str:
    """``14:05 (in 23 min)`` in local time for an ISO UTC time; ``-`` for none."""
    if not iso:
        return "-"
    at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    minutes = round((at.timestamp() - now) / 60)
    when = f"in {minutes} min" if minutes < 120 else f"in {minutes // 60} h"
    return f"{at:%Y-%m-%d %H:%M} ({when})" if at.timestamp() > now else \
        f"{at:%Y-%m-%d %H:%M} (expired)"


@accounts_app.command("add")
def add(name: str,
        provider: Annotated[str, typer.Option(help=f"One of: {', '.join(PRESETS)}.")],
        api_key_env: Annotated[str | None, typer.Option(
            "--api-key-env", help="Name of the environment variable (or .env entry) holding "
                                  "the key; written as ${VAR}.")] = None,
        api_key_stdin: Annotated[bool, typer.Option(
            "--api-key-stdin", help="Read the key from stdin and store it in the .env file "
                                    "beside the accounts file (mode 0600).")] = False,
        priority: Annotated[int, typer.Option(help="Lower is preferred.")] = 0,
        base_url: Annotated[str | None, typer.Option(help="Upstream base URL.")] = None,
        models: Annotated[str | None, typer.Option(
            help="Model mapping, client=upstream pairs: opus=glm-4.6,sonnet=glm-4.6")] = None,
        default_model: Annotated[str | None, typer.Option(
            help="Upstream model for anything the mapping does not name.")] = None,
        accounts: Accounts = ACCOUNTS_DEFAULT) -> None:
    """Add an API-key account (for a subscription use `accounts login`).

    Example: echo "$KEY" | mitmflare accounts add glm --provider zai --api-key-stdin
             --models opus=glm-4.6,sonnet=glm-4.6,haiku=glm-4.5-air --priority 2
    """
    from ..config import accounts_edit, dotenv_edit

    if provider not in PRESETS:
        fail(f"--provider {provider}: {one_of(provider, PRESETS)}")
    if bool(api_key_env) == api_key_stdin:
        fail("give the key with exactly one of --api-key-env VAR and --api-key-stdin")
    var = api_key_env or f"MITMFLARE_KEY_{name.upper().replace('-', '_')}"
    new_env: dict[str, str] = {}
    if api_key_stdin:
        new_env[var] = sys.stdin.readline().strip()
        if not new_env[var]:
            fail("no key on stdin")
    fields: dict[str, Any] = {"name": name, "provider": provider, "api_key": f"${{{var}}}",
                              "priority": priority}
    for key, value in (("base_url", base_url), ("models", _models(models)),
                       ("default_model", default_model)):
        if value:
            fields[key] = value

    def store_key() -> None:  # once the entry is known to be valid
        for key, value in new_env.items():
            dotenv_edit.set_var(Path(env_file(accounts)), key, value)

    _edit(accounts, accounts_edit.add, fields, new_env, store_key)
    typer.echo(f"Added {name} ({provider}) to {accounts}; a running proxy serves it within 2 s.")


@accounts_app.command("remove")
def remove(name: str, yes: Yes = False, accounts: Accounts = ACCOUNTS_DEFAULT) -> None:
    """Remove an account from the file (its recorded rows stay).

    When its key is a ${VAR} set in the .env file beside the accounts file and no other
    account uses VAR, it asks whether to remove VAR from the .env file too (--yes: remove
    without asking; without a terminal and without --yes it is kept).

    Example: mitmflare accounts remove old-key --yes
    """
    from ..config import accounts_edit, dotenv_edit
    from ..config.accounts_edit import AccountsEditError

    try:
        unused = accounts_edit.remove(Path(accounts), name)
    except AccountsEditError as exc:
        fail(exc)
    typer.echo(f"Removed {name}; a running proxy stops using it within 2 s.")
    dotenv = Path(env_file(accounts))
    for var in (v for v in unused if dotenv_edit.has_var(dotenv, v)):
        if yes or (interactive() and typer.confirm(
                f"Remove {var} (the key only {name} used) from {dotenv}?", default=False)):
            try:
                dotenv_edit.remove_var(dotenv, var)
            except OSError as exc:
                fail(f"{var} stays in {dotenv}: {exc}")
            typer.echo(f"Removed {var} from {dotenv}.")
        else:
            typer.echo(f"Kept {var} in {dotenv} (no account uses it now; `--yes` removes it).")


@accounts_app.command("pause")
def pause(name: str, accounts: Accounts = ACCOUNTS_DEFAULT, redis: Redis = "",
          state: State = STATE_DEFAULT) -> None:
    """Never choose this account until resumed: ``paused: true`` in the accounts file, or
    with --redis / MITMFLARE_REDIS_URL on every host through Redis (the file stays as it is).
    Example: mitmflare accounts pause work-key"""
    from ..config import accounts_edit

    if redis:
        _share_pause(name, True, redis, state)
    else:
        _edit(accounts, accounts_edit.set_fields, name, {"paused": True})
    typer.echo(f"Paused {name}" + (" on every host." if redis else "."))


@accounts_app.command("resume")
def resume(name: str, accounts: Accounts = ACCOUNTS_DEFAULT, redis: Redis = "",
           state: State = STATE_DEFAULT) -> None:
    """Undo `pause`: in the accounts file, and with --redis / MITMFLARE_REDIS_URL on every
    host too. Example: mitmflare accounts resume work-key"""
    from ..config import accounts_edit

    _edit(accounts, accounts_edit.set_fields, name, {"paused": None})
    _share_pause(name, False, redis, state)
    typer.echo(f"Resumed {name}" + (" on every host." if redis else "."))


def _share_pause(name: str, paused: bool, redis: str, state: str) -> None:
    """With Redis: pause or unpause ``name`` on every host; exit 1 when Redis cannot be
    reached."""
    if not redis:
        return
    from ..storage import operator_commands
    from ..storage.state_store import StoreUnavailable

    try:
        operator_commands.share_pause(state, name, paused, redis)
    except StoreUnavailable as exc:
        fail(exc)


@accounts_app.command("set")
def set_fields(name: str, assignments: Annotated[list[str], typer.Argument(
        help="FIELD=VALUE pairs: priority, weight, paused, base_url, default_model, "
             "provider, auth; an empty value removes the field.")],
        accounts: Accounts = ACCOUNTS_DEFAULT) -> None:
    """Change fields of an account.

    Example: mitmflare accounts set work-key priority=2 weight=3
    """
    from ..config import accounts_edit

    fields: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or key not in SETTABLE:
            fail(f"{item!r}: use FIELD=VALUE with FIELD one of {', '.join(SETTABLE)}"
                 f"{did_you_mean(key, SETTABLE)}")
        try:
            fields[key] = None if value == "" else SETTABLE[key](value)
        except ValueError as exc:
            fail(f"{item!r}: {key} {exc}")
    _edit(accounts, accounts_edit.set_fields, name, fields)
    typer.echo(f"Updated {name}: {', '.join(assignments)}.")


@accounts_app.command("reset")
def reset(name: str, state: State = STATE_DEFAULT, redis: Redis = "") -> None:
    """Clear a cooldown, bench or needs_reauth mark (as `flare.resume` does).

    A running proxy applies it within 2 s (every proxy on every host with --redis /
    MITMFLARE_REDIS_URL); a proxy started later finds it in the state.

    Example: mitmflare accounts reset work-key
    """
    from ..storage import operator_commands
    from ..storage.state_store import StoreUnavailable

    try:
        known = operator_commands.queue_reset(state, name, redis)
    except StoreUnavailable as exc:
        fail(exc)
    typer.echo(f"Reset {name}" + ("" if known else " (no stored state for it yet)") +
               "; a running proxy applies it within 2 s.")


@accounts_app.command("login")
def login(name: str,
          provider: Annotated[str, typer.Option(
              help="anthropic (a Claude subscription) or codex (a ChatGPT subscription, "
                   "served by the Codex backend).")] = "anthropic",
          priority: Annotated[int | None, typer.Option(
              help="Priority (lower is preferred); kept if omitted.")] = None,
          access_token: Annotated[str | None, typer.Option(
              help="Use an existing pair instead of logging in (e.g. from `claude "
                   "setup-token`, or ~/.codex/auth.json).")] = None,
          refresh_token: Annotated[str | None, typer.Option(help="The pair's refresh token.")] = None,
          expires_at: Annotated[str | None, typer.Option(
              help="ISO 8601 expiry of --access-token, if known.")] = None,
          token_url: Annotated[str | None, typer.Option(
              help="OAuth token endpoint (default: the provider's).")] = None,
          authorize_url: Annotated[str | None, typer.Option(
              help="OAuth authorization page (default: the provider's).")] = None,
          client_id: Annotated[str | None, typer.Option(
              help="OAuth client id (default: the provider's).")] = None,
          redirect_uri: Annotated[str | None, typer.Option(
              help="OAuth redirect URI (default: the provider's).")] = None,
          accounts: Accounts = ACCOUNTS_DEFAULT, state: State = STATE_DEFAULT) -> None:
    """Log a subscription in (OAuth PKCE) and add or update its account.

    Open the printed URL, approve, paste what the page shows: Claude shows a code#state;
    a ChatGPT (--provider codex) login ends on http://localhost:1455/auth/callback?code=…
    (the page may not load): paste that address. The tokens go to the state database (mode
    0600); the accounts file gets `oauth: {from_state: true}`, no secret. Pooling
    subscriptions may breach the provider's terms: the operator's responsibility.

    Example: mitmflare accounts login personal-max --priority 1
             mitmflare accounts login chatgpt-pro --provider codex
    """
    import httpx

    from ..config import accounts_edit
    from ..providers import oauth
    from ..storage.state_store import SqliteStateStore
    from ..times import iso_utc

    logins = _logins()
    if provider not in logins:
        fail(f"--provider {provider}: {one_of(provider, logins)}")
    base = logins[provider]
    login_with = base._replace(token_url=token_url or base.token_url,
                               authorize_url=authorize_url or base.authorize_url,
                               client_id=client_id or base.client_id,
                               redirect_uri=redirect_uri or base.redirect_uri)
    try:
        if access_token or refresh_token:
            expires = datetime.fromisoformat(expires_at).timestamp() if expires_at else \
                oauth.jwt_expiry(access_token or "")
            tokens = oauth.TokenSet(access_token, refresh_token, expires, None)
        else:
            tokens = _browser_login(login_with)
    except (oauth.RefreshError, httpx.HTTPError, ValueError) as exc:
        fail(f"login failed: {exc}")
    store = SqliteStateStore(state)  # creates the file (0600) and its tables
    try:
        store.save_tokens(name, tokens)
    finally:
        store.close()
    _edit(accounts, accounts_edit.use_stored_tokens, name, priority, provider)
    typer.echo(f"account {name}: tokens stored in {state} (access token expires "
               f"{iso_utc(tokens.expires_at) or 'unknown'}); {accounts} updated. A running "
               f"proxy serves it within 2 s; a 'needs_reauth' mark on it is cleared.")


class Login(NamedTuple):
    """Where one provider's browser login goes: its OAuth endpoints, how the authorization
    URL is built, and how the code is exchanged (``client.form_exchange``)."""

    authorize_url: str
    token_url: str
    client_id: str
    redirect_uri: str
    build_url: Callable[[str, str, str, str, str], str]
    client: "oauth.OAuthClient"


def _logins() -> dict[str, Login]:
    """The providers ``accounts login`` knows, by name (built on first use: the OAuth modules
    load only for a login)."""
    from ..providers import codex, oauth

    return {
        "anthropic": Login(oauth.AUTHORIZE_URL, oauth.DEFAULT_TOKEN_URL, oauth.DEFAULT_CLIENT_ID,
                           oauth.REDIRECT_URI, oauth.authorize_url, oauth.CLAUDE),
        "codex": Login(codex.AUTHORIZE_URL, codex.TOKEN_URL, codex.CLIENT_ID, codex.REDIRECT_URI,
                       codex.authorize_url, codex.CODEX),
    }


def _pasted_code(pasted: str) -> tuple[str, str]:
    """(code, state) from what the user pasted: ``code#state``, or the address the browser
    was sent back to (``…/callback?code=…&state=…``)."""
    import urllib.parse

    if "?" in pasted and "code=" in pasted:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(pasted).query))
        return query.get("code", ""), query.get("state", "")
    code, _, state = pasted.partition("#")
    return code, state


def _browser_login(login_with: Login) -> "oauth.TokenSet":
    import secrets

    import httpx

    from ..providers import oauth

    verifier, challenge = oauth.pkce_pair()
    state = secrets.token_urlsafe(24)
    typer.echo("Open this URL, approve access, then paste the code shown (code#state) or the "
               "address the browser was sent back to:")
    typer.echo(login_with.build_url(login_with.authorize_url, login_with.client_id,
                                    login_with.redirect_uri, challenge, state))
    code, returned_state = _pasted_code(sys.stdin.readline().strip())
    if not code:
        raise ValueError("no code pasted")
    if returned_state != state:
        raise ValueError("the pasted state does not match this login (start again)")
    fields = {"grant_type": "authorization_code", "code": code,
              "redirect_uri": login_with.redirect_uri, "client_id": login_with.client_id,
              "code_verifier": verifier}
    if login_with.client.form_exchange:
        response = httpx.post(login_with.token_url, timeout=oauth.REFRESH_TIMEOUT_S, data=fields)
    else:
        response = httpx.post(login_with.token_url, timeout=oauth.REFRESH_TIMEOUT_S,
                              json={**fields, "state": state})
    if response.status_code != 200:
        raise oauth.token_error(response, login_with.client)
    return oauth.token_set_from_answer(response.json(), None, "", time.time())
