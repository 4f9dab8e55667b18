"""The runtime file: how a running proxy tells the ``mitmflare`` command which files and ports
it uses, so the command finds them from any folder.

The proxy writes it once it runs (:class:`~.runtime_addon.RuntimeFile`) and removes it when it
stops cleanly; a file whose PID is dead (the proxy was killed) is ignored. Mode 0600, written
atomically, in two places:

* beside the state database: ``<flare_state's folder>/mitmflare-runtime.json``, held by the
  first running proxy of that state database (workers sharing it, ``mitmflare run
  --workers``, never overwrite one another's: the others write only their own file below);
* one file per proxy, ``<pid>.json``, in a per-user folder (:func:`registry_dir`):
  ``$MITMFLARE_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/mitmflare``, else
  ``~/.cache/mitmflare/running``.

Content (JSON): ``pid``, ``started_at`` (ISO UTC), ``version``, ``cwd``, ``accounts``, ``db``,
``state`` (absolute paths: the proxy's ``flare_accounts``, ``flare_db``, ``flare_state``),
``demo`` (bool), ``listeners`` (``[{"mode", "host", "port"}]``) and ``ports`` (``{name: port}``
of mitmweb and of what ``mitmflare run`` started with the proxy: dashboard, simulated
upstream). No secret is in it.

This module does blocking file I/O; the proxy calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

FILE_NAME = "mitmflare-runtime.json"


def registry_dir() -> Path:
    """The per-user folder of runtime files (see the module)."""
    if os.environ.get("MITMFLARE_RUNTIME_DIR"):
        return Path(os.environ["MITMFLARE_RUNTIME_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "mitmflare"
    return Path.home() / ".cache" / "mitmflare" / "running"


def paths_for(state: str, pid: int) -> list[Path]:
    """Where the proxy with state database ``state`` and process ``pid`` writes its file."""
    return [Path(state).absolute().parent / FILE_NAME, registry_dir() / f"{pid}.json"]


def write(facts: dict, paths: list[Path]) -> list[str]:
    """Write ``facts`` as JSON to each of ``paths`` (mode 0600, atomically: a reader never
    sees half a file), creating the folders (0700); a file that names another running proxy
    is left to it (see the module). Returns one line per path that could not be written (a
    read-only folder), [] when all were."""
    data = json.dumps(facts, indent=2).encode()
    failed = []
    for path in paths:
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            _claim(partial, path, facts.get("pid"))
        except OSError as exc:
            failed.append(f"{path}: {exc.strerror or exc}")
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
    return failed


def _claim(partial: Path, path: Path, pid: object) -> None:
    """Put ``partial`` at ``path`` unless ``path`` names another running proxy: created
    atomically when there is none (two proxies starting together: one wins), replaced when
    it is this one's or its proxy is gone."""
    try:
        os.link(partial, path)
        return
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system: no atomic claim
        if not path.exists():
            os.replace(partial, path)
            return
    held = read(path)
    if held is None or held.get("pid") == pid:
        os.replace(partial, path)


def remove(paths: list[Path], pid: int) -> None:
    """Delete those of ``paths`` that still name process ``pid`` (another proxy may have
    written the file beside the same state database since)."""
    for path in paths:
        facts = read(path, live_only=False)
        if facts is not None and facts.get("pid") == pid:
            with contextlib.suppress(OSError):
                path.unlink()


def alive(pid: object) -> bool:
    """Whether process ``pid`` exists (and, where ``/proc`` tells, is a mitmproxy tool: a PID
    reused by another program after a crash does not count)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"mitm" in cmdline


def read(path: Path, live_only: bool = True) -> dict | None:
    """The facts in the runtime file at ``path``; None when it is missing, unreadable, or
    (``live_only``) its proxy is no longer running."""
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or (live_only and not alive(facts.get("pid"))):
        return None
    return facts


def running() -> list[dict]:
    """Every running proxy's facts from the per-user folder, newest first."""
    try:
        files = list(registry_dir().glob("*.json"))
    except OSError:
        return []
    found = [facts for facts in map(read, files) if facts is not None]
    return sorted(found, key=lambda f: str(f.get("started_at", "")), reverse=True)


def own_ports(facts: dict) -> dict[int, str]:
    """``{port: what}`` for the ports of the proxy described by ``facts``: its listeners
    (``proxy listener``), mitmweb, and what ``mitmflare run`` started with it."""
    ports = {int(lst["port"]): "proxy listener" for lst in facts.get("listeners") or []
             if isinstance(lst, dict) and isinstance(lst.get("port"), int)}
    for name, port in (facts.get("ports") or {}).items():
        if isinstance(port, int):
            ports[port] = name
    return ports


def parse_info(text: str) -> tuple[dict[str, int], bool]:
    """``flare_runtime_info`` (``demo,dashboard=8001,simulated upstream=9099``) as (ports by
    name, demo). Raises ValueError naming a bad item."""
    ports: dict[str, int] = {}
    demo = False
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            if item != "demo":
                raise ValueError(f"{item!r}: give NAME=PORT or demo")
            demo = True
        elif not value.strip().isdigit() or not 0 < int(value) < 65536 or not name.strip():
            raise ValueError(f"{item!r}: give NAME=PORT with a port from 1 to 65535")
        else:
            ports[name.strip()] = int(value)
    return ports, demo
