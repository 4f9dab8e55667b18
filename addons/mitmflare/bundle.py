"""The addon objects of the bundle, wired to one shared :class:`~.core.Core`."""

from __future__ import annotations

from .access import AccessKeys
from .account_health import AccountHealth
from .accounts_file import AccountsFile
from .core import Core
from .guard import Guard
from .log_format import LogFormat
from .operations import Operations
from .recorder import Recorder
from .refresher import TokenRefresher
from .router import Router


def make_addons() -> list[object]:
    """Addons in hook order: the fail-closed guard, the log format, accounts, access keys, token refresh,
    account health (budgets, window start), operations (``/health``, probes, commands),
    routing/failover, then recording."""
    core = Core()
    return [Guard(core), LogFormat(), AccountsFile(core), AccessKeys(core), TokenRefresher(core),
            AccountHealth(core), Operations(core), Router(core), Recorder(core)]
