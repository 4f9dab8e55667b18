"""One pool across mitmflare processes and hosts: account state and conversation stickiness
shared through Redis (option ``flare_redis``).

Unset (the default), nothing changes and nothing is imported. Set to a ``redis://``,
``rediss://`` or ``unix://`` URL, every process pointed at the same Redis serves one pool:

- **Account state transitions** (cooldown, model cooldown, bench, needs re-login, resume,
  recovery, budget — every :meth:`~.proxy_state.ProxyState.event`) are published with the account's
  shared fields (:data:`SHARED_FIELDS`) and the time of the change; the latest change wins
  (``mitmflare:account:<name>`` holds it for processes that start later). Per-process
  counters (requests, failures, in flight) stay local.
- **OAuth refresh**: one refresh per account across every host. A process about to refresh
  takes a lease (``SET NX PX``, :data:`LEASE_MS`); the others wait for the pair it stores
  (``mitmflare:tokens:<name>``, before anyone uses it) and adopt it, so a rotating refresh
  token is never spent twice. Redis then holds the pairs: protect it (password, TLS, a
  private network) as you protect ``flare_state``.
- **Conversation stickiness**: each answered request of a conversation with a prompt cache is
  published, so every process sends the conversation's next request to the account where its
  cache lives (:class:`~.cache_affinity.CacheAffinity`).
- **In-flight counts and the round-robin position**: every :data:`FLIGHT_S` when they
  changed (and every :data:`FLIGHT_BEAT_S` regardless) each process publishes its requests in
  flight per account and its round-robin picks per wire format; the others keep the latest
  per process for :data:`FLIGHT_TTL_S` and sum them (``in_flight_elsewhere``,
  :attr:`~..routing.selection.Selector.elsewhere`), so ``least-requests`` and
  ``max_concurrent`` see every process's requests and round-robin rotates across processes.
  Both lag by up to :data:`FLIGHT_S` plus a pub/sub hop: requests that start in the same
  window in two processes may both take an account's last slot or the same turn.
- **Users and operator commands** from any host's ``mitmflare`` command
  (:mod:`~..storage.redis_store`): users (key hashes only) are kept here as Redis has them
  (:attr:`SharedState.users`, merged with this host's by :class:`~.access.AccessKeys`);
  ``reset`` / ``pause`` / ``unpause`` are applied through the account-state transitions,
  once per command id (:meth:`~.operations.Operations.apply`).

The hot path never waits on Redis: choosing an account reads the local pool; changes are
appended to a bounded in-memory queue (:data:`QUEUE_MAX` messages, then the oldest are
dropped and counted) that one background task sends; another task applies what other processes
publish (pub/sub channel :data:`CHANNEL`). Redis unreachable: every process serves on its local
state, ``/health`` says ``shared_state: down since …``, and on reconnection the newest state
wins both ways (resynchronisation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions
from mitmproxy.utils import asyncio_utils

from ..config.redis_url import SCHEMES, redacted
from ..routing.pool import Account
from ..storage.redis_store import ACCOUNT_KEY, CHANNEL, SHARED_FIELDS, USERS_KEY, shared_fields
from ..times import iso_utc

log = logging.getLogger(__name__)

TOKENS_KEY = "mitmflare:tokens:"          # an OAuth account's latest pair (JSON)
LEASE_KEY = "mitmflare:refresh-lease:"    # held by the one process refreshing an account
LEASE_MS = 30_000
RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
           "end return 0")
QUEUE_MAX = 10_000
FLIGHT_S = 0.05          # in-flight counts and round-robin picks told this often if changed (s)
FLIGHT_BEAT_S = 1.0      # and at least this often (s)
FLIGHT_TTL_S = 3.0       # a process not heard from for this long counts nothing (s)
RETRY_S = 1.0            # reconnection attempts this often (s)
TIMEOUT_S = 2.0          # connect and command timeout (s)


class SharedState:
    """The ``flare_redis`` addon (see the module docstring). ``worker`` names this process
    (``host:pid``); :meth:`status` is what ``/health`` shows."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.url = ""
        self.down_since: float | None = None  # epoch s; None while connected (or unset)
        self.connected = False
        self.dropped = 0                       # messages dropped while Redis was away
        self.received = 0                      # changes applied from other processes
        self._queue: deque[tuple[str, str, dict[str, Any]]] = deque()
        self._wake = asyncio.Event()
        self._changed_at: dict[str, float] = {}  # account -> epoch s of the state we hold
        self._task: asyncio.Task | None = None
        self._client: Any = None               # the connected client (refresh leases)
        self._first = asyncio.Event()          # set once connected for the first time
        self.users: dict[str, dict[str, Any]] = {}  # name -> users row or tombstone (Redis)
        # other process -> (monotonic s it expires, in flight by account, picks by format)
        self._flights: dict[str, tuple[float, dict[str, int], dict[str, int]]] = {}

    # -- mitmproxy hooks ----------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            "flare_redis", str, os.environ.get("MITMFLARE_REDIS_URL", ""),
            "Redis URL (redis://, rediss://, unix://) shared by every mitmflare process that "
            "serves one pool; empty: this process keeps its state alone.")

    def configure(self, updated: set[str]) -> None:
        if "flare_redis" not in updated:
            return
        url = ctx.options.flare_redis.strip()
        if url and urlsplit(url).scheme not in SCHEMES:
            raise exceptions.OptionsError(
                f"flare_redis: {urlsplit(url).scheme or url!r} is not a Redis URL "
                f"(use {', '.join(s + '://' for s in SCHEMES)})")
        if url != self.url and self._task is not None:
            self._task.cancel()
            self._task = None
        self.url = url
        self.proxy.shared = self if url else None
        self.down_since = time.time() if url else None
        if url and self._running():
            self._start()

    def running(self) -> None:
        if self.url and self._task is None:
            self._start()

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- producer side: the event loop, no I/O --------------------------------------------------
    def account_changed(self, account: Account) -> None:
        """``account``'s state changed here (an event was recorded): share it."""
        now = time.time()
        self._changed_at[account.name] = now
        self._send("account", account.name, {"at": now, "s": shared_fields(account.state)})

    def served(self, conversation: str | None, account: str, ttl_s: float, now: float) -> None:
        """``account`` answered a request of ``conversation`` whose cache lives ``ttl_s``."""
        if conversation and ttl_s > 0:
            self._send("visit", conversation, {"at": now, "a": account, "ttl": ttl_s})

    def status(self) -> str:
        """``ok``, or ``down since <ISO time>`` (``/health``'s ``shared_state``)."""
        if self.connected:
            return "ok"
        return f"down since {iso_utc(self.down_since or time.time())}"

    def _send(self, kind: str, name: str, body: dict[str, Any]) -> None:
        self._queue.append((kind, name, body))
        while len(self._queue) > QUEUE_MAX:
            self._queue.popleft()
            self.dropped += 1
        self._wake.set()

    # -- background: one task connects, sends and listens --------------------------------------
    def _running(self) -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def _start(self) -> None:
        self._task = asyncio_utils.create_task(self._run(), name="mitmflare: shared state",
                                               keep_ref=True)

    async def _run(self) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        while True:
            client = aioredis.from_url(self.url, socket_connect_timeout=TIMEOUT_S,
                                       socket_timeout=None, health_check_interval=5,
                                       decode_responses=True)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await asyncio.wait_for(pubsub.subscribe(CHANNEL), TIMEOUT_S)
                await asyncio.wait_for(self._resync(client), TIMEOUT_S * 5)
                if not self.connected:
                    log.info("shared state: connected to %s as worker %s",
                             redacted(self.url), self.worker)
                self.connected, self.down_since = True, None
                self._client = client
                self._first.set()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._send_loop(client))
                    group.create_task(self._listen(pubsub))
                    group.create_task(self._tell_flights())
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError, ExceptionGroup) as error:
                if self.connected or self.down_since is None:
                    log.warning("shared state: Redis unreachable (%s); serving on local state "
                                "and retrying every %.0f s", _reason(error), RETRY_S)
                if self.connected:
                    self.down_since = time.time()
                self.connected, self._client = False, None
                self._flights.clear()  # nothing known of the others: count only ours
                self._sum_flights()
            finally:
                await asyncio.shield(_close(client))
            await asyncio.sleep(RETRY_S)

    async def _resync(self, client) -> None:
        """Take every newer state and the users from Redis, and queue ours where newer."""
        users = await client.hgetall(USERS_KEY)
        self.users = {name: row for name, text in users.items()
                      if isinstance(row := _json(text), dict)}
        if self.proxy.access is not None:
            self.proxy.access.merge()
        names = list(self.proxy.pool.accounts)
        if not names:
            return
        stored = await client.mget([ACCOUNT_KEY + n for n in names])
        for name, text in zip(names, stored, strict=True):
            message = json.loads(text) if text else None
            if message is not None and message.get("w") != self.worker:
                self._apply_account(name, message)
            mine = self._changed_at.get(name)
            account = self.proxy.pool.accounts.get(name)
            if mine and account is not None and (message is None or mine > message["at"]):
                self._send("account", name, {"at": mine, "s": shared_fields(account.state)})

    async def _send_loop(self, client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            pipe = client.pipeline(transaction=False)
            batch: list[tuple[str, str, dict[str, Any]]] = []
            while self._queue and len(batch) < 500:
                batch.append(self._queue.popleft())
            for kind, name, body in batch:
                text = json.dumps({"k": kind, "n": name, "w": self.worker, **body},
                                  separators=(",", ":"))
                if kind == "account":
                    pipe.set(ACCOUNT_KEY + name, text)
                pipe.publish(CHANNEL, text)
            try:
                await asyncio.wait_for(pipe.execute(), TIMEOUT_S)
            except BaseException:
                self._queue.extendleft(reversed(batch))  # sent again after reconnecting
                raise
            if self._queue:
                self._wake.set()

    async def _listen(self, pubsub) -> None:
        async for message in pubsub.listen():
            try:
                data = json.loads(message["data"])
            except (TypeError, ValueError):
                continue
            if not isinstance(data, dict) or data.get("w") == self.worker:
                continue
            if data.get("k") == "account":
                self._apply_account(str(data.get("n")), data)
            elif data.get("k") == "visit":
                self._apply_visit(data)
            elif data.get("k") == "flight":
                self._apply_flight(data)
            elif data.get("k") == "user":
                self._apply_user(data)
            elif data.get("k") == "command" and self.proxy.operations is not None:
                self.proxy.operations.apply(str(data.get("c")), str(data.get("n")),
                                            str(data.get("id") or ""), str(data.get("w")))
            elif data.get("k") == "tokens" and self.proxy.oauth is not None:
                asyncio_utils.create_task(
                    self.proxy.oauth.adopt(str(data.get("n")), data.get("pair") or {}),
                    name="mitmflare: adopt a refreshed pair", keep_ref=True)

    # -- OAuth refresh across processes (off the hot path: a refresh waits on Redis) -------------
    async def refresh_lease(self, name: str) -> bool | None:
        """Take the refresh lease of account ``name``: True (refresh it), False (another
        process is refreshing it: wait for its pair), None (Redis unreachable: refresh
        locally)."""
        if self._client is None and not self._first.is_set():  # starting: wait a moment
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first.wait(), TIMEOUT_S)
        client = self._client
        if client is None:
            return None
        try:
            taken = await asyncio.wait_for(
                client.set(LEASE_KEY + name, self.worker, nx=True, px=LEASE_MS), TIMEOUT_S)
        except Exception as error:  # Redis went away: refresh locally
            log.warning("shared state: refresh lease of %s not taken (%s)", name, _reason(error))
            return None
        return bool(taken)

    async def store_tokens(self, name: str, pair: dict[str, Any]) -> None:
        """Store and announce ``name``'s new pair, then release its lease (best effort)."""
        client = self._client
        if client is None:
            return
        text = json.dumps({"k": "tokens", "n": name, "w": self.worker, "pair": pair})
        try:
            pipe = client.pipeline(transaction=False)
            pipe.set(TOKENS_KEY + name, text)
            pipe.publish(CHANNEL, text)
            pipe.eval(RELEASE, 1, LEASE_KEY + name, self.worker)
            await asyncio.wait_for(pipe.execute(), TIMEOUT_S)
        except Exception as error:
            log.warning("shared state: new pair of %s not shared (%s)", name, _reason(error))

    async def release(self, name: str) -> None:
        """Give up the refresh lease of ``name`` if this process holds it (best effort)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.eval(RELEASE, 1, LEASE_KEY + name, self.worker),
                                       TIMEOUT_S)

    async def stored_tokens(self, name: str) -> dict[str, Any] | None:
        """The latest pair of ``name`` in Redis, or None."""
        client = self._client
        if client is None:
            return None
        try:
            text = await asyncio.wait_for(client.get(TOKENS_KEY + name), TIMEOUT_S)
        except Exception:
            return None
        data = json.loads(text) if text else None
        return data.get("pair") if isinstance(data, dict) else None

    # -- applying what other processes learned ---------------------------------------------
    def _apply_account(self, name: str, message: dict[str, Any]) -> None:
        account = self.proxy.pool.accounts.get(name)
        at = message.get("at")
        if account is None or not isinstance(at, (int, float)) or \
                at <= self._changed_at.get(name, 0.0):
            return
        self._changed_at[name] = float(at)
        state = account.state
        shared = message.get("s")
        state.restore({f: v for f, v in shared.items() if f in SHARED_FIELDS}
                      if isinstance(shared, dict) else {})
        self.received += 1
        self.proxy.mark_accounts_changed()
        log.info("account %s: state from worker %s%s", name, message.get("w"),
                 f" (cooling down until {iso_utc(state.cooldown_until)})"
                 if state.cooldown_until > time.time() else "")

    async def _tell_flights(self) -> None:
        """Publish this process's in-flight counts and round-robin picks when they change
        (checked every :data:`FLIGHT_S`) and every :data:`FLIGHT_BEAT_S`; forget the
        processes not heard from for :data:`FLIGHT_TTL_S`."""
        last: tuple[dict[str, int], dict[str, int]] | None = None
        told = 0.0
        while True:
            now = time.monotonic()
            mine = ({n: a.state.in_flight for n, a in self.proxy.pool.accounts.items()
                     if a.state.in_flight}, self.proxy.selector.picks())
            if mine != last or now - told >= FLIGHT_BEAT_S:
                last, told = mine, now
                self._send("flight", self.worker, {"c": mine[0], "r": mine[1]})
            if any(expires <= now for expires, _, _ in self._flights.values()):
                self._sum_flights()
            await asyncio.sleep(FLIGHT_S)

    def _apply_flight(self, message: dict[str, Any]) -> None:
        counts, picks = message.get("c"), message.get("r")
        if isinstance(counts, dict) and isinstance(picks, dict):
            self._flights[str(message.get("w"))] = (time.monotonic() + FLIGHT_TTL_S,
                                                    _counts(counts), _counts(picks))
            self._sum_flights()

    def _sum_flights(self) -> None:
        """Sum the other processes' latest counts into the accounts and the selector; a
        slot given back elsewhere wakes the requests waiting for one here."""
        now = time.monotonic()
        self._flights = {w: f for w, f in self._flights.items() if f[0] > now}
        flights = list(self._flights.values())
        freed = False
        for name, account in self.proxy.pool.accounts.items():
            busy = sum(f[1].get(name, 0) for f in flights)
            freed = freed or busy < account.state.in_flight_elsewhere
            account.state.in_flight_elsewhere = busy
        if freed:
            self.proxy.slots.freed()
        wires = {wire for f in flights for wire in f[2]}
        self.proxy.selector.elsewhere = {w: sum(f[2].get(w, 0) for f in flights)
                                         for w in wires}

    def _apply_user(self, message: dict[str, Any]) -> None:
        row = message.get("row")
        if isinstance(row, dict) and isinstance(message.get("n"), str):
            self.users[message["n"]] = row
            if self.proxy.access is not None:
                self.proxy.access.merge()
            log.info("user %s: changed by %s", message["n"], message.get("w"))

    def _apply_visit(self, message: dict[str, Any]) -> None:
        at, ttl, account = message.get("at"), message.get("ttl"), message.get("a")
        if isinstance(at, (int, float)) and isinstance(ttl, (int, float)) and \
                isinstance(account, str) and account in self.proxy.pool.accounts:
            self.proxy.affinity.served(str(message.get("n")), account, float(ttl), float(at))


def _counts(data: dict[Any, Any]) -> dict[str, int]:
    """The ``name -> count`` pairs of a message, non-negative integers only."""
    return {str(k): v for k, v in data.items() if isinstance(v, int) and v >= 0}


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _reason(error: BaseException) -> str:
    if isinstance(error, ExceptionGroup):
        return "; ".join(_reason(e) for e in error.exceptions)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def _close(client) -> None:
    try:
        await client.aclose()
    except Exception:  # a connection that is already gone
        log.debug("shared state: closing the Redis client failed", exc_info=True)
