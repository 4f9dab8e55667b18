"""The ``mitmflare`` command: operator jobs on the files the proxy uses.

It finds those files by the proxy's defaults (:mod:`mitmflare.config.defaults`), relative to the
working directory, each overridable by a flag or a ``MITMFLARE_*`` environment variable.
Every subcommand has ``--help`` with an example and exits non-zero with a one-line reason on
error.

May import ``config``, ``storage``, ``providers`` and ``demo`` (lazily, to start fast); never
``addons`` (the proxy's parts run only inside mitmdump).

Starting fast: a command module imports at its top only what the ``mitmflare`` app needs to
exist (typer, the options); anything else (Rich, ruamel.yaml, OAuth, SQLite, the validation
models) is imported inside the commands that use it. The modules that define commands do not
use ``from __future__ import annotations``: typer reads every command's annotations at each
start, and string annotations would be compiled and evaluated anew each time (some 20 ms).
"""

from pathlib import Path
from typing import Annotated

import typer

from . import data, options
from .accounts import accounts_app
from .doctor import doctor
from .run import ENVIRONMENT, run
from .statusline import statusline
from .users import users_app
from .writer import writer

app = typer.Typer(name="mitmflare", no_args_is_help=True, add_completion=False,
                  help="Operate mitmflare: accounts, users, statistics, live traffic, "
                       "database upkeep and checks. See `mitmflare COMMAND --help`.")


@app.callback()
def files(ctx: typer.Context, demo: Annotated[bool, typer.Option(
        "--demo", help="Work on the running demo's files (./scripts/run --demo), e.g. "
                       "`mitmflare --demo users add me`.")] = False) -> None:
    """Without --accounts/--db/--state (or MITMFLARE_ACCOUNTS/_DB/_STATE), the commands use
    the running proxy's files (from its runtime file), else those in this folder."""
    if demo and ctx.invoked_subcommand == "run":
        options.fail("to start the demo, put --demo after run: mitmflare run --demo")
    options.use_demo(demo)
app.add_typer(accounts_app, name="accounts")
app.add_typer(users_app, name="users")
data.register(app)
app.command("doctor")(doctor)
app.command("statusline")(statusline)
app.command("writer")(writer)
app.command("run", epilog=ENVIRONMENT, context_settings={
    "allow_extra_args": True, "ignore_unknown_options": True})(run)


def main() -> None:
    """Console-script entry point. ``MITMFLARE_*`` settings may also come from a ``.env``
    file in the working directory (the environment wins)."""
    dotenv = Path.cwd() / ".env"
    if dotenv.exists():  # python-dotenv loads only when there is one (the command starts faster)
        from dotenv import load_dotenv

        load_dotenv(dotenv, override=False)
    app()
