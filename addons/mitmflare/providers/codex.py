"""Codex (ChatGPT subscription) accounts: the OAuth client, the headers and the request body
the ChatGPT backend's Responses endpoint wants.

Wire facts, from the ``openai/codex`` CLI's source (``codex-rs/login``: ``server.rs``,
``auth/manager.rs``; ``codex-rs/codex-api``: ``auth.rs``, ``requests/headers.rs``,
``rate_limits.rs``, ``api_bridge.rs``) and two peers that serve Codex accounts
(router-for-me/CLIProxyAPI ``internal/runtime/executor/codex_executor_request.go`` and
``internal/translator/codex/openai/responses``; tombii/better-ccflare
``packages/providers/src/providers/codex``):

* Login: PKCE (S256) at ``https://auth.openai.com/oauth/authorize`` with client id
  ``app_EMoamEEZ73f0CkXaXp7hrann``, redirect ``http://localhost:1455/auth/callback``, scopes
  ``openid profile email offline_access`` (newer CLIs add ``api.connectors.*``), and
  ``id_token_add_organizations=true``, ``codex_cli_simplified_flow=true``,
  ``originator``. The code is exchanged at ``https://auth.openai.com/oauth/token`` as a form
  (``grant_type=authorization_code``, ``code``, ``redirect_uri``, ``client_id``,
  ``code_verifier``); the answer has ``id_token``, ``access_token``, ``refresh_token``
  (``expires_in`` per the peers).
* Refresh: JSON ``{client_id, grant_type: refresh_token, refresh_token}`` to the same URL; the
  answer may carry a new ``access_token``, ``refresh_token`` and ``id_token``. 401, or the
  codes ``refresh_token_expired`` / ``refresh_token_reused`` / ``refresh_token_invalidated``,
  mean log in again.
* The ChatGPT account id is the ``chatgpt_account_id`` of the JWT claim
  ``https://api.openai.com/auth`` (the CLI reads it from the id token; the access token
  carries the same claim).
* Requests: ``POST https://chatgpt.com/backend-api/codex/responses`` with
  ``Authorization: Bearer <access token>``, ``ChatGPT-Account-ID``, ``originator``
  (``codex_cli_rs``), ``session_id`` (the conversation), ``OpenAI-Beta:
  responses=experimental`` (older CLIs and every peer send it), ``accept:
  text/event-stream``. The body is a Responses request that must stream (``stream: true``)
  and store nothing (``store: false``), with ``instructions``; it refuses
  ``max_output_tokens``, ``temperature``, ``top_p``, ``user``, ``truncation`` and
  ``prompt_cache_*`` options (CLIProxyAPI strips them), and takes ``developer`` rather than
  ``system`` messages.

Not confirmed against the live service (no network here): whether ``OpenAI-Beta`` is still
required, and which of the refused options are refused for every model; both are behind this
preset only.
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

from .oauth import OAuthClient, jwt_claims

ISSUER = "https://auth.openai.com"
AUTHORIZE_URL = f"{ISSUER}/oauth/authorize"
TOKEN_URL = f"{ISSUER}/oauth/token"
CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
REDIRECT_URI = "http://localhost:1455/auth/callback"
SCOPES = "openid profile email offline_access"
ORIGINATOR = "codex_cli_rs"
BETA = "responses=experimental"
AUTH_CLAIM = "https://api.openai.com/auth"
CODEX = OAuthClient(TOKEN_URL, CLIENT_ID, None,
                    ("refresh_token_expired", "refresh_token_reused",
                     "refresh_token_invalidated", "invalid_grant"), (401,), form_exchange=True)
"""The Codex CLI's token endpoint (see the module docstring)."""
REFUSED = ("max_output_tokens", "max_completion_tokens", "max_tokens", "temperature", "top_p",
           "user", "truncation", "prompt_cache_options", "prompt_cache_retention")
"""Responses fields the Codex endpoint refuses (CLIProxyAPI strips these)."""

_ACCOUNT_IDS: dict[str, str | None] = {}  # access token -> its ChatGPT account id (cache)


def authorize_url(base: str, client_id: str, redirect_uri: str, challenge: str,
                  state: str) -> str:
    """The URL the user opens to log a ChatGPT account in (the Codex CLI's parameters)."""
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
        "scope": SCOPES, "code_challenge": challenge, "code_challenge_method": "S256",
        "id_token_add_organizations": "true", "codex_cli_simplified_flow": "true",
        "state": state, "originator": ORIGINATOR}, quote_via=urllib.parse.quote)
    return f"{base}?{query}"


def account_id(token: str | None) -> str | None:
    """The ChatGPT account id a JWT (access or id token) names, None when it names none.
    Cached per access token (this runs on every request to a Codex account)."""
    if not token:
        return None
    if token not in _ACCOUNT_IDS:
        if len(_ACCOUNT_IDS) > 1000:
            _ACCOUNT_IDS.clear()
        claim = jwt_claims(token).get(AUTH_CLAIM)
        found = claim.get("chatgpt_account_id") if isinstance(claim, dict) else None
        _ACCOUNT_IDS[token] = found if isinstance(found, str) and found else None
    return _ACCOUNT_IDS[token]


def request_headers(token: str, session: str | None) -> list[tuple[bytes, bytes]]:
    """The header fields a Codex request adds to the account's ``Authorization``: the
    account id (when its token names one), ``originator``, ``OpenAI-Beta``, ``session_id``
    (``session``, or a new one) and ``accept: text/event-stream``."""
    fields = [(b"originator", ORIGINATOR.encode()), (b"openai-beta", BETA.encode()),
              (b"session_id", (session or str(uuid.uuid4())).encode("utf-8", "replace")),
              (b"accept", b"text/event-stream")]
    found = account_id(token)
    if found:
        fields.insert(0, (b"chatgpt-account-id", found.encode()))
    return fields


DROPPED_HEADERS = frozenset({b"accept", b"openai-beta", b"originator", b"session_id",
                             b"chatgpt-account-id", b"openai-organization", b"openai-project"})
"""Client header fields a Codex request replaces or must not carry."""


def request_body(body: dict[str, Any], model: str, session: str | None = None) -> dict[str, Any]:
    """The Codex endpoint's body for a Responses ``body``, asking for ``model``: streamed,
    stored nowhere, with ``instructions`` ("" when none), an ``input`` list (a string becomes
    one user message), ``system`` messages as ``developer`` ones, the refused options
    (:data:`REFUSED`) left out, and ``prompt_cache_key`` from ``session`` when the client
    set none."""
    out = {k: v for k, v in body.items() if k not in REFUSED}
    out.update(model=model, stream=True, store=False)
    if not isinstance(out.get("instructions"), str):
        out["instructions"] = ""
    given = out.get("input")
    if isinstance(given, str):
        out["input"] = [{"type": "message", "role": "user",
                         "content": [{"type": "input_text", "text": given}]}]
    elif isinstance(given, list):
        out["input"] = [{**item, "role": "developer"} if isinstance(item, dict)
                        and item.get("role") == "system" else item for item in given]
    else:
        out["input"] = []
    tier = out.get("service_tier")
    if tier is not None and tier != "priority":
        del out["service_tier"]
    if session and "prompt_cache_key" not in out:
        out["prompt_cache_key"] = session
    return out
