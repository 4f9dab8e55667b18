"""Wire formats and what differs between upstream providers: detection, credentials, error
bodies (this module); presets, conversions between the Anthropic and OpenAI formats, reading
untrusted JSON and SSE, usage parsing, request inspection and the Claude OAuth token endpoint
(its sub-modules).

May import ``config`` (defaults and account types), ``routing.classify`` (the OAuth manager
reports a failed refresh as a verdict) and the top-level helpers (``times``, ``money``,
``runtime``); never ``addons``, ``storage`` or ``proxy_state``. Checked by
``tests/unit/test_imports.py``.

Facts from ``shared/reference/upstream-apis.md`` sections 2, 3, 5 and 8 (Anthropic and
OpenAI API documentation, the official SDKs and Claude Code).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mitmproxy is imported where used: `mitmflare` imports .presets at start
    from mitmproxy import http

ANTHROPIC_TARGET = "anthropic.mitmflare.invalid"  # the documented listeners' reverse targets
OPENAI_TARGET = "openai.mitmflare.invalid"        # (see .listener: never resolvable)
KNOWN_HOSTS = {ANTHROPIC_TARGET: "anthropic", OPENAI_TARGET: "openai",
               "api.anthropic.com": "anthropic", "api.openai.com": "openai"}
"""Reverse-target host -> the client format its listener takes."""
OPENAI_PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings",
                "/v1/models")
OAUTH_BETA = "oauth-2025-04-20"  # required in anthropic-beta with an OAuth bearer token
ANTHROPIC_VERSION = b"2023-06-01"  # the API version Claude Code and the SDKs send
# Headers that carry a client's credential for some API (Anthropic, OpenAI, Azure OpenAI, Google,
# HTTP proxies) or session (cookies): all are removed before a request can go upstream, under
# any spelling a server may read as one of them (case, ``_`` for ``-``, stray blanks: see
# :func:`canonical_name`).
CLIENT_CREDENTIAL_HEADERS = ("x-api-key", "authorization", "proxy-authorization", "api-key",
                             "x-goog-api-key", "cookie")
REDACTED_HEADERS = ("x-api-key", "authorization")  # the ones an account's credential uses


ROUTE_PREFIXES = (("/v1/anthropic", "anthropic"), ("/v1/openai", "openai"),
                  ("/v1/mitmflare", None))


def detect_route(flow: http.HTTPFlow) -> tuple[str | None, str, bool]:
    """(client format, path without a route prefix, compatibility route?) of a request.

    ``/v1/anthropic/…`` and ``/v1/openai/…`` name the format and lose their prefix, once.
    ``/v1/mitmflare/…`` is the compatibility route: the prefix goes, the format follows the
    path, and the account is chosen by the model's provider prefix (``openai/gpt-4.1``).
    Other paths: :func:`detect_wire_format`."""
    path = flow.request.path
    for prefix, client in ROUTE_PREFIXES:
        if path.startswith(prefix + "/"):
            rest = path[len(prefix):]
            return client or format_of_path(rest), rest, client is None
    return detect_wire_format(flow), path, False


def format_of_path(path: str) -> str | None:
    """``anthropic`` for ``/v1/messages…``, ``openai`` for the OpenAI endpoints, else None."""
    path = path.split("?", 1)[0]
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith(OPENAI_PATHS):
        return "openai"
    return None


def detect_wire_format(flow: http.HTTPFlow) -> str | None:
    """Wire format of a client request: the listener's reverse target when it is a known
    host, else the path (``/v1/messages…`` → anthropic, OpenAI endpoints → openai). None if
    unknown."""
    from mitmproxy.proxy.mode_specs import ReverseMode

    mode = flow.client_conn.proxy_mode
    if isinstance(mode, ReverseMode):
        wire_format = KNOWN_HOSTS.get(mode.address[0])
        if wire_format:
            return wire_format
    return format_of_path(flow.request.path)


def upstream_headers(headers: http.Headers, host: str, wire: str, kind: str, auth: str,
                     secret: str, converted: bool = False) -> None:
    """Make ``headers`` what one attempt sends upstream, in one pass over the raw header
    fields (this runs on every request): every client credential removed and the account's
    set, ``Host`` (if present) set to ``host`` (``host[:port]``, as mitmproxy's ``host``
    setter writes it), ``accept-encoding: identity`` (usage is parsed from the raw bytes).

    ``wire``: the upstream's format; ``kind``: ``api_key`` or ``oauth``; ``auth``:
    ``x-api-key`` or ``bearer`` (how an API key is sent). Anthropic OAuth:
    ``Authorization: Bearer`` plus ``oauth-2025-04-20`` in ``anthropic-beta``, keeping the
    client's other betas; an Anthropic-format API key drops that beta. ``converted``: the
    request was converted to the other format, so the client's ``anthropic-*`` headers go;
    converted for an Anthropic upstream it gets ``anthropic-version: 2023-06-01`` (and the
    OAuth beta for an OAuth account).
    """
    kept: list[tuple[bytes, bytes]] = []
    betas: list[str] = []
    for field in headers.fields:
        name = field[0].translate(_FOLD, b" \t")  # canonical_name, inlined (hot path)
        if name in _REPLACED_NAMES:
            if name == b"host":
                kept.append((field[0], host.encode("utf-8", "surrogateescape")))
            continue
        if name == b"anthropic-beta" and (converted or wire == "anthropic"):
            betas += [b.strip() for b in field[1].decode("latin-1").split(",")]
        elif not (converted and name == b"anthropic-version"):
            kept.append(field)
    kept.append((b"accept-encoding", b"identity"))
    if kind == "oauth" or auth == "bearer":
        kept.append((b"authorization", b"Bearer " + secret.encode()))
    else:
        kept.append((b"x-api-key", secret.encode()))
    if converted and wire == "anthropic":
        kept.append((b"anthropic-version", ANTHROPIC_VERSION))
        betas = []
    if wire == "anthropic":
        betas = [b for b in betas if b and b != OAUTH_BETA]
        if kind == "oauth":
            betas.append(OAUTH_BETA)
        if betas:
            kept.append((b"anthropic-beta", ",".join(betas).encode("latin-1")))
    headers.fields = tuple(kept)


def retarget(request: http.Request, scheme: str, host: str, port: int) -> str:
    """Point ``request`` at ``scheme://host:port`` (and its HTTP/2 authority), as mitmproxy's
    ``host``/``port`` setters do, in one step; returns the ``Host`` header value for
    :func:`upstream_headers`."""
    from mitmproxy.net.http.url import hostport

    data = request.data
    data.scheme, data.host, data.port = scheme.encode(), host, port
    value = hostport(scheme, host, port)
    if data.authority:
        request.authority = value
    return value


_CREDENTIAL_NAMES = frozenset(name.encode() for name in CLIENT_CREDENTIAL_HEADERS)
_FOLD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_", b"abcdefghijklmnopqrstuvwxyz-")


def canonical_name(name: bytes) -> bytes:
    """A header name as a lenient server may read it: lower case, ``_`` as ``-``, without
    spaces or tabs (``X_Api_Key `` → ``x-api-key``). One C call (``bytes.translate``)."""
    return name.translate(_FOLD, b" \t")

_REDACTED_NAMES = frozenset(name.encode() for name in REDACTED_HEADERS)
_REPLACED_NAMES = _CREDENTIAL_NAMES | {b"host", b"accept-encoding"}


def strip_client_credentials(headers: http.Headers) -> None:
    """Remove every credential header (:data:`CLIENT_CREDENTIAL_HEADERS`, by
    :func:`canonical_name`), in one pass over the raw header fields (this runs at least twice
    per request)."""
    fields = headers.fields
    kept = tuple(f for f in fields if f[0].translate(_FOLD, b" \t") not in _CREDENTIAL_NAMES)
    if len(kept) != len(fields):
        headers.fields = kept


def redact_credentials(headers: http.Headers, account: str) -> None:
    """Replace credential header values with ``<account>`` so flows keep no secret (one
    pass over the raw header fields)."""
    fields = headers.fields
    names = [f[0].lower() for f in fields]
    if _REDACTED_NAMES.isdisjoint(names):
        return
    bearer, plain = f"Bearer <{account}>".encode(), f"<{account}>".encode()
    headers.fields = tuple(
        (f[0], bearer if name == b"authorization" else plain)
        if name in _REDACTED_NAMES else f for f, name in zip(fields, names, strict=True))


# Synthesized-error kinds → (Anthropic error.type, OpenAI error.type, OpenAI error.code)
_ERROR_TYPES = {
    "rate_limit": ("rate_limit_error", "rate_limit_error", "rate_limit_exceeded"),
    "unavailable": ("api_error", "server_error", "no_account_available"),
    "overloaded": ("overloaded_error", "server_error", "server_is_overloaded"),
    "invalid_request": ("invalid_request_error", "invalid_request_error", None),
    "not_found": ("not_found_error", "invalid_request_error", "not_found"),
    "internal": ("api_error", "server_error", "internal_error"),
    "authentication": ("authentication_error", "invalid_request_error", "invalid_api_key"),
    "permission": ("permission_error", "invalid_request_error", "permission_denied"),
}


def made_here(response: http.Response) -> bool:
    """True for an answer mitmflare made itself (already in the client's format), False for
    an upstream's answer (also one marked ``x-mitmflare-error: request_fault``)."""
    return response.headers.get("x-mitmflare-error", "request_fault") != "request_fault"


def error_response(wire_format: str | None, status: int, kind: str, message: str,
                   headers: dict[str, str] | None = None) -> http.Response:
    """A response in the upstream's own error shape, marked ``x-should-retry: false`` unless
    ``headers`` says otherwise. Anthropic: ``{"type":"error","error":{"type","message"}}``;
    OpenAI: ``{"error":{"message","type","param","code"}}``."""
    from mitmproxy import http

    a_type, o_type, o_code = _ERROR_TYPES[kind]
    body: dict[str, Any]
    if wire_format == "openai":
        body = {"error": {"message": message, "type": o_type, "param": None, "code": o_code}}
    else:
        body = {"type": "error", "error": {"type": a_type, "message": message}}
    out = {"content-type": "application/json", "x-should-retry": "false",
           "x-mitmflare-error": kind}
    out.update(headers or {})
    return http.Response.make(status, json.dumps(body), out)
