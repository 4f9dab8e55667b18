"""Setting and removing one variable in a ``.env`` file (``VAR=value`` lines, as
python-dotenv reads them), keeping its other lines. The file holds API keys: every write
leaves it with mode 0600 and replaces it atomically (:mod:`.file_replace`)."""

from __future__ import annotations

from pathlib import Path

from .file_replace import replace_text


def _is_line_of(line: str, var: str) -> bool:
    stripped = line.strip().removeprefix("export ").lstrip()
    return stripped.startswith(f"{var}=") or stripped.startswith(f"{var} =")


def set_var(path: Path, var: str, value: str) -> None:
    """Set ``var`` to ``value`` (a line ``VAR=value`` at the end, replacing earlier ones).
    Creates the file (and its directory) when missing. Raises ``OSError``."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    lines = [line for line in lines if not _is_line_of(line, var)] + [f"{var}={value}"]
    replace_text(path, "\n".join(lines) + "\n", mode=0o600)


def has_var(path: Path, var: str) -> bool:
    """True when the file exists and sets ``var``."""
    return path.exists() and any(_is_line_of(line, var)
                                 for line in path.read_text(encoding="utf-8").splitlines())


def remove_var(path: Path, var: str) -> bool:
    """Delete the lines setting ``var``. True when there were any. Raises ``OSError``."""
    if not has_var(path, var):
        return False
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if not _is_line_of(line, var)]
    replace_text(path, "".join(f"{line}\n" for line in lines), mode=0o600)
    return True
