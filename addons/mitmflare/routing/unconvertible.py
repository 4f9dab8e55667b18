"""OpenAI-format requests that some upstream formats cannot serve, refused clearly instead of
served wrong.

* ``previous_response_id`` / ``conversation`` (Responses API): the upstream must keep the
  earlier turns. An Anthropic account keeps none, and the Codex endpoint stores nothing
  (``store: false``); mitmflare does not keep them either (a proxy's memory is lost on a
  restart and not shared between processes: a conversation would break silently). Only
  ``openai`` / ``openai-compatible`` accounts (passed through) may serve them.
* Built-in tools (Responses ``tools`` other than ``function``: ``web_search``,
  ``file_search``, ``code_interpreter``, ``computer_use_preview``, ``image_generation``,
  ``mcp``, …; Chat Completions ``web_search_options``): only function tools convert to
  Anthropic tools, so Anthropic accounts cannot serve them; Codex and OpenAI accounts take
  them as they are.

:func:`refusal` leaves the accounts that cannot serve a request out of its choice, and gives
the 400 message when no other account could serve it.
"""

from __future__ import annotations

from typing import Any

from ..providers.presets import ANTHROPIC, CODEX
from .pool import Account

STATEFUL = ("previous_response_id", "conversation")


def unservable(path: str, body: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    """Wire format -> (the request's field it cannot serve, why) for an OpenAI-format request
    to ``path`` (no query string) with ``body``; {} when every format can serve it."""
    if not body:
        return {}
    out: dict[str, tuple[str, str]] = {}
    if path == "/v1/responses":
        stateful = next((key for key in STATEFUL if body.get(key)), None)
        if stateful:
            why = (f"`{stateful}` needs an upstream that keeps the conversation, and this "
                   f"account keeps none (send the whole conversation in `input` instead)")
            out = {ANTHROPIC: (stateful, why), CODEX: (stateful, why)}
        builtin = sorted({str(t.get("type")) for t in body.get("tools") or []
                          if isinstance(t, dict) and t.get("type") != "function"})
        if builtin and ANTHROPIC not in out:
            out[ANTHROPIC] = ("tools", f"built-in tools ({', '.join(builtin)}) do not convert "
                                       f"to Anthropic tools (only function tools do)")
    elif path == "/v1/chat/completions" and body.get("web_search_options") is not None:
        out[ANTHROPIC] = ("web_search_options", "web search does not convert to Anthropic "
                                                "Messages")
    return out


def refusal(accounts: list[Account], path: str, body: dict[str, Any] | None,
            excluded: set[str], skipped: dict[str, str]) -> str | None:
    """Leave out of the choice (``excluded``, with the reason in ``skipped``) the
    ``accounts`` (those that could otherwise serve the request) whose format cannot serve it;
    the 400 message when that leaves none, else None."""
    cannot = unservable(path.split("?", 1)[0], body)
    if not cannot:
        return None
    left_out = [a for a in accounts if a.wire in cannot]
    for account in left_out:
        excluded.add(account.name)
        skipped[account.name] = f"cannot serve it: {cannot[account.wire][1]}"
    if not left_out or len(left_out) < len(accounts):
        return None
    field, why = cannot[left_out[0].wire]
    names = ", ".join(a.name for a in left_out)
    return (f"mitmflare: `{field}` is not supported by the accounts that could serve this "
            f"request ({names}): {why}. An `openai` account serves it as it is.")
