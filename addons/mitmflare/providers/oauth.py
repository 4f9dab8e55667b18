"""Claude subscription (OAuth) accounts: which token pair is current, refreshing it before it
expires, and persisting every rotated pair.

Facts (``shared/reference/upstream-apis.md`` section 3, from Claude Code's source): the token
endpoint takes JSON (not a form); a refresh sends ``grant_type=refresh_token``,
``refresh_token``, ``client_id`` and ``scope``; the answer has ``access_token``,
``refresh_token`` (rotated: the old one dies on use) and ``expires_in`` (s, about 8 h);
``400 {"error": "invalid_grant"}`` means the account must log in again.

Which pair wins: a pair in ``flare_state`` that was derived (by rotation) from the pair now in
the YAML file wins over the YAML pair; a *different* pair pasted into the YAML file wins over
the state. The YAML pair is identified by a fingerprint (a hash, never the token).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import sqlite3
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..config.defaults import STATE_PATH

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


def save_tokens(state_path: str, name: str, tokens: TokenSet) -> None:
    """Write one account's pair to ``flare_state`` in a single transaction (blocking: call
    from a worker thread). Raises sqlite3.Error."""
    row = tokens.row(name)
    conn = sqlite3.connect(state_path, timeout=10)
    try:
        with conn:
            columns = ", ".join(row)
            marks = ", ".join("?" * len(row))
            conn.execute(f"insert or replace into oauth_tokens ({columns}) values ({marks})",
                         list(row.values()))
    finally:
        conn.close()


def read_stored_tokens(state_path: str) -> dict[str, TokenSet]:
    """Every account's pair in ``flare_state`` (blocking: call from a worker thread); {} when
    the file or table is missing or locked."""
    try:
        conn = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return {}
    try:
        conn.row_factory = sqlite3.Row
        return {r["name"]: TokenSet.from_row(dict(r)) for r in
                conn.execute("select * from oauth_tokens")}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


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
    return TokenSet(access, answer.get("refresh_token") or previous_refresh,
                    now + float(expires_in) if isinstance(expires_in, int | float) else None,
                    now, source_fingerprint)


def token_error(response: httpx.Response) -> RefreshError:
    """Turn a failed token endpoint answer into a RefreshError (no token in the message)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, dict):  # Anthropic-style error envelope
        code = code.get("type")
    text = f"token endpoint answered {response.status_code} {code or ''}".strip()
    return RefreshError(text, invalid_grant=code == "invalid_grant")


def _pair(tokens: TokenSet) -> dict[str, Any]:
    return asdict(tokens)


