"""JSON answers for the requests mitmproxy's HTTP/1 server refuses by itself, before any addon
hook can act.

mitmproxy answers a request head it cannot parse (a folded first header line, a header line
without a colon, a bad ``content-length``) and headers its smuggling check refuses
(``validate_inbound_headers``: a header name that is not a token, ``content-length`` with
``transfer-encoding``) with an HTML page that quotes the offending line, a credential
included, and logs it; a chunked body with trailers makes it raise (``NotImplementedError``:
a traceback, and the client gets no answer); a chunked body it cannot read closes the
connection without one.

:class:`JsonHttp1Server` takes the place of mitmproxy's ``Http1Server`` for client
connections (:func:`install`, done by :class:`.listener.Listener`): the same status codes, as
JSON in the error shape of the listener's format (else the path's; Anthropic's when neither
says), with a fixed message that quotes nothing the client sent; the log line keeps only the
kind of error. Nothing is sent upstream in any of these cases.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterable

from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import ErrorCode, RequestProtocolError, ResponseProtocolError
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.proxy.mode_specs import ReverseMode

from ..providers import KNOWN_HOSTS, error_response, format_of_path

HEAD_REFUSED = ("mitmflare: the request head is malformed (request line, a header line, a "
                "folded header or a header that invites request smuggling); it was not sent "
                "upstream")
BODY_REFUSED = "mitmflare: the request body's framing is malformed; it was not sent upstream"
TRAILERS_REFUSED = ("mitmflare: chunked request bodies with trailers are not supported; it was "
                    "not sent upstream")
TOO_LARGE = ("mitmflare: the request body is larger than the proxy takes (body_size_limit); "
             "it was not sent upstream")
UPSTREAM_FAILED = "mitmflare: the upstream connection failed ({status}); see the proxy's log"

_LABEL = re.compile(r"[A-Za-z][A-Za-z -]{0,59}")  # an error's kind: "Invalid header line"
_SWAPPED = (commands.Log, commands.SendData, commands.CloseConnection)  # what swaps look at
CommandGenerator = Generator[commands.Command, object, None]


class _Answer(commands.SendData):
    """An answer made here (never rewritten again)."""


class JsonHttp1Server(Http1Server):
    """mitmproxy's HTTP/1 server for client connections, answering in JSON (see the module)."""

    def read_headers(self, event: events.ConnectionEvent) -> CommandGenerator:
        return self._rewrite(super().read_headers(event), self._head_refusal)

    def read_body(self, event: events.Event) -> CommandGenerator:
        try:
            yield from self._rewrite(super().read_body(event), self._body_refusal)
        except NotImplementedError:  # mitmproxy's "HTTP trailers are not implemented yet."
            yield from self._answer(400, TRAILERS_REFUSED)
            yield commands.CloseConnection(self.conn)
            yield ReceiveHttp(RequestProtocolError(self.stream_id, "chunked body with trailers",
                                                   ErrorCode.GENERIC_CLIENT_ERROR))
            self.state = self.done

    def send(self, event) -> CommandGenerator:
        if not isinstance(event, ResponseProtocolError):
            return super().send(event)
        status = event.code.http_status_code() or 502
        message = TOO_LARGE if status == 413 else HEAD_REFUSED if status < 500 else \
            UPSTREAM_FAILED.format(status=status)
        return self._rewrite(super().send(event),
                             lambda c: self._swap_page(c, status, message))

    # -- rewriting mitmproxy's commands -----------------------------------------------------
    @staticmethod
    def _rewrite(inner: CommandGenerator,
                 swap: Callable[[commands.Command], Iterable[commands.Command]],
                 ) -> CommandGenerator:
        """``inner``'s commands, each Log, SendData or CloseConnection replaced by what
        ``swap`` gives for it (none, one or more); replies to blocking commands are passed
        back to ``inner``."""
        reply = None
        while True:
            try:
                command = inner.send(reply)
            except StopIteration:
                return
            if isinstance(command, _SWAPPED):  # not the common ReceiveHttp: no list made
                swapped = swap(command)
                if not swapped:  # an answer the client can no longer read: dropped
                    reply = None
                    continue
                *before, command = swapped
                yield from before
            reply = yield command

    def _head_refusal(self, command: commands.Command) -> list[commands.Command]:
        if isinstance(command, commands.Log):  # "<address>: <error>" or "<what>: <bytes>"
            what, _, rest = command.message.partition(": ")
            kind = error_kind(rest)
            what = f"{what}: {kind}" if kind else what
            return [commands.Log(f"{what} (the client's bytes are not shown)", command.level)]
        return self._swap_page(command, 400, HEAD_REFUSED)

    def _body_refusal(self, command: commands.Command) -> list[commands.Command]:
        if isinstance(command, commands.CloseConnection) and command.connection is self.conn \
                and self.response is None:  # h11 could not read the body: answer first
            return [*self._answer(400, BODY_REFUSED), command]
        return [command]

    def _swap_page(self, command: commands.Command, status: int,
                   message: str) -> list[commands.Command]:
        if isinstance(command, commands.SendData) and not isinstance(command, _Answer) \
                and command.connection is self.conn:
            return list(self._answer(status, message))
        return [command]

    def _answer(self, status: int, message: str) -> list[commands.Command]:
        """The JSON answer (``Connection: close``), unless the client can no longer read."""
        if not self.conn.state & ConnectionState.CAN_WRITE:
            return []
        kind, retry = ("invalid_request", "false") if status < 500 else ("unavailable", "true")
        response = error_response(self._format(), status, kind, message,
                                  {"connection": "close", "x-should-retry": retry})
        return [_Answer(self.conn, http1.assemble_response(response))]

    def _format(self) -> str | None:
        mode = self.context.client.proxy_mode
        listener = KNOWN_HOSTS.get(mode.address[0]) if isinstance(mode, ReverseMode) else None
        return listener or (format_of_path(self.request.path) if self.request else None)


def error_kind(message: str) -> str:
    """The kind of a mitmproxy error message without what it quotes (``"Invalid header line:
    b'x-api-key …'"`` → ``"Invalid header line"``), or "" when it does not start with one."""
    kind = message.split(": ", 1)[0]
    return kind if _LABEL.fullmatch(kind) else ""


def install() -> None:
    """Make mitmproxy's HTTP layer use :class:`JsonHttp1Server` for new client connections."""
    http_layers.Http1Server = JsonHttp1Server  # type: ignore[misc]


def uninstall() -> None:
    """Give mitmproxy's own HTTP/1 server back."""
    http_layers.Http1Server = Http1Server  # type: ignore[misc]
