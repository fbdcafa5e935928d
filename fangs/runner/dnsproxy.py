# -*- test-case-name: tests.runner.test_gateway -*-
"""
The gateway's DNS listeners: UDP and TCP (length-prefixed) port 53 of the
run network.  The answers, and the records of what was asked, come from
L{fangs.runner.gateway.RunGateway.answerDNS}.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import Logger

if TYPE_CHECKING:
    from fangs.runner.gateway import RunGateway

log = Logger()

KIB = 1024


class DNSProtocol(DatagramProtocol):
    """
    DNS over UDP: each datagram answered (or not) by the gateway.
    """

    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        d = Deferred.fromCoroutine(self.gw.answerDNS(data, (self.gw.address, self.gw.dnsUDPPort), addr))

        def reply(answer: Optional[bytes]) -> None:
            if answer is not None and self.transport is not None:
                self.transport.write(answer, addr)

        d.addCallback(reply)
        d.addErrback(lambda f: log.failure("run {run_id}: DNS answer failed", f, run_id=self.gw.runID.hex()))


class DNSTCP(Protocol):
    """
    DNS over TCP: length-prefixed messages, bounded in size and time.
    """

    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway
        self.buf = b""

    def connectionMade(self) -> None:
        self._timer = self.gw.reactor.callLater(self.gw.limits.peekTimeout, self.transport.abortConnection)

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer.active():
            self._timer.cancel()

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 64 * KIB:
            self.gw.stats.countCut("bytes")
            self.transport.abortConnection()
            return
        while len(self.buf) >= 2:
            n = struct.unpack("!H", self.buf[:2])[0]
            if len(self.buf) < 2 + n:
                return
            message, self.buf = self.buf[2:2 + n], self.buf[2 + n:]
            d = Deferred.fromCoroutine(self.gw.answerDNS(message))
            d.addCallback(self._reply)
            d.addErrback(lambda f: log.failure("run {run_id}: DNS answer failed", f,
                                               run_id=self.gw.runID.hex()))

    def _reply(self, answer: Optional[bytes]) -> None:
        if answer is not None and self.transport is not None:
            self.transport.write(struct.pack("!H", len(answer)) + answer)
