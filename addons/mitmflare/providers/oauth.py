"""Subscription (OAuth) accounts, Claude and ChatGPT/Codex: which token pair is current,
refreshing it before it expires, and persisting every rotated pair. What differs between the
two token endpoints is an :class:`OAuthClient` (:data:`CLAUDE` here, Codex's in
:mod:`.codex`); the refresh machinery (single flight, persist before use, back-off,
``needs_reauth``, adoption of a pair rotated elsewhere) is one for both.

Facts (``shared/reference/upstream-apis.md`` section 3, from Claude Code's source): the token
endpoint takes JSON (not a form); a refresh sends ``grant_type=refresh_token``,
``refresh_token``, ``client_id`` and ``scope``; the answer has ``access_token``,
``refresh_token`` (rotated: the old one dies on use) and ``expires_in`` (s, about 8 h);
``400 {"error": "invalid_grant"}`` means the account must log in again.

Every pair is stored in the state database (``flare_state``) through the proxy state's store
(:mod:`mitmflare.storage.state_store`), in a worker thread.

Which pair wins: a pair in ``flare_state`` that was derived (by rotation) from the pair now in
the YAML file wins over the YAML pair; a *different* pair pasted into the YAML file wins over
the state. The YAML pair is identified by a fingerprint (a hash, never the token).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the mitmflare command imports this module at start
    import asyncio

    import httpx

    from ..config.accounts import AccountConfig, OAuthConfig
from ..times import iso_utc, parse_iso

log = logging.getLogger("mitmflare")

DEFAULT_TOKEN_URL = "https://platform.claude.com/v1/oauth/token"
DEFAULT_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
AUTHORIZE_URL = "https://claude.ai/oauth/authorize"
REDIRECT_URI = "https://platform.claude.com/oauth/code/callback"
REFRESH_SCOPES = "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload"
LOGIN_SCOPES = "org:create_api_key " + REFRESH_SCOPES
REFRESH_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class OAuthClient:
    """What one provider's OAuth token endpoint needs. ``token_url``, ``client_id``;
    ``scope``: sent with a refresh (None: not sent); ``dead_codes``: error codes of a failed
    refresh that mean the refresh token is dead (log in again), ``dead_statuses`` the HTTP
    statuses that mean the same whatever the code; ``form_exchange``: the
    authorization-code exchange is a form post (else JSON). Refreshes are JSON for both."""

    token_url: str
    client_id: str
    scope: str | None = None
    dead_codes: tuple[str, ...] = ("invalid_grant",)
    dead_statuses: tuple[int, ...] = ()
    form_exchange: bool = False

    def refresh_body(self, refresh_token: str) -> dict[str, str]:
        """The JSON body of a refresh."""
        body = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": self.client_id}
        if self.scope:
            body["scope"] = self.scope
        return body


CLAUDE = OAuthClient(DEFAULT_TOKEN_URL, DEFAULT_CLIENT_ID, REFRESH_SCOPES)
"""Claude Code's token endpoint (see the module docstring)."""


class RefreshError(Exception):
    """A token request failed. ``invalid_grant`` is True when the refresh token is dead."""

    def __init__(self, message: str, invalid_grant: bool = False) -> None:
        super().__init__(message)
        self.invalid_grant = invalid_grant


@dataclass
class TokenSet:
    """An OAuth token pair. ``expires_at`` / ``last_refresh_at``: epoch s or None.
    ``source_fingerprint``: fingerprint of the YAML pair it descends from ("" if none)."""

    access_token: str | None
    refresh_token: str | None
    expires_at: float | None = None
    last_refresh_at: float | None = None
    source_fingerprint: str = ""

    def row(self, name: str) -> dict[str, Any]:
        """The ``oauth_tokens`` row in ``flare_state``."""
        data = asdict(self)
        data["last_refresh_at"] = iso_utc(self.last_refresh_at)
        return {"name": name, **data, "updated_at": iso_utc(time.time())}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TokenSet:
        last = row.get("last_refresh_at")
        return cls(row.get("access_token"), row.get("refresh_token"), row.get("expires_at"),
                   parse_iso(last) if isinstance(last, str) else last,
                   row.get("source_fingerprint") or "")


def fingerprint(oauth: OAuthConfig) -> str:
    """Identifies the token pair written in the YAML file without storing it."""
    digest = hashlib.sha256(f"{oauth.access_token}|{oauth.refresh_token}".encode())
    return digest.hexdigest()[:24]


def resolve_tokens(config: AccountConfig, current: TokenSet | None) -> TokenSet | None:
    """The pair to use for an OAuth account, given the one in force (or stored) now."""
    oauth = config.oauth
    if oauth is None:
        return None
    if oauth.from_state:
        return current
    fp = fingerprint(oauth)
    if current is not None and current.source_fingerprint == fp:
        return current
    expires = oauth.expires_at.timestamp() if oauth.expires_at else None
    return TokenSet(oauth.access_token, oauth.refresh_token, expires, None, fp)


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) for the authorization-code flow."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorize_url(base: str, client_id: str, redirect_uri: str, challenge: str, state: str) -> str:
    """The URL the user opens to approve access (Claude Code's ``buildAuthUrl`` parameters)."""
    query = urllib.parse.urlencode({
        "code": "true", "client_id": client_id, "response_type": "code",
        "redirect_uri": redirect_uri, "scope": LOGIN_SCOPES, "code_challenge": challenge,
        "code_challenge_method": "S256", "state": state})
    return f"{base}?{query}"


