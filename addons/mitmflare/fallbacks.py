"""Model fallbacks (the accounts file's optional ``fallbacks:``): when no account can serve
the model a client asked for now (all cooling down for it, or none offers it), the first
fallback model that some account can serve is asked instead.

Runs on the event loop, no I/O. The response says so in ``x-mitmflare-model-fallback``; the
row keeps the client's ``model`` and the served ``upstream_model``.
"""

from __future__ import annotations

from .core import Core, FlowContext
from .pool import Account

HEADER = "x-mitmflare-model-fallback"


def fall_back(core: Core, fc: FlowContext) -> Account | None:
    """The account for the next fallback of ``fc``'s model that one can serve now, with
    ``fc.model`` set to that model (``fc.asked_model`` keeps the client's); None, with ``fc``
    unchanged, when no fallback is configured or none can be served.

    Fallbacks are tried in their order, each once per request, starting after the one being
    served. Accounts this request failed on are tried again for another model (a model-scoped
    limit leaves the others free), except those without a usable credential. A user limited
    to some models (access keys) is never given one it may not use."""
    asked = fc.asked_model or fc.model
    chain = core.fallbacks.get(asked or "") if asked else None
    if not chain:
        return None
    start = chain.index(fc.model) + 1 if fc.model in chain else 0
    user = next((u for u in core.users.values() if u.name == fc.user), None) \
        if fc.user else None
    model, excluded = fc.model, fc.excluded
    for candidate in chain[start:]:
        if candidate == asked or (user is not None and user.allows(fc.provider, candidate)):
            continue
        fc.model, fc.excluded = candidate, {n for n in excluded if n in fc.skipped}
        account = core.choose(fc)
        if account is not None:
            fc.asked_model = asked
            fc.notes.append(f"{model} could not be served now: fell back to {candidate}")
            return account
    fc.model, fc.excluded = model, excluded
    return None
