"""Routing decisions, without I/O: the account pool, account state and every transition of
it (``account_state``), choosing an account, classifying upstream answers, rate-limit
headers, usage windows, prompt-cache affinity, refusal counts.

May import ``providers``, ``config`` and the top-level helpers (``times``, ``money``,
``runtime``); never ``addons``, ``storage`` or ``proxy_state``, and never waits on a file,
socket or database. Checked by ``tests/unit/test_imports.py``.
"""
