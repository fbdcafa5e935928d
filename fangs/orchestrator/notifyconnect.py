"""
Connecting to checked addresses only: names are resolved off the reactor
thread and every address is checked against the target policy before the
connection is made (no DNS rebinding between check and use).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, List


from fangs.orchestrator.notifytargets import TIMEOUT


# Connecting to checked addresses only


def _thd_resolve(host: str) -> List[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    seen: List[str] = []
    for info in infos:
        a = info[4][0]
        if a not in seen:
            seen.append(a)
    return seen


def threadResolver(reactor: Any) -> Callable[[str], Any]:
    """
    C{resolver(host)}: the system resolver on the reactor's thread pool.
    """
    from twisted.internet.threads import deferToThreadPool

    def resolve(host: str) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), _thd_resolve, host)

    return resolve


def pinnedClients(reactor: Any, pool: Any, timeout: float = TIMEOUT) -> Callable[[str], Any]:
    """
    C{httpFor(address)}: a treq client whose every connection goes to
    C{address} (the one just checked), with TLS verified against the URL's
    host name.
    """
    from treq.client import HTTPClient
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
    from twisted.internet.ssl import optionsForClientTLS
    from twisted.web.client import Agent
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    @implementer(IAgentEndpointFactory)
    class Pinned:
        def __init__(self, address: str) -> None:
            self.address = address

        def endpointForURI(self, uri: Any) -> Any:
            cls = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
            endpoint = cls(reactor, self.address, uri.port, timeout=timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(optionsForClientTLS(uri.host.decode("ascii")), endpoint)
            return endpoint

    def httpFor(address: str) -> Any:
        return HTTPClient(Agent.usingEndpointFactory(reactor, Pinned(address), pool=pool))

    return httpFor
