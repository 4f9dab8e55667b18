"""A lock file that one process holds while it runs: ``mitmflare run --demo`` takes
``.demo/run.lock`` so a second demo from the same checkout is refused before it rewrites the
first one's files.

The lock is an ``flock`` on the file, which the kernel drops when the holder ends however it
ends, so a lock left by a process that died (its PID is dead) is taken over. The file says
who holds it: JSON ``{"pid": …, "ports": {name: port}}``.
"""

from __future__ import annotations

import fcntl
import json
import os


class Held(Exception):
    """Another live process holds the lock; ``facts`` is what it wrote (``pid``, ``ports``),
    {} when it is unreadable."""

    def __init__(self, facts: dict) -> None:
        super().__init__(facts)
        self.facts = facts


def take(path: str, ports: dict[str, int]) -> int:
    """Hold the lock at ``path`` (created with mode 0600) for as long as this process runs,
    writing this process's PID and ``ports`` into it; returns the file descriptor (close it,
    or end the process, to let go: see :func:`release`).

    Raises :class:`Held` when another live process holds it, OSError when the file cannot be
    opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            facts = json.loads(os.read(fd, 65536) or b"{}")
        except ValueError:
            facts = {}
        os.close(fd)
        raise Held(facts if isinstance(facts, dict) else {}) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "ports": ports}).encode())
    return fd


def release(fd: int) -> None:
    """Empty the lock file (nobody holds it) and let go of the lock. The file stays: removing
    it could let two later runs lock two different files."""
    os.ftruncate(fd, 0)
    os.close(fd)


def holder_line(facts: dict) -> str:
    """``pid 1234: proxy 8080, dashboard 8001`` from what :func:`take` wrote."""
    ports = ", ".join(f"{name} {port}" for name, port in (facts.get("ports") or {}).items())
    return f"pid {facts.get('pid', '?')}" + (f": {ports}" if ports else "")