def token_set_from_answer(answer: dict[str, Any], previous_refresh: str | None,
                          source_fingerprint: str, now: float) -> TokenSet:
    """A TokenSet from a token endpoint answer; keeps the old refresh token if none came."""
    access = answer.get("access_token")
    if not isinstance(access, str) or not access:
        raise RefreshError("token endpoint answered without an access_token")
    expires_in = answer.get("expires_in")
    expires = now + float(expires_in) if isinstance(expires_in, int | float) and \
        not isinstance(expires_in, bool) else jwt_expiry(access)
    return TokenSet(access, answer.get("refresh_token") or previous_refresh, expires,
                    now, source_fingerprint)


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (its payload, not verified: only read), {} when ``token`` is not
    one. Used for what the token itself says: its expiry, ChatGPT's account id."""
    import json

    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch s) of a JWT access token, None when it has none."""
    exp = jwt_claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def token_error(response: httpx.Response, client: OAuthClient = CLAUDE) -> RefreshError:
    """Turn a failed token endpoint answer into a RefreshError (no token in the message):
    ``invalid_grant`` when its error code is one of ``client.dead_codes`` (read from
    ``error``, ``error.type`` or ``error.code``)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, dict):  # an error envelope: Anthropic's `type`, OpenAI's `code`
        code = code.get("code") if code.get("code") in client.dead_codes else code.get("type")
    if not isinstance(code, str):
        code = body.get("code") if isinstance(body, dict) else None
    text = f"token endpoint answered {response.status_code} {code or ''}".strip()
    return RefreshError(text, invalid_grant=code in client.dead_codes
                        or response.status_code in client.dead_statuses)


def _pair(tokens: TokenSet) -> dict[str, Any]:
    return asdict(tokens)


