"""Reading one table of an SQLite file without writing to it: for the proxy's pollers (users,
stored OAuth pairs) that read the state database from a worker thread while the writer
process writes it."""

from __future__ import annotations

import sqlite3
from typing import Any


def read_table(path: str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` in the SQLite file at ``path``, as dicts (blocking: call from a
    worker thread). [] when the file or table is missing, or the file is locked for more than
    2 s or unreadable."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return []
    try:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f'select * from "{table}"')]
    except sqlite3.Error:
        return []
    finally:
        conn.close()
