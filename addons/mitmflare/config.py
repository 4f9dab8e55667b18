"""Loading and validating the accounts YAML file (``flare_accounts``).

The file has one top-level key, ``accounts``, a list of mappings. Each mapping is validated
by :class:`AccountConfig`; every problem is reported as a :class:`ConfigError` whose message
names the file, the line, the account and the field.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROVIDERS = ("anthropic", "openai")

DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com",
}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """The accounts file cannot be used; the message says where and why."""


class OAuthConfig(BaseModel):
    """Claude subscription credentials: a token pair, or ``from_state: true`` to use the pair
    that ``scripts/oauth_login.py`` stored in ``flare_state``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: datetime | None = None
    from_state: bool = False

    @model_validator(mode="after")
    def _needs_tokens(self) -> OAuthConfig:
        if not self.from_state and not (self.access_token or self.refresh_token):
            raise ValueError("needs access_token and/or refresh_token, or from_state: true")
        return self

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class AccountConfig(BaseModel):
    """One configured account, as written in the YAML file.

    ``priority``: lower is preferred. ``weight``: share under the weighted strategy.
    ``base_url``: scheme, host, optional port and path prefix of the upstream.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    provider: Literal["anthropic", "openai"]
    api_key: str | None = None
    oauth: OAuthConfig | None = None
    priority: int = 0
    weight: float = Field(default=1.0, gt=0)
    paused: bool = False
    base_url: str | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> AccountConfig:
        if (self.api_key is None) == (self.oauth is None):
            raise ValueError("needs exactly one of api_key and oauth")
        if self.oauth is not None and self.provider != "anthropic":
            raise ValueError("oauth is only supported for provider anthropic")
        return self

    @field_validator("api_key")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @property
    def upstream(self) -> str:
        """The base URL requests for this account go to (no trailing slash)."""
        return self.base_url or DEFAULT_BASE_URLS[self.provider]

    @property
    def credential_kind(self) -> Literal["api_key", "oauth"]:
        return "oauth" if self.oauth is not None else "api_key"


def load_accounts(path: str) -> list[AccountConfig]:
    """Read and validate the accounts file at ``path``.

    Returns the accounts in file order. Raises :class:`ConfigError` (file missing, YAML syntax
    error with its line, a ``${VAR}`` that is not set, a field error, a duplicate name).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_accounts(text, path)


def parse_accounts(text: str, source: str = "<accounts>") -> list[AccountConfig]:
    """Validate accounts YAML text; ``source`` names it in error messages. See :func:`load_accounts`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise ConfigError(f"{source}: YAML syntax error at {where}: {exc.problem}") from exc
    if root is None:
        return []
    data = yaml.SafeLoader(text).construct_document(root)
    if not isinstance(data, dict) or set(data) - {"accounts"}:
        raise ConfigError(f"{source}: line 1: the file must be a mapping with one key, 'accounts'")
    items = data.get("accounts") or []
    if not isinstance(items, list):
        raise ConfigError(f"{source}: line {_line(root, ['accounts'])}: 'accounts' must be a list")

    accounts: list[AccountConfig] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        label = item.get("name", f"#{index + 1}") if isinstance(item, dict) else f"#{index + 1}"
        line = _line(root, ["accounts", index])
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: line {line}: account {label}: must be a mapping")
        try:
            expanded = _expand_env(item, label)
            account = AccountConfig.model_validate(expanded)
        except _EnvError as exc:
            field_line = _line(root, ["accounts", index, *exc.loc])
            raise ConfigError(f"{source}: line {field_line}: account {label}: {exc}") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [part for part in err["loc"] if isinstance(part, str | int)]
            field = ".".join(str(p) for p in loc) or "(account)"
            field_line = _line(root, ["accounts", index, *loc])
            message = err["msg"].removeprefix("Value error, ")
            raise ConfigError(
                f"{source}: line {field_line}: account {label}: {field}: {message}"
            ) from None
        if account.name in seen:
            raise ConfigError(
                f"{source}: line {line}: account {account.name}: duplicate name "
                f"(first defined on line {seen[account.name]})"
            )
        seen[account.name] = line
        accounts.append(account)
    return accounts


class _EnvError(ValueError):
    def __init__(self, message: str, loc: list[str | int]):
        super().__init__(message)
        self.loc = loc


def _expand_env(value: Any, label: str, loc: list[str | int] | None = None) -> Any:
    """Replace ``${VAR}`` in every string with the environment variable's value."""
    loc = loc or []
    if isinstance(value, dict):
        return {k: _expand_env(v, label, [*loc, k]) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, label, [*loc, i]) for i, v in enumerate(value)]
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in os.environ:
                raise _EnvError(f"{'.'.join(map(str, loc))}: environment variable {var} is not set", loc)
            return os.environ[var]

        return _ENV_REF.sub(repl, value)
    return value


def _line(root: yaml.Node, path: list[str | int]) -> int:
    """1-based line of the deepest node on ``path`` that exists in the composed YAML tree."""
    node = root
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, val in node.value:
                if key.value == part:
                    child = val if not isinstance(val, yaml.ScalarNode) else key
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1
