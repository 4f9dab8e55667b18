"""Addon: keeps OAuth (Claude and ChatGPT/Codex subscription) accounts' tokens fresh. See
:mod:`.oauth`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from mitmproxy import ctx
from mitmproxy.utils import asyncio_utils

from ..config.option_types import whole
from ..providers import codex
from ..providers.oauth import CLAUDE, DEFAULT_CLIENT_ID, DEFAULT_TOKEN_URL, OAuthManager
from ..proxy_state import ProxyState
from .http_clients import close_soon, open_client

log = logging.getLogger("mitmflare")

IDLE_CHECK_S = 30.0


class TokenRefresher:
    """Options ``flare_oauth_*`` and the background refresh of idle accounts."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.manager = OAuthManager(proxy)
        proxy.oauth = self.manager
        self._task: asyncio.Task | None = None

    def load(self, loader) -> None:
        loader.add_option("flare_oauth_token_url", str, DEFAULT_TOKEN_URL,
                          "OAuth token endpoint used to refresh subscription accounts.")
        loader.add_option("flare_oauth_client_id", str, DEFAULT_CLIENT_ID,
                          "OAuth client id sent with token refreshes.")
        loader.add_option("flare_codex_token_url", str, codex.TOKEN_URL,
                          "OAuth token endpoint used to refresh Codex (ChatGPT) accounts.")
        loader.add_option("flare_oauth_refresh_buffer_min", int, 30,
                          "Refresh an OAuth access token this many minutes before it expires.")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        buffer_min = whole("flare_oauth_refresh_buffer_min", o.flare_oauth_refresh_buffer_min, 0)
        self.manager.clients = {
            "anthropic": dataclasses.replace(CLAUDE, token_url=o.flare_oauth_token_url,
                                             client_id=o.flare_oauth_client_id),
            "codex": dataclasses.replace(codex.CODEX, token_url=o.flare_codex_token_url)}
        self.manager.buffer_s = buffer_min * 60.0
        self.proxy.open_store(o.flare_state)

    def running(self) -> None:
        self.manager.client = open_client()
        self._task = asyncio_utils.create_task(self._loop(),
                                               name="mitmflare: token refresh loop", keep_ref=True)

    def done(self) -> None:
        if self._task:
            self._task.cancel()
        client, self.manager.client = self.manager.client, None
        close_soon(client, "OAuth refresh")

    async def _loop(self) -> None:
        while True:
            try:
                await self.manager.refresh_idle()
            except Exception:
                log.exception("OAuth background refresh")
            await asyncio.sleep(IDLE_CHECK_S)
