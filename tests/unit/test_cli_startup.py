"""The ``mitmflare`` command starts fast (``scripts/bench --cli-only``): its modules import the
heavy libraries only in the commands that use them, and typer finds their annotations
evaluated (see :mod:`mitmflare.cli`)."""

from __future__ import annotations

import ast
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
ACCOUNTS_LIST = ("import sys\nfrom mitmflare.cli import main\nsys.argv = ['mitmflare', 'accounts', "
                 "'list']\ntry:\n    main()\nexcept SystemExit:\n    pass\n")


def python(code: str, cwd) -> str:
    """The output of ``code`` run by a fresh interpreter in ``cwd`` (no MITMFLARE_ file
    settings)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MITMFLARE_ACCOUNTS", "MITMFLARE_DB", "MITMFLARE_STATE")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, check=True, env=env).stdout


def loaded(code: str, cwd) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter has imported after running ``code``."""
    out = python(f"{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))", cwd)
    return ast.literal_eval(out.splitlines()[-1])


def test_importing_the_command_loads_no_heavy_library(tmp_path):
    assert loaded("import sys\nimport mitmflare.cli", tmp_path) == []


def test_accounts_list_loads_only_what_it_shows(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "accounts.yaml").write_text(
        (ROOT / "config" / "accounts.example.yaml").read_text())
    assert loaded(ACCOUNTS_LIST, tmp_path) == ["mitmflare.config.accounts", "pydantic", "rich", "yaml"]


def test_accounts_list_has_pydantic_look_for_no_plugins(tmp_path, monkeypatch):
    """Pydantic's plugins are looked for in every installed package's metadata (10-20 ms);
    the command builds the validation models without them (and leaves the setting as it
    was)."""
    from mitmflare.cli.options import no_pydantic_plugins

    monkeypatch.delenv("PYDANTIC_DISABLE_PLUGINS", raising=False)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "accounts.yaml").write_text("accounts: []\n")
    python(ACCOUNTS_LIST + "import os\nfrom pydantic.plugin import _loader\nassert _loader."
           "_plugins is None and 'PYDANTIC_DISABLE_PLUGINS' not in os.environ", tmp_path)
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "logfire")
    with no_pydantic_plugins():
        assert os.environ["PYDANTIC_DISABLE_PLUGINS"] == "1"
    assert os.environ["PYDANTIC_DISABLE_PLUGINS"] == "logfire"


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
