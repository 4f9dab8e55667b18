#!/usr/bin/env python3
"""A simulated working day of Claude Code traffic through several routings: what each loses
to prompt-cache misses, read back from each proxy's database.

    ./scripts/bench --cache-day [--conversations 20] [--accounts 5] [--hours 6]
                                [--scale 120] [--seed 24] [--keep DIR] [--json]

The day: ``--conversations`` Claude Code-like conversations (``x-claude-code-session-id``,
streamed Messages requests with ``cache_control`` on the system prompt, which follows the
tools, and on the last turn; the history grows by an assistant turn with a tool call and its
result each request, and is compacted to a summary past :data:`COMPACT_AT` tokens), in bursts
of agent steps a few seconds apart, separated by the user's pauses (median 2.5 min, about one
in five longer than the 5-minute TTL, now and then a break of 30-75 min); some bursts run a
sub-agent (``x-claude-code-agent-id``). Times, sizes and texts come from ``--seed``, so every
routing gets the same requests at the same (simulated) times.

Each routing gets its own simulated upstream (per-account prompt caches with TTLs, 5-hour
usage windows enforced: an account answers 429 once its window is used up, until it resets)
and its own mitmflare with ``--accounts`` subscription (OAuth) accounts, all running
side by side. Time runs ``--scale`` times faster: the simulator's windows and prompt-cache
TTLs (``--window-scale``, ``--ttl-scale``) and the proxy's TTLs (``flare_cache_ttl_scale``,
an option for benchmarks and tests) alike, so a 5-minute TTL really expires during the day
(120: 6 hours in 180 s, a 5-minute TTL in 2.5 s, a 5-hour window in 150 s). The routings (:data:`ROUTINGS`):

* ``mitmflare``: the defaults (``session`` strategy, prompt-cache stickiness, the hand-off
  near a limit), its ``flare_session_hours`` compressed like the day;
* ``round-robin``: ``flare_strategy=round-robin`` with ``sticky: false`` on every account, so
  nothing holds a conversation;
* ``session, no TTL``: ``flare_strategy=session`` with ``sticky: false`` and a session longer
  than the day: a conversation stays on its account, whatever its cache, until that account
  is near a limit or cannot serve, and then moves where the strategy says;
* ``round-robin, sticky``: ``flare_strategy=round-robin`` with mitmflare's prompt-cache
  stickiness (the default ``sticky: true``): round-robin once a conversation's cache expired.

Printed: one column per routing, rows read from its ``requests`` and ``attempts`` tables
after the proxy stopped: requests, errors the clients got, upstream 429s (accounts at their
limit), failovers, hit rate (cache reads / all input tokens, as the ``cache_hit_rate``
query), total cost, and the dollars lost to cache writes (``cache_loss_usd``) by cause
(``cache_event``). ``--keep DIR`` keeps each routing's database there; ``--json`` prints
the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench import BIN, ROOT, free_port, stop, wait_http

MODEL = "claude-sonnet-4-6"
MAX_TOKENS = 24        # the simulator counts max_tokens x 40 against the 5-hour window:
#                        ~400 requests fill an account's window
COMPACT_AT = 30_000    # tokens of history after which the conversation is compacted
TOKEN_CHARS = 4        # the simulator counts a block's JSON length / 4 as its tokens
WORDS = ("def", "return", "self", "import", "the", "value", "file", "test", "error", "path",
         "config", "request", "account", "cache", "token", "session", "model", "stream",
         "class", "async", "await", "list", "dict", "none", "true", "false", "line", "diff",
         "patch", "fix", "build", "run", "check", "assert", "raise")
TOOLS = ("Bash", "Read", "Edit", "Write", "Glob", "Grep", "Task", "TodoWrite", "WebFetch",
         "NotebookEdit", "MultiEdit", "LS")
CAUSES = ("first", "switch", "expired", "changed", "unknown")
SESSION_HOURS = 5.0    # flare_session_hours' default, compressed like the day for mitmflare
ROUTINGS: dict[str, tuple[dict[str, str], bool]] = {  # name -> (options, sticky accounts)
    "mitmflare": ({}, True),
    "round-robin": ({"flare_strategy": "round-robin"}, False),
    "session, no TTL": ({"flare_strategy": "session", "flare_session_hours": "100000"}, False),
    "round-robin, sticky": ({"flare_strategy": "round-robin"}, True),
}


# -- the day's traffic ------------------------------------------------------------------------
@dataclass
class Thread:
    """One prompt-cache conversation: a session's main thread or one of its sub-agents."""

    session: str
    agent: str | None
    system: list[dict]
    tools: list[dict]
    messages: list[dict] = field(default_factory=list)
    tokens: int = 0


