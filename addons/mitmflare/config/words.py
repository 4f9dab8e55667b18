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


def yaml_problem(exc: Exception, text: str) -> str:
    """Where and why a YAML parser (PyYAML or ruamel.yaml, duck-typed) refused ``text``, on
    one line: ``line 3, column 14: unacceptable character #x0007 (special characters are not
    allowed) …`` for a character YAML forbids (a reader error, which carries a position in
    ``text``), ``line 5, column 1: expected ',' or ']' …`` for a syntax error (its mark),
    else the error's own words with their line breaks folded. Never shows the lines around the
    place (a mark's snippet of the file, which may hold a secret)."""
    position, character = getattr(exc, "position", None), getattr(exc, "character", None)
    if isinstance(position, int) and isinstance(character, int):  # a reader error
        line = text.count("\n", 0, position) + 1
        column = position - text.rfind("\n", 0, position)
        reason = getattr(exc, "reason", None) or "not allowed in YAML"
        return (f"line {line}, column {column}: unacceptable character #x{character:04x} "
                f"({reason}); delete it, or write it as \\u{character:04x} inside double quotes")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split()) or type(exc).__name__
