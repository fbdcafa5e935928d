# -*- test-case-name: tests.runner.test_gateway -*-
"""
The gateway's TCP and UDP listeners for everything that is not DNS.

A TCP connection (L{Connection}) learns its original destination, then
peeks at the first bytes (L{fangs.runner.sniff}): a TLS ClientHello or an
HTTP request head.  An allowed name and port is forwarded to the real host
(L{fangs.runner.forwarder}); everything else is sinkholed: recorded and
answered plausibly (an empty HTTP 200, a TLS handshake-failure alert), or,
under C{registry-only}, closed.  A datagram (L{UDPSink}) is recorded.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import Logger

from fangs.runner.forwarder import Upstream
from fangs.runner.sniff import (
    ChunkedBody,
    ClientHello,
    NeedMore,
    NotThis,
    RequestHead,
    normaliseName,
    parseClientHello,
    parseRequestHead,
    splitHostPort,
)

if TYPE_CHECKING:
    from fangs.runner.gateway import RunGateway

log = Logger()

#: What a sinkholed HTTP request gets: an empty success, and the end.
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
#: A TLS alert record: fatal (2) handshake_failure (40).
TLS_HANDSHAKE_FAILURE = b"\x15\x03\x03\x00\x02\x02\x28"


_PEEK, _FORWARD, _SINK_HTTP, _SINK_RAW, _DONE = range(5)


class Connection(Protocol):
    """
    One TCP connection from the sandbox: peeked at, then forwarded or
    sinkholed (see the module docstring), recorded once.
    """

    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway
        self.state = _PEEK
        self.buf = b""
        self.destIP, self.destPort = "", 0
        self.recorded = False
        self.upstream: Optional[Upstream] = None
        self.head: Optional[RequestHead] = None
        self.hello: Optional[ClientHello] = None
        self.received = 0
        self.body = b""  # captured body (first captureBytes)
        self.scanned = b""
        self.bodySize = 0
        self.bodyHash = hashlib.sha256()
        self.bodyExpected: Optional[int] = None
        self.chunks: Optional[ChunkedBody] = None
        self._timers: List[IDelayedCall] = []
        self._idle: Optional[IDelayedCall] = None

    # -- lifecycle -----------------------------------------------------------

    def connectionMade(self) -> None:
        refused = self.gw.admit(self)
        if refused is not None:
            self.state = _DONE
            self.transport.abortConnection()
            return
        try:
            self.destIP, self.destPort = self.gw.origDst(self.transport)
        except Exception:
            log.failure("run {run_id}: original destination unknown", run_id=self.gw.runID.hex())
        clock = self.gw.reactor
        self._timers.append(clock.callLater(self.gw.limits.peekTimeout, self._peekTimedOut))

    def connectionLost(self, reason: Any = None) -> None:
        self.gw.gone(self)
        for t in self._timers + ([self._idle] if self._idle else []):
            if t.active():
                t.cancel()
        if self.state in (_PEEK, _SINK_HTTP, _SINK_RAW):
            self.finish("closed", cut=None)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()
        self.state = _DONE

    def dataReceived(self, data: bytes) -> None:
        try:
            self._dataReceived(data)
        except Exception:
            log.failure("run {run_id}: gateway connection failed", run_id=self.gw.runID.hex())
            self.finish("error", cut=None)
            self.transport.abortConnection()

    def _dataReceived(self, data: bytes) -> None:
        if self.state == _FORWARD:
            if self.upstream is not None and self.upstream.transport is not None:
                self.upstream.transport.write(data)
            else:
                self.buf += data  # upstream still connecting
            return
        if self.state == _DONE:
            return
        if self.state == _PEEK:
            self.buf += data
            self._account(len(data))
            if self.state == _DONE:
                return
            self._peek()
            return
        self._account(len(data))
        if self.state == _DONE:
            return
        if self.state == _SINK_HTTP:
            self._body(data)
        elif self.state == _SINK_RAW:
            self._capture(data)
            self._touch()

    def _account(self, n: int) -> None:
        self.received += n
        if self.state == _PEEK and self.received <= self.gw.limits.peekBytes:
            return  # peeked bytes are charged when the connection is sinkholed
        if self.received > self.gw.limits.maxConnectionBytes:
            self._cut("bytes")
        elif not self.gw.takeBytes(n):
            self._cut("bytes")

    # -- peeking ---------------------------------------------------------------

    def _peek(self) -> None:
        data = self.buf
        try:
            self.hello = parseClientHello(data)
        except NeedMore:
            if len(data) >= self.gw.limits.peekBytes:
                return self._sinkRaw()
            return
        except NotThis:
            pass
        else:
            return self._decide("tls", self.hello.sni, 0)
        try:
            self.head = parseRequestHead(data, self.gw.limits.peekBytes)
        except NeedMore:
            return
        except NotThis:
            return self._sinkRaw()
        host, port = splitHostPort(self.head.host, self.destPort)
        self._decide("http", host, port)

    def _decide(self, protocol: str, name: str, port: int) -> None:
        self._cancelTimers()
        name = normaliseName(name)
        if name and self.gw.policy.allows(name, self.destPort):
            return self._forward(protocol, name)
        if self.destIP and self.gw.policy.allows(self.destIP, self.destPort):
            return self._forward(protocol, self.destIP)
        if not self.gw.policy.contains:
            return self._refuse(protocol)
        if not self._beginSink():
            return
        if protocol == "tls":
            self._capture(self.buf)
            return self._answer(TLS_HANDSHAKE_FAILURE, "tls")
        assert self.head is not None
        self.state = _SINK_HTTP
        head = self.head
        self.scanned = self.buf[:head.length]
        rest = self.buf[head.length:]
        te = head.headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            self.chunks = ChunkedBody()
        else:
            cl = head.headers.get("content-length", "0").strip()
            self.bodyExpected = int(cl) if cl.isdigit() else 0
        self._touch()
        self._body(rest)

    def _sinkRaw(self) -> None:
        self._cancelTimers()
        if not self.gw.policy.contains:
            self._capture(self.buf)
            return self._refuse("tcp")
        if not self._beginSink():
            return
        self.state = _SINK_RAW
        self._capture(self.buf)
        self._touch()

    def _refuse(self, protocol: str) -> None:
        self.gw.stats.refused += 1
        self._emit(protocol, "refused")
        self.state = _DONE
        self.transport.abortConnection()

    def _beginSink(self) -> bool:
        """
        Count a sinkholed connection, charge its peeked bytes to the run and
        start its lifetime; False when the byte budget cut it instead.
        """
        self.gw.stats.sinkholed += 1
        if not self.gw.takeBytes(min(len(self.buf), self.gw.limits.peekBytes)):
            self._cut("bytes")
            return False
        self._lifetime()
        return True

    def _answer(self, reply: bytes, protocol: str) -> None:
        """
        Answer a sinkholed request plausibly, record it, and close.
        """
        self.transport.write(reply)
        self._emit(protocol, "sinkholed")
        self.state = _DONE
        self.transport.loseConnection()

    # -- sinkholing --------------------------------------------------------------

    def _capture(self, data: bytes) -> None:
        lim = self.gw.limits
        self.bodySize += len(data)
        self.bodyHash.update(data)
        if len(self.body) < lim.captureBytes:
            self.body += data[:lim.captureBytes - len(self.body)]
        if len(self.scanned) < lim.scanBytes:
            self.scanned += data[:lim.scanBytes - len(self.scanned)]

    def _body(self, data: bytes) -> None:
        if self.chunks is not None:
            payload, done = self.chunks.feed(data)
            self._capture(payload)
        else:
            assert self.bodyExpected is not None
            need = self.bodyExpected - self.bodySize
            self._capture(data[:max(0, need)])
            done = self.bodySize >= self.bodyExpected
        if done:
            self._answer(HTTP_OK, "http")
        else:
            self._touch()

    def _emit(self, protocol: str, action: str, **extra: Any) -> None:
        if self.recorded:
            return
        self.recorded = True
        fields: Dict[str, Any] = {"DestIP": self.destIP, "DestPort": self.destPort}
        scanned = self.scanned
        if self.hello is not None:
            fields.update(SNI=self.hello.sni, ALPN=list(self.hello.alpn), DestName=normaliseName(self.hello.sni))
            scanned = scanned or self.buf[:self.gw.limits.scanBytes]
        if self.head is not None:
            fields.update(Method=self.head.method, Host=self.head.host, Path=self.head.path,
                          Headers=dict(self.head.headers),
                          DestName=normaliseName(splitHostPort(self.head.host, 0)[0]))
            scanned = scanned or self.buf[:self.head.length]
        scanned = scanned or self.scanned
        if action != "forwarded":
            fields.update(BodySize=self.bodySize, BodySHA256=self.bodyHash.hexdigest(),
                          BodyB64=base64.b64encode(self.body).decode("ascii"))
        fields.update(extra)
        self.gw.record(self.gw.makePayload(protocol, action, **fields), scanned=scanned,
                       name=fields.get("DestName", ""))

    def _protocol(self) -> str:
        if self.hello is not None:
            return "tls"
        if self.head is not None:
            return "http"
        return "tcp"

    def finish(self, why: str, cut: Optional[str]) -> None:
        """
        Record the attempt as it stands (the peer closed, or a limit cut it).
        """
        if self.state == _DONE or self.recorded:
            return
        if self.state == _PEEK:
            if cut is None:
                self.gw.stats.sinkholed += self.gw.policy.contains
                self.gw.stats.refused += not self.gw.policy.contains
            self._capture(self.buf)
        if cut is not None:
            self._emit(self._protocol(), "cut", Cut=cut, Reason=why)
        else:
            self._emit(self._protocol(), "sinkholed" if self.gw.policy.contains else "refused")

    def _cut(self, what: str) -> None:
        if self.state == _DONE:
            return
        self.gw.stats.countCut(what)
        self.finish("%s limit" % (what,), cut=what)
        self.state = _DONE
        self._cancelTimers()
        self.transport.abortConnection()

    # -- timers ----------------------------------------------------------------

    def _cancelTimers(self) -> None:
        for t in self._timers:
            if t.active():
                t.cancel()
        self._timers = []
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _peekTimedOut(self) -> None:
        self._cut("time")

    def _lifetime(self) -> None:
        self._timers.append(self.gw.reactor.callLater(self.gw.limits.connectionTimeout, self._cut, "time"))

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.gw.limits.idleTimeout)
        else:
            self._idle = self.gw.reactor.callLater(self.gw.limits.idleTimeout, self._idleTimedOut)

    def _idleTimedOut(self) -> None:
        if self.state == _SINK_RAW:
            # A raw protocol that went quiet: what it sent is the record.
            self.finish("idle", cut=None)
            self.state = _DONE
            self._cancelTimers()
            self.transport.loseConnection()
            return
        self._cut("idle")

    # -- forwarding ----------------------------------------------------------------

    def _forward(self, protocol: str, name: str) -> None:
        self.state = _FORWARD
        self.gw.stats.forwarded += 1
        self._emit(protocol, "forwarded", DestName=name)
        self.transport.pauseProducing()
        self.upstream = Upstream(self)
        d = self.gw.connect(name, self.destPort, self.upstream, self.gw.limits.upstreamTimeout)

        def failed(f: Any) -> None:
            log.warn("run {run_id}: forwarding to {name}:{port} failed: {error}", run_id=self.gw.runID.hex(),
                     name=name, port=self.destPort, error=f.getErrorMessage())
            self.state = _DONE
            self.transport.abortConnection()

        d.addErrback(failed)

    def upstreamReady(self) -> None:
        assert self.upstream is not None
        up = self.upstream.transport
        if self.state != _FORWARD:
            up.loseConnection()
            return
        up.write(self.buf)
        self.buf = b""
        # Flow control both ways, as twisted.protocols.portforward does.
        up.registerProducer(self.transport, True)
        self.transport.registerProducer(up, True)
        self.transport.resumeProducing()


class UDPSink(DatagramProtocol):
    """
    Every datagram that is not DNS: recorded with where it was going.
    """

    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self.gw.recordDatagram(data, "udp", self.gw.destOf((self.gw.address, self.gw.udpPort), addr))
        except Exception:
            log.failure("run {run_id}: recording a datagram failed", run_id=self.gw.runID.hex())