@dataclass
class Call:
    """One request: at ``at_s`` simulated seconds into the day, ``thread``'s history as it
    was then (``messages``: the dicts, shared; the last one gets ``cache_control`` when
    sent)."""

    at_s: float
    thread: Thread
    messages: list[dict]


def _text(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choices(WORDS, k=max(1, tokens * TOKEN_CHARS // 6)))


def _tools(rng: random.Random) -> list[dict]:
    """Claude Code's tool definitions (~3,600 tokens; the same for every conversation)."""
    return [{"name": name, "description": _text(rng, 270), "input_schema": {
        "type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}}
        for name in TOOLS]


def _system(rng: random.Random, tokens: int) -> list[dict]:
    return [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": _text(rng, tokens),
             "cache_control": {"type": "ephemeral"}}]


def _step(rng: random.Random, thread: Thread, n: int, prompt: bool) -> None:
    """Grow ``thread`` by one exchange: the assistant's tool call and its result (or, for a
    ``prompt``, the user's new instruction); compacted to a summary past COMPACT_AT."""
    if not thread.messages or thread.tokens > COMPACT_AT:
        thread.messages = [{"role": "user", "content": [
            {"type": "text", "text": _text(rng, 1500 if thread.messages else 150)}]}]
        thread.tokens = 1500
        return
    call = f"toolu_{thread.session[-6:]}{thread.agent or ''}{n:04d}"
    said = _text(rng, rng.randint(20, 120))
    thread.messages = [*thread.messages, {"role": "assistant", "content": [
        {"type": "text", "text": said},
        {"type": "tool_use", "id": call, "name": rng.choice(TOOLS), "input": {"arg": said[:40]}}]}]
    size = rng.randint(100, 150) if prompt else int(rng.lognormvariate(math.log(300), 0.8))
    thread.messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call, "content": _text(rng, size)}]})
    thread.tokens += size + 150


def plan_day(conversations: int, hours: float, seed: int) -> list[list[Call]]:
    """Each conversation's requests in order (its sub-agents' among them), same for a seed."""
    rng = random.Random(seed)
    tools = _tools(rng)
    day_s = hours * 3600
    plans = []
    for c in range(conversations):
        session = f"day-{seed}-{c:02d}-{rng.getrandbits(32):08x}"
        main = Thread(session, None, _system(rng, rng.randint(1500, 2500)), tools)
        t = rng.uniform(0, 0.6 * day_s)
        end = min(day_s - 120, t + rng.uniform(0.2, 0.4) * day_s)
        calls: list[Call] = []
        n = 0
        while t < end:
            for j in range(rng.randint(2, 8)):
                _step(rng, main, n, j == 0)
                calls.append(Call(t, main, main.messages))
                n += 1
                t += rng.uniform(8, 40)  # the answer, then the tool runs
                if j == 1 and rng.random() < 0.2:  # a sub-agent (Task tool)
                    agent = Thread(session, f"a{n}", _system(rng, 800), tools[:6])
                    for k in range(rng.randint(3, 6)):
                        _step(rng, agent, k, k == 0)
                        calls.append(Call(t, agent, agent.messages))
                        t += rng.uniform(2, 12)
            t += rng.lognormvariate(math.log(150), 0.9) if rng.random() < 0.93 \
                else rng.uniform(1800, 4500)  # the user reads, thinks, or is away
        plans.append(calls)
    return plans


def body(call: Call) -> bytes:
    """The request body of ``call``: Claude Code's shape, ``cache_control`` on the system
    prompt's last block and on the last turn's last block."""
    *history, last = call.messages
    last = {**last, "content": [*last["content"][:-1],
                                {**last["content"][-1], "cache_control": {"type": "ephemeral"}}]}
    return json.dumps({"model": MODEL, "max_tokens": MAX_TOKENS, "stream": True,
                       "system": call.thread.system, "tools": call.thread.tools,
                       "messages": [*history, last],
                       "metadata": {"user_id": f"user_day_session_{call.thread.session}"}},
                      separators=(",", ":")).encode()


def headers(call: Call) -> dict[str, str]:
    out = {"x-api-key": "cache-day-client", "content-type": "application/json",
           "anthropic-version": "2023-06-01", "x-app": "cli",
           "user-agent": "claude-cli/2.0.14 (external, cli)",
           "x-claude-code-session-id": call.thread.session}
    if call.thread.agent:
        out["x-claude-code-agent-id"] = call.thread.agent
    return out


