"""Loading and validating the accounts YAML file (``flare_accounts``).

The file has one top-level key, ``accounts``, a list of mappings. Each mapping is validated
by :class:`AccountConfig`. A bad entry costs only itself: it is left out and reported (file,
line, account, field); a file that cannot be read as a whole raises :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..providers.presets import OAUTH_PROVIDERS, PRESETS, Preset, map_model
from .words import (  # re-exported: light names the mitmflare command imports
    AUTH_STYLES,
    ENV_REF,
    ConfigError,
    env_file,
    one_of,
    yaml_problem,
)


class OAuthConfig(BaseModel):
    """Subscription credentials (Claude, ChatGPT/Codex): a token pair, or ``from_state: true`` to use the pair
    that ``mitmflare accounts login`` stored in ``flare_state``."""

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


class Budget(BaseModel):
    """Spending limits of one account in USD per UTC day and per UTC calendar month (either
    may be left out). Spend is the recorded ``cost_usd`` of the account's requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    day: float | None = Field(default=None, ge=0)
    month: float | None = Field(default=None, ge=0)


class Price(BaseModel):
    """An account's own prices in USD per million tokens, used for models genai-prices does
    not know. ``input`` and ``output`` are required; ``cache_read`` and ``cache_write`` default
    to ``input`` (never less than the tokens may cost)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)

    def rates(self) -> dict[str, float]:
        """USD per million tokens of each kind: ``input``, ``output``, ``cache_read``,
        ``cache_write`` (defaults filled in)."""
        return {"input": self.input, "output": self.output,
                "cache_read": self.input if self.cache_read is None else self.cache_read,
                "cache_write": self.input if self.cache_write is None else self.cache_write}


class AccountConfig(BaseModel):
    """One configured account, as written in the YAML file.

    ``id``: optional stable identifier that keeps state across a rename.
    ``provider``: a key of :data:`.providers.presets.PRESETS` (``anthropic``, ``openai``,
    ``anthropic-compatible``, ``openai-compatible``, ``zai``, ``minimax``, ``openrouter``,
    ``nanogpt``, ``codex``). ``priority``: lower is preferred. ``weight``: share under the weighted
    strategy. ``base_url``: scheme, host, optional port and path prefix of the upstream
    (required for the ``*-compatible`` providers). ``auth``: overrides the preset's way of
    sending the key (``x-api-key`` or ``bearer``). ``models``: client model name or Claude
    family (``opus``/``sonnet``/``haiku``) → upstream model; with a mapping the account serves
    only models it can map, unless ``default_model`` is set. ``budget_usd``: see
    :class:`Budget`; an account over it is skipped until the day or month ends.
    ``sticky``: conversations stay on it while their prompt cache lives (see
    :mod:`.cache_affinity`); pay-as-you-go accounts may turn it off. ``max_concurrent``:
    at most this many requests in flight on it (None: no cap; see :mod:`.concurrency`).
    ``price``: see :class:`Price`. ``overage``: whether a subscription account may serve
    from its extra usage (overage) once its plan window is spent: ``never`` (it waits for the
    window's reset), ``last_resort`` (only when no account can serve from its plan) or
    ``allowed`` (like its plan); ``overage_cap_usd``: at most this much recorded cost (USD,
    API-equivalent) served from overage per calendar month (UTC), then as ``never``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    provider: str
    api_key: str | None = None
    oauth: OAuthConfig | None = None
    priority: int = 0
    weight: float = Field(default=1.0, gt=0)
    paused: bool = False
    base_url: str | None = None
    auth: Literal["x-api-key", "bearer"] | None = None
    models: dict[str, str] | None = None
    default_model: str | None = None
    budget_usd: Budget | None = None
    price: Price | None = None
    sticky: bool = True  # keep conversations here while their prompt cache lives
    max_concurrent: int | None = Field(default=None, ge=1)
    overage: Literal["never", "last_resort", "allowed"] = "last_resort"
    overage_cap_usd: float | None = Field(default=None, ge=0)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(one_of(value, PRESETS))
        return value

    @field_validator("auth", mode="before")
    @classmethod
    def _known_auth(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in AUTH_STYLES:
            raise ValueError(one_of(value, AUTH_STYLES))
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> AccountConfig:
        if (self.api_key is None) == (self.oauth is None):
            raise ValueError("needs exactly one of api_key and oauth")
        if self.oauth is not None and self.provider not in OAUTH_PROVIDERS:
            raise ValueError(f"oauth is only supported for provider {' or '.join(OAUTH_PROVIDERS)}")
        if self.provider == "codex" and self.oauth is None:
            raise ValueError("provider codex needs oauth (log in with `mitmflare accounts login "
                             "NAME --provider codex`)")
        if self.base_url is None and self.preset.base_url is None:
            raise ValueError(f"provider {self.provider} needs base_url")
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
    def preset(self) -> Preset:
        return PRESETS[self.provider]

    @property
    def wire(self) -> str:
        """The format the upstream speaks: ``anthropic`` or ``openai``."""
        return self.preset.wire

    @property
    def auth_style(self) -> str:
        """How the key is sent: ``x-api-key`` or ``bearer`` (OAuth accounts: always bearer)."""
        return self.auth or self.preset.auth

    @property
    def upstream(self) -> str:
        """The base URL requests for this account go to (no trailing slash)."""
        return self.base_url or self.preset.base_url or ""

    def upstream_model(self, model: str | None) -> str | None:
        """The model to ask the upstream for, or None when this account cannot serve
        ``model`` (see :func:`.providers.presets.map_model`)."""
        return map_model(self.models, self.default_model, model)

    @property
    def identity(self) -> str | None:
        """What recognises this account across a rename: its ``id`` when set, else a hash of
        its API key or of the OAuth pair written in the file; None for ``from_state``."""
        if self.id:
            return f"id:{self.id}"
        if self.api_key is not None:
            return "key:" + hashlib.sha256(self.api_key.encode()).hexdigest()[:16]
        if self.oauth is not None and not self.oauth.from_state:
            pair = f"{self.oauth.access_token}|{self.oauth.refresh_token}"
            return "oauth:" + hashlib.sha256(pair.encode()).hexdigest()[:16]
        return None

    @property
    def credential_kind(self) -> Literal["api_key", "oauth"]:
        return "oauth" if self.oauth is not None else "api_key"


@dataclass
class AccountsLoad:
    """The result of reading the accounts file: the valid accounts in file order, and one
    message per rejected entry (file, line, account, field and why). A bad entry costs only
    itself."""

    accounts: list[AccountConfig]
    errors: list[str]
    rejected: list[str] = field(default_factory=list)  # per error: its entry's name or #N
    fallbacks: dict[str, list[str]] = field(default_factory=dict)  # model -> models to serve


TOO_DEEP = ("lists or mappings nested too deeply to read (an accounts file needs four "
            "levels: accounts, an account, its models, a model)")


def load_accounts(path: str) -> AccountsLoad:
    """Read and validate the accounts file at ``path``; ``${VAR}`` is looked up in the
    process environment, then in the ``.env`` file beside it (read anew on every call).

    Raises :class:`ConfigError` (one line: the file, where, why) only when the file as a
    whole cannot be used: missing or unreadable, not UTF-8, a YAML syntax error or a character
    YAML forbids (a control character such as ``\\x07``), a value that does not fit its YAML
    type, nesting deeper than the parser's recursion allows, not a mapping with an
    ``accounts`` list."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it "
                          f"as UTF-8") from None
    env, dotenv = account_env(path)
    return parse_accounts(text, path, env, dotenv)


def account_env(path: str) -> tuple[dict[str, str], str]:
    """What ``${VAR}`` in the accounts file at ``path`` resolves against: the ``.env`` file
    beside it overlaid with the process environment; and that ``.env`` file's path."""
    dotenv = env_file(path)
    env: dict[str, str] = {}
    if os.path.exists(dotenv):
        from dotenv import dotenv_values  # only when there is one: the command starts faster

        env = {k: v for k, v in dotenv_values(dotenv).items() if v is not None}
    return {**env, **os.environ}, dotenv


def parse_accounts(text: str, source: str = "<accounts>", env: Mapping[str, str] | None = None,
                   dotenv: str = ".env") -> AccountsLoad:
    """Validate accounts YAML text; ``source`` names it in error messages, ``env`` resolves
    ``${VAR}`` (default: the process environment). See :func:`load_accounts`."""
    env = os.environ if env is None else env
    try:
        root = _compose(text)
    except yaml.reader.ReaderError as exc:  # a control character: no mark, a position
        raise ConfigError(f"{source}: {yaml_problem(exc, text)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML syntax error at {yaml_problem(exc, text)}") from None
    except RecursionError:  # [[[[…]]]] past Python's stack: PyYAML composes recursively
        raise ConfigError(f"{source}: {TOO_DEEP}") from None
    if root is None:
        return AccountsLoad([], [])
    try:
        data = yaml.SafeLoader(text).construct_document(root)
    except yaml.YAMLError as exc:  # an unknown tag (!foo), an unhashable key
        raise ConfigError(f"{source}: YAML error at {yaml_problem(exc, text)}") from None
    except ValueError:  # a typed value that does not fit its type: 2026-13-45, !!int x
        raise ConfigError(f"{source}: {_bad_value(root)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: {TOO_DEEP}") from None
    if not isinstance(data, dict) or set(data) - {"accounts", "fallbacks"}:
        raise ConfigError(f"{source}: line 1: the file must be a mapping with the key "
                          f"'accounts' (and optionally 'fallbacks')")
    items = data.get("accounts") or []
    if not isinstance(items, list):
        raise ConfigError(f"{source}: line {_line(root, ['accounts'])}: 'accounts' must be a list")

    result = AccountsLoad([], [])
    fallbacks = data.get("fallbacks") or {}
    if _fallbacks_ok(fallbacks):
        result.fallbacks = {model: list(chain) for model, chain in fallbacks.items()}
    else:
        result.errors.append(f"{source}: line {_line(root, ['fallbacks'])}: fallbacks: must map "
                             f"each model to a list of models (e.g. claude-opus-4-5: "
                             f"[claude-sonnet-4-5]); no fallbacks are used")
        result.rejected.append("fallbacks")
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        label = item.get("name", f"#{index + 1}") if isinstance(item, dict) else f"#{index + 1}"
        line = _line(root, ["accounts", index])
        try:
            account = _account(item, label, env, dotenv)
        except _EntryError as exc:
            at = _line(root, ["accounts", index, *exc.loc])
            result.errors.append(f"{source}: line {at}: account {label}: {exc}")
            result.rejected.append(str(label))
            continue
        if account.name in seen:
            result.errors.append(f"{source}: line {line}: account {account.name}: duplicate name "
                                 f"(first defined on line {seen[account.name]}); entry ignored")
            result.rejected.append(account.name)
            continue
        seen[account.name] = line
        result.accounts.append(account)
    return result


_CLoader = getattr(yaml, "CSafeLoader", None)  # PyYAML built with libyaml


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree of ``text``: parsed by libyaml when PyYAML has it (some 10 times
    faster), else, and for a text libyaml refuses, by PyYAML's own parser (so that an error
    is worded, and its line found, as ever)."""
    if _CLoader is not None:
        try:
            return yaml.compose(text, Loader=_CLoader)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _bad_value(root: yaml.Node) -> str:
    """Where and what the first scalar in ``root`` that cannot be built as its type is
    (``line 4, column 17: not a valid timestamp; …``), without its text (it may be a secret)."""
    stack = [root]
    while stack:
        node = stack.pop(0)
        if isinstance(node, yaml.ScalarNode):
            try:
                yaml.SafeLoader("").construct_object(node)
            except ValueError:
                kind = node.tag.rsplit(":", 1)[-1]
                return (f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}: "
                        f"not a valid {kind}; put the value in quotes to keep it as text")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
    return "a value cannot be read as its YAML type"


def _fallbacks_ok(fallbacks: Any) -> bool:
    """True for a mapping of model names to lists of model names (``fallbacks:``)."""
    return isinstance(fallbacks, dict) and all(
        isinstance(model, str) and model and isinstance(chain, list)
        and all(isinstance(m, str) and m for m in chain) for model, chain in fallbacks.items())


class _EntryError(ValueError):
    def __init__(self, message: str, loc: list[str | int]):
        super().__init__(message)
        self.loc = loc


def _account(item: Any, label: str, env: Mapping[str, str], dotenv: str) -> AccountConfig:
    if not isinstance(item, dict):
        raise _EntryError("must be a mapping", [])
    try:
        return AccountConfig.model_validate(_expand_env(item, env, dotenv))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [part for part in err["loc"] if isinstance(part, str | int)]
        field = ".".join(str(p) for p in loc) or "(account)"
        message = err["msg"].removeprefix("Value error, ")
        raise _EntryError(f"{field}: {message}", loc) from None


def _expand_env(value: Any, env: Mapping[str, str], dotenv: str,
                loc: list[str | int] | None = None) -> Any:
    """Replace ``${VAR}`` in every string with the variable's value from ``env``."""
    loc = loc or []
    if isinstance(value, dict):
        return {k: _expand_env(v, env, dotenv, [*loc, k]) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, env, dotenv, [*loc, i]) for i, v in enumerate(value)]
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in env:
                raise _EntryError(
                    f"{'.'.join(map(str, loc))}: environment variable {var} is not set. Put it "
                    f"in {dotenv} (read again on every change), or export it before starting "
                    f"the proxy: a running process's environment cannot change", loc)
            return env[var]

        return ENV_REF.sub(repl, value)
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
