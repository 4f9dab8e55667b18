"""The HTTP clients the addons open in ``running`` (failover re-sends, OAuth refreshes, window
starts), and their closing in ``done``.

Every client is made with ``trust_env=False`` (no proxy or ``.netrc`` from the environment
reaches an upstream) and closed when mitmproxy stops, so no connection outlives the addon.
"""

from __future__ import annotations

import contextlib

import httpx
from mitmproxy.utils import asyncio_utils


def open_client(timeout: httpx.Timeout | float = 5.0) -> httpx.AsyncClient:
    """A client for one addon: ``timeout`` in s (each request may give its own), redirects
    not followed, nothing taken from the environment."""
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)


def close_soon(client: httpx.AsyncClient | None, what: str) -> None:
    """Close ``client`` (None: nothing to do) from a synchronous ``done`` hook: its
    connections are closed by a task on the event loop; at interpreter exit, when no loop is
    left, there is nothing to close them on and nothing is done."""
    if client is None:
        return
    with contextlib.suppress(RuntimeError):  # no loop left at interpreter exit
        asyncio_utils.create_task(client.aclose(), name=f"mitmflare: close the {what} client",
                                  keep_ref=True)
