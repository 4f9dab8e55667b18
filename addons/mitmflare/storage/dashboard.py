"""The Datasette metadata the scripts serve: ``datasette-metadata.yml`` as tracked, plus
password protection when the operator asks for it.

``python -m mitmflare.storage.dashboard OUT [--require-auth]`` writes the metadata to use to ``OUT``.
When the environment variable ``MITMFLARE_DASHBOARD_HASH`` holds a password hash (made with
``datasette hash-password``), the written metadata lets only the ``root`` user in
(``datasette-auth-passwords``, log in at ``/-/login``); the tracked file is never edited.
``--require-auth`` (used for a dashboard bound beyond loopback) exits with status 2 and a
one-line reason when no hash is set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

METADATA = Path(__file__).resolve().parents[3] / "datasette-metadata.yml"
HASH_ENV = "MITMFLARE_DASHBOARD_HASH"


def metadata(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The metadata dict: the tracked file, with ``root``-only access and the
    ``datasette-auth-passwords`` plugin added when ``MITMFLARE_DASHBOARD_HASH`` is set."""
    environ = os.environ if environ is None else environ
    data = yaml.safe_load(METADATA.read_text(encoding="utf-8"))
    if environ.get(HASH_ENV):
        data["allow"] = {"id": "root"}
        data.setdefault("plugins", {})["datasette-auth-passwords"] = {
            "root_password_hash": {"$env": HASH_ENV}}
    return data


def main(argv: list[str]) -> int:
    out, *flags = argv
    if "--require-auth" in flags and not os.environ.get(HASH_ENV):
        print(f"refusing to serve the dashboard beyond 127.0.0.1 without a password: set "
              f"{HASH_ENV} (from `.venv/bin/datasette hash-password`)", file=sys.stderr)
        return 2
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(yaml.safe_dump(metadata(), sort_keys=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
