"""Addon: what mitmflare changes in mitmproxy's proxy core, because it never uses the
listener's reverse target (``--mode reverse:https://api.anthropic.com@8080`` only names the
format its clients speak): every request goes to its account's upstream, over a connection
mitmproxy's HTTP layer opens for that address itself (with TLS when the account's URL is
``https``).

* ``connection_strategy=lazy``: no connection to the reverse target is opened up front (a
  health check or a re-routed request would otherwise open one first).
* No TLS layer for the reverse target's connection, which is never opened: for a plain-HTTP
  client of a ``reverse:https://`` listener, :meth:`Listener.next_layer` puts the HTTP layer
  straight under the reverse-proxy layer, as mitmproxy itself does for ``reverse:http://``
  (the hook mitmproxy documents for this; saves ~15 µs per request). Clients that speak TLS
  to the listener, other modes, and ``ignore_hosts``/``allow_hosts`` keep mitmproxy's choice.
* No onboarding app (``mitm.it``): it runs before the router and never answers here (it skips
  flows that have a response, and the guard gives every flow a placeholder one), yet it
  parses every request's Host header to check (~18 µs per request).
"""

from __future__ import annotations

from mitmproxy import ctx
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode


class Listener:
    """Sets the proxy-core options above and picks the layer under a reverse listener."""

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if "connection_strategy" in o and o.connection_strategy != "lazy":
            o.connection_strategy = "lazy"
        if "onboarding" in o and o.onboarding:
            o.onboarding = False

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        if nextlayer.layer is not None or len(context.layers) != 1 \
                or not isinstance(context.layers[0], modes.ReverseProxy):
            return
        if context.client.proxy_mode.scheme != "https" \
                or context.client.transport_protocol != "tcp" \
                or ctx.options.ignore_hosts or ctx.options.allow_hosts \
                or starts_like_tls_record(nextlayer.data_client()):
            return
        nextlayer.layer = HttpLayer(context, HTTPMode.transparent)
