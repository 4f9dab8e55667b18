"""Choosing an account for a request (``flare_strategy``).

Every strategy first narrows the candidates to the *best tier*: available accounts of the
request's wire format, not excluded for this request, whose model is not cooling down, with a
free slot (``max_concurrent``), ranked by (tier, ``priority``): first the accounts that
serve from their plan, then those near a limit, last those whose plan is spent and that
serve from extra usage with ``overage: last_resort``.

* ``session`` (default): one account per wire format for ``flare_session_hours``, left early when
  a better-ranked account is free again; a client conversation stays on the account it started
  on while that account is available and not near a limit.

**Hand-off** (every strategy; it matters most under ``session``, which fills one account at a
time): an account near a limit, or forecast to reach one before the request's prompt cache
would expire (``ending``), ranks with the near-limit accounts for that request. Conversations
whose cache is warm on it stay there (``warm`` comes first) until it can no longer serve; the
others (new ones, or whose cache expired) start on the next account, so its last headroom goes
to the conversations that would pay a cache write to move.
* ``round-robin``: rotate through the best tier. With ``flare_redis`` the position counts the
  picks of every process (:attr:`Selector.elsewhere`, as they last told, within ~50 ms), so
  requests alternating between processes still rotate.
* ``least-requests``: fewest requests in flight (in every process: :attr:`.pool.Account.busy`),
  then fewest served.
* ``weighted``: random, proportional to ``weight``.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Collection, Sequence

from .pool import Account, AccountPool

STRATEGIES = ("session", "round-robin", "least-requests", "weighted")
AFFINITY_MAX = 10_000  # client conversations remembered


class Selector:
    """Stateful account chooser; all methods are O(accounts) and do no I/O."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[str, float]] = {}  # wire_format -> (account, started_at)
        self._affinity: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._rotation: dict[str, int] = {}  # wire_format -> picks made here, minus one
        self.elsewhere: dict[str, int] = {}  # wire_format -> picks made by other processes

    def picks(self) -> dict[str, int]:
        """Round-robin picks made here since start, per wire format (shared with the other
        processes of the pool)."""
        return {wire: i + 1 for wire, i in self._rotation.items()}

    def choose(self, pool: AccountPool, wire_format: str, strategy: str, now: float, *,
               session_hours: float, client_session: str | None = None,
               model: str | None = None, exclude: Collection[str] = (),
               convertible: bool = False, family: str | None = None,
               warm: Sequence[str] = (), ending: Collection[str] = ()) -> Account | None:
        """The account for one request at ``now`` (epoch s), or None when none is usable.

        ``wire_format``: the client's (``anthropic``/``openai``); ``convertible``: an
        Anthropic Messages request that OpenAI-format accounts may serve converted;
        ``family``: the compatibility route's model prefix, limiting the candidates;
        ``warm``: accounts where the request's conversation has a live prompt cache, best
        first (:mod:`.cache_affinity`): the first of them that can serve is chosen, whatever
        the strategy, unless it opted out (``sticky: false``); ``ending``: names of accounts
        forecast to reach a limit before this request's prompt cache would expire, ranked as
        near a limit for this request (:func:`.usage_windows.spent_within`)."""
        candidates = [a for a in pool.available(wire_format, now, convertible, family)
                      if a.name not in exclude and a.serves(model)
                      and (family is None or a.in_family(family))
                      and not _model_cooling(a, model, now) and not a.full()]
        if not candidates:
            return None
        if warm:
            usable = {a.name: a for a in candidates if a.config.sticky}
            for name in warm:
                if name in usable:
                    return usable[name]
        ranks = {a.name: _rank(a, now, ending) for a in candidates}
        ranked = sorted(candidates, key=lambda a: (ranks[a.name], a.order))
        best = ranks[ranked[0].name]
        tier = [a for a in ranked if ranks[a.name] == best]
        if strategy == "round-robin":
            i = self._rotation.get(wire_format, -1) + 1
            self._rotation[wire_format] = i
            return tier[(i + self.elsewhere.get(wire_format, 0)) % len(tier)]
        if strategy == "least-requests":
            return min(tier, key=lambda a: (a.busy, a.state.requests, a.order))
        if strategy == "weighted":
            return random.choices(tier, weights=[a.config.weight for a in tier])[0]
        return self._session(ranked, ranks, wire_format, now, session_hours * 3600.0,
                             client_session)

    def preview(self, pool: AccountPool, wire_format: str, strategy: str, now: float,
                session_hours: float, convertible: bool = False) -> list[Account]:
        """The order in which the next request in ``wire_format`` (no client
        conversation, no model) would try the available accounts, without changing any
        state: first the one it would go to, then the next in line. Empty when none is usable.
        ``weighted`` is random: heavier first."""
        ranked = sorted(pool.available(wire_format, now, convertible),
                        key=lambda a: (_rank(a, now), a.order))
        if not ranked:
            return []
        best = _rank(ranked[0], now)
        tier = [a for a in ranked if _rank(a, now) == best]
        rest = ranked[len(tier):]
        if strategy == "round-robin":
            start = (self._rotation.get(wire_format, -1) + 1 +
                     self.elsewhere.get(wire_format, 0)) % len(tier)
            tier = tier[start:] + tier[:start]
        elif strategy == "least-requests":
            tier.sort(key=lambda a: (a.busy, a.state.requests, a.order))
        elif strategy == "weighted":
            tier.sort(key=lambda a: (-a.config.weight, a.order))
        else:
            current = self._sessions.get(wire_format)
            if current and now - current[1] < session_hours * 3600.0:
                tier.sort(key=lambda a: (a.name != current[0], a.order))
        return tier + rest

    def _session(self, ranked: list[Account], ranks: dict[str, tuple[int, int]],
                 wire_format: str, now: float, ttl: float,
                 client_session: str | None) -> Account:
        """``ranked``: the candidates, best first; ``ranks``: name -> (tier, priority);
        ``ttl``: the session's length (s)."""
        best = ranks[ranked[0].name]
        by_name = {a.name: a for a in ranked}
        chosen = None
        if client_session:  # held while its account is not in a worse tier (hand-off)
            sticky = self._affinity.get(client_session)
            if sticky and now - sticky[1] < ttl and sticky[0] in by_name \
                    and ranks[sticky[0]][0] <= best[0]:
                chosen = by_name[sticky[0]]
        if chosen is None:
            current = self._sessions.get(wire_format)
            if current and now - current[1] < ttl:
                account = by_name.get(current[0])
                if account is not None and ranks[account.name] <= best:
                    chosen = account
        if chosen is None:
            chosen = ranked[0]
            self._sessions[wire_format] = (chosen.name, now)
        if client_session:
            self._affinity[client_session] = (chosen.name, now)
            self._affinity.move_to_end(client_session)
            while len(self._affinity) > AFFINITY_MAX:
                self._affinity.popitem(last=False)
        return chosen


def _rank(account: Account, now: float, ending: Collection[str] = ()) -> tuple[int, int]:
    """(tier, priority): tier 0 serves from its plan, 1 near a limit (or in ``ending``:
    forecast to reach one soon), 2 on overage as a last resort."""
    st = account.state
    if st.overage_until > now and account.config.overage == "last_resort":
        return 2, account.config.priority
    near = st.constrained_until > now or account.name in ending
    return int(near), account.config.priority


def _model_cooling(account: Account, model: str | None, now: float) -> bool:
    return model is not None and account.state.model_cooldowns.get(model, 0.0) > now
