"""The layout's import rules, as each folder's ``__init__`` states them: what a sub-package of
``mitmflare`` may import of the others (imports inside functions included)."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "addons" / "mitmflare"
HELPERS = {"times", "money", "runtime", "__init__"}  # top-level modules anything may import
ALLOWED = {
    "routing": {"config", "providers"},
    "providers": {"config", "routing.classify"},  # the OAuth manager reports refusals as verdicts
    "storage": {"config", "providers", "routing"},
    "config": {"providers.presets"},
    "demo": {"storage", "providers", "config"},
    "cli": {"config", "storage", "providers", "demo"},
}


def imported(path) -> set[str]:
    """Dotted names (relative to ``mitmflare``) that the module at ``path`` imports."""
    here = path.relative_to(PACKAGE).with_suffix("").parts
    package = here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("mitmflare"):
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module is None or not target:  # `from .. import x`: x is a module
                found |= {".".join([*target, a.name]) for a in node.names}
            else:
                found.add(".".join(target))
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names
                      if a.name.startswith("mitmflare.")}
    return found


def breaches() -> list[str]:
    out = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for name in imported(path):
                top = name.split(".")[0]
                if top == folder or top in HELPERS:
                    continue
                if not any(name == a or name.startswith(a + ".") for a in allowed):
                    out.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return out


def test_each_folder_imports_only_what_its_docstring_allows():
    assert breaches() == []


def test_the_check_sees_relative_absolute_and_function_level_imports():
    assert "config.accounts" in imported(PACKAGE / "routing" / "pool.py")
    source = "def f():\n    from ..addons import router\n    import mitmflare.storage.writer\n"
    fake = PACKAGE / "routing" / "_probe_for_test.py"
    fake.write_text(source)
    try:
        assert {"addons", "storage.writer"} <= imported(fake)
        assert {"routing/_probe_for_test.py imports addons",
                "routing/_probe_for_test.py imports storage.writer"} <= set(breaches())
    finally:
        fake.unlink()
