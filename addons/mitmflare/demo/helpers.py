"""Helpers for ``./scripts/run --demo`` and ``./scripts/dashboard``.

``python -m mitmflare.demo.helpers write-accounts FILE SIM_URL``: demo accounts pointed at the
simulated upstream. ``init-db FILE``: create the analytics tables so Datasette can open the
file before the first request. ``traffic ANTHROPIC_URL OPENAI_URL``: a steady trickle of
requests through the proxy with the real SDKs, as the demo user (loopback only; stops when
killed).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the SDKs take a while to import
    import anthropic
    import openai

DEMO_ACCOUNTS = """\
# Written by ./scripts/run --demo: demo accounts pointed at the simulated upstream.
accounts:
  - name: max-primary
    provider: anthropic
    oauth: {{access_token: sk-ant-oat01-demo-primary, refresh_token: sk-ant-ort01-demo-primary}}
    priority: 0
    base_url: {sim}
  - name: max-secondary
    provider: anthropic
    oauth: {{access_token: sk-ant-oat01-demo-secondary, refresh_token: sk-ant-ort01-demo-2}}
    priority: 1
    base_url: {sim}
  - name: api-key-team
    provider: anthropic
    api_key: sk-ant-api03-demo-team
    priority: 2
    base_url: {sim}
  - name: openai-main
    provider: openai
    api_key: sk-proj-demo-main
    base_url: {sim}
  - name: openai-backup
    provider: openai
    api_key: sk-proj-demo-backup
    priority: 1
    base_url: {sim}
"""

DEMO_USER = "demo"
KEY_VARIABLE = "MITMFLARE_DEMO_KEY"  # the demo user's key, for the traffic process
CLAUDE_MODELS = ["claude-sonnet-4-6", "claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-8"]
OPENAI_MODELS = ["gpt-4o-mini", "gpt-4.1", "gpt-5-mini"]


def write_accounts(path: str, sim_url: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(DEMO_ACCOUNTS.format(sim=sim_url))


def demo_user_key(state: str) -> str:
    """A fresh access key for the user ``demo`` in the state database ``state``: created,
    or given a new key and enabled (only key hashes are stored, so an earlier run's key is
    unknown). The demo's traffic sends it, so it is served with access keys required."""
    from ..storage.users import UserError, UsersStore

    store = UsersStore(state)
    try:
        try:
            _, key = store.add(DEMO_USER)
        except UserError:
            store.update(DEMO_USER, disabled=False)
            _, key = store.rotate(DEMO_USER)
    finally:
        store.close()
    return key


def init_db(path: str) -> None:
    from ..storage.writer import open_analytics_db

    open_analytics_db(path).conn.close()


def traffic(anthropic_url: str, openai_url: str, interval_s: float = 1.0) -> None:
    """Requests through the proxy until killed, sent with the demo user's key
    (``$MITMFLARE_DEMO_KEY``, see :func:`demo_user_key`)."""
    import anthropic
    import openai

    key = os.environ.get(KEY_VARIABLE) or "demo-client"
    sessions = [str(uuid.uuid4()) for _ in range(4)]
    time.sleep(3)
    with anthropic.Anthropic(base_url=anthropic_url, api_key=key, max_retries=2) as claude, \
            openai.OpenAI(base_url=openai_url + "/v1", api_key=key, max_retries=2) as gpt:
        while True:
            try:
                _one_request(claude, gpt, sessions)
            except Exception as exc:  # the demo goes on whatever one request did
                print(f"demo request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            time.sleep(random.uniform(0.3, interval_s * 2))


def _one_request(claude: anthropic.Anthropic, gpt: openai.OpenAI, sessions: list[str]) -> None:
    """One demo request: 3 in 4 to Claude (60 % streamed, in one of ``sessions``), the rest
    to an OpenAI-format model."""
    if random.random() < 0.75:
        headers = {"x-claude-code-session-id": random.choice(sessions)}
        kwargs: dict[str, Any] = {
            "model": random.choice(CLAUDE_MODELS), "max_tokens": 200, "extra_headers": headers,
            "messages": [{"role": "user", "content": "demo " * random.randint(5, 400)}]}
        if random.random() < 0.6:
            with claude.messages.stream(**kwargs) as stream:
                stream.get_final_message()
        else:
            claude.messages.create(**kwargs)
    else:
        gpt.chat.completions.create(model=random.choice(OPENAI_MODELS),
                                    messages=[{"role": "user", "content": "demo"}],
                                    stream=random.random() < 0.5)


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "write-accounts":
        write_accounts(*args)
    elif command == "init-db":
        init_db(*args)
    elif command == "traffic":
        anthropic_url, openai_url, *interval = args
        with contextlib.suppress(KeyboardInterrupt):
            traffic(anthropic_url, openai_url, *map(float, interval))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
