"""Replacing a small text file that may hold secrets (the accounts file, a ``.env`` file) so
that a reader never sees half of it and nobody else gains access to it.

The write goes to the path's final target (a symlinked ``config/accounts.yaml`` stays a link,
and whatever reads its target sees the change): a temporary file in the target's directory
gets the content, the target's owner and mode, and is renamed over it (``os.replace``, atomic
on POSIX).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


class FileReplaceError(OSError):
    """The file cannot be replaced without changing who may read it; says why."""


def replace_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None,
                 new_file_mode: int = 0o600) -> Path:
    """Atomically replace the file at ``path`` (after following symlinks) with ``text`` (UTF-8).

    The new file keeps the old one's owner and group and its permission bits, or gets
    ``mode`` when given (e.g. ``0o600`` for a ``.env`` file); a file that did not exist is
    created with ``new_file_mode``. Returns the path written (the link's target).

    Raises :class:`FileReplaceError` when the owner cannot be kept (another user's file,
    edited without root: the result would be unreadable to that user), and ``OSError`` when
    the directory is not writable; the file is unchanged then.
    """
    target = Path(os.path.realpath(path))
    try:
        old: os.stat_result | None = target.stat()
    except FileNotFoundError:
        old = None
    if mode is None:
        mode = stat.S_IMODE(old.st_mode) if old else new_file_mode
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if old and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fh.fileno(), old.st_uid, old.st_gid)
                except PermissionError:
                    raise FileReplaceError(
                        f"{target} belongs to uid {old.st_uid}, gid {old.st_gid}: edit it as "
                        f"that user (or root) so that it keeps its owner") from None
            os.fchmod(fh.fileno(), mode)  # after fchown, which may clear mode bits
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return target
