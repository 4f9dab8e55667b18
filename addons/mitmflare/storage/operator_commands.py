"""Commands an operator queues for a running proxy in the state database (``flare_state``,
table ``operator_commands``): ``mitmflare accounts reset NAME`` writes one, the proxy's
Operations addon polls the table every second and applies the new ones. The same command
also changes the stored account state, so a proxy started later sees it too."""

from __future__ import annotations

import json
import sqlite3
import time

from ..routing.pool import AccountState
from ..times import iso_utc
from .writer import open_state_db


def latest_id(path: str) -> int:
    """The highest command id so far (0 when there is none or no file yet)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0
    try:
        return conn.execute("select coalesce(max(id), 0) from operator_commands").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def since(path: str, after: int) -> list[tuple[int, str, str]]:
    """(id, command, account) of the commands queued after id ``after``, oldest first.
    Raises ``sqlite3.Error`` when the file cannot be read now."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("select id, command, account from operator_commands where id > ? "
                            "order by id", [after]).fetchall()
    finally:
        conn.close()


def queue_reset(path: str, account: str) -> bool:
    """Queue ``reset`` for ``account`` and clear its stored cooldown, bench and
    ``needs_reauth`` mark. True when stored state existed for it."""
    db = open_state_db(path)
    try:
        with db.conn:
            db.conn.execute("insert into operator_commands (command, account, created_at) "
                            "values ('reset', ?, ?)", [account, iso_utc(time.time())])
            row = db.conn.execute("select data from account_state where name = ?",
                                  [account]).fetchone()
            if row is None:
                return False
            state = AccountState()
            state.restore(json.loads(row[0]))
            state.resume()
            data = {**json.loads(row[0]), **state.to_persisted()}
            db.conn.execute("update account_state set data = ? where name = ?",
                            [json.dumps(data), account])
            return True
    finally:
        db.conn.close()
