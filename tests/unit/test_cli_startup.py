"""The ``mitmflare`` command starts fast (``scripts/bench --cli-only``): its modules import the
heavy libraries only in the commands that use them, and typer finds their annotations
evaluated (see :mod:`mitmflare.cli`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer

from conftest import ROOT
from mitmflare.cli import app

HEAVY = ("rich", "ruamel", "pydantic", "yaml", "sqlite3", "dotenv", "httpx", "logging",
         "mitmflare.config.accounts", "mitmflare.config.accounts_edit",
         "mitmflare.providers.oauth", "mitmflare.storage")


def loaded(code: str, cwd) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True,
                         text=True, check=True, env={k: v for k, v in os.environ.items() if k not in (
                             "MITMFLARE_ACCOUNTS", "MITMFLARE_DB", "MITMFLARE_STATE")})
    return json.loads(out.stdout.splitlines()[-1])


def test_importing_the_command_loads_no_heavy_library(tmp_path):
    assert loaded("import mitmflare.cli", tmp_path) == []


def test_accounts_list_loads_only_what_it_shows(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "accounts.yaml").write_text(
        (ROOT / "config" / "accounts.example.yaml").read_text())
    code = ("import sys\nfrom mitmflare.cli import main\nsys.argv = ['mitmflare', 'accounts', "
            "'list']\ntry:\n    main()\nexcept SystemExit:\n    pass")
    assert loaded(code, tmp_path) == ["mitmflare.config.accounts", "pydantic", "rich", "yaml"]


def test_the_command_modules_keep_their_annotations_evaluated():
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    modules = {sys.modules[app.registered_callback.callback.__module__]}
    for command in group.commands.values():
        subcommands = getattr(command, "commands", {}).values() or [command]
        modules |= {sys.modules[c.callback.__module__] for c in subcommands}
    assert len(modules) >= 7
    assert [m.__name__ for m in modules if "\nfrom __future__ import annotations\n"
            in Path(m.__file__ or "").read_text(encoding="utf-8")] == []
