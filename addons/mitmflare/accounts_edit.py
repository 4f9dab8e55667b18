"""Editing the accounts file from the command line: comments, order and quoting are kept
(ruamel.yaml round trip) and the file is replaced atomically, so a running proxy never reads
half a file and picks the change up within 2 s. Secrets are never taken from arguments: the
callers pass ``${VAR}`` references or values read from stdin.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap


class AccountsEditError(Exception):
    """The edit cannot be made (unknown or duplicate name, unreadable file); says why."""


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    return yaml


@contextmanager
def editing(path: Path) -> Iterator[list[CommentedMap]]:
    """Yield the file's ``accounts`` list for changes, then write it back atomically (a
    missing file starts as ``accounts: []``). Nothing is written if the block raises."""
    yaml = _yaml()
    try:
        data = yaml.load(path.read_text(encoding="utf-8")) if path.exists() else None
    except Exception as exc:
        raise AccountsEditError(f"{path} cannot be read as YAML: {exc}") from None
    if data is None:
        data = yaml.load("accounts: []\n")
    if not isinstance(data, dict):
        raise AccountsEditError(f"{path}: the file must be a mapping with an 'accounts' list")
    if data.get("accounts") is None:
        data["accounts"] = []
    yield data["accounts"]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w", encoding="utf-8") as fh:
        yaml.dump(data, fh)
    partial.replace(path)


def find(accounts: list[CommentedMap], name: str) -> CommentedMap:
    """The entry called ``name``. Raises :class:`AccountsEditError` when there is none."""
    for entry in accounts:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise AccountsEditError(f"no account named {name!r}")


def add(path: Path, fields: dict[str, Any]) -> None:
    """Append an account (``fields`` in the order given). Raises on a duplicate name."""
    with editing(path) as accounts:
        if any(isinstance(e, dict) and e.get("name") == fields["name"] for e in accounts):
            raise AccountsEditError(f"an account named {fields['name']!r} already exists")
        entry = CommentedMap()
        for key, value in fields.items():
            entry[key] = _flow(value)
        accounts.append(entry)


def remove(path: Path, name: str) -> None:
    with editing(path) as accounts:
        accounts.remove(find(accounts, name))


def set_fields(path: Path, name: str, fields: dict[str, Any]) -> None:
    """Set (or, for a None value, delete) fields of one account."""
    with editing(path) as accounts:
        entry = find(accounts, name)
        for key, value in fields.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = _flow(value)


def use_stored_tokens(path: Path, name: str, priority: int | None) -> None:
    """Add ``name`` with ``oauth: {from_state: true}`` (tokens in the state database), or
    switch an existing entry to it."""
    with editing(path) as accounts:
        try:
            entry = find(accounts, name)
        except AccountsEditError:
            entry = CommentedMap([("name", name), ("provider", "anthropic")])
            accounts.append(entry)
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
