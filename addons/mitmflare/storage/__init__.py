"""Everything that touches SQLite: the schema of both databases, the state store (the one
owner of the state database: account state, OAuth pairs, users, operator commands), the
writer of the analytics database (and its child process), finishing rows, pricing (cost in
USD), retention, and the Datasette metadata that serves them.

May import ``providers`` (usage parsing), ``routing`` (state types), ``config`` and the
top-level helpers; never ``addons`` or ``proxy_state``. Checked by
``tests/unit/test_imports.py``.
"""
