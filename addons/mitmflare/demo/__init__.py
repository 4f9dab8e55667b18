"""The demo and the simulated upstream: ``python -m mitmflare.demo.simulator`` speaks the
Anthropic and OpenAI wire formats for tests, benchmarks and ``./scripts/run --demo``;
``mitmflare.demo.helpers`` writes the demo's accounts and sends its traffic.

May import ``storage`` (to create the demo's databases), ``providers`` and ``config``; the
proxy never imports it. Checked by ``tests/unit/test_imports.py``.
"""
