"""The mitmproxy addons: one concern each, with hooks (``load``, ``configure``, ``request``, …).

:func:`mitmflare.bundle.make_addons` lists them in hook order: listener, guard, log format,
accounts file, access keys, shared state, token refresher, account health, OAuth clients,
operations, runtime file, failover, router, pool headers, slot release, recorder,
row stream, timeouts, memory (given back after large requests). ``attempt`` makes one
attempt of a request (the router and failover call it); ``fallbacks`` picks a fallback
model's account for it; ``client_errors`` is mitmproxy's HTTP/1 server answering in JSON.

May import every other sub-package; nothing outside ``bundle`` and ``proxy_state`` imports it.
"""
