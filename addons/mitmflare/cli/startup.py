"""What ``mitmflare run`` checks around starting mitmdump: the ``--set`` options it is given,
and that the listener is answered by mitmflare itself before it says the proxy is ready."""

from __future__ import annotations

import json
import subprocess
import time

READY_TIMEOUT_S = 30.0
SETTLE_S = 1.0


def merge_sets(defaults: dict[str, str], args: list[str]) -> tuple[dict[str, str], list[str]]:
    """(``defaults`` updated by the ``--set KEY=VALUE`` pairs in ``args``, the other arguments).

    An option the user sets replaces ``run``'s own value for it, so mitmdump sees each option
    once (mitmproxy drops a script's option given twice without a word: its issue #8013).
    Raises ValueError naming an option the user gave twice, or a ``--set`` with no value."""
    merged = dict(defaults)
    rest: list[str] = []
    seen: set[str] = set()
    items = iter(args)
    for arg in items:
        if arg == "--set" or arg.startswith("--set="):
            spec = arg[len("--set="):] if arg.startswith("--set=") else next(items, "")
            key, sep, value = spec.partition("=")
            if not key:
                raise ValueError("--set needs KEY=VALUE")
            if key in seen:
                raise ValueError(f"--set {key} is given twice; give it once")
            seen.add(key)
            merged[key] = value if sep else "true"
        else:
            rest.append(arg)
    return merged, rest


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> str | None:
    """Wait until ``url``/health is answered by mitmflare (JSON with its ``status``) twice,
    ``SETTLE_S`` apart, with the proxy still running (mitmdump exits just after start when an
    error was logged while starting); None then, else why not (the process ended, something
    else answers, or ``timeout`` s passed)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last = "no answer"
    answered = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the proxy exited with status {proc.returncode} (see its log above)"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                body = json.loads(answer.read() or b"null")
            if isinstance(body, dict) and body.get("status") in ("ok", "degraded"):
                answered += 1
                if answered == 2:
                    return None
                time.sleep(SETTLE_S)
                continue
            last = "its /health answer is not mitmflare's"
        except urllib.error.HTTPError as exc:
            last = f"/health answered {exc.code}: mitmflare is not running in the proxy"
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return f"{last} within {timeout:.0f} s"
