"""Addon: what mitmflare changes in mitmproxy's proxy core, because it never uses the
listener's reverse target (``--mode reverse:https://anthropic.mitmflare.invalid@8080`` only
names the format its clients speak): every request goes to its account's upstream, over a
connection mitmproxy's HTTP layer opens for that address itself (with TLS when the account's
URL is ``https``).

* Reverse targets that cannot be reached: a listener whose target is a real host would
  forward raw requests (with the client's credentials, unrecorded) whenever mitmflare is not
  running in it: the script failed to load or was reloaded broken, or mitmproxy dropped its
  options (mitmproxy issue #8013). The documented targets are names under the ``.invalid``
  top-level domain, which never resolves (RFC 6761, section 6.4): without mitmflare such a
  listener answers 502 and sends nothing anywhere. A reverse target on any other host is
  rewritten to the ``.invalid`` name of its client format (``api.anthropic.com`` →
  ``anthropic.mitmflare.invalid``; hosts of no known format → ``mitmflare.invalid``, the format
  then follows the path), with a warning, so old command lines keep working and are safe too.

* ``connection_strategy=lazy``: no connection to the reverse target is opened up front (a
  health check or a re-routed request would otherwise open one first).
* No TLS layer for the reverse target's connection, which is never opened: for a plain-HTTP
  client of a ``reverse:https://`` listener, :meth:`Listener.next_layer` puts the HTTP layer
  straight under the reverse-proxy layer, as mitmproxy itself does for ``reverse:http://``
  (the hook mitmproxy documents for this; saves ~15 µs per request). Clients that speak TLS
  to the listener, other modes, and ``ignore_hosts``/``allow_hosts`` keep mitmproxy's choice.
* JSON, not mitmproxy's HTML pages, for requests its HTTP/1 server refuses by itself (a
  malformed head, trailers, request smuggling checks): see :mod:`.client_errors`.
* No onboarding app (``mitm.it``): it runs before the router and never answers here (it skips
  flows that have a response, and the guard gives every flow a placeholder one), yet it
  parses every request's Host header to check (~18 µs per request).
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode
from mitmproxy.utils import asyncio_utils

from ..providers import ANTHROPIC_TARGET, KNOWN_HOSTS, OPENAI_TARGET
from . import client_errors

log = logging.getLogger("mitmflare")

UNREACHABLE = ".invalid"  # RFC 6761: never resolves


class Listener:
    """Sets the proxy-core options above and picks the layer under a reverse listener."""

    def __init__(self) -> None:
        self._rewritten = False
        self._servers_task: asyncio.Task | None = None

    def load(self, loader) -> None:
        client_errors.install()

    def done(self) -> None:
        client_errors.uninstall()

    def configure(self, updated: set[str]) -> None:
        # mitmproxy's tlsconfig makes its certificate store in its `running` hook, after the
        # listeners are up: a request in between made its `request` hook fail, and mitmproxy
        # exits on an error logged during startup. Made here, before anything listens.
        tls = ctx.master.addons.get("tlsconfig") if hasattr(ctx, "master") else None
        if tls is not None and getattr(tls, "certstore", None) is None:
            tls.configure({"confdir"})
        o = ctx.options
        if "connection_strategy" in o and o.connection_strategy != "lazy":
            o.connection_strategy = "lazy"
        if "onboarding" in o and o.onboarding:
            o.onboarding = False
        if "mode" in updated and "mode" in o:
            safe = [unreachable_mode(spec) for spec in o.mode]
            if safe != list(o.mode):
                for old, new in zip(o.mode, safe, strict=True):
                    if old != new:
                        log.warning("listener %s: its reverse target is a real host, which a "
                                    "listener without mitmflare would forward raw requests to; "
                                    "serving it as %s (mitmflare never uses the target)", old, new)
                o.mode = safe
                self._rewritten = True

    def running(self) -> None:
        # mitmproxy may have set up its servers from the old modes while the script was still
        # loading (scripts load from a task): set them up again from the rewritten ones.
        proxyserver = ctx.master.addons.get("proxyserver")
        if self._rewritten and proxyserver is not None:
            self._servers_task = asyncio_utils.create_task(
                proxyserver.setup_servers(), name="mitmflare: listeners with unreachable targets",
                keep_ref=True)
            self._rewritten = False

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        if nextlayer.layer is not None or len(context.layers) != 1 \
                or not isinstance(context.layers[0], modes.ReverseProxy):
            return
        mode = context.client.proxy_mode
        if not isinstance(mode, ReverseMode) or mode.scheme != "https" \
                or context.client.transport_protocol != "tcp" \
                or ctx.options.ignore_hosts or ctx.options.allow_hosts \
                or starts_like_tls_record(nextlayer.data_client()):
            return
        nextlayer.layer = HttpLayer(context, HTTPMode.transparent)


def unreachable_mode(spec: str) -> str:
    """``spec`` (a ``--mode`` value) with a reverse target that cannot be reached: unchanged
    when it is not a reverse mode or its host is already under ``.invalid``; else the same
    listener and scheme with the ``.invalid`` host of its client format (see the module
    docstring). Raises nothing: a spec mitmproxy cannot parse is returned as it is (mitmproxy
    reports it)."""
    try:
        mode = ProxyMode.parse(spec)
    except ValueError:
        return spec
    if not isinstance(mode, ReverseMode) or mode.address[0].endswith(UNREACHABLE):
        return spec
    host = {"anthropic": ANTHROPIC_TARGET, "openai": OPENAI_TARGET}.get(
        KNOWN_HOSTS.get(mode.address[0], ""), "mitmflare" + UNREACHABLE)
    listen = spec[len("reverse:") + len(mode.data):]  # "" or "@host:port" / "@port"
    return f"reverse:{mode.scheme}://{host}{listen}"
