"""``mitmflare doctor``: checks an install and says what to fix, one line per check."""

import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import runtime
from .options import (
    ACCOUNTS_DEFAULT,
    DB_DEFAULT,
    STATE_DEFAULT,
    Accounts,
    Db,
    Json,
    State,
    no_pydantic_plugins,
)

if TYPE_CHECKING:  # imported where used (the command starts faster)
    import sqlite3

SKEW_WARN_S = 5.0
WAL_WARN_BYTES = 256 * 1024 * 1024


def doctor(accounts: Accounts = ACCOUNTS_DEFAULT, db: Db = DB_DEFAULT, state: State = STATE_DEFAULT,
           port: Annotated[int | None, typer.Option(
               envvar="MITMFLARE_PORT", show_default="the running proxy's, else 8080",
               help="Proxy port.")] = None,
           dashboard_port: Annotated[int | None, typer.Option(
               envvar="MITMFLARE_DASHBOARD_PORT", show_default="the running proxy's, else 8001",
               help="Datasette port.")] = None,
           redis: Annotated[str, typer.Option(
               envvar="MITMFLARE_REDIS_URL", show_default="none",
               help="Redis URL the proxies share (flare_redis): checked when given.")] = "",
           as_json: Json = False) -> None:
    """Check the install and say what to fix (exit 1 when something must be fixed).

    Python, the virtual environment, the running proxy, the accounts file, both databases
    (integrity, size, WAL size, schema), the ports (mitmflare's own are told apart from
    other programs' by the runtime files), the clock against the upstreams' Date headers,
    and that the state database is private (mode 0600); with a Redis URL, that Redis answers,
    its version and round-trip time, and that it never evicts mitmflare's keys.

    Example: mitmflare doctor
    """
    from ..storage import schema, state_store

    checks: list[tuple[str, str, str]] = []  # (ok | warn | fail, check, detail / what to do)

    def add(level: str, name: str, detail: str) -> None:
        checks.append((level, name, detail))

    proxies = _running(state)
    mine = proxies[0] if proxies and proxies[0]["state"] == str(Path(state).absolute()) else {}
    port = port or ([lst["port"] for lst in mine.get("listeners") or []] or [8080])[0]
    dashboard_port = dashboard_port or (mine.get("ports") or {}).get("dashboard") or 8001
    if proxies:
        add("ok", "running proxy", "; ".join(
            f"pid {f.get('pid')}{' (demo)' if f.get('demo') else ''}: {f.get('accounts')}"
            for f in proxies))

    version = sys.version.split()[0]
    add("ok" if sys.version_info >= (3, 12) else "fail", "python",
        version if sys.version_info >= (3, 12) else f"{version}: mitmflare needs 3.12 or newer")
    in_venv = sys.prefix != sys.base_prefix
    add("ok" if in_venv else "warn", "virtual environment",
        sys.prefix if in_venv else "not in a venv: run ./scripts/run once to create .venv")
    _accounts(accounts, add)
    _database(db, "analytics database", schema.ANALYTICS_TABLES, add, _read_only)
    _database(state, "state database", schema.STATE_TABLES, add, state_store.read_only)
    if Path(state).exists():
        mode = stat.S_IMODE(os.stat(state).st_mode)
        add("ok" if mode & 0o077 == 0 else "fail", "state database mode",
            f"{mode:o}" if mode & 0o077 == 0 else f"{mode:o}: it holds secrets; chmod 600 {state}")
    own = {number: f"mitmflare's own {what} (pid {facts.get('pid')})"
           for facts in proxies for number, what in runtime.own_ports(facts).items()}
    for name, number in (("proxy port", port), ("dashboard port", dashboard_port)):
        add(*_port(name, number, own))
    _clock(db, add)
    if redis:
        _redis(redis, add)
    failed = any(level == "fail" for level, _, _ in checks)
    if as_json:
        typer.echo(json.dumps([{"level": lv, "check": c, "detail": d} for lv, c, d in checks],
                              indent=2))
    else:
        for level, name, detail in checks:
            typer.echo(f"{level.upper():<4}  {name}: {detail}")
    raise typer.Exit(1 if failed else 0)


def _accounts(path: str, add) -> None:
    with no_pydantic_plugins():
        from ..config.accounts import ConfigError, load_accounts

    if not Path(path).exists():
        add("fail", "accounts file", f"{path} is missing: ./scripts/run creates it from "
                                     f"config/accounts.example.yaml, or `mitmflare accounts add`")
        return
    try:
        loaded = load_accounts(path)
    except ConfigError as exc:
        add("fail", "accounts file", str(exc))
        return
    for error in loaded.errors:
        add("fail", "accounts file", error)
    count = len(loaded.accounts)
    add("ok" if count else "warn", "accounts file",
        f"{count} account(s) in {path}" if count else f"{path} has no account yet")


