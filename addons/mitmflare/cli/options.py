"""Options shared by the ``mitmflare`` subcommands: the proxy's files (same defaults as its
options, each overridable by a flag or a ``MITMFLARE_*`` variable), ``--json``, and errors."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml

from ..defaults import ACCOUNTS_PATH, DB_PATH, METADATA_PATH, STATE_PATH

Accounts = Annotated[str, typer.Option("--accounts", envvar="MITMFLARE_ACCOUNTS",
                                       help="Accounts file (the proxy's flare_accounts).")]
Db = Annotated[str, typer.Option("--db", envvar="MITMFLARE_DB",
                                 help="Analytics database (the proxy's flare_db).")]
State = Annotated[str, typer.Option("--state", envvar="MITMFLARE_STATE",
                                    help="State database (the proxy's flare_state).")]
Json = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to the question asked "
                                                       "before a destructive step.")]

ACCOUNTS_DEFAULT, DB_DEFAULT, STATE_DEFAULT = ACCOUNTS_PATH, DB_PATH, STATE_PATH


def fail(reason: object) -> NoReturn:
    """Exit 1 with a one-line reason on stderr."""
    typer.echo(f"error: {reason}", err=True)
    raise typer.Exit(1)


def interactive() -> bool:
    """True when a person can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


def read_db(path: str) -> sqlite3.Connection:
    """A read-only connection (rows as dicts-by-name) to an existing database, else exit 1."""
    if not Path(path).exists():
        fail(f"{path} does not exist (the proxy creates it; set --db or MITMFLARE_DB)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def canned_sql(name: str) -> str:
    """The SQL of the dashboard's canned query ``name`` (one source for both)."""
    meta = yaml.safe_load(Path(METADATA_PATH).read_text(encoding="utf-8"))
    return meta["databases"]["mitmflare"]["queries"][name]["sql"]
