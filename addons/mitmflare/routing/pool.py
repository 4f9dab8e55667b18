"""The account pool: configured accounts plus their live state (:mod:`.account_state`).

Everything here runs on the proxy's event loop and does no I/O. Times are Unix epoch seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..config.accounts import AccountConfig
from ..providers.presets import CODEX, OPENAI
from .account_state import (  # noqa: F401  (status names, re-exported)
    AVAILABLE,
    BENCHED,
    COOLING_DOWN,
    NEEDS_REAUTH,
    OVER_BUDGET,
    PAUSED,
    AccountState,
)

log = logging.getLogger(__name__)


@dataclass
class Account:
    """A configured account with its state. ``order`` is its position in the YAML file;
    ``target`` its upstream as (scheme, host, port, path prefix), parsed once."""

    config: AccountConfig
    order: int
    state: AccountState = field(default_factory=AccountState)
    target: tuple[str, str, int, str] = ("https", "", 443, "")
    # copied from ``config`` once (read several times per request; a reload makes new Accounts)
    name: str = field(init=False)
    provider: str = field(init=False)
    wire: str = field(init=False)
    """The format its upstream speaks: ``anthropic``, ``openai`` or ``codex``."""

    def __post_init__(self) -> None:
        url = urlsplit(self.config.upstream)
        default = 443 if url.scheme == "https" else 80
        self.target = (url.scheme, url.hostname or "", url.port or default, url.path.rstrip("/"))
        self.name, self.provider = self.config.name, self.config.provider
        self.wire = self.config.wire

    def takes(self, client: str, convertible: bool, family: str | None = None) -> bool:
        """True when requests in the ``client`` format (``anthropic``/``openai``) can go to this
        account: same format (passed through), or a request that can be converted
        (``convertible``: Anthropic Messages, OpenAI Chat Completions or Responses) for an
        account of the other format that maps models (``models:`` / ``default_model:``) or
        that the compatibility route's model prefix (``family``) names. A Codex account
        (wire ``codex``) takes every convertible OpenAI-format request (its models are
        OpenAI's) and Anthropic ones as any account of the other format."""
        if self.wire == client:
            return True
        if self.wire == CODEX and client == OPENAI:
            return convertible
        return convertible and (bool(self.config.models or self.config.default_model)
                                or (family is not None and self.in_family(family)))

    def serves(self, model: str | None) -> bool:
        """True when the account can serve ``model`` (always for requests without a model)."""
        return model is None or self.config.upstream_model(model) is not None

    def in_family(self, family: str) -> bool:
        """For the compatibility route's model prefix (``anthropic/…``, ``zai/…``)."""
        return family in (self.provider, self.wire)

    @property
    def paused(self) -> bool:
        """Paused by the accounts file, or on every host by an operator through Redis."""
        return self.config.paused or self.state.operator_paused

    def status(self, now: float) -> str:
        """One of available / cooling_down / paused / needs_reauth / benched / over_budget."""
        return self.state.status(now, self.config.paused)

    def blocked(self, now: float) -> tuple[float, str]:
        """(until when, why) the account is not available: epoch s (0: until an operator or
        a new credential acts) and the reason; (0, "") when available or paused."""
        st, status = self.state, self.status(now)
        if status == COOLING_DOWN:
            return st.cooldown_until, st.cooldown_reason
        if status == OVER_BUDGET:
            return st.over_budget_until, st.over_budget_reason
        if status == BENCHED:
            return 0.0, st.benched_reason
        return 0.0, ""

    @property
    def busy(self) -> int:
        """Requests in flight on it: here, plus in the other processes of the pool as they
        last told (``flare_redis``, :mod:`~..addons.shared_state`)."""
        return self.state.in_flight + self.state.in_flight_elsewhere

    def full(self) -> bool:
        """True when ``max_concurrent`` requests are in flight on it (no slot free), counting
        every process's (:attr:`busy`)."""
        cap = self.config.max_concurrent
        return cap is not None and self.busy >= cap

    def is_available(self, now: float) -> bool:
        return self.status(now) == AVAILABLE


class AccountPool:
    """The accounts in file order, keyed by name. State survives config reloads by name."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}

    def replace(self, configs: list[AccountConfig]) -> tuple[list[str], list[str], dict[str, str]]:
        """Install a new configuration. An account keeps its state across the reload when its
        name is unchanged, or when it was renamed (same :attr:`AccountConfig.identity` as a
        removed account). Returns (added names, removed names, {new name: old name})."""
        old = self.accounts
        names = {cfg.name for cfg in configs}
        gone = {a.config.identity: a for n, a in old.items() if n not in names and a.config.identity}
        new: dict[str, Account] = {}
        renamed: dict[str, str] = {}
        for order, cfg in enumerate(configs):
            previous = old.get(cfg.name)
            if previous is None and cfg.identity in gone:
                previous = gone.pop(cfg.identity)
                renamed[cfg.name] = previous.name
            state = previous.state if previous and previous.provider == cfg.provider else AccountState()
            state.identity = cfg.identity or ""
            new[cfg.name] = Account(cfg, order, state)
        self.accounts = new
        added = [n for n in new if n not in old and n not in renamed]
        removed = [n for n in old if n not in new and n not in renamed.values()]
        return added, removed, renamed

    def get(self, name: str) -> Account | None:
        return self.accounts.get(name)

    def for_client(self, client: str, convertible: bool = False,
                   family: str | None = None) -> list[Account]:
        """Accounts that take requests in the ``client`` format (see :meth:`Account.takes`)."""
        return [a for a in self.accounts.values() if a.takes(client, convertible, family)]

    def available(self, client: str, now: float, convertible: bool = False,
                  family: str | None = None) -> list[Account]:
        return [a for a in self.accounts.values()
                if a.takes(client, convertible, family) and a.is_available(now)]