# -- driving the routings ---------------------------------------------------------------------
class Bodies:
    """Each call's body, serialised once and dropped once every routing has sent it."""

    def __init__(self, users: int) -> None:
        self.users = users
        self._made: dict[int, list] = {}

    def get(self, call: Call) -> bytes:
        entry = self._made.setdefault(id(call), [body(call), 0])
        entry[1] += 1
        if entry[1] == self.users:
            del self._made[id(call)]
        return entry[0]


async def _converse(client: httpx.AsyncClient, url: str, calls: list[Call], start: float,
                    scale: float, bodies: Bodies, statuses: list[int],
                    late: list[float]) -> None:
    for call in calls:
        wait = start + call.at_s / scale - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        late.append(max(0.0, -wait) * scale)  # behind the plan (the previous answer was slow)
        try:
            async with client.stream("POST", url + "/v1/messages", content=bodies.get(call),
                                     headers=headers(call)) as answer:
                async for _ in answer.aiter_raw():
                    pass
                statuses.append(answer.status_code)
        except httpx.HTTPError:
            statuses.append(0)


async def drive(plans: list[list[Call]], urls: dict[str, str],
                scale: float) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Send every conversation to every routing at the planned (scaled) times; per routing,
    the HTTP status each request got and how late it was sent (simulated s)."""
    statuses: dict[str, list[int]] = {name: [] for name in urls}
    late: dict[str, list[float]] = {name: [] for name in urls}
    bodies = Bodies(len(urls))
    limits = httpx.Limits(max_connections=len(plans) * 2)
    clients = {name: httpx.AsyncClient(timeout=120, limits=limits, trust_env=False)
               for name in urls}
    start = time.monotonic() + 0.5
    try:
        await asyncio.gather(*[_converse(clients[name], url, calls, start, scale, bodies,
                                         statuses[name], late[name])
                               for calls in plans for name, url in urls.items()])
    finally:
        for client in clients.values():
            await client.aclose()
    return statuses, late


def accounts_yaml(sim: str, accounts: int, sticky: bool) -> str:
    lines = ["accounts:"]
    for i in range(1, accounts + 1):
        lines.append(f"  - {{name: max-{i}, provider: anthropic, base_url: '{sim}', "
                     f"oauth: {{access_token: sk-ant-oat01-day-{i}, "
                     f"refresh_token: sk-ant-ort01-day-{i}}}"
                     + ("" if sticky else ", sticky: false") + "}")
    return "\n".join(lines) + "\n"


def start_routing(folder: Path, name: str, options: dict[str, str], sticky: bool,
                  accounts: int, scale: float, spawn) -> tuple[str, Path]:
    """A simulated upstream and a mitmflare in front of it for one routing; (proxy URL,
    its database)."""
    slug = name.replace(",", "").replace(" ", "-")
    sim_port, port = free_port(), free_port()
    spawn([str(BIN / "python"), "-m", "mitmflare.demo.simulator", "--port", str(sim_port),
           "--chunk-delay-ms", "0", "--windows", "--enforce-windows", "--forget-requests",
           "--window-scale", str(scale), "--ttl-scale", str(scale)], f"{slug}-sim.log")
    sim = f"http://127.0.0.1:{sim_port}"
    (folder / f"{slug}.yaml").write_text(accounts_yaml(sim, accounts, sticky))
    db = folder / f"{slug}.db"
    sets = {"flare_accounts": str(folder / f"{slug}.yaml"), "flare_db": str(db),
            "flare_state": str(folder / f"{slug}-state.db"), "flow_detail": "0",
            "connection_strategy": "lazy", "flare_cache_ttl_scale": str(scale),
            "flare_session_hours": f"{SESSION_HOURS / scale:.6f}", **options}
    spawn([str(BIN / "mitmdump"), "-q", "-s", str(ROOT / "addons" / "bundle.py"), "--mode",
           f"reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}",
           *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]], f"{slug}.log")
    wait_http(sim + "/v1/models")
    wait_http(f"http://127.0.0.1:{port}/health")
    return f"http://127.0.0.1:{port}", db


# -- reading the figures back -----------------------------------------------------------------
def figures(db: Path) -> dict:
    """One routing's figures, from its database (the proxy stopped: every row written)."""
    conn = sqlite3.connect(db)
    try:
        (requests, errors, failovers, cost, read, all_input) = conn.execute(
            "select count(*), sum(status is null or status >= 400), sum(failover), "
            "sum(cost_usd), sum(cache_read_input_tokens), sum(coalesce(input_tokens, 0) + "
            "coalesce(cache_read_input_tokens, 0) + coalesce(cache_creation_input_tokens, 0)) "
            "from requests").fetchone()
        limited = conn.execute("select count(*) from attempts where status = 429").fetchone()[0]
        causes = {cause: {"writes": writes, "loss_usd": loss} for cause, writes, loss in
                  conn.execute("select cache_event, count(*), sum(cache_loss_usd) from requests "
                               "where cache_event is not null group by cache_event")}
    finally:
        conn.close()
    return {"requests": requests, "client_errors": errors or 0, "upstream_429": limited,
            "failovers": failovers or 0, "cost_usd": cost or 0.0,
            "hit_rate": read / all_input if all_input else 0.0,
            "loss_usd": sum(c["loss_usd"] or 0.0 for c in causes.values()),
            "causes": {c: causes.get(c, {"writes": 0, "loss_usd": 0.0}) for c in CAUSES}}


