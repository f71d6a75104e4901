"""What one client may take of an HTTP/1.1 listener (REST and --health-address): open connections, header bytes, the
time to send the headers and the longest pause inside a body (the --http-* options).

uvicorn bounds none of these by itself; its httptools protocol, subclassed here, does the parsing. A client past a
limit gets HTTP's own refusal and its connection closed: 503 when the listener holds --http-max-connections already,
431 for headers past --http-max-header-kb, 408 when the headers take longer than --http-header-timeout-s from the
connection (or from the end of the previous response) or a body pauses longer than --http-body-timeout-s. Everyone
else is answered as before.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Optional

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bert_squad import settings


@dataclass(frozen=True)
class Limits:
    max_connections: int = settings.HTTP_MAX_CONNECTIONS
    max_header_bytes: int = settings.HTTP_MAX_HEADER_KB << 10
    header_timeout_s: float = settings.HTTP_HEADER_TIMEOUT_S
    body_timeout_s: float = settings.HTTP_BODY_TIMEOUT_S
    keep_alive_s: int = settings.HTTP_KEEP_ALIVE_S

    @classmethod
    def from_args(cls, args) -> "Limits":
        return cls(args.http_max_connections, args.http_max_header_kb << 10, args.http_header_timeout_s,
                   args.http_body_timeout_s, args.http_keep_alive_s)

    def protocol(self) -> type:
        """uvicorn's `http` protocol class for a listener within these limits."""
        return type("LimitedHttp", (LimitedHttp,), {"limits": self})


class _Refused(Exception):
    """Raised from a parser callback: stop parsing this connection and answer `status`."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class LimitedHttp(HttpToolsProtocol):
    limits: Limits = Limits()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._in_headers = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, f"the server holds {self.limits.max_connections} connections already "
                              f"(--http-max-connections); retry shortly")
            return
        self._expect_headers()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, but a refusal raised in a parser callback is answered with its own status, not 400."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSocket here
        except httptools.HttpParserError as error:
            refusal = error.__cause__ or error.__context__
            if isinstance(refusal, _Refused):
                self._refuse(refusal.status, str(refusal))
            else:
                self.send_400_response("Invalid HTTP request received.")

    # the parser's callbacks: count the header bytes, time the headers and each pause of the body
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if not self._in_headers:
            self._expect_headers()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()
        if self.parser is not None and self.cycle is not None and not self.cycle.response_complete:
            self._expect_body()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._expect_body()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport is not None and not self.transport.is_closing():
            self._expect_headers()  # the next request's headers; uvicorn's keep-alive timer runs beside it

    def _expect_headers(self) -> None:
        self._in_headers = True
        self._arm(self.limits.header_timeout_s, "the request headers took longer than --http-header-timeout-s "
                                                f"({self.limits.header_timeout_s:g} s)")

    def _expect_body(self) -> None:
        """The next piece of the body, within --http-body-timeout-s."""
        self._arm(self.limits.body_timeout_s, "the request body paused longer than --http-body-timeout-s "
                                              f"({self.limits.body_timeout_s:g} s)")

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Refused(431, f"the request line and headers are larger than --http-max-header-kb "
                                f"({self.limits.max_header_bytes >> 10} KB)")

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, reason: str) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_complete and self.cycle.response_started:
            self.transport.close()  # a response is on its way: too late for a status, just end it
            return
        self._refuse(408, reason)

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` with `reason` (plain text) and close the connection."""
        self._disarm()
        if self.transport is None or self.transport.is_closing():
            return
        body = reason.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))
        self.transport.close()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app sees the client gone, as when it hangs up
            self.cycle.message_event.set()

