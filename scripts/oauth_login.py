#!/usr/bin/env python3
"""Log a Claude subscription account in: the same as ``mitmflare accounts login`` (kept for
existing instructions and scripts).

    .venv/bin/python scripts/oauth_login.py NAME [--access-token … --refresh-token …] [options]

See ``mitmflare accounts login --help``.
"""

from __future__ import annotations

import sys

from mitmflare.cli import app

if __name__ == "__main__":
    app(["accounts", "login", *sys.argv[1:]], prog_name="oauth_login.py")
