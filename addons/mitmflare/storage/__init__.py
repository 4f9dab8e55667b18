"""Everything that touches SQLite: the schema of both databases, the writer (and its child
process), finishing rows, pricing (cost in USD), retention, users and operator commands kept
in the state database, and the Datasette metadata that serves them.

May import ``providers`` (usage parsing), ``routing`` (state types) and ``config``; never
``addons``.
"""
