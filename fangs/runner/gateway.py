# -*- test-case-name: tests.runner.test_gateway -*-
"""
The egress gateway of one contained run: the only peer a sandbox can reach.

The host's packet rules (L{fangs.runner.egress}) send every packet that
leaves the sandbox to one of this gateway's listeners on the run network's
gateway address, whatever its destination (raw addresses included):

  - DNS (UDP and TCP port 53) goes to L{fangs.runner.dnsproxy}: the allowed
    registry names are resolved truly, on the host; every other name is recorded and
    answered with the gateway's own address (policy C{contain}) or refused
    with NXDOMAIN (policy C{registry-only});
  - every other TCP connection goes to L{fangs.runner.sinkhole.Connection},
    which reads the original destination (L{fangs.runner.conntrack}) and
    peeks at the first bytes (L{fangs.runner.sniff}):
    a TLS ClientHello (SNI, ALPN) or an HTTP request head (C{Host}).  When
    that name and port are allowed, the connection is forwarded to the real
    host (L{fangs.runner.forwarder}), bytes untouched (TLS passthrough,
    never interception).  Everything else is sinkholed: the request (HTTP method, host, path, headers, the
    first 64 KiB of the body, its size and SHA-256; or the ClientHello; or
    the first bytes of any other protocol) is recorded and answered
    plausibly (an empty HTTP 200, a TLS handshake-failure alert), and never
    forwarded.  Under C{registry-only} the connection is closed instead;
  - every other UDP datagram goes to L{fangs.runner.sinkhole.UDPSink} and
    is recorded.

This module holds the policy, the limits and L{RunGateway}: the listeners'
lifecycle, the DNS answers, and the records every listener makes.

Each attempt becomes an C{EGRESS_ATTEMPT} event of the run, and the run's
bait values (and their encodings, L{CanaryMatcher}) are looked for in what
was captured: a hit adds a C{CANARY_EXFILTRATED} event.  Events made before
the bait is known (the bait is planted while the container is created) wait
until L{RunGateway.setCanaries} and are then checked and emitted.

Everything is bounded per run (L{Limits}): connections in total and at
once, bytes read from sinkholed connections, DNS queries and datagrams, the
time a connection may take to send its first request and to finish, and the
number of detailed events.  What a limit cut is counted (L{GatewayStats})
and the run says so: a connection cut while it was being recorded is an
event with C{Action} C{cut}, and L{RunGateway.close} emits one C{cut}
summary event with the counters when anything was cut.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.names import dns

from fangs.egresspolicy import CONTAIN, OPEN, POLICIES, REGISTRY_ONLY, PolicyError, normaliseName, parseAllowedHosts  # noqa: F401 (the runner's names for them)
from fangs.runner.canary import CanaryMatcher, baitNames, expandForScan
from fangs.runner.conntrack import conntrackOriginal, originalDestination
from fangs.runner.dnsproxy import DNSTCP, DNSProtocol
from fangs.runner.forwarder import hostConnector, hostResolver
from fangs.runner.sinkhole import Connection, UDPSink
from fangs.wire import EventType, RunID

log = Logger()

KIB = 1024
MIB = 1024 * KIB




@attrs.frozen
class Limits:
    """
    Per-run bounds of the gateway.
    """

    #: TCP connections accepted over the whole run (forwarded ones included).
    maxConnections: int = 512
    #: TCP connections open at the same time.
    maxConcurrent: int = 64
    #: Bytes read from sinkholed connections and datagrams over the run.
    maxSinkBytes: int = 16 * MIB
    #: Bytes one sinkholed connection may send before it is cut.
    maxConnectionBytes: int = 1 * MIB
    #: Bytes of each attempt searched for bait values.
    scanBytes: int = 256 * KIB
    #: Bytes of a body kept in the event (C{BodyB64}).
    captureBytes: int = 64 * KIB
    #: Bytes a ClientHello or an HTTP request head may take.
    peekBytes: int = 16 * KIB
    #: DNS questions answered over the run.
    maxDNSQueries: int = 4096
    #: Datagrams (other than DNS) recorded over the run.
    maxDatagrams: int = 1024
    #: Detailed events over the run; later attempts are only counted.
    maxEvents: int = 512
    #: Seconds a connection has to send its first request or ClientHello.
    peekTimeout: float = 10.0
    #: Seconds a sinkholed connection may stay silent.
    idleTimeout: float = 10.0
    #: Seconds a sinkholed connection may last in all.
    connectionTimeout: float = 30.0
    #: Seconds to connect to an allowed upstream host.
    upstreamTimeout: float = 30.0


@attrs.frozen
class GatewayPolicy:
    """
    What a run may reach: C{mode} is C{contain} or C{registry-only};
    C{allowed} maps each allowed host name (lower case) to its ports.
    """

    mode: str
    allowed: Mapping[str, FrozenSet[int]]

    def allows(self, name: str, port: int) -> bool:
        ports = self.allowed.get(normaliseName(name))
        return ports is not None and port in ports

    def allowsName(self, name: str) -> bool:
        return normaliseName(name) in self.allowed

    @property
    def contains(self) -> bool:
        """
        Whether what is not allowed is sinkholed (C{contain}), not refused.
        """
        return self.mode == CONTAIN


@attrs.define
class GatewayStats:
    """
    What the gateway saw and cut over one run.
    """

    connections: int = 0
    forwarded: int = 0
    sinkholed: int = 0
    refused: int = 0
    dnsQueries: int = 0
    datagrams: int = 0
    sinkBytes: int = 0
    eventsEmitted: int = 0
    #: Counters of what limits cut, by limit name (C{connections},
    #: C{concurrent}, C{bytes}, C{time}, C{idle}, C{dns}, C{datagrams},
    #: C{events}).
    cut: Dict[str, int] = attrs.field(factory=dict)

    def countCut(self, what: str, n: int = 1) -> None:
        self.cut[what] = self.cut.get(what, 0) + n

    @property
    def anyCut(self) -> bool:
        return any(self.cut.values())



def _monotonicNs() -> int:
    # Same clock as the kernel's event timestamps (bpf_ktime_get_ns).
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------------------
# The gateway of one run


class RunGateway:
    """
    The listeners and records of one run's egress.

    @param reactor: listens, schedules timeouts.
    @param runID: the run; its events carry it in the header.
    @param cgroupID: the run's cgroup id (event header).
    @param address: the gateway address on the run's network.
    @param policy: a L{GatewayPolicy}.
    @param sink: C{(eventType, payload) -> None}, the run's event streamer.
    @param resolve: C{name -> Deferred[list of IPv4 addresses]}.
    @param connect: C{(host, port, protocol, timeout) -> Deferred}.
    @param origDst: C{transport -> (ip, port)}, where a connection was going.
    @param datagramDst: C{(local, peer) -> (ip, port) or None}, where a
        redirected datagram was going.
    """

    def __init__(self, reactor: Any, runID: RunID, cgroupID: int, address: str, policy: GatewayPolicy,
                 sink: Callable[[int, Dict[str, Any]], None], limits: Limits = Limits(),
                 resolve: Optional[Callable[[str], Deferred]] = None,
                 connect: Optional[Callable[..., Deferred]] = None,
                 origDst: Callable[[Any], Tuple[str, int]] = originalDestination,
                 nowNs: Callable[[], int] = _monotonicNs,
                 datagramDst: Callable[[Tuple[str, int], Tuple[str, int]], Optional[Tuple[str, int]]]
                 = conntrackOriginal) -> None:
        self.reactor = reactor
        self.runID = runID
        self._cgroupID = cgroupID
        self.address = address
        self.policy = policy
        self._sink = sink
        self.limits = limits
        self._resolve = resolve or hostResolver(reactor)
        self.connect = connect or hostConnector(reactor)
        self.origDst = origDst
        self._datagramDst = datagramDst
        self._nowNs = nowNs
        self.stats = GatewayStats()
        self._matcher: Optional[CanaryMatcher] = None
        self._pending: List[Tuple[Dict[str, Any], bytes, str]] = []
        self._live: List["Connection"] = []
        self._ports: List[Any] = []
        self._closed = False
        self.tcpPort = self.dnsUDPPort = self.dnsTCPPort = self.udpPort = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """
        Listen on the gateway address (ports chosen by the kernel; see
        C{tcpPort}, C{dnsUDPPort}, C{dnsTCPPort}, C{udpPort}).
        """
        listenTCP, listenUDP = self.reactor.listenTCP, self.reactor.listenUDP
        self.tcpPort = self._listen(listenTCP(0, _PerRunFactory(Connection, self), interface=self.address,
                                              backlog=128))
        self.dnsUDPPort = self._listen(listenUDP(0, DNSProtocol(self), interface=self.address))
        self.dnsTCPPort = self._listen(listenTCP(0, _PerRunFactory(DNSTCP, self), interface=self.address,
                                                 backlog=32))
        self.udpPort = self._listen(listenUDP(0, UDPSink(self), interface=self.address))

    def _listen(self, port: Any) -> int:
        self._ports.append(port)
        return port.getHost().port

    async def close(self) -> GatewayStats:
        """
        Stop listening, cut the connections still open (recorded), flush
        what waited for the bait, and emit the C{cut} summary if a limit cut
        anything.  Idempotent.
        """
        if self._closed:
            return self.stats
        self._closed = True
        for conn in list(self._live):
            conn.finish("closed", cut=None)
            conn.transport.abortConnection()
        for port in self._ports:
            try:
                await port.stopListening()
            except Exception:
                log.failure("run {run_id}: closing a gateway listener failed", run_id=self.runID.hex())
        if self._matcher is None:
            self.setCanaries({})
        if self.stats.anyCut:
            payload = self.makePayload("tcp", "cut")
            payload["Cut"] = dict(self.stats.cut)
            payload["Reason"] = "per-run egress limits cut " + ", ".join(
                "%s=%d" % kv for kv in sorted(self.stats.cut.items()))
            payload["Stats"] = {"Connections": self.stats.connections, "Forwarded": self.stats.forwarded,
                                "Sinkholed": self.stats.sinkholed, "Refused": self.stats.refused,
                                "DNSQueries": self.stats.dnsQueries, "Datagrams": self.stats.datagrams,
                                "SinkBytes": self.stats.sinkBytes}
            self._sink(int(EventType.EGRESS_ATTEMPT), payload)
            self.stats.eventsEmitted += 1
            log.warn("run {run_id}: egress limits cut {cut}", run_id=self.runID.hex(), cut=payload["Reason"])
        return self.stats

    def setCanaries(self, canaries: Mapping[str, str]) -> None:
        """
        The run's bait values (name -> value): attempts are searched for them
        from now on, and those that waited are searched and emitted.
        """
        self._matcher = CanaryMatcher(canaries)
        pending, self._pending = self._pending, []
        for payload, data, name in pending:
            self._emitChecked(payload, data, name)

    # -- events --------------------------------------------------------------

    def makePayload(self, protocol: str, action: str, **fields: Any) -> Dict[str, Any]:
        header = {"TsNs": self._nowNs(), "CgroupID": self._cgroupID, "RunID": list(self.runID.raw), "PID": 0,
                  "TID": 0, "PPID": 0, "UID": 0, "GID": 0, "Type": int(EventType.EGRESS_ATTEMPT), "Tags": 0}
        payload: Dict[str, Any] = {"Header": header, "CommStr": "", "Protocol": protocol, "Action": action,
                                   "DestName": "", "DestIP": "", "DestPort": 0}
        payload.update(fields)
        return payload

    def record(self, payload: Dict[str, Any], scanned: bytes = b"", name: str = "") -> None:
        """
        Emit one attempt (after the bait values are known): C{scanned} bytes
        and the DNS name C{name} are searched for them.
        """
        if self.stats.eventsEmitted >= self.limits.maxEvents:
            self.stats.countCut("events")
            return
        self.stats.eventsEmitted += 1
        if self._matcher is None:
            self._pending.append((payload, scanned, name))
            return
        self._emitChecked(payload, scanned, name)

    def _emitChecked(self, payload: Dict[str, Any], data: bytes, name: str) -> None:
        assert self._matcher is not None
        hits = set()
        if self._matcher:
            # Bounded: at most twice the scanned bytes (the run's sinkholed
            # bytes are bounded too), so a flood cannot hold the reactor.
            for blob in expandForScan(data, budget=min(2 * len(data), 512 * KIB)) if data else ():
                hits.update(self._matcher.find(blob))
            if name:
                hits.update(self._matcher.findInName(name))
        found = baitNames(sorted(hits))
        payload["Canaries"] = found
        self._sink(int(EventType.EGRESS_ATTEMPT), payload)
        if found:
            canary = {"Header": dict(payload["Header"], Type=int(EventType.CANARY_EXFILTRATED)),
                      "CommStr": "", "Bait": found, "Channel": "egress", "Protocol": payload.get("Protocol", ""),
                      "DestIP": payload.get("DestIP", ""), "DestPort": payload.get("DestPort", 0),
                      "DestName": payload.get("DestName", ""), "Action": payload.get("Action", "")}
            for key in ("Method", "Host", "Path", "SNI"):
                if payload.get(key):
                    canary[key] = payload[key]
            self._sink(int(EventType.CANARY_EXFILTRATED), canary)
            log.warn("run {run_id}: bait {bait} sent to {dest} ({protocol}), {action}", run_id=self.runID.hex(),
                     bait=",".join(found), dest=payload.get("DestName") or payload.get("DestIP"),
                     protocol=payload.get("Protocol"), action=payload.get("Action"))

    # -- accounting ------------------------------------------------------------

    def admit(self, conn: "Connection") -> Optional[str]:
        if self._closed:
            return "closed"
        if self.stats.connections >= self.limits.maxConnections:
            self.stats.countCut("connections")
            return "connections"
        if len(self._live) >= self.limits.maxConcurrent:
            self.stats.countCut("concurrent")
            return "concurrent"
        self.stats.connections += 1
        self._live.append(conn)
        return None

    def gone(self, conn: "Connection") -> None:
        if conn in self._live:
            self._live.remove(conn)

    def takeBytes(self, n: int) -> bool:
        """
        Count C{n} sinkholed bytes; False once the run's budget is spent.
        """
        if self.stats.sinkBytes + n > self.limits.maxSinkBytes:
            self.stats.sinkBytes = self.limits.maxSinkBytes
            return False
        self.stats.sinkBytes += n
        return True

    # -- DNS -----------------------------------------------------------------

    def destOf(self, local: Optional[Tuple[str, int]], peer: Optional[Tuple[str, int]]) -> Tuple[str, int]:
        if local is None or peer is None:
            return "", 0
        try:
            return self._datagramDst(local, peer) or ("", 0)
        except Exception:
            log.failure("run {run_id}: original destination of a datagram", run_id=self.runID.hex())
            return "", 0

    async def answerDNS(self, data: bytes, local: Optional[Tuple[str, int]] = None,
                        peer: Optional[Tuple[str, int]] = None) -> Optional[bytes]:
        """
        The answer to one DNS message from the sandbox (C{None}: no answer).
        C{local} and C{peer} (UDP) let the record say which resolver it was
        sent to.
        """
        msg = dns.Message()
        try:
            msg.fromStr(data)
        except Exception:
            self.recordDatagram(data, "dns", self.destOf(local, peer))
            return None
        if msg.answer or not msg.queries:
            self.recordDatagram(data, "dns", self.destOf(local, peer))
            return None
        answer = dns.Message(id=msg.id, answer=1, opCode=msg.opCode, recDes=msg.recDes, recAv=1)
        answer.queries = msg.queries[:1]
        query = msg.queries[0]
        self.stats.dnsQueries += 1
        if self.stats.dnsQueries > self.limits.maxDNSQueries:
            self.stats.countCut("dns")
            answer.rCode = dns.ESERVER
            return answer.toStr()
        name = query.name.name.decode("ascii", "replace")
        qname = normaliseName(name)
        qtype = dns.QUERY_TYPES.get(query.type, str(query.type))
        destIP, destPort = self.destOf(local, peer)
        fields = {"DestName": qname, "DestIP": destIP, "DestPort": destPort or 53, "QType": qtype}
        if self.policy.allowsName(qname):
            addresses: List[str] = []
            if query.type == dns.A:
                try:
                    addresses = list(await self._resolve(qname))
                except Exception as e:
                    log.warn("run {run_id}: resolving allowed host {name} failed: {error}",
                             run_id=self.runID.hex(), name=qname, error=str(e))
                    answer.rCode = dns.ESERVER
            for ip in addresses:
                answer.answers.append(dns.RRHeader(query.name.name, dns.A, dns.IN, 60, dns.Record_A(ip, 60)))
            self.record(self.makePayload("dns", "forwarded", Answers=addresses, **fields))
            return answer.toStr()
        if self.policy.mode == CONTAIN:
            if query.type == dns.A:
                answer.answers.append(dns.RRHeader(query.name.name, dns.A, dns.IN, 5,
                                                   dns.Record_A(self.address, 5)))
            self.stats.sinkholed += 1
            self.record(self.makePayload("dns", "sinkholed", Answers=[self.address] if query.type == dns.A else [],
                                      **fields), name=qname)
        else:
            answer.rCode = dns.ENAME
            self.stats.refused += 1
            self.record(self.makePayload("dns", "refused", **fields), name=qname)
        return answer.toStr()

    def recordDatagram(self, data: bytes, protocol: str, dest: Tuple[str, int] = ("", 0)) -> None:
        self.stats.datagrams += 1
        if self.stats.datagrams > self.limits.maxDatagrams:
            self.stats.countCut("datagrams")
            return
        if not self.takeBytes(len(data)):
            self.stats.countCut("bytes")
            return
        action = "sinkholed" if self.policy.mode == CONTAIN else "refused"
        self.stats.sinkholed += action == "sinkholed"
        self.stats.refused += action == "refused"
        kept = data[:self.limits.captureBytes]
        self.record(self.makePayload("udp", action, DestIP=dest[0], DestPort=dest[1] or (53 if protocol == "dns" else 0),
                                  BodySize=len(data), BodySHA256=hashlib.sha256(data).hexdigest(),
                                  BodyB64=base64.b64encode(kept).decode("ascii")),
                    scanned=data[:self.limits.scanBytes])


class _PerRunFactory(Factory):
    """
    Builds C{protocol(gateway)} for each connection a listener accepts.
    """

    def __init__(self, protocol: Callable[[RunGateway], Protocol], gateway: RunGateway) -> None:
        self.protocol = protocol
        self.gw = gateway

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol(self.gw)
