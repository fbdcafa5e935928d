"""
The orchestrator's HTTP server plumbing: a C{Site} that speaks HTTP/1.1 only
(HTTP/2's transport has no C{getPeerCertificate()}), bounds request bodies
while they arrive, and times idle connections out.

Body limits are decided from the request line, before the body is read: the
NDJSON event stream is bounded per line (C{maxLine}) and per request
(C{maxStream}), every other body by C{maxBody}; all three are enforced while
the body arrives, and a request over its limit is answered 413 at once and
its connection closed (nothing more of the body is read or stored).

Before any byte of a body is kept, the site's C{gate} (the API's checks of
Host, Origin, Content-Type and credentials) runs on the request's headers: a
refused request is answered at once and its body never read.  While the
gate waits for the database (a token lookup), at most L{PREAUTH_BUFFER}
bytes are taken from the connection; then reading pauses.
"""

from __future__ import annotations

import os
import re
from io import BytesIO
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from fangs import wire

log = Logger()

MAX_BODY = 64 * 1024
MAX_NDJSON_LINE = 1024 * 1024
MAX_STREAM = 256 * 1024 * 1024
IDLE_TIMEOUT = 60
PREAUTH_BUFFER = 64 * 1024
#: Seconds a refused connection is still read (and discarded) after its answer.
LINGER = 2.0

_STREAM_PATH = re.compile(rb"^/v1/runs/[^/?]+/events(\?|$)")