class OAuthManager:
    """Refreshes OAuth accounts' tokens: one refresh in flight per account, the rotated pair
    persisted before it is used, failures backed off (60 s) or marked ``needs_reauth``.
    ``clients``: the token endpoint of each OAuth provider (``anthropic``, ``codex``);
    ``proxy.store`` keeps the pairs (:class:`~mitmflare.storage.state_store.StateStore`)."""

    FAILURE_BACKOFF_S = 60.0

    def __init__(self, proxy, clients: dict[str, OAuthClient] | None = None) -> None:
        self.proxy = proxy
        self.clients: dict[str, OAuthClient] = clients or {"anthropic": CLAUDE}
        self.buffer_s = 30 * 60.0
        self.client: httpx.AsyncClient | None = None
        self._inflight: dict[str, asyncio.Task[bool]] = {}

    def needs_refresh(self, account, now: float) -> bool:
        """True for an OAuth account whose access token expires within the buffer."""
        if account.config.oauth is None:
            return False
        tokens = self.proxy.tokens.get(account.name)
        if tokens is None or not tokens.refresh_token:
            return False
        if not tokens.access_token:
            return True
        return tokens.expires_at is not None and tokens.expires_at - now < self.buffer_s

    async def refresh(self, account) -> bool:
        """Refresh ``account``'s pair now (joining a refresh already in flight). True when a
        fresh access token is in force afterwards."""
        import asyncio

        from mitmproxy.utils import asyncio_utils

        task = self._inflight.get(account.name)
        if task is None:
            task = asyncio_utils.create_task(self._refresh(account),
                                             name="mitmflare: OAuth refresh", keep_ref=True)
            name = account.name
            self._inflight[name] = task
            task.add_done_callback(lambda _t: self._inflight.pop(name, None))
        return await asyncio.shield(task)

    async def _refresh(self, account) -> bool:
        import asyncio

        import httpx

        from ..routing.classify import FAILOVER, Verdict

        name = account.name
        current = self.proxy.tokens.get(name)
        if current is None or not current.refresh_token:
            return False
        shared = self.proxy.shared
        if shared is not None:
            lease = await shared.refresh_lease(name)
            if lease is False and await self._adopt_shared(account, current):
                return True  # another process refreshed it
            if await self._adopt_newer(account, current):  # rotated by another host earlier
                current = self.proxy.tokens[name]
                if not self.needs_refresh(account, time.time()):
                    if lease:
                        await shared.release(name)
                    return True
        now = time.time()
        try:
            endpoint = self.clients.get(account.provider)
            if self.client is None or endpoint is None:
                raise RefreshError("proxy is not running" if endpoint else
                                   f"no token endpoint for provider {account.provider}")
            response = await self.client.post(endpoint.token_url, timeout=REFRESH_TIMEOUT_S,
                                              json=endpoint.refresh_body(current.refresh_token))
            if response.status_code != 200:
                raise token_error(response, endpoint)
            fresh = token_set_from_answer(response.json(), current.refresh_token,
                                          current.source_fingerprint, time.time())
            # the rotated refresh token is on disk before the new access token is used
            await asyncio.to_thread(self.proxy.store.save_tokens, name, fresh)
        except (RefreshError, httpx.HTTPError, ValueError, OSError) as exc:  # OSError: stored
            invalid = isinstance(exc, RefreshError) and exc.invalid_grant
            if invalid and await self._rotated_elsewhere(account, current):
                return True
            reason = f"refresh_failed: {exc}" if not isinstance(exc, httpx.HTTPError) else \
                f"refresh_failed: {type(exc).__name__}"
            self.proxy.event(account, "refresh_failed", reason)
            if invalid:
                self.proxy.apply(account, Verdict(FAILOVER, "invalid_grant", needs_reauth=True),
                                None, None, now)
            else:
                self.proxy.apply(account, Verdict(FAILOVER, "refresh_failed",
                                                 cooldown_until=now + self.FAILURE_BACKOFF_S),
                                None, None, now)
            return False
        self.proxy.tokens[name] = fresh
        if shared is not None:  # before anyone else refreshes: they adopt this pair
            await shared.store_tokens(name, _pair(fresh))
        self.proxy.event(account, "refreshed", f"expires {iso_utc(fresh.expires_at) or 'unknown'}")
        self.proxy.mark_accounts_changed()
        return True

    async def _adopt_shared(self, account, current: TokenSet) -> bool:
        """Another process holds the refresh lease: wait (up to the refresh timeout) for the
        pair it stores in Redis and adopt it. False if none came (then refresh here)."""
        import asyncio

        deadline = time.monotonic() + REFRESH_TIMEOUT_S + 5
        while time.monotonic() < deadline:
            pair = await self.proxy.shared.stored_tokens(account.name)
            if pair and pair.get("refresh_token") != current.refresh_token:
                await self.adopt(account.name, pair)
                return True
            await asyncio.sleep(0.1)
        return False

    async def _adopt_newer(self, account, current: TokenSet) -> bool:
        """Adopt the pair in Redis when it was refreshed after ``current`` (another process
        rotated the refresh token we hold). True when adopted."""
        pair = await self.proxy.shared.stored_tokens(account.name)
        if not pair or pair.get("refresh_token") in (None, current.refresh_token) or \
                (pair.get("last_refresh_at") or 0) <= (current.last_refresh_at or 0):
            return False
        await self.adopt(account.name, pair)
        return True

    async def adopt(self, name: str, pair: dict[str, Any]) -> None:
        """Take ``pair`` (fields of :class:`TokenSet`), refreshed by another process, and keep
        it in ``flare_state`` too (for a restart without Redis)."""
        import asyncio

        account = self.proxy.pool.accounts.get(name)
        current = self.proxy.tokens.get(name)
        if account is None or not pair.get("access_token") or (
                current is not None and current.refresh_token == pair.get("refresh_token")):
            return
        fresh = TokenSet(**{k: pair.get(k) for k in
                            ("access_token", "refresh_token", "expires_at", "last_refresh_at")},
                         source_fingerprint=pair.get("source_fingerprint") or "")
        self.proxy.tokens[name] = fresh
        self.proxy.event(account, "tokens_adopted", "pair refreshed by another process")
        self.proxy.clear_stale_reauth()
        self.proxy.mark_accounts_changed()
        try:
            await asyncio.to_thread(self.proxy.store.save_tokens, name, fresh)
        except OSError:  # the store's StoreUnavailable
            log.exception("OAuth: the adopted pair of %s was not saved to flare_state", name)

    async def _rotated_elsewhere(self, account, used: TokenSet) -> bool:
        """After ``invalid_grant``: adopt the pair in ``flare_state`` if another process (a
        login, another proxy) rotated it since ``used`` was read. True when adopted."""
        import asyncio

        try:
            stored = (await asyncio.to_thread(self.proxy.store.tokens)).get(account.name)
        except OSError:  # the store's StoreUnavailable: missing or locked now
            return False
        if stored is None or not stored.refresh_token or stored.refresh_token == used.refresh_token:
            return False
        if resolve_tokens(account.config, stored) is not stored:
            return False
        self.proxy.tokens[account.name] = stored
        self.proxy.event(account, "tokens_adopted", "pair rotated by another process")
        self.proxy.clear_stale_reauth()
        return True

    async def refresh_idle(self) -> None:
        """Refresh every idle OAuth account whose token is about to expire."""
        now = time.time()
        for account in list(self.proxy.pool.accounts.values()):
            if account.state.needs_reauth or account.paused or account.state.in_flight:
                continue
            if self.needs_refresh(account, now) and account.name not in self._inflight:
                await self.refresh(account)
