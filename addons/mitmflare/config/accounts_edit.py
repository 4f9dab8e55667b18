"""Editing the accounts file from the command line: comments, order, quoting and the
indentation of list items are kept (ruamel.yaml round trip, indentation guessed from the
file), and the file is replaced atomically through a symlink with its mode and owner kept
(:mod:`.file_replace`), so a running proxy never reads half a file and picks the change up
within 2 s. Secrets are never taken from arguments: the callers pass ``${VAR}`` references or
values read from stdin.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.util import load_yaml_guess_indent

from .file_replace import replace_text
from .words import ENV_REF, ConfigError, yaml_problem


class AccountsEditError(Exception):
    """The edit cannot be made (unknown or duplicate name, unreadable file); says why."""


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line the user wrote on one
    return yaml


@contextmanager
def editing(path: Path, name: str | None = None, extra_env: Mapping[str, str] | None = None,
            before_write: Callable[[], None] | None = None) -> Iterator[list[CommentedMap]]:
    """Yield the file's ``accounts`` list for changes, then write it back atomically (a
    missing file starts as ``accounts: []``; a new file gets mode 0600).

    Before writing, the new text is validated as the proxy will read it (``${VAR}`` against
    the ``.env`` file, the environment and ``extra_env``): the edit is rejected when the
    proxy could not read the file, when the entry called ``name`` would be left out, or when
    any entry valid before would be. ``before_write`` runs after validation, just before the
    file is replaced (e.g. to store the key a new entry refers to).

    Nothing is written if the block or the validation raises. Raises
    :class:`AccountsEditError` (why; for a rejection the proxy's own messages) when the file
    cannot be read, validated or replaced."""
    yaml = _yaml()
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else "accounts: []\n"
    except UnicodeDecodeError as exc:
        raise AccountsEditError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                f"save it as UTF-8") from None
    except OSError as exc:
        raise AccountsEditError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data, seq_indent, dash_offset = load_yaml_guess_indent(text, yaml=yaml)
    except Exception as exc:
        raise AccountsEditError(f"{path} cannot be read as YAML: {yaml_problem(exc, text)}") \
            from None
    if data is None:
        data = yaml.load("accounts: []\n")
    if not isinstance(data, dict):
        raise AccountsEditError(f"{path}: the file must be a mapping with an 'accounts' list")
    if data.get("accounts") is None:
        data["accounts"] = []
    yield data["accounts"]
    if dash_offset is None:  # no list written yet: the style of the shipped example
        seq_indent, dash_offset = 4, 2
    yaml.indent(mapping=_mapping_indent(data["accounts"]), sequence=seq_indent,
                offset=dash_offset)
    out = io.StringIO()
    yaml.dump(data, out)
    _validate(path, text, out.getvalue(), name, extra_env or {})
    try:
        if before_write:
            before_write()
        replace_text(path, out.getvalue())
    except OSError as exc:
        raise AccountsEditError(f"{path}: cannot write: {exc}") from None


def _validate(path: Path, old: str, new: str, name: str | None,
              extra_env: Mapping[str, str]) -> None:
    """Raise :class:`AccountsEditError` when ``new`` would lose an entry (see :func:`editing`)."""
    from .accounts import account_env, parse_accounts  # the validation models: loaded on use

    env, dotenv = account_env(str(path))
    env = {**env, **extra_env}
    try:
        broken_before = set(parse_accounts(old, str(path), env, dotenv).rejected)
    except ConfigError:
        broken_before = set()
    try:
        after = parse_accounts(new, f"{path} (as edited)", env, dotenv)
    except ConfigError as exc:
        raise AccountsEditError(f"{exc}; nothing written") from None
    lost = [error for label, error in zip(after.rejected, after.errors, strict=True)
            if label == name or label not in broken_before]
    if lost:
        raise AccountsEditError("; ".join(lost) + "; nothing written")


def _mapping_indent(accounts: list[Any]) -> int:
    """How far the file indents a block mapping inside an entry (``budget_usd:`` then
    ``day: 5``), from the first one; 2 when there is none."""
    for entry in accounts:
        if not isinstance(entry, CommentedMap):
            continue
        for key, value in entry.items():
            if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
                try:  # entries and keys added by this edit have no position
                    step = value.lc.key(next(iter(value)))[1] - entry.lc.key(key)[1]
                except (KeyError, TypeError):
                    continue
                if step > 0:
                    return step
    return 2


def find(accounts: list[CommentedMap], name: str) -> CommentedMap:
    """The entry called ``name``. Raises :class:`AccountsEditError` when there is none."""
    for entry in accounts:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise AccountsEditError(f"no account named {name!r}")


def add(path: Path, fields: dict[str, Any], extra_env: Mapping[str, str] | None = None,
        before_write: Callable[[], None] | None = None) -> None:
    """Append an account (``fields`` in the order given). Raises on a duplicate name and
    when the proxy would leave it out (see :func:`editing` for the other arguments)."""
    with editing(path, fields["name"], extra_env, before_write) as accounts:
        if any(isinstance(e, dict) and e.get("name") == fields["name"] for e in accounts):
            raise AccountsEditError(f"an account named {fields['name']!r} already exists")
        entry = CommentedMap()
        for key, value in fields.items():
            entry[key] = _flow(value)
        accounts.append(entry)


def remove(path: Path, name: str) -> list[str]:
    """Remove the entry called ``name``. Returns the names of the ``${VAR}`` references
    that only it used (no remaining entry mentions them), sorted."""
    with editing(path) as accounts:
        gone = find(accounts, name)
        accounts.remove(gone)
        still_used = set().union(*(env_refs(entry) for entry in accounts))
    return sorted(env_refs(gone) - still_used)


def env_refs(value: Any) -> set[str]:
    """Names of the variables that ``${VAR}`` references in ``value`` (nested) name."""
    if isinstance(value, dict):
        return set().union(*(env_refs(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(env_refs(v) for v in value))
    return set(ENV_REF.findall(value)) if isinstance(value, str) else set()


def set_fields(path: Path, name: str, fields: dict[str, Any]) -> None:
    """Set (or, for a None value, delete) fields of one account. Raises when there is none
    or when the proxy would leave it out afterwards."""
    with editing(path, name) as accounts:
        entry = find(accounts, name)
        for key, value in fields.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = _flow(value)


def use_stored_tokens(path: Path, name: str, priority: int | None,
                      provider: str = "anthropic") -> None:
    """Add ``name`` (of ``provider``) with ``oauth: {from_state: true}`` (tokens in the state
    database), or switch an existing entry to it (and to ``provider``)."""
    with editing(path, name) as accounts:
        try:
            entry = find(accounts, name)
        except AccountsEditError:
            entry = CommentedMap([("name", name), ("provider", provider)])
            accounts.append(entry)
        entry["provider"] = provider
        entry.pop("api_key", None)
        entry["oauth"] = _flow({"from_state": True})
        if priority is not None:
            entry["priority"] = priority


def _flow(value: Any) -> Any:
    """Small mappings are written inline (``{opus: glm-4.6}``), as the examples are."""
    if isinstance(value, dict):
        inline = CommentedMap(value)
        inline.fa.set_flow_style()
        return inline
    return value
