"""Per-attempt timeouts and the outlier count, in-process (mitmproxy's test helpers)."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.server import ConnectionHandler, ConnectionIO
from mitmproxy.test import taddons, tflow, tutils

from mitmflare.addons.timeouts import Timeouts, close_upstream, overdue
from mitmflare.config.accounts import AccountConfig
from mitmflare.proxy_state import OUTLIER_ERRORS, FlowContext, ProxyState
from mitmflare.routing.classify import TRANSIENT, Verdict
from mitmflare.routing.pool import AVAILABLE, COOLING_DOWN, Account

LIMITS = (10, 600, 60, 30)  # connect, headers, stream headers, stream idle (s)


def context(stream: bool = False) -> FlowContext:
    fc = FlowContext(flow_id="f", wire_format="anthropic", started=0.0, path="/v1/messages",
                     client_session=None, model=None, user_agent=None, stream=stream)
    fc.attempt_mono = 1000.0
    return fc


def test_connect_limit_applies_only_before_the_connection_is_open():
    f = tflow.tflow()
    f.response = None
    f.server_conn.timestamp_tcp_setup = None
    assert overdue(context(), f, 1009.0, LIMITS) is None
    assert overdue(context(), f, 1011.0, LIMITS) == "upstream_connect_timeout"
    f.server_conn.timestamp_tcp_setup = 1.0
    assert overdue(context(), f, 1011.0, LIMITS) is None


def test_headers_limit_depends_on_streaming():
    f = tflow.tflow()
    f.response = None
    assert overdue(context(stream=True), f, 1061.0, LIMITS) == "upstream_timeout"
    assert overdue(context(stream=False), f, 1061.0, LIMITS) is None
    assert overdue(context(stream=False), f, 1601.0, LIMITS) == "upstream_timeout"


def test_idle_limit_counts_from_the_last_piece_of_a_stream():
    f = tflow.tflow(resp=True)
    fc = context(stream=True)
    fc.last_byte_mono = 2000.0
    assert overdue(fc, f, 2029.0, LIMITS) is None
    assert overdue(fc, f, 2031.0, LIMITS) == "upstream_idle_timeout"


def test_a_limit_of_zero_is_refused():
    with taddons.context(Timeouts(ProxyState())) as tctx, pytest.raises(exceptions.OptionsError):
        tctx.options.update(flare_stream_idle_timeout_s=0)


def test_closing_the_upstream_uses_the_connection_handlers_of_this_mitmproxy():
    """Guards the two mitmproxy internals close_upstream relies on (checked on 12.2/12.3)."""
    assert "connections" in Proxyserver().__dict__
    assert "transports" in ConnectionHandler.__annotations__
    assert "handler" in ConnectionIO.__dataclass_fields__
    with taddons.context(Proxyserver()):
        assert close_upstream(tflow.tflow(req=tutils.treq()), "test") is False


def account() -> Account:
    return Account(AccountConfig(name="a", provider="anthropic", api_key="k"), 0)


def test_unproven_errors_cool_an_account_only_at_the_outlier_threshold():
    proxy, acc = ProxyState(), account()
    verdict = Verdict(TRANSIENT, "http_500", cooldown_until=2e9)
    for _ in range(OUTLIER_ERRORS - 1):
        proxy.count_error(acc, verdict, None, None, 1e9)
    assert acc.status(1e9) == AVAILABLE
    proxy.succeeded(acc)  # a good answer starts the count again
    for _ in range(OUTLIER_ERRORS - 1):
        proxy.count_error(acc, verdict, None, None, 1e9)
    assert acc.status(1e9) == AVAILABLE
    proxy.count_error(acc, verdict, None, None, 1e9)
    assert acc.status(1e9) == COOLING_DOWN


def test_resume_clears_the_near_limit_mark():
    acc = account()
    acc.state.constrained_until = 2e9
    acc.state.resume()
    assert acc.state.constrained_until == 0.0
