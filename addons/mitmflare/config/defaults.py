"""Defaults shared by the proxy's options and the ``mitmflare`` command: file paths relative
to the working directory, each overridable (proxy: ``--set flare_*``; command: a flag or a
``MITMFLARE_*`` environment variable)."""

from __future__ import annotations

from pathlib import Path

ACCOUNTS_PATH = "config/accounts.yaml"   # option flare_accounts, env MITMFLARE_ACCOUNTS
DB_PATH = "mitmflare.db"                 # option flare_db, env MITMFLARE_DB
STATE_PATH = "mitmflare-state.db"        # option flare_state, env MITMFLARE_STATE

# The dashboard's metadata (canned queries); the `mitmflare stats` command runs the same SQL.
METADATA_PATH = str(Path(__file__).resolve().parents[3] / "datasette-metadata.yml")

FILE_OPTIONS = {  # option -> (default, help): the proxy's file options, declared by its addons
    "flare_accounts": (ACCOUNTS_PATH, "Path of the accounts YAML file; edits (and edits of the "
                                      ".env file beside it) take effect within 2 s."),
    "flare_state": (STATE_PATH, "Path of the SQLite file with account state and secrets "
                                "(cooldowns, OAuth tokens). Created with mode 0600; never serve "
                                "it."),
    "flare_db": (DB_PATH, "Path of the analytics SQLite database (served by Datasette; holds "
                          "no secrets)."),
}
