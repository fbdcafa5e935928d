# -*- test-case-name: tests.runner.test_gateway -*-
"""
Reaching allowed hosts from the host: the real resolver behind the gateway's
DNS answers for allowed names, and the upstream half of a forwarded
connection (bytes untouched, flow control both ways).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable, List

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

if TYPE_CHECKING:
    from fangs.runner.sinkhole import Connection


def hostResolver(reactor: Any) -> Callable[[str], Deferred]:
    """
    Resolve a name to its IPv4 addresses on the host (getaddrinfo on the
    reactor's thread pool).
    """
    from twisted.internet.threads import deferToThreadPool

    def _thd_resolve(name: str) -> List[str]:
        infos = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)
        return sorted({info[4][0] for info in infos})

    def resolve(name: str) -> Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), _thd_resolve, name)

    return resolve


def hostConnector(reactor: Any) -> Callable[[str, int, Any, float], Deferred]:
    """
    Connect a protocol to C{host:port} from the host (a forwarded
    connection to an allowed registry host).
    """
    from twisted.internet.endpoints import HostnameEndpoint, connectProtocol

    def connect(host: str, port: int, protocol: Any, timeout: float) -> Deferred:
        return connectProtocol(HostnameEndpoint(reactor, host, port, timeout=timeout), protocol)

    return connect


class Upstream(Protocol):
    """
    The host side of a forwarded connection; C{down} is the sandbox side.
    """

    def __init__(self, down: "Connection") -> None:
        self.down = down

    def connectionMade(self) -> None:
        self.down.upstreamReady()

    def dataReceived(self, data: bytes) -> None:
        self.down.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.down.transport.loseConnection()
