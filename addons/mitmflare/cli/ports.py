"""Whether the ports ``mitmflare run`` is about to bind can be bound, checked before anything
starts, one line per problem."""

from __future__ import annotations

import socket


def bind_error(host: str, port: int) -> str | None:
    """None when a server could listen on ``host``:``port`` now, else the OS's reason
    (e.g. ``Address already in use``).

    Binds as the servers do (asyncio's ``create_server`` behind mitmproxy and uvicorn,
    tornado behind mitmweb: ``SO_REUSEADDR`` set before ``bind``), so a port with only
    TIME-WAIT connections left by a run stopped a moment ago counts as free, and a port with
    a listener does not. ``host`` ``""`` or ``0.0.0.0`` means every IPv4 address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return f"{host} cannot be resolved ({exc.strerror})"
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def clashes(wanted: list[tuple[str, str, int]]) -> list[str]:
    """One line per problem among ``wanted`` (each ``(name, host, port)``, the name saying
    which setting gives the port, e.g. ``dashboard (MITMFLARE_DASHBOARD_PORT)``): a port given
    to two of them, or a port that cannot be bound (:func:`bind_error`). [] when all can
    start."""
    lines: list[str] = []
    owner: dict[int, str] = {}
    for name, host, port in wanted:
        if port in owner:
            lines.append(f"{name}: port {port} is already given to the {owner[port]}; choose another port")
            continue
        owner[port] = name
        error = bind_error(host, port)
        if error is not None:
            lines.append(f"{name}: port {port} on {host} is not free ({error}); stop what "
                         f"uses it or choose another port")
    return lines