class OAuthManager:
    """Refreshes OAuth accounts' tokens: one refresh in flight per account, the rotated pair
    persisted before it is used, failures backed off (60 s) or marked ``needs_reauth``."""

    FAILURE_BACKOFF_S = 60.0

    def __init__(self, core) -> None:
        self.core = core
        self.token_url = DEFAULT_TOKEN_URL
        self.client_id = DEFAULT_CLIENT_ID
        self.buffer_s = 30 * 60.0
        self.state_path = STATE_PATH
        self.client: httpx.AsyncClient | None = None
        self._inflight: dict[str, asyncio.Task[bool]] = {}

    def needs_refresh(self, account, now: float) -> bool:
        """True for an OAuth account whose access token expires within the buffer."""
        if account.config.oauth is None:
            return False
        tokens = self.core.tokens.get(account.name)
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
            self._inflight[account.name] = task
            task.add_done_callback(lambda _t, n=account.name: self._inflight.pop(n, None))
        return await asyncio.shield(task)

    async def _refresh(self, account) -> bool:
        import asyncio

        import httpx

        from ..routing.classify import FAILOVER, Verdict

        name = account.name
        current = self.core.tokens.get(name)
        if current is None or not current.refresh_token:
            return False
        shared = self.core.shared
        if shared is not None:
            lease = await shared.refresh_lease(name)
            if lease is False and await self._adopt_shared(account, current):
                return True  # another process refreshed it
            if await self._adopt_newer(account, current):  # rotated by another host earlier
                current = self.core.tokens[name]
                if not self.needs_refresh(account, time.time()):
                    if lease:
                        await shared.release(name)
                    return True
        now = time.time()
        try:
            if self.client is None:
                raise RefreshError("proxy is not running")
            response = await self.client.post(self.token_url, json={
                "grant_type": "refresh_token", "refresh_token": current.refresh_token,
                "client_id": self.client_id, "scope": REFRESH_SCOPES},
                timeout=REFRESH_TIMEOUT_S)
            if response.status_code != 200:
                raise token_error(response)
            fresh = token_set_from_answer(response.json(), current.refresh_token,
                                          current.source_fingerprint, time.time())
            # the rotated refresh token is on disk before the new access token is used
            await asyncio.to_thread(save_tokens, self.state_path, name, fresh)
        except (RefreshError, httpx.HTTPError, ValueError, sqlite3.Error) as exc:
            invalid = isinstance(exc, RefreshError) and exc.invalid_grant
            if invalid and await self._rotated_elsewhere(account, current):
                return True
            reason = f"refresh_failed: {exc}" if not isinstance(exc, httpx.HTTPError) else \
                f"refresh_failed: {type(exc).__name__}"
            self.core.event(account, "refresh_failed", reason)
            if invalid:
                self.core.apply(account, Verdict(FAILOVER, "invalid_grant", needs_reauth=True),
                                None, None, now)
            else:
                self.core.apply(account, Verdict(FAILOVER, "refresh_failed",
                                                 cooldown_until=now + self.FAILURE_BACKOFF_S),
                                None, None, now)
            return False
        self.core.tokens[name] = fresh
        if shared is not None:  # before anyone else refreshes: they adopt this pair
            await shared.store_tokens(name, _pair(fresh))
        self.core.event(account, "refreshed", f"expires {iso_utc(fresh.expires_at) or 'unknown'}")
        self.core.mark_accounts_changed()
        return True

    async def _adopt_shared(self, account, current: TokenSet) -> bool:
        """Another process holds the refresh lease: wait (up to the refresh timeout) for the
        pair it stores in Redis and adopt it. False if none came (then refresh here)."""
        import asyncio

        deadline = time.monotonic() + REFRESH_TIMEOUT_S + 5
        while time.monotonic() < deadline:
            pair = await self.core.shared.stored_tokens(account.name)
            if pair and pair.get("refresh_token") != current.refresh_token:
                await self.adopt(account.name, pair)
                return True
            await asyncio.sleep(0.1)
        return False

    async def _adopt_newer(self, account, current: TokenSet) -> bool:
        """Adopt the pair in Redis when it was refreshed after ``current`` (another process
        rotated the refresh token we hold). True when adopted."""
        pair = await self.core.shared.stored_tokens(account.name)
        if not pair or pair.get("refresh_token") in (None, current.refresh_token) or \
                (pair.get("last_refresh_at") or 0) <= (current.last_refresh_at or 0):
            return False
        await self.adopt(account.name, pair)
        return True

    async def adopt(self, name: str, pair: dict[str, Any]) -> None:
        """Take ``pair`` (fields of :class:`TokenSet`), refreshed by another process, and keep
        it in ``flare_state`` too (for a restart without Redis)."""
        import asyncio

        account = self.core.pool.accounts.get(name)
        current = self.core.tokens.get(name)
        if account is None or not pair.get("access_token") or (
                current is not None and current.refresh_token == pair.get("refresh_token")):
            return
        fresh = TokenSet(**{k: pair.get(k) for k in
                            ("access_token", "refresh_token", "expires_at", "last_refresh_at")},
                         source_fingerprint=pair.get("source_fingerprint") or "")
        self.core.tokens[name] = fresh
        self.core.event(account, "tokens_adopted", "pair refreshed by another process")
        self.core.clear_stale_reauth()
        self.core.mark_accounts_changed()
        try:
            await asyncio.to_thread(save_tokens, self.state_path, name, fresh)
        except sqlite3.Error:
            log.exception("OAuth: the adopted pair of %s was not saved to flare_state", name)

    async def _rotated_elsewhere(self, account, used: TokenSet) -> bool:
        """After ``invalid_grant``: adopt the pair in ``flare_state`` if another process (a
        login, another proxy) rotated it since ``used`` was read. True when adopted."""
        import asyncio

        stored = (await asyncio.to_thread(read_stored_tokens, self.state_path)).get(account.name)
        if stored is None or not stored.refresh_token or stored.refresh_token == used.refresh_token:
            return False
        if resolve_tokens(account.config, stored) is not stored:
            return False
        self.core.tokens[account.name] = stored
        self.core.event(account, "tokens_adopted", "pair rotated by another process")
        self.core.clear_stale_reauth()
        return True

    async def refresh_idle(self) -> None:
        """Refresh every idle OAuth account whose token is about to expire."""
        now = time.time()
        for account in list(self.core.pool.accounts.values()):
            if account.state.needs_reauth or account.config.paused or account.state.in_flight:
                continue
            if self.needs_refresh(account, now) and account.name not in self._inflight:
                await self.refresh(account)
