"""Model fallbacks (the accounts file's optional ``fallbacks:``): when no account can serve
the model a client asked for now (all cooling down for it, or none offers it), the first
fallback model that some account can serve is asked instead.

Runs on the event loop, no I/O. The response says so in ``x-mitmflare-model-fallback``; the
row keeps the client's ``model`` and the served ``upstream_model``.
"""

from __future__ import annotations

from ..proxy_state import FlowContext, ProxyState
from ..routing.pool import Account

HEADER = "x-mitmflare-model-fallback"


def fall_back(proxy: ProxyState, fc: FlowContext) -> Account | None:
    """The account for the next fallback of ``fc``'s model that one can serve now, with
    ``fc.model`` set to that model (``fc.asked_model`` keeps the client's); None, with ``fc``
    unchanged, when no fallback is configured or none can be served (see
    :func:`fallback_choice`)."""
    found = fallback_choice(proxy, fc)
    if found is None:
        return None
    model, account = found
    fc.notes.append(f"{fc.model} could not be served now: fell back to {model}")
    fc.asked_model = fc.asked_model or fc.model
    fc.model, fc.excluded = model, _still_excluded(fc)
    return account


def fallback_choice(proxy: ProxyState, fc: FlowContext) -> tuple[str, Account] | None:
    """(fallback model, the account the strategy picks for it) for ``fc`` now, or None; ``fc``
    is left as it was.

    Fallbacks are tried in their order, each once per request, starting after the one being
    served. Accounts this request failed on are tried again for another model (a model-scoped
    limit leaves the others free), except those without a usable credential. A user limited
    to some models (access keys) is never given one it may not use."""
    asked = fc.asked_model or fc.model
    chain = proxy.fallbacks.get(asked or "") if asked else None
    if not chain:
        return None
    start = chain.index(fc.model) + 1 if fc.model in chain else 0
    user = next((u for u in proxy.users.values() if u.name == fc.user), None) \
        if fc.user else None
    model, excluded = fc.model, fc.excluded
    try:
        fc.excluded = _still_excluded(fc)
        for candidate in chain[start:]:
            if candidate == asked or (user is not None and user.allows(candidate)):
                continue
            fc.model = candidate
            account = proxy.choose(fc)
            if account is not None:
                return candidate, account
        return None
    finally:
        fc.model, fc.excluded = model, excluded


def _still_excluded(fc: FlowContext) -> set[str]:
    """The accounts a request for another model must still skip: those it could not use at
    all (no credential, a failed token refresh)."""
    return {name for name in fc.excluded if name in fc.skipped}
