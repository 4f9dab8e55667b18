"""Routing decisions, without I/O: the account pool, account state and every transition of
it (``account_state``), choosing an account, classifying upstream answers, rate-limit
headers, usage windows, prompt-cache affinity, model fallbacks, refusal counts.

May import ``providers``, ``config`` and the top-level helpers (``times``); never ``addons``
or ``storage``, and never waits on a file, socket or database.
"""
