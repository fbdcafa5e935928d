"""
The orchestrator's HTTP server plumbing: a C{Site} that speaks HTTP/1.1 only
(HTTP/2's transport has no C{getPeerCertificate()}), bounds request bodies
while they arrive, and times idle connections out.

Body limits are decided from the request line, before the body is read: the
NDJSON event stream may be long (each line is bounded when it is parsed),
every other body is bounded by C{maxBody}.  A body over its limit is
discarded as it arrives (never buffered) and the request is answered 413.
"""

from __future__ import annotations

import os
import re
from io import BytesIO
from typing import Any, Optional

from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from fangs import wire

log = Logger()

MAX_BODY = 64 * 1024
MAX_NDJSON_LINE = 1024 * 1024
IDLE_TIMEOUT = 60

_STREAM_PATH = re.compile(rb"^/v1/runs/[^/?]+/events(\?|$)")


class FangsRequest(Request):
    requestPath: bytes = b""
    bodyLimit: Optional[int] = None
    bodyTooLarge = False
    _bodyReceived = 0

    def gotLength(self, length: Optional[int]) -> None:
        site = getattr(self.channel, "site", None)
        maxBody = getattr(site, "maxBody", MAX_BODY)
        self.bodyLimit = None if _STREAM_PATH.match(self.requestPath) else maxBody
        if length is not None and self.bodyLimit is not None and length > self.bodyLimit:
            self.bodyTooLarge = True
            self.content = BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.bodyTooLarge:
            return
        self._bodyReceived += len(data)
        if self.bodyLimit is not None and self._bodyReceived > self.bodyLimit:
            self.bodyTooLarge = True
            self.content.close()
            self.content = BytesIO()
            return
        super().handleContentChunk(data)


class FangsHTTPChannel(HTTPChannel):
    """
    HTTP/1.1 channel that tells each request its path as soon as its headers
    are in, so the request can choose how to treat its body.

    A request's headers must be complete within the idle timeout of their
    first byte (every byte resets the idle timeout, so a client trickling
    headers would otherwise hold the connection for ever), and a request
    whose declared C{Content-Length} is over its limit is answered 413 at
    once and the connection closed, without waiting for the body.
    """

    _requestLine: Optional[bytes] = None
    _awaitingHeaders = True
    _headersDeadline: Any = None
    _rejected = False

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            return
        if self._awaitingHeaders and self._headersDeadline is None and self.timeOut:
            self._headersDeadline = self.callLater(self.timeOut, self._headersTooSlow)
        super().dataReceived(data)

    def _headersTooSlow(self) -> None:
        self._headersDeadline = None
        log.info("closing {peer}: request headers not complete in {seconds}s", peer=str(self.transport.getPeer()), seconds=self.timeOut)
        self._rejected = True
        self.transport.abortConnection()

    def _cancelHeadersDeadline(self) -> None:
        if self._headersDeadline is not None and self._headersDeadline.active():
            self._headersDeadline.cancel()
        self._headersDeadline = None

    def lineReceived(self, line: bytes) -> None:
        if self._requestLine is None and line:
            self._requestLine = line
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        self._awaitingHeaders = False
        self._cancelHeadersDeadline()
        parts = (self._requestLine or b"").split()
        self._requestLine = None
        if self.requests:
            self.requests[-1].requestPath = parts[1] if len(parts) >= 2 else b""
        super().allHeadersReceived()
        if self.requests and self.requests[-1].bodyTooLarge:
            self._rejected = True
            body = wire.dumps(
                wire.ErrorEnvelope(
                    wire.ErrorBody(
                        code="payload_too_large",
                        message="request body exceeds %d bytes" % (self.requests[-1].bodyLimit,),
                        trace_id=os.urandom(16).hex(),
                    )
                )
            )
            self.transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.loseConnection()

    def allContentReceived(self) -> None:
        if self._rejected:
            return
        self._awaitingHeaders = True  # what comes next is another request
        super().allContentReceived()

    def connectionLost(self, reason: Any) -> None:
        self._cancelHeadersDeadline()
        super().connectionLost(reason)


class FangsSite(Site):
    protocol = FangsHTTPChannel
    requestFactory = FangsRequest

    def __init__(self, resource: Any, maxBody: int = MAX_BODY, timeout: float = IDLE_TIMEOUT, **kw: Any) -> None:
        super().__init__(resource, timeout=timeout, **kw)
        self.maxBody = maxBody
        self.displayTracebacks = False
