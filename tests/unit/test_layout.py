"""The package keeps its seams (issue 22), checked on the source (AST), not by convention:

* only :mod:`mitmflare.routing.account_state` changes an account's cooldown, bench,
  re-login, budget and near-limit fields (everything else calls its transitions);
* only :mod:`mitmflare.storage.state_store` opens the state database (``flare_state``);
* only :mod:`mitmflare.addons.attempt` converts between the Anthropic and OpenAI formats, and
  failover is a part of the bundle of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mitmflare

PACKAGE = Path(mitmflare.__file__).parent
ACCOUNT_STATE = "routing/account_state.py"
STATE_STORE = "storage/state_store.py"
ANALYTICS_CONNECTIONS = {
    ("storage/writer.py", "open_analytics_db"),  # the writer's connection
    ("bundle.py", "_analytics_read_only"),       # start-up check: is flare_db a database
    ("cli/doctor.py", "_read_only"),             # doctor: flare_db's integrity and schema
    ("cli/doctor.py", "_clock"),                 # doctor: the accounts table's clock skew
    ("cli/options.py", "read_db"),               # --db for the commands that read it
    ("cli/accounts.py", "list_accounts"),        # accounts list: health from --db
    ("cli/data.py", "prune"),                    # prune --db
    ("cli/data.py", "vacuum"),                   # vacuum --db
    ("storage/stream_writer.py", "_load_offset"),  # rows through Redis: the stream offset
}
"""(module, function) pairs that open a SQLite file other than the state database: the
analytics database (``flare_db``), the only other one."""

STATE_FIELDS = frozenset({
    "cooldown_until", "cooldown_reason", "backoff_s", "benched", "benched_reason",
    "needs_reauth", "reauth_fingerprint", "constrained_until", "model_cooldowns",
    "model_backoff_s", "model_reasons", "over_budget_until", "over_budget_reason",
    "consecutive_errors", "window_started_for", "window_started_at", "overage_until",
    "operator_paused"})
"""Fields of :class:`~mitmflare.routing.account_state.AccountState` only its transitions
change (``Verdict.cooldown_until`` and the like are other objects' fields of the same name:
they are set only in constructors, which this check does not see)."""
MUTATORS = frozenset({"pop", "clear", "update", "setdefault", "popitem", "__setitem__",
                      "__delitem__"})


def modules() -> list[tuple[str, ast.Module]]:
    """(path relative to the package, parsed module) of every module of mitmflare."""
    return [(str(p.relative_to(PACKAGE)), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(PACKAGE.rglob("*.py"))]


def _field(node: ast.expr) -> str | None:
    """The state field ``node`` names (``x.cooldown_until``, ``x.model_cooldowns[m]``)."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute) and node.attr in STATE_FIELDS:
        return node.attr
    return None


def state_changes(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, field) of every assignment, deletion or in-place change of a state field."""
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                targets += target.elts if isinstance(target, ast.Tuple) else [target]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in MUTATORS:
            targets = [node.func.value]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "setattr" and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and node.args[1].value in STATE_FIELDS:
            found.append((node.lineno, node.args[1].value))
        for target in targets:
            name = _field(target)
            if name is not None:
                found.append((node.lineno, name))
    return found


def test_only_the_account_state_module_changes_account_state():
    offenders = [f"{path}:{line} changes {name}" for path, tree in modules()
                 if path != ACCOUNT_STATE for line, name in state_changes(tree)]
    assert offenders == [], "call a transition of routing/account_state.py instead"


def test_the_check_sees_every_form_of_change():
    tree = ast.parse("st.cooldown_until = 1\nst.backoff_s += 1\na.benched, b = 1, 2\n"
                     "del st.model_cooldowns[m]\nst.model_reasons.pop(m)\n"
                     "st.model_cooldowns[m] = 1\nsetattr(st, 'needs_reauth', True)\n"
                     "x = st.cooldown_until\nst.model_cooldowns.get(m)\n")
    assert sorted(line for line, _ in state_changes(tree)) == [1, 2, 3, 4, 5, 6, 7]
    own = dict(modules())[ACCOUNT_STATE]
    assert len(state_changes(own)) > 20  # the transitions themselves are seen


def sqlite_connections(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, enclosing function) of every ``sqlite3.connect(…)`` and every use of a name
    ``open_state_db`` (the old opener of the state database)."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef,
                                                     ast.AsyncFunctionDef)) else function
            connects = isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) \
                and child.func.attr == "connect" and isinstance(child.func.value, ast.Name) \
                and child.func.value.id == "sqlite3"
            names_opener = isinstance(child, (ast.Name, ast.Attribute, ast.alias)) and \
                "open_state_db" in (getattr(child, "id", None), getattr(child, "attr", None),
                                    getattr(child, "name", None))
            if connects or names_opener:
                found.append((child.lineno, function))
            visit(child, inner)

    visit(tree, "")
    return found


def test_only_the_state_store_opens_the_state_database():
    offenders = [f"{path}:{line} ({function or 'module level'}) opens a SQLite file"
                 for path, tree in modules() if path != STATE_STORE
                 for line, function in sqlite_connections(tree)
                 if (path, function) not in ANALYTICS_CONNECTIONS]
    assert offenders == [], ("open the state database through storage/state_store.py; a new "
                             "opener of the analytics database belongs in ANALYTICS_CONNECTIONS")


def test_every_listed_analytics_connection_exists():
    """The list cannot go stale: each pair names a function that does connect."""
    seen = {(path, function) for path, tree in modules()
            for _, function in sqlite_connections(tree)}
    assert seen >= ANALYTICS_CONNECTIONS


def test_the_connection_check_sees_each_form():
    tree = ast.parse("import sqlite3\ndef f():\n    sqlite3.connect('x')\n"
                     "from w import open_state_db\ndef g():\n    w.open_state_db('y')\n")
    assert sqlite_connections(tree) == [(3, "f"), (4, ""), (6, "g")]


CONVERSIONS = frozenset({"convert_request", "convert_answer", "stream_converter"})
ATTEMPT = "addons/attempt.py"


def test_only_the_attempt_module_converts_between_formats():
    """The Anthropic ⇄ OpenAI conversion of a request and its answer is called from one
    place (``addons/attempt.py``); ``providers/convert.py`` defines it."""
    offenders = [f"{path}:{node.lineno} imports {alias.name}" for path, tree in modules()
                 if path not in (ATTEMPT, "providers/convert.py")
                 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 for alias in node.names if alias.name in CONVERSIONS]
    assert offenders == []


def test_failover_is_a_listed_part_just_before_the_router():
    from mitmflare.addons.failover import Failover
    from mitmflare.addons.router import Router
    from mitmflare.bundle import make_addons

    kinds = [type(part) for part in make_addons()]
    assert kinds.index(Failover) + 1 == kinds.index(Router)
