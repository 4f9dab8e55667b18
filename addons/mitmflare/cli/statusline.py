"""``mitmflare statusline``: one line about the pool for Claude Code's statusline.

Claude Code runs its ``statusLine`` command after each turn and pipes a JSON object to it on
stdin (``session_id``, ``model``, ``workspace``, ``cost``, ``rate_limits``, …); only
``session_id`` is used here. The command asks the proxy's ``GET /health`` (with the user's
access key when one is known) and prints, e.g.::

    pool 5h 43 % (resets 14:05) · 7d 61 % · on work-max · $3.20 today

It must be quick (it runs on every refresh): imports are inside the function, the request
uses the standard library with a 1 s timeout, and any failure prints a short line and exits 0
(a statusline command that fails shows nothing useful).
"""

from typing import Annotated

import typer

DEFAULT_URL = "http://127.0.0.1:8080"
KEY_PREFIX = "mfk_"


def statusline(
        url: Annotated[str | None, typer.Option(
            "--url", envvar="MITMFLARE_URL",
            help="The proxy (default: ANTHROPIC_BASE_URL, else http://127.0.0.1:8080).")] = None,
        key: Annotated[str | None, typer.Option(
            "--key", envvar="MITMFLARE_ACCESS_KEY",
            help="Your access key (default: ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN when "
                 "it is an mfk_ key).")] = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for the proxy.")] = 1.0,
) -> None:
    """Print one line for Claude Code's statusline: the pool's 5-hour and weekly use, the
    account serving this session and what was spent today.

    Example, in ~/.claude/settings.json:
    "statusLine": {"type": "command", "command": "mitmflare statusline"}
    """
    import json
    import os
    import sys
    import urllib.error
    import urllib.parse
    import urllib.request

    session = None
    if not sys.stdin.isatty():
        try:
            given = json.loads(sys.stdin.read() or "{}")
            session = given.get("session_id") if isinstance(given, dict) else None
        except ValueError:
            pass
    base = url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_URL
    parts = urllib.parse.urlsplit(base)
    query = "?" + urllib.parse.urlencode({"session": session}) if isinstance(session, str) else ""
    target = f"{parts.scheme or 'http'}://{parts.netloc or parts.path}/health{query}"
    if key is None:
        key = next((v for v in (os.environ.get("ANTHROPIC_API_KEY"),
                                os.environ.get("ANTHROPIC_AUTH_TOKEN"))
                    if v and v.startswith(KEY_PREFIX)), None)
    request = urllib.request.Request(target, headers={"x-api-key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            health = json.loads(answer.read())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        typer.echo(f"mitmflare: unreachable at {parts.netloc or base} ({reason})")
        return
    typer.echo(render(health))


def render(health: dict) -> str:
    """The line for a ``/health`` body (see :meth:`mitmflare.addons.operations.Operations.health`
    and ``serving``); reset times in local time."""
    import time

    from ..money import usd

    if "accounts" not in health:
        return f"mitmflare {health.get('status', '?')} (give your access key for the pool: " \
               "MITMFLARE_ACCESS_KEY)"
    out = []
    windows = (health.get("pool") or {}).get("windows") or {}
    for name in ("5h", "7d"):
        window = windows.get(name)
        if not window:
            continue
        text = f"{name} {round(window['utilization'] * 100)} %"
        reset = window.get("reset")
        if name == "5h" and reset:
            shape = "%H:%M" if reset - time.time() < 86400 else "%a %H:%M"
            text += f" (resets {time.strftime(shape, time.localtime(reset))})"
        out.append(text)
    if out:
        out[0] = "pool " + out[0]
    else:
        accounts = health["accounts"]
        out.append(f"pool {accounts['available']}/{accounts['total']} accounts available")
    if health.get("serving_account"):
        out.append(f"on {health['serving_account']}")
    if health.get("spent_today_usd") is not None:
        out.append(f"{usd(health['spent_today_usd'])} today")
    if health.get("status") != "ok":
        out.append(str(health.get("status")))
    return " · ".join(out)
