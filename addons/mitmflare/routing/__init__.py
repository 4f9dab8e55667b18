"""Routing decisions, without I/O: the account pool and its state, choosing an account,
classifying upstream answers, rate-limit headers, usage windows, prompt-cache affinity,
model fallbacks, refusal counts.

May import ``providers``, ``config`` and the top-level helpers (``times``); never ``addons``
or ``storage``, and never waits on a file, socket or database.
"""
