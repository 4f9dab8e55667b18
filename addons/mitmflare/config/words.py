"""The accounts file's light names: its error, its ``${VAR}`` form, its auth styles and the
wording of "did you mean". Standard library only, so the ``mitmflare`` command can word an
error without loading the validation models of :mod:`.config`."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """The accounts file cannot be used; the message says where and why."""


AUTH_STYLES = ("x-api-key", "bearer")


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean `anthropic`?)`` for the closest of ``choices`` to a mistyped
    ``value`` (difflib ratio at least 0.6), else an empty string."""
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def one_of(value: str, choices: Iterable[str]) -> str:
    """Why ``value`` is not accepted: ``must be one of a, b, c`` plus :func:`did_you_mean`."""
    choices = list(choices)
    return f"must be one of {', '.join(choices)}{did_you_mean(value, choices)}"


def env_file(accounts_path: str) -> str:
    """The ``.env`` file read beside the accounts file."""
    return os.path.join(os.path.dirname(os.path.abspath(accounts_path)), ".env")
