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
