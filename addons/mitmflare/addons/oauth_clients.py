"""Addon: subscription accounts only for their own client (``flare_oauth_clients``, opt-in).

Anthropic's terms describe subscription (OAuth) credentials as meant for "ordinary use of
Claude Code and other native Anthropic applications" (``shared/reference/
prompt-cache-limits-clients.md``, "Terms"). With ``flare_oauth_clients=claude-code`` the
subscription accounts serve only requests from Claude Code; other clients are served by the
pool's other accounts (API keys, compatible providers), or, when only subscription accounts
could serve them, refused with a 403 ``permission_error`` in their wire format's shape. The
default, ``any``, lets every client use every account.

Claude Code is told by its headers (``upstream-apis.md`` section 8): ``User-Agent:
claude-cli/<version> (…)`` — also sent by the Agent SDKs, which run Claude Code — or
``x-app: cli`` / ``cli-bg``; either is enough. A client can send these headers itself: this
is a policy aid for honest clients, not a security boundary.
"""

from __future__ import annotations

from mitmproxy import ctx, http

from ..providers.wire import header
from ..proxy_state import FlowContext, ProxyState

MODES = ("any", "claude-code")
CLAUDE_CODE_AGENT = "claude-cli/"
CLAUDE_CODE_APPS = ("cli", "cli-bg")
SKIPPED = "a subscription account, serving only Claude Code (flare_oauth_clients=claude-code)"


def from_claude_code(headers: http.Headers) -> bool:
    """True when the request says it comes from Claude Code (see the module)."""
    agent = header(headers, b"user-agent") or ""
    return agent.startswith(CLAUDE_CODE_AGENT) or header(headers, b"x-app") in CLAUDE_CODE_APPS


def keep_for_claude_code(proxy: ProxyState, fc: FlowContext, headers: http.Headers) -> str | None:
    """Apply ``flare_oauth_clients`` to the request in ``fc``: when it is ``claude-code`` and
    the request is not from Claude Code, leave the subscription accounts out of its choice
    (``fc.excluded``, with the reason in ``fc.skipped``). Returns the 403 message when only
    subscription accounts could serve it, else None."""
    if proxy.oauth_clients != "claude-code" or from_claude_code(headers):
        return None
    if not proxy.leave_out(fc, lambda a: a.config.oauth is not None and a.wire == "anthropic",
                           SKIPPED):
        return None
    agent = (fc.user_agent or "none")[:80]
    return (f"mitmflare: only Claude Code may use this proxy's subscription accounts "
            f"(flare_oauth_clients=claude-code), and no other account serves "
            f"{fc.model or 'this request'}; this client's user-agent: {agent}")


class OAuthClients:
    """The ``flare_oauth_clients`` option (see the module); the router applies it."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy

    def load(self, loader) -> None:
        loader.add_option("flare_oauth_clients", str, "any",
                          "Which clients subscription (OAuth) accounts serve: any, or "
                          "claude-code (by its User-Agent claude-cli/… or x-app: cli; others "
                          "go to API-key accounts or get a 403). A policy aid: clients can "
                          "forge these headers.", choices=MODES)

    def configure(self, updated: set[str]) -> None:
        self.proxy.oauth_clients = ctx.options.flare_oauth_clients
