"""Concurrency caps: requests in flight per account (``max_concurrent`` in the accounts file)
and per user (``max_concurrent`` in the ``users`` table, ``mitmflare users … --max-concurrent``).

* An account counts a request from the moment it is sent with its credentials until its
  answer has ended (:attr:`.pool.AccountState.in_flight`, kept by the router). An account at
  its cap is not chosen (:meth:`.pool.Account.full`): the request goes to another account,
  or waits for a slot.
* A user counts a request from the moment it passed the access checks until its answer has
  ended, failovers included. Over the cap it waits for a slot.
* Waiting shares ``flare_queue_s`` with the wait for a cooling account: at most that long
  after the request came. Then the client gets a 429 in its wire format's error shape naming
  the cap.

Every slot is given back on every way a flow ends: its ``response`` hook (an answer, also one
mitmflare made itself) or its ``error`` hook (the client left, the upstream failed or timed
out). Giving back is keyed by flow id, so it happens once. A freed slot wakes the waiting
requests at once (one :class:`asyncio.Event`, no polling). No I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from mitmproxy import http

if TYPE_CHECKING:
    from ..proxy_state import ProxyState


class Slots:
    """Requests in flight per user, and the wake-up for requests waiting for any slot."""

    def __init__(self) -> None:
        self.users: dict[str, int] = {}   # user name -> requests in flight
        self._holders: dict[str, str] = {}  # flow id -> user name whose slot it holds
        self._freed: asyncio.Event | None = None

    def freed(self) -> None:
        """A slot (an account's or a user's) was given back: wake every waiting request."""
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    async def wait(self, timeout: float) -> None:
        """Sleep ``timeout`` s, or less when a slot is given back meanwhile."""
        if timeout <= 0:
            return
        if self._freed is None:
            self._freed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._freed.wait(), timeout)

    async def take_user(self, user: Any, flow_id: str, deadline: float) -> bool:
        """Take one of ``user``'s slots (a :class:`.users.User`; its ``max_concurrent``,
        None for no cap) for flow ``flow_id``, waiting until ``deadline`` (epoch s) for one
        to be given back. False when none was free by then."""
        cap = user.max_concurrent
        if cap is None or flow_id in self._holders:
            return True
        while self.users.get(user.name, 0) >= cap:
            left = deadline - time.time()
            if left <= 0:
                return False
            await self.wait(left)
        self.users[user.name] = self.users.get(user.name, 0) + 1
        self._holders[flow_id] = user.name
        return True

    def give_back(self, flow_id: str) -> None:
        """The flow ended: give back its user's slot, if it holds one (once)."""
        name = self._holders.pop(flow_id, None)
        if name is None:
            return
        left = self.users.get(name, 1) - 1
        if left > 0:
            self.users[name] = left
        else:
            self.users.pop(name, None)
        self.freed()


class SlotRelease:
    """Addon: gives back a flow's user slot when the flow ends, however it ends."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy

    def response(self, flow: http.HTTPFlow) -> None:
        self.proxy.slots.give_back(flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self.proxy.slots.give_back(flow.id)


def in_flight(count: int) -> str:
    """``1 request in flight`` / ``3 requests in flight`` (for the messages clients see)."""
    return f"{count} request{'' if count == 1 else 's'} in flight"