class FangsRequest(Request):
    requestPath: bytes = b""
    requestMethod: bytes = b""
    bodyLimit: Optional[int] = None
    lineLimit: Optional[int] = None
    bodyTooLarge = False
    tooLargeMessage = ""
    _bodyReceived = 0
    _lineLength = 0
    #: The gate is still deciding: the body waits, requestReceived too.
    gatePending = False
    _pendingTooLarge = ""
    _gatePaused = False
    _stashed: Any = None

    def gotLength(self, length: Optional[int]) -> None:
        site = getattr(self.channel, "site", None)
        maxBody = getattr(site, "maxBody", MAX_BODY)
        if _STREAM_PATH.match(self.requestPath):
            self.bodyLimit = getattr(site, "maxStream", MAX_STREAM)
            self.lineLimit = getattr(site, "maxLine", MAX_NDJSON_LINE)
        else:
            self.bodyLimit = maxBody
        if length is not None and self.bodyLimit is not None and length > self.bodyLimit:
            self.bodyTooLarge = True
            self.tooLargeMessage = "request body exceeds %d bytes" % (self.bodyLimit,)
            self.content = BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.bodyTooLarge or getattr(self.channel, "_rejected", False):
            return
        self._bodyReceived += len(data)
        if self.bodyLimit is not None and self._bodyReceived > self.bodyLimit:
            self._tooLarge("request body exceeds %d bytes" % (self.bodyLimit,))
            return
        if self.lineLimit is not None:
            parts = data.split(b"\n")
            if len(parts) == 1:
                self._lineLength += len(data)
                longest = self._lineLength
            else:
                longest = self._lineLength + len(parts[0])
                if len(parts) > 2:
                    longest = max(longest, max(len(p) for p in parts[1:-1]))
                self._lineLength = len(parts[-1])
                longest = max(longest, self._lineLength)
            if longest > self.lineLimit:
                self._tooLarge("an event stream line exceeds %d bytes" % (self.lineLimit,))
                return
        super().handleContentChunk(data)
        if self.gatePending and self._bodyReceived > PREAUTH_BUFFER and not self._gatePaused:
            self._gatePaused = True
            self.channel.transport.pauseProducing()

    def _tooLarge(self, message: str) -> None:
        if self.gatePending:
            # Who is sending decides first: an unauthenticated stream is a
            # 401 however long its lines.
            self._pendingTooLarge = message
            self.bodyTooLarge = True
            return
        self.bodyTooLarge = True
        self.tooLargeMessage = message
        try:
            self.content.close()
        except Exception:
            pass
        self.content = BytesIO()
        self.channel.rejectNow(413, "payload_too_large", message)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.gatePending:
            self._stashed = (command, path, version)
            return
        super().requestReceived(command, path, version)

    def gateDone(self, failure: Any) -> None:
        """
        The gate decided: go on (the body resumes, a complete request is
        handled), or answer its refusal and close the connection.
        """
        self.gatePending = False
        if self.channel is None:
            return  # the client went away meanwhile
        if failure is None and self._pendingTooLarge:
            self._tooLarge(self._pendingTooLarge)
            return
        if failure is not None:
            err = failure.value
            status = getattr(err, "status", 500)
            if status >= 500:
                log.failure("request gate failed", failure)
                self.channel.rejectNow(500, "internal", "internal error; see the orchestrator log")
            else:
                self.channel.rejectNow(status, getattr(err, "code", "error"), getattr(err, "message", str(err)))
            return
        if self._gatePaused:
            self._gatePaused = False
            self.channel.transport.resumeProducing()
        if self._stashed is not None and not getattr(self.channel, "_rejected", False):
            command, path, version = self._stashed
            self._stashed = None
            Request.requestReceived(self, command, path, version)


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
        if self._rejected:
            return
        if self._requestLine is None and line:
            self._requestLine = line
        super().lineReceived(line)

    def rejectNow(self, status: int, code: str, message: str) -> None:
        """
        Answer the request in progress with an error envelope and close the
        connection, reading nothing more from it.
        """
        if self._rejected:
            return
        self._rejected = True
        req = self.requests[-1] if self.requests else None
        log.info(
            "{method} {path} from {peer} refused before its body: {status} {code}: {message}",
            method=(getattr(req, "requestMethod", b"") or b"?").decode("latin-1"),
            path=(getattr(req, "requestPath", b"") or b"?")[:300].decode("latin-1"),
            peer=str(getattr(self.transport.getPeer(), "host", "?")),
            status=status,
            code=code,
            message=message,
        )
        body = wire.dumps(wire.ErrorEnvelope(wire.ErrorBody(code=code, message=message, trace_id=os.urandom(16).hex())))
        extra = b'WWW-Authenticate: Bearer realm="fangs"\r\n' if status == 401 else b""
        reason = {401: b"Unauthorized", 403: b"Forbidden", 413: b"Payload Too Large", 400: b"Bad Request",
                  404: b"Not Found", 415: b"Unsupported Media Type", 421: b"Misdirected Request"}.get(status, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, reason, extra, len(body), body)
        )
        # Close our side once the answer is out, but keep reading (and
        # discarding) for a moment: closing a socket with unread data makes
        # the kernel send a reset, and the client would lose the answer.
        halfClose = getattr(self.transport, "loseWriteConnection", None)
        if halfClose is not None and not hasattr(self.transport, "getPeerCertificate"):
            halfClose()
            self._linger = self.callLater(LINGER, self.transport.abortConnection)
        else:
            self.transport.loseConnection()
        try:
            self.transport.resumeProducing()  # let the close happen even if the gate paused reading
        except Exception:
            pass

    def allHeadersReceived(self) -> None:
        self._awaitingHeaders = False
        self._cancelHeadersDeadline()
        parts = (self._requestLine or b"").split()
        self._requestLine = None
        req = self.requests[-1] if self.requests else None
        if req is not None:
            req.requestPath = parts[1] if len(parts) >= 2 else b""
            req.requestMethod = parts[0] if parts else b""
        super().allHeadersReceived()
        if req is None or self._rejected:
            return
        if req.bodyTooLarge:
            self.rejectNow(413, "payload_too_large", req.tooLargeMessage)
            return
        gate = getattr(self.site, "gate", None)
        if gate is None:
            return
        req.gatePending = True
        try:
            d = gate(req)
        except Exception:
            from twisted.python.failure import Failure

            req.gateDone(Failure())
            return
        if not isinstance(d, Deferred):
            req.gateDone(None)
            return
        d.addCallbacks(lambda _: req.gateDone(None), req.gateDone)
        d.addErrback(lambda f: log.failure("request gate failed", f))

    def allContentReceived(self) -> None:
        if self._rejected:
            return
        self._awaitingHeaders = True  # what comes next is another request
        super().allContentReceived()

    _linger: Any = None

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._cancelHeadersDeadline()
        super().connectionLost(reason)


class FangsSite(Site):
    protocol = FangsHTTPChannel
    requestFactory = FangsRequest

    def __init__(
        self,
        resource: Any,
        maxBody: int = MAX_BODY,
        timeout: float = IDLE_TIMEOUT,
        gate: Optional[Callable[[Any], Any]] = None,
        maxStream: int = MAX_STREAM,
        maxLine: int = MAX_NDJSON_LINE,
        **kw: Any,
    ) -> None:
        super().__init__(resource, timeout=timeout, **kw)
        self.maxBody = maxBody
        self.maxStream = maxStream
        self.maxLine = maxLine
        #: C{gate(request)}: None or a Deferred; a failure (a FangsError)
        #: refuses the request before its body is read.
        self.gate = gate
        self.displayTracebacks = False
