"""Options shared by the ``mitmflare`` subcommands: the proxy's files, ``--json``, and errors.

The files (accounts, analytics and state databases) are, in this order: the flag, the
``MITMFLARE_*`` variable, else :func:`located`'s (a running proxy's, found through its
runtime file, or the proxy's defaults relative to the working directory).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from .. import runtime
from ..config.defaults import ACCOUNTS_PATH, DB_PATH, METADATA_PATH, STATE_PATH

if TYPE_CHECKING:  # imported by the commands that open a database (the command starts faster)
    import sqlite3

DEMO_DIR = ".demo"  # where `mitmflare run --demo` keeps its files, relative to its folder
FOUND = "the running proxy's, else "


@dataclass
class Located:
    """The files the command works on when none is given, and where they come from
    (``proxy``: the facts of the running proxy found, {} when none was)."""

    accounts: str
    db: str
    state: str
    proxy: dict
    found: bool  # a running proxy, or an accounts file where the defaults point


_choice: dict[str, object] = {"demo": False}  # set by the app's --demo before any default
_located: dict[bool, Located] = {}
defaulted: set[str] = set()  # the file options that took their default in this command


def use_demo(demo: bool) -> None:
    """``mitmflare --demo …``: the defaults are the running demo's files."""
    _choice["demo"] = demo
    _located.clear()
    defaulted.clear()


def located() -> Located:
    """The files of the proxy this command is about (computed once per command):

    with ``--demo``: the running demo's (newest), else ``.demo/`` here, else exit 1;
    otherwise: the proxy whose runtime file is here (``mitmflare-runtime.json``), else the
    defaults when ``config/accounts.yaml`` is here, else the one running proxy found in the
    per-user folder (a demo only when no other runs; exit 1 naming them when several run),
    else the defaults (``found`` False)."""
    demo = bool(_choice["demo"])
    if demo not in _located:
        _located[demo] = _locate(demo)
    return _located[demo]


def _from(facts: dict) -> Located:
    return Located(facts["accounts"], facts["db"], facts["state"], facts, True)


def _locate(demo: bool) -> Located:
    if demo:
        here = runtime.read(Path(DEMO_DIR) / runtime.FILE_NAME)
        demos = ([here] if here else []) + [f for f in runtime.running() if f.get("demo")]
        if demos:
            return _from(demos[0])
        if Path(DEMO_DIR, "accounts.yaml").exists():
            return Located(f"{DEMO_DIR}/accounts.yaml", f"{DEMO_DIR}/mitmflare.db",
                           f"{DEMO_DIR}/mitmflare-state.db", {}, True)
        fail("no running demo found (start one with ./scripts/run --demo), and no .demo/ here")
    here = runtime.read(Path(runtime.FILE_NAME))
    if here is not None:
        return _from(here)
    if Path(ACCOUNTS_PATH).exists():
        return Located(ACCOUNTS_PATH, DB_PATH, STATE_PATH, {}, True)
    proxies = runtime.running()
    chosen = [f for f in proxies if not f.get("demo")] or proxies
    if len(chosen) > 1:
        fail("several mitmflare proxies run (" + "; ".join(
            f"pid {f.get('pid')}: {f.get('accounts')}" for f in chosen) + "): pass --accounts, "
            "--db and --state (or MITMFLARE_ACCOUNTS/_DB/_STATE), --demo, or run in the folder "
            "of one")
    if chosen:
        facts = chosen[0]
        typer.echo(f"(the running {'demo' if facts.get('demo') else 'proxy'}'s files, pid "
                   f"{facts.get('pid')}: {facts.get('accounts')})", err=True)
        return _from(facts)
    return Located(ACCOUNTS_PATH, DB_PATH, STATE_PATH, {}, False)


def _default(name: str):
    def default() -> str:
        defaulted.add(name)
        return getattr(located(), name)
    default.__name__ = f"{name}_default"
    return default


Accounts = Annotated[str, typer.Option(
    "--accounts", envvar="MITMFLARE_ACCOUNTS", show_default=FOUND + ACCOUNTS_PATH,
    help="Accounts file (the proxy's flare_accounts).")]
Db = Annotated[str, typer.Option("--db", envvar="MITMFLARE_DB", show_default=FOUND + DB_PATH,
                                 help="Analytics database (the proxy's flare_db).")]
State = Annotated[str, typer.Option(
    "--state", envvar="MITMFLARE_STATE", show_default=FOUND + STATE_PATH,
    help="State database (the proxy's flare_state).")]
Redis = Annotated[str, typer.Option(
    "--redis", envvar="MITMFLARE_REDIS_URL", show_default=False,
    help="Redis the proxies share (flare_redis): the change also reaches every process on "
         "every host through it.")]
Json = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to the question asked "
                                                       "before a destructive step.")]

# Defaults computed when a command runs (click calls them), not at import
ACCOUNTS_DEFAULT, DB_DEFAULT, STATE_DEFAULT = (_default("accounts"), _default("db"),
                                               _default("state"))


def creatable_state(state: str) -> None:
    """Exit 1 before a command creates a state database nobody would use: when ``state``
    does not exist, was not given (flag or variable), and neither a running proxy nor an
    accounts file was found."""
    if "state" in defaulted and not Path(state).exists() and not located().found:
        fail(f"no running mitmflare found and no {ACCOUNTS_PATH} here, so {state} would be a "
             f"new database the proxy never reads: run this where the proxy runs, or pass "
             f"--state FILE (its flare_state) or --demo")


@contextlib.contextmanager
def no_pydantic_plugins() -> Iterator[None]:
    """Import :mod:`mitmflare.config.accounts` (its validation models) in this block: with
    Pydantic's plugins off, as typer builds its own validators, so that Pydantic does not look
    through every installed package's metadata for plugins (10-20 ms at each start of a
    command; a command has no use for them). The proxy imports the models as usual."""
    before = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYDANTIC_DISABLE_PLUGINS"]
        else:
            os.environ["PYDANTIC_DISABLE_PLUGINS"] = before


def fail(reason: object) -> NoReturn:
    """Exit 1 with a one-line reason on stderr."""
    typer.echo(f"error: {reason}", err=True)
    raise typer.Exit(1)


def interactive() -> bool:
    """True when a person can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


def read_db(path: str) -> sqlite3.Connection:
    """A read-only connection (rows as dicts-by-name) to an existing database, else exit 1."""
    import sqlite3

    if not Path(path).exists():
        fail(f"{path} does not exist (the proxy creates it; set --db or MITMFLARE_DB)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def canned_sql(name: str) -> str:
    """The SQL of the dashboard's canned query ``name`` (one source for both)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 8x faster on this file
    meta = yaml.load(Path(METADATA_PATH).read_text(encoding="utf-8"), Loader=loader)
    return meta["databases"]["mitmflare"]["queries"][name]["sql"]
