"""Redis URLs of ``flare_redis``: the schemes accepted and the form safe to print. Standard
library only (the ``mitmflare`` command imports it)."""

from __future__ import annotations

from urllib.parse import urlsplit

SCHEMES = ("redis", "rediss", "unix")


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and ``doctor``)."""
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@", 1) if password else url
