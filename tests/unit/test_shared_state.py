"""The flare_redis option: checked in configure; unset, nothing is shared."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from mitmflare.addons.shared_state import SHARED_FIELDS, SharedState
from mitmflare.proxy_state import ProxyState


def test_a_url_that_is_not_redis_is_refused_and_unset_shares_nothing():
    proxy = ProxyState()
    addon = SharedState(proxy)
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="not a Redis URL"):
            tctx.configure(addon, flare_redis="http://127.0.0.1:6379")
        tctx.configure(addon, flare_redis="")
        assert proxy.shared is None  # /health then says shared_state: off


def test_per_process_counters_are_not_shared():
    assert "cooldown_until" in SHARED_FIELDS and "needs_reauth" in SHARED_FIELDS
    assert not {"requests", "failures", "last_used", "in_flight"} & set(SHARED_FIELDS)