def table(results: dict[str, dict]) -> str:
    """The figures as a Markdown table, one column per routing."""
    names = list(results)
    rows = [("requests (errors to clients)",
             lambda f: f"{f['requests']} ({f['client_errors']})"),
            ("upstream 429s (limits hit) / failovers",
             lambda f: f"{f['upstream_429']} / {f['failovers']}"),
            ("sent late p50 / p99 (simulated s)",
             lambda f: f"{f['late_s']['p50']:g} / {f['late_s']['p99']:g}"),
            ("cache hit rate", lambda f: f"{100 * f['hit_rate']:.1f} %"),
            ("total cost", lambda f: f"${f['cost_usd']:.2f}"),
            ("**lost to cache misses**", lambda f: f"**${f['loss_usd']:.2f}**")]
    for cause in CAUSES:
        rows.append((f"… {cause} (writes)", lambda f, c=cause: (
            f"${f['causes'][c]['loss_usd'] or 0:.2f} ({f['causes'][c]['writes']})")))
    out = ["| | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    out += [f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |"
            for label, cell in rows]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench --cache-day",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--accounts", type=int, default=5)
    parser.add_argument("--hours", type=float, default=6.0, help="length of the simulated day")
    parser.add_argument("--scale", type=float, default=120.0,
                        help="time runs this many times faster (windows, TTLs, the day)")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--keep", type=Path, help="keep each routing's database here")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.hours <= 0 or args.conversations < 1 or args.accounts < 1:
        parser.error("--scale and --hours must be > 0, --conversations and --accounts >= 1")
    plans = plan_day(args.conversations, args.hours, args.seed)
    folder = Path(tempfile.mkdtemp(prefix="mitmflare-cache-day-"))
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str], log: str) -> None:
        procs.append(subprocess.Popen(cmd, stdout=(folder / log).open("wb"),
                                      stderr=subprocess.STDOUT, cwd=folder))

    began = time.monotonic()
    try:
        started = {name: start_routing(folder, name, options, sticky, args.accounts,
                                       args.scale, spawn)
                   for name, (options, sticky) in ROUTINGS.items()}
        statuses, late = asyncio.run(drive(plans, {n: u for n, (u, _) in started.items()},
                                           args.scale))
    finally:
        stop(procs, 30)
    results = {name: figures(db) for name, (_, db) in started.items()}
    for name, behind in late.items():
        behind.sort()
        results[name]["late_s"] = {"p50": round(behind[len(behind) // 2], 1),
                                   "p99": round(behind[int(0.99 * (len(behind) - 1))], 1)}
    for name, sent in statuses.items():  # every request answered is a row
        if len(sent) != results[name]["requests"]:
            print(f"{name}: {len(sent)} requests sent, {results[name]['requests']} rows",
                  file=sys.stderr)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for _, db in started.values():
            db.replace(args.keep / db.name)
    setup = {"conversations": args.conversations, "accounts": args.accounts,
             "hours": args.hours, "scale": args.scale, "seed": args.seed,
             "requests_per_routing": sum(len(c) for c in plans),
             "ttl_s": round(300 / args.scale, 3), "window_s": round(5 * 3600 / args.scale, 1),
             "seconds": round(time.monotonic() - began, 1)}
    if args.json:
        print(json.dumps({"setup": setup, "routings": results}, indent=2))
    else:
        print(f"A simulated {args.hours:g}-hour day: {args.conversations} conversations, "
              f"{setup['requests_per_routing']} requests, {args.accounts} accounts; time "
              f"{args.scale:g}x faster (5-min TTL = {setup['ttl_s']} s, 5-h window = "
              f"{setup['window_s']} s); ran {setup['seconds']} s\n")
        print(table(results))
    return 0
