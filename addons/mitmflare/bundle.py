"""The addon objects of the bundle, wired to one shared :class:`~.core.Core`."""

from __future__ import annotations

from .accounts_file import AccountsFile
from .core import Core
from .recorder import Recorder
from .refresher import TokenRefresher
from .router import Router


def make_addons() -> list[object]:
    """Addons in hook order: accounts, token refresh, routing/failover, then recording."""
    core = Core()
    return [AccountsFile(core), TokenRefresher(core), Router(core), Recorder(core)]