def _read_only(path: str) -> "sqlite3.Connection":
    """A read-only connection to the analytics database (the state database's is
    :func:`.state_store.read_only`)."""
    import sqlite3

    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _database(path: str, name: str, tables: dict, add, connect) -> None:
    """Check the database at ``path``, opened read-only with ``connect(path)``."""
    import sqlite3

    if not Path(path).exists():
        add("warn", name, f"{path} does not exist yet (the proxy creates it)")
        return
    try:
        conn = connect(path)
        try:
            result = conn.execute("pragma quick_check").fetchone()[0]
            present = {t: {c[1] for c in conn.execute(f"pragma table_info({t})")} for t in tables}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        add("fail", name, f"{path} cannot be read: {exc}")
        return
    size = os.stat(path).st_size
    wal = Path(path + "-wal").stat().st_size if Path(path + "-wal").exists() else 0
    add("ok" if result == "ok" else "fail", f"{name} integrity",
        f"{path}: {result}" if result == "ok" else f"{path}: {result}; restore a backup")
    add("ok" if wal < WAL_WARN_BYTES else "warn", f"{name} size",
        f"{size / 1e6:.1f} MB, WAL {wal / 1e6:.1f} MB" + (
            "" if wal < WAL_WARN_BYTES else "; a long-lived reader blocks checkpoints: restart "
                                            "Datasette, or run `mitmflare vacuum`"))
    missing = [f"{t}.{c}" for t, (columns, _) in tables.items() for c in columns
               if c not in present[t]]
    add("ok" if not missing else "warn", f"{name} schema",
        "current" if not missing else f"{len(missing)} column(s) missing ({', '.join(missing[:4])}"
                                      "…): the proxy adds them when it starts")


def _running(state: str) -> list[dict]:
    """The running proxies' runtime facts: first the one using ``state``, if it runs."""
    beside = runtime.read(Path(state).absolute().parent / runtime.FILE_NAME)
    others = [f for f in runtime.running() if not beside or f.get("pid") != beside.get("pid")]
    return ([beside] if beside else []) + others


def _port(name: str, number: int, own: dict[int, str]) -> tuple[str, str, str]:
    """``own``: ``{port: what}`` of the running mitmflare processes."""
    from .ports import bind_error

    if bind_error("127.0.0.1", number) is None:
        return "ok", name, f"{number} is free"
    if number in own:
        return "ok", name, f"{number}: {own[number]}"
    import httpx

    try:
        if httpx.get(f"http://127.0.0.1:{number}/health", timeout=2).json().get("version"):
            return "ok", name, f"{number}: a mitmflare proxy is running there"
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    return "warn", name, f"{number} is taken by another program (set another port)"


def _clock(db: str, add) -> None:
    import sqlite3

    if not Path(db).exists():
        return
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        skews = [r[0] for r in conn.execute(
            "select clock_skew_s from accounts where clock_skew_s is not null")]
    except sqlite3.OperationalError:
        skews = []
    finally:
        conn.close()
    if not skews:
        add("ok", "clock", "no upstream Date header recorded yet")
        return
    worst = max(skews, key=abs)
    add("ok" if abs(worst) < SKEW_WARN_S else "warn", "clock",
        f"{worst:+.0f} s against the upstreams" + (
            "" if abs(worst) < SKEW_WARN_S else ": cooldowns end at the wrong time; sync the "
                                                "clock (NTP)"))


def _redis(url: str, add) -> None:
    """Redis of ``flare_redis``: reachable, version (>= 6), round trip, eviction policy (an
    evicting policy could drop cooldowns, leases and token pairs: ``noeviction`` or a
    ``volatile-*`` one keeps keys without a TTL)."""
    import time

    import redis as redis_py

    from ..config.redis_url import redacted

    try:
        with redis_py.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            start = time.perf_counter()
            client.ping()
            rtt_ms = (time.perf_counter() - start) * 1000
            server = client.info("server")
            policy = client.info("memory").get("maxmemory_policy", "?")
    except (redis_py.RedisError, OSError) as exc:
        add("fail", "redis", f"{redacted(url)} does not answer ({exc}); processes serve on "
                             "their own state until it does")
        return
    version = str(server.get("redis_version", "?"))
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    add("ok" if major >= 6 else "warn", "redis",
        f"{redacted(url)}: version {version}, round trip {rtt_ms:.1f} ms" +
        ("" if major >= 6 else "; mitmflare is tested with 6 and later"))
    evicting = policy.startswith("allkeys-")
    add("warn" if evicting else "ok", "redis memory policy",
        f"{policy}" + ("; it may evict mitmflare's keys (cooldowns, refresh leases, token "
                       "pairs): use noeviction" if evicting else ""))
