"""
C{GET /v1/runs/stream}: the run stream as NDJSON over a long-lived chunked
response, or, when the request asks to upgrade, over a WebSocket (autobahn),
one stream line per text message.  Both carry the same lines.

Query: C{package}, C{state} (a run state or a line type such as
C{run.completed}), C{tenant}, C{run_id}, C{since} (a cursor from an earlier
line: everything after it is sent first).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from fangs.errors import BadRequest
from fangs.orchestrator.stream import RUN_EVENT_TYPES, RunStream, StreamError, StreamFilter, Subscriber, parseCursor

log = Logger()

_STATES = ("pending", "leased", "dispatched", "running", "done", "failed", "timeout", "cancelled")


def _arg(request: IRequest, name: str) -> str:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return ""
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("%s is not UTF-8" % (name,)) from None


def streamQuery(request: IRequest) -> Tuple[StreamFilter, Optional[int]]:
    """
    The filter and cursor of a stream request; L{BadRequest} names a bad one.
    """
    state = _arg(request, "state")
    if state and state not in _STATES and state not in RUN_EVENT_TYPES:
        raise BadRequest("state must be a run state (%s) or a line type (%s)" % (", ".join(_STATES),
                                                                                 ", ".join(RUN_EVENT_TYPES)))
    runID = _arg(request, "run_id").lower()
    if runID and (len(runID) != 32 or any(c not in "0123456789abcdef" for c in runID)):
        raise BadRequest("run_id must be 32 hex characters")
    package = _arg(request, "package")
    tenant = _arg(request, "tenant")
    for name, value in (("package", package), ("tenant", tenant)):
        if len(value) > 214:
            raise BadRequest("%s is longer than 214 characters" % (name,))
    try:
        since = parseCursor(_arg(request, "since") or None)
    except StreamError as e:
        raise BadRequest(str(e)) from None
    return StreamFilter(package=package, state=state, tenant=tenant, run_id=runID), since


def wantsWebSocket(request: IRequest) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.strip().lower() == b"websocket"


async def serveNDJSON(stream: RunStream, request: IRequest, filter: StreamFilter, since: Optional[int]) -> bytes:
    """
    Write stream lines to C{request} until the client goes away or is cut.
    """
    request.setHeader(b"Content-Type", b"application/x-ndjson")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Accel-Buffering", b"no")
    ended: Deferred[None] = Deferred()

    def close() -> None:
        if not ended.called:
            ended.callback(None)

    try:
        sub = await stream.subscribe(request.write, close, filter, since)
    except StreamError as e:
        raise BadRequest(str(e)) from None
    request.registerProducer(sub, True)
    try:
        await ended
    finally:
        # Cancelled (the client went away) or cut: either way unsubscribe.
        sub.end("client went away", tell=False)
        request.unregisterProducer()
    return b""


class _StreamProtocol(WebSocketServerProtocol):
    subscriber: Optional[Subscriber] = None

    def onOpen(self) -> None:
        factory = self.factory
        d = Deferred.fromCoroutine(factory.stream.subscribe(self._send, self._close, factory.filter, factory.since))
        d.addCallbacks(self._subscribed, self._failed)

    def _subscribed(self, sub: Subscriber) -> None:
        self.subscriber = sub
        if self.transport is not None and getattr(self.transport, "producer", None) is None:
            self.transport.registerProducer(sub, True)

    def _failed(self, failure: Any) -> None:
        log.failure("a WebSocket stream subscription failed", failure)
        self.sendClose(code=1011, reason="stream unavailable")

    def _send(self, line: bytes) -> None:
        self.sendMessage(line.rstrip(b"\n"), isBinary=False)

    def _close(self) -> None:
        self.sendClose(code=1000)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        pass  # the stream is one way; anything a client sends is ignored

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if self.subscriber is not None:
            self.subscriber.end("client went away", tell=False)


def webSocketResource(stream: RunStream, filter: StreamFilter, since: Optional[int]) -> WebSocketResource:
    """
    A resource that upgrades this one request to a WebSocket carrying the
    stream (the subscription is made when the handshake is done).
    """
    factory = WebSocketServerFactory()
    factory.protocol = _StreamProtocol
    factory.stream = stream
    factory.filter = filter
    factory.since = since
    # Origins are checked by the API's browser-safety rules before this.
    factory.setProtocolOptions(autoPingInterval=15, autoPingTimeout=30, maxMessagePayloadSize=4096,
                               maxFramePayloadSize=4096)
    return WebSocketResource(factory)
