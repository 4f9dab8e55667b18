"""HAProxy in front of ``mitmflare run --workers N``: its configuration, made from the shipped
``deploy/haproxy.cfg`` (its ``defaults`` and its backend's health checks and retries, so both
setups behave alike), and its runtime API (a private admin socket) to take a worker out of
rotation and back.

Standard library only.
"""

from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[3] / "deploy" / "haproxy.cfg"
BACKEND = "workers"
ADMIN_TIMEOUT_S = 5.0
DNS_ONLY = ("resolvers", "init-addr")  # default-server settings for names, not loopback ports


def sections(text: str) -> dict[str, list[str]]:
    """HAProxy configuration ``text`` as {section header (``defaults``, ``backend workers``):
    its settings, stripped, without comments}."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            current = out.setdefault(" ".join(line.split()), [])
        elif current is not None:
            current.append(line.strip())
    return out


def _without_dns(setting: str) -> str:
    words, kept = setting.split(), []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in DNS_ONLY:
            skip = True
        else:
            kept.append(word)
    return " ".join(kept)


def config(bind: str, servers: list[tuple[str, int]], admin_socket: str,
           shipped: Path = SHIPPED) -> str:
    """The configuration for workers ``servers`` ((name, loopback port) pairs) behind ``bind``
    (``host:port``), with the runtime API on unix socket ``admin_socket`` (mode 0600, admin
    level). Raises KeyError when ``shipped`` lacks its ``defaults`` or ``backend workers``."""
    parts = sections(shipped.read_text())
    backend = [_without_dns(s) for s in parts[f"backend {BACKEND}"]
               if not s.startswith("server ")]
    lines = ["global", *(f"    {s}" for s in parts.get("global", [])),
             f"    stats socket {admin_socket} mode 600 level admin",
             "defaults", *(f"    {s}" for s in parts["defaults"]),
             "frontend mitmflare", f"    bind {bind}", f"    default_backend {BACKEND}",
             f"backend {BACKEND}", *(f"    {s}" for s in backend),
             *(f"    server {name} 127.0.0.1:{port} check" for name, port in servers)]
    return "\n".join(lines) + "\n"


def bind_address(host: str, port: int) -> str:
    """HAProxy's ``bind`` address for ``host`` and ``port`` (IPv6 with its prefix)."""
    return f"ipv6@{host.strip('[]')}:{port}" if ":" in host else f"{host}:{port}"


def admin(path: str, command: str) -> str:
    """Send one runtime-API ``command`` to HAProxy's admin socket at ``path`` and return its
    answer. Raises OSError when HAProxy does not answer within ``ADMIN_TIMEOUT_S``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(ADMIN_TIMEOUT_S)
        conn.connect(path)
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def set_state(path: str, server: str, state: str) -> None:
    """Put worker ``server`` in ``state``: ``drain`` (no new requests), ``maint`` (out) or
    ``ready`` (back, once its health checks pass). Raises OSError on an error answer."""
    answer = admin(path, f"set server {BACKEND}/{server} state {state}").strip()
    if answer:
        raise OSError(f"haproxy: {answer}")


def servers(path: str) -> dict[str, dict[str, str]]:
    """{worker name: its ``show stat`` fields} (``status``: UP, DOWN, MAINT, DRAIN…;
    ``scur``: requests it is handling now)."""
    text = admin(path, "show stat").lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {r["svname"]: r for r in rows
            if r.get("pxname") == BACKEND and r.get("svname") not in ("BACKEND", "FRONTEND")}
