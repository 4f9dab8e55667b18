"""Addon, the bundle's first part with flow hooks: no request leaves the proxy unless the
router finished with it.

Fail closed by default: in ``requestheaders`` (before any ``request`` hook runs) every flow gets
a placeholder answer, a 500 ``api_error`` in the Anthropic error shape, and is marked unrouted
(``flow.metadata[ROUTED] = False``). Only the router takes the placeholder away, when it has
routed the flow or answered it itself. If the router's hook raises, never runs, or is skipped
(the bundle, like mitmproxy for a script's addons, calls no further part once one raised), the
placeholder is what the client gets (made per flow in ``responseheaders``, naming the flow
id), and the flow is recorded with the error; mitmproxy never forwards it. The placeholder set
in ``requestheaders`` is one shared object (building a response costs ~50 µs and every flow
passes this hook); it is sent as it is only if this addon's ``responseheaders`` cannot run.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import ctx, http

from ..providers import error_response, strip_client_credentials
from ..proxy_state import FlowContext, ProxyState
from .client_errors import error_kind

log = logging.getLogger("mitmflare")

ROUTED = "mitmflare.routed"  # flow.metadata: False until the router is done with the flow
NOT_ROUTED_ERROR = "internal_error: not routed"


class Guard:
    """Sets the fail-closed placeholder answer and records flows that kept it."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy

    def configure(self, updated: set[str]) -> None:
        if "stream_large_bodies" in updated and ctx.options.stream_large_bodies:
            # A streamed request body is forwarded before the `request` hook runs, i.e.
            # before the router swapped the credentials: never allowed.
            log.warning("mitmflare needs whole request bodies; stream_large_bodies ignored")
            ctx.options.stream_large_bodies = None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        flow.metadata[ROUTED] = False
        flow.response = _PLACEHOLDER

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(ROUTED) is not False:
            return
        strip_client_credentials(flow.request.headers)
        log.error("flow %s was not routed; answered with an error, not forwarded", flow.id)
        fc = self.proxy.flows.setdefault(flow.id, FlowContext(
            wire_format="", started=time.time(), path=flow.request.path, client_session=None,
            model=None, user_agent=None, flow_id=flow.id))
        fc.account = None
        fc.error = NOT_ROUTED_ERROR
        flow.response = _not_routed(flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        # a flow mitmproxy refused before any request hook ran (see .client_errors) keeps
        # the client's headers and an error quoting one: neither stays in mitmweb or a
        # saved flow
        if flow.metadata.get(ROUTED) is False:
            strip_client_credentials(flow.request.headers)
            if flow.error is not None:
                flow.error.msg = error_kind(flow.error.msg) or "request refused"


class Refusal:
    """Stands in for every part of the bundle when its options could not be applied (see
    :mod:`.bundle`): each request is answered with a 503 ``api_error`` (Anthropic shape) that
    says why, before any other hook runs; nothing is sent upstream or recorded."""

    def __init__(self, reason: str) -> None:
        self.answer = error_response(None, 503, "unavailable",
                                     f"mitmflare is not configured ({reason}); nothing is "
                                     f"routed until the proxy is started again with valid "
                                     f"options.")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        strip_client_credentials(flow.request.headers)
        flow.metadata[ROUTED] = True
        flow.response = self.answer.copy()


def _not_routed(flow_id: str) -> http.Response:
    return error_response(None, 500, "internal", f"mitmflare did not route this request; it was "
                          f"not sent upstream. Flow id {flow_id} (see the proxy's log).")


_PLACEHOLDER = _not_routed("unknown")


def take_placeholder(flow: http.HTTPFlow) -> bool:
    """Called by the router as it takes a flow: removes the guard's placeholder answer.
    Returns False when the flow was answered by something else (nothing to route)."""
    if flow.metadata.get(ROUTED) is False:
        flow.response = None
        return True
    return flow.response is None
