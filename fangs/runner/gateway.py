# -*- test-case-name: tests.runner.test_gateway -*-
"""
The egress gateway of one contained run: the only peer a sandbox can reach.

The host's packet rules (L{fangs.runner.egress}) send every packet that
leaves the sandbox to one of this gateway's listeners on the run network's
gateway address, whatever its destination (raw addresses included):

  - DNS (UDP and TCP port 53) goes to L{_DNSProtocol}: the allowed registry
    names are resolved truly, on the host; every other name is recorded and
    answered with the gateway's own address (policy C{contain}) or refused
    with NXDOMAIN (policy C{registry-only});
  - every other TCP connection goes to L{_Connection}, which reads the
    original destination (C{SO_ORIGINAL_DST}) and peeks at the first bytes:
    a TLS ClientHello (SNI, ALPN) or an HTTP request head (C{Host}).  When
    that name and port are allowed, the connection is forwarded to the real
    host, bytes untouched (TLS passthrough, never interception).  Everything
    else is sinkholed: the request (HTTP method, host, path, headers, the
    first 64 KiB of the body, its size and SHA-256; or the ClientHello; or
    the first bytes of any other protocol) is recorded and answered
    plausibly (an empty HTTP 200, a TLS handshake-failure alert), and never
    forwarded.  Under C{registry-only} the connection is closed instead;
  - every other UDP datagram goes to L{_UDPSink} and is recorded.

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
import re
import socket
import struct
import time
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.names import dns

from fangs.egresspolicy import CONTAIN, OPEN, POLICIES, REGISTRY_ONLY, PolicyError, normaliseName, parseAllowedHosts  # noqa: F401 (the runner's names for them)
from fangs.runner.canary import CanaryMatcher
from fangs.wire import EventType, RunID

log = Logger()

KIB = 1024
MIB = 1024 * KIB

#: What a sinkholed HTTP request gets: an empty success, and the end.
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
#: A TLS alert record: fatal (2) handshake_failure (40).
TLS_HANDSHAKE_FAILURE = b"\x15\x03\x03\x00\x02\x02\x28"

SO_ORIGINAL_DST = 80

_METHOD = re.compile(rb"^[A-Z]{3,12} ")


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


# ---------------------------------------------------------------------------
# Parsers (pure)


@attrs.frozen
class ClientHello:
    sni: str
    alpn: Tuple[str, ...]


class NeedMore(Exception):
    pass


class NotThis(Exception):
    pass


def parseClientHello(data: bytes) -> ClientHello:
    """
    The SNI and ALPN of a TLS ClientHello at the start of C{data}.  Raises
    L{NeedMore} when it is incomplete, L{NotThis} when it is not one.
    """
    if len(data) < 1:
        raise NeedMore()
    if data[0] != 0x16:
        raise NotThis()
    body = b""
    off = 0
    while True:
        if len(data) < off + 5:
            raise NeedMore()
        ctype, major, length = data[off], data[off + 1], struct.unpack("!H", data[off + 3:off + 5])[0]
        if ctype != 0x16 or major != 3 or length == 0 or length > 18432:
            raise NotThis()
        if len(data) < off + 5 + length:
            raise NeedMore()
        body += data[off + 5:off + 5 + length]
        off += 5 + length
        if len(body) >= 4:
            if body[0] != 1:
                raise NotThis()
            hsLen = int.from_bytes(body[1:4], "big")
            if hsLen > 65536:
                raise NotThis()
            if len(body) >= 4 + hsLen:
                return _helloFields(body[4:4 + hsLen])


def _helloFields(h: bytes) -> ClientHello:
    try:
        p = 2 + 32
        p += 1 + h[p]
        p += 2 + struct.unpack("!H", h[p:p + 2])[0]
        p += 1 + h[p]
        if p + 2 > len(h):
            return ClientHello("", ())
        end = p + 2 + struct.unpack("!H", h[p:p + 2])[0]
        p += 2
        sni, alpn = "", []
        while p + 4 <= min(end, len(h)):
            etype, elen = struct.unpack("!HH", h[p:p + 4])
            ext = h[p + 4:p + 4 + elen]
            p += 4 + elen
            if etype == 0 and len(ext) >= 5 and ext[2] == 0:
                n = struct.unpack("!H", ext[3:5])[0]
                sni = ext[5:5 + n].decode("ascii", "replace")
            elif etype == 16 and len(ext) >= 2:
                q = 2
                while q < len(ext):
                    n = ext[q]
                    alpn.append(ext[q + 1:q + 1 + n].decode("ascii", "replace"))
                    q += 1 + n
        return ClientHello(sni, tuple(alpn))
    except (IndexError, struct.error):
        raise NotThis() from None


@attrs.frozen
class RequestHead:
    method: str
    target: str
    host: str
    path: str
    headers: Dict[str, str]
    length: int  # bytes of the head, CRLFCRLF included


def parseRequestHead(data: bytes, limit: int = 16 * KIB) -> RequestHead:
    """
    An HTTP/1 request head at the start of C{data}.  Raises L{NeedMore} or
    L{NotThis}.
    """
    if not _METHOD.match(data[:13]):
        if len(data) < 13 and re.match(rb"^[A-Z]*$", data):
            raise NeedMore()
        raise NotThis()
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= limit:
            raise NotThis()
        raise NeedMore()
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise NotThis()
    method, target = parts[0], parts[1]
    headers: Dict[str, str] = {}
    for line in lines[1:101]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
    host, path = headers.get("host", ""), target
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)(.*)$", target)
    if m:
        host, path = m.group(1), m.group(2) or "/"
    if method == "CONNECT":
        host, path = target, ""
    return RequestHead(method, target, host, path, headers, end + 4)


def splitHostPort(text: str, default: int) -> Tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            host, port = text, ""
    return host, int(port) if port.isdigit() and int(port) < 65536 else default


_B64RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def expandForScan(data: bytes, depth: int = 4, budget: int = 1 * MIB) -> List[bytes]:
    """
    C{data} and what it decodes to, for the bait search: stealers wrap a
    secret in several layers (base64 of base64 of a JSON document, gzip,
    percent-encoding) before sending it.  Each base64-looking run is decoded
    (both alphabets), gzip/zlib streams are inflated, percent-escapes
    undone, recursively to C{depth} levels and C{budget} bytes in all.
    """
    import binascii
    import urllib.parse
    import zlib

    out: List[bytes] = []
    seen = set()
    total = [0]

    def add(blob: bytes, level: int) -> None:
        if not blob or total[0] >= budget:
            return
        key = hashlib.sha256(blob).digest()
        if key in seen:
            return
        seen.add(key)
        blob = blob[:budget - total[0]]
        total[0] += len(blob)
        out.append(blob)
        if level >= depth:
            return
        for magic in (b"\x1f\x8b\x08", b"\x78\x9c", b"\x78\xda", b"\x78\x01"):
            start = blob.find(magic)
            for _ in range(4):
                if start < 0 or total[0] >= budget:
                    break
                try:
                    d = zlib.decompressobj(zlib.MAX_WBITS | 32)
                    add(d.decompress(blob[start:], max(1, budget - total[0])), level + 1)
                except zlib.error:
                    pass
                start = blob.find(magic, start + 1)
        if b"%" in blob:
            add(urllib.parse.unquote_to_bytes(blob), level + 1)
        for m in _B64RUN.finditer(blob):
            run = m.group(0).rstrip(b"=")
            for candidate in (run.replace(b"-", b"+").replace(b"_", b"/"),):
                for cut in range(4):
                    piece = candidate[cut:]
                    piece = piece[:len(piece) - len(piece) % 4]
                    if len(piece) < 16:
                        continue
                    try:
                        decoded = binascii.a2b_base64(piece)
                    except (binascii.Error, ValueError):
                        continue
                    add(decoded, level + 1)
            if total[0] >= budget:
                return

    add(data, 0)
    return out


def originalDestination(transport: Any) -> Tuple[str, int]:
    """
    Where the sandbox meant to connect before the host's DNAT rule sent the
    connection here (C{SO_ORIGINAL_DST}); the local address when it was not
    redirected.
    """
    sock = transport.getHandle()
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack("!H", raw[2:4])[0]
        return socket.inet_ntoa(raw[4:8]), port
    except OSError:
        host = transport.getHost()
        return host.host, host.port


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _nlaParse(data: bytes) -> Dict[int, bytes]:
    out: Dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def conntrackOriginal(local: Tuple[str, int], peer: Tuple[str, int], proto: int = 17) -> Optional[Tuple[str, int]]:
    """
    Where a datagram (or connection) that reached C{local} from C{peer}
    through the host's DNAT rule was originally sent: asked of the kernel's
    connection tracking over netlink (C{IPCTNL_MSG_CT_GET} by reply tuple).
    C{None} when the kernel does not know it.  Non-blocking in practice:
    the kernel answers a netlink request at once.
    """
    NESTED = 0x8000
    try:
        tupleIP = _nla(1 | NESTED, _nla(1, socket.inet_aton(local[0])) + _nla(2, socket.inet_aton(peer[0])))
        tupleProto = _nla(2 | NESTED, _nla(1, bytes([proto])) + _nla(2, struct.pack("!H", local[1]))
                          + _nla(3, struct.pack("!H", peer[1])))
    except OSError:
        return None
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + _nla(2 | NESTED, tupleIP + tupleProto)  # CTA_TUPLE_REPLY
    header = struct.pack("=IHHII", 16 + len(body), (1 << 8) | 1, 1, 1, 0)  # CTNETLINK, CT_GET, NLM_F_REQUEST
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as sock:  # NETLINK_NETFILTER
            sock.settimeout(0.2)
            sock.send(header + body)
            data = sock.recv(65536)
    except (OSError, AttributeError):
        return None
    if len(data) < 20:
        return None
    msgType = struct.unpack_from("=H", data, 4)[0]
    if msgType == 2:  # NLMSG_ERROR: not tracked
        return None
    attrs_ = _nlaParse(data[20:])
    orig = _nlaParse(attrs_.get(1, b""))  # CTA_TUPLE_ORIG
    ip, pr = _nlaParse(orig.get(1, b"")), _nlaParse(orig.get(2, b""))
    dst, port = ip.get(2), pr.get(3)
    if not dst or len(dst) != 4 or not port or len(port) != 2:
        return None
    return socket.inet_ntoa(dst), struct.unpack("!H", port)[0]


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


def _monotonicNs() -> int:
    # Same clock as the kernel's event timestamps (bpf_ktime_get_ns).
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def baitNames(names: Sequence[str]) -> List[str]:
    """
    Bait names as reported: a C{#n} suffix that told apart two copies of
    one kind of bait (two homes) is dropped.
    """
    return sorted({n.split("#", 1)[0] for n in names})


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
        self._reactor = reactor
        self.runID = runID
        self._cgroupID = cgroupID
        self.address = address
        self.policy = policy
        self._sink = sink
        self.limits = limits
        self._resolve = resolve or hostResolver(reactor)
        self._connect = connect or hostConnector(reactor)
        self._origDst = origDst
        self._datagramDst = datagramDst
        self._nowNs = nowNs
        self.stats = GatewayStats()
        self._matcher: Optional[CanaryMatcher] = None
        self._pending: List[Tuple[Dict[str, Any], bytes, str]] = []
        self._live: List["_Connection"] = []
        self._ports: List[Any] = []
        self._closed = False
        self.tcpPort = self.dnsUDPPort = self.dnsTCPPort = self.udpPort = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """
        Listen on the gateway address (ports chosen by the kernel; see
        C{tcpPort}, C{dnsUDPPort}, C{dnsTCPPort}, C{udpPort}).
        """
        tcp = self._reactor.listenTCP(0, _ConnectionFactory(self), interface=self.address, backlog=128)
        self._ports.append(tcp)
        self.tcpPort = tcp.getHost().port
        udp = self._reactor.listenUDP(0, _DNSProtocol(self), interface=self.address)
        self._ports.append(udp)
        self.dnsUDPPort = udp.getHost().port
        dnsTCP = self._reactor.listenTCP(0, _DNSTCPFactory(self), interface=self.address, backlog=32)
        self._ports.append(dnsTCP)
        self.dnsTCPPort = dnsTCP.getHost().port
        sink = self._reactor.listenUDP(0, _UDPSink(self), interface=self.address)
        self._ports.append(sink)
        self.udpPort = sink.getHost().port

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
            payload = self._payload("tcp", "cut")
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

    def _payload(self, protocol: str, action: str, **fields: Any) -> Dict[str, Any]:
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

    def _admit(self, conn: "_Connection") -> Optional[str]:
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

    def _gone(self, conn: "_Connection") -> None:
        if conn in self._live:
            self._live.remove(conn)

    def _takeBytes(self, n: int) -> bool:
        """
        Count C{n} sinkholed bytes; False once the run's budget is spent.
        """
        if self.stats.sinkBytes + n > self.limits.maxSinkBytes:
            self.stats.sinkBytes = self.limits.maxSinkBytes
            return False
        self.stats.sinkBytes += n
        return True

    # -- DNS -----------------------------------------------------------------

    def _destOf(self, local: Optional[Tuple[str, int]], peer: Optional[Tuple[str, int]]) -> Tuple[str, int]:
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
            self._datagram(data, "dns", self._destOf(local, peer))
            return None
        if msg.answer or not msg.queries:
            self._datagram(data, "dns", self._destOf(local, peer))
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
        destIP, destPort = self._destOf(local, peer)
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
            self.record(self._payload("dns", "forwarded", Answers=addresses, **fields))
            return answer.toStr()
        if self.policy.mode == CONTAIN:
            if query.type == dns.A:
                answer.answers.append(dns.RRHeader(query.name.name, dns.A, dns.IN, 5,
                                                   dns.Record_A(self.address, 5)))
            self.stats.sinkholed += 1
            self.record(self._payload("dns", "sinkholed", Answers=[self.address] if query.type == dns.A else [],
                                      **fields), name=qname)
        else:
            answer.rCode = dns.ENAME
            self.stats.refused += 1
            self.record(self._payload("dns", "refused", **fields), name=qname)
        return answer.toStr()

    def _datagram(self, data: bytes, protocol: str, dest: Tuple[str, int] = ("", 0)) -> None:
        self.stats.datagrams += 1
        if self.stats.datagrams > self.limits.maxDatagrams:
            self.stats.countCut("datagrams")
            return
        if not self._takeBytes(len(data)):
            self.stats.countCut("bytes")
            return
        action = "sinkholed" if self.policy.mode == CONTAIN else "refused"
        self.stats.sinkholed += action == "sinkholed"
        self.stats.refused += action == "refused"
        kept = data[:self.limits.captureBytes]
        self.record(self._payload("udp", action, DestIP=dest[0], DestPort=dest[1] or (53 if protocol == "dns" else 0),
                                  BodySize=len(data), BodySHA256=hashlib.sha256(data).hexdigest(),
                                  BodyB64=base64.b64encode(kept).decode("ascii")),
                    scanned=data[:self.limits.scanBytes])


# ---------------------------------------------------------------------------
# TCP: peek, forward or sinkhole


_PEEK, _FORWARD, _SINK_HTTP, _SINK_RAW, _DONE = range(5)


class _Connection(Protocol):
    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway
        self.state = _PEEK
        self.buf = b""
        self.destIP, self.destPort = "", 0
        self.recorded = False
        self.upstream: Optional[_Upstream] = None
        self.head: Optional[RequestHead] = None
        self.hello: Optional[ClientHello] = None
        self.received = 0
        self.body = b""  # captured body (first captureBytes)
        self.scanned = b""
        self.bodySize = 0
        self.bodyHash = hashlib.sha256()
        self.bodyExpected: Optional[int] = None
        self.chunks: Optional[_Chunks] = None
        self._timers: List[IDelayedCall] = []
        self._idle: Optional[IDelayedCall] = None

    # -- lifecycle -----------------------------------------------------------

    def connectionMade(self) -> None:
        refused = self.gw._admit(self)
        if refused is not None:
            self.state = _DONE
            self.transport.abortConnection()
            return
        try:
            self.destIP, self.destPort = self.gw._origDst(self.transport)
        except Exception:
            log.failure("run {run_id}: original destination unknown", run_id=self.gw.runID.hex())
        clock = self.gw._reactor
        self._timers.append(clock.callLater(self.gw.limits.peekTimeout, self._peekTimedOut))

    def connectionLost(self, reason: Any = None) -> None:
        self.gw._gone(self)
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
        elif not self.gw._takeBytes(n):
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
        if self.gw.policy.mode != CONTAIN:
            self.gw.stats.refused += 1
            self._emit(protocol, "refused")
            self.state = _DONE
            self.transport.abortConnection()
            return
        self.gw.stats.sinkholed += 1
        if not self.gw._takeBytes(min(len(self.buf), self.gw.limits.peekBytes)):
            return self._cut("bytes")
        self._lifetime()
        if protocol == "tls":
            self.scanned = self.buf[:self.gw.limits.scanBytes]
            self.body = self.buf[:self.gw.limits.captureBytes]
            self.bodySize = len(self.buf)
            self.bodyHash.update(self.buf)
            self.transport.write(TLS_HANDSHAKE_FAILURE)
            self._emit("tls", "sinkholed")
            self.state = _DONE
            self.transport.loseConnection()
            return
        assert self.head is not None
        self.state = _SINK_HTTP
        head = self.head
        self.scanned = self.buf[:head.length]
        rest = self.buf[head.length:]
        te = head.headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            self.chunks = _Chunks()
        else:
            cl = head.headers.get("content-length", "0").strip()
            self.bodyExpected = int(cl) if cl.isdigit() else 0
        self._touch()
        self._body(rest)

    def _sinkRaw(self) -> None:
        self._cancelTimers()
        if self.gw.policy.mode != CONTAIN:
            self.gw.stats.refused += 1
            self._capture(self.buf)
            self._emit("tcp", "refused")
            self.state = _DONE
            self.transport.abortConnection()
            return
        self.gw.stats.sinkholed += 1
        if not self.gw._takeBytes(min(len(self.buf), self.gw.limits.peekBytes)):
            return self._cut("bytes")
        self.state = _SINK_RAW
        self._lifetime()
        self._capture(self.buf)
        self._touch()

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
            self.transport.write(HTTP_OK)
            self._emit("http", "sinkholed")
            self.state = _DONE
            self.transport.loseConnection()
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
        self.gw.record(self.gw._payload(protocol, action, **fields), scanned=scanned,
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
                self.gw.stats.sinkholed += self.gw.policy.mode == CONTAIN
                self.gw.stats.refused += self.gw.policy.mode != CONTAIN
            self._capture(self.buf)
        if cut is not None:
            self._emit(self._protocol(), "cut", Cut=cut, Reason=why)
        else:
            self._emit(self._protocol(), "sinkholed" if self.gw.policy.mode == CONTAIN else "refused")

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
        self._timers.append(self.gw._reactor.callLater(self.gw.limits.connectionTimeout, self._cut, "time"))

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.gw.limits.idleTimeout)
        else:
            self._idle = self.gw._reactor.callLater(self.gw.limits.idleTimeout, self._idleTimedOut)

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
        self.upstream = _Upstream(self)
        d = self.gw._connect(name, self.destPort, self.upstream, self.gw.limits.upstreamTimeout)

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


class _Upstream(Protocol):
    def __init__(self, down: _Connection) -> None:
        self.down = down

    def connectionMade(self) -> None:
        self.down.upstreamReady()

    def dataReceived(self, data: bytes) -> None:
        self.down.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.down.transport.loseConnection()


class _Chunks:
    """
    An incremental decoder of a chunked body (payload bytes out).
    """

    def __init__(self) -> None:
        self._buf = b""
        self._left = -1  # bytes left in the current chunk; -1: reading a size line
        self._crlf = False
        self.done = False

    def feed(self, data: bytes) -> Tuple[bytes, bool]:
        out = b""
        self._buf += data
        while not self.done:
            if self._crlf:
                if len(self._buf) < 2:
                    break
                self._buf, self._crlf = self._buf[2:], False
            if self._left < 0:
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 1024:
                        self.done = True  # not chunked after all: stop here
                    break
                line = self._buf[:end].split(b";")[0].strip()
                self._buf = self._buf[end + 2:]
                try:
                    self._left = int(line, 16)
                except ValueError:
                    self.done = True
                    break
                if self._left == 0:
                    self.done = True
                    break
            take = self._buf[:self._left]
            out += take
            self._buf = self._buf[len(take):]
            self._left -= len(take)
            if self._left > 0:
                break
            self._left, self._crlf = -1, True
        return out, self.done


class _ConnectionFactory(Factory):
    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.gw)


# ---------------------------------------------------------------------------
# DNS and UDP


class _DNSProtocol(DatagramProtocol):
    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        d = Deferred.fromCoroutine(self.gw.answerDNS(data, (self.gw.address, self.gw.dnsUDPPort), addr))

        def reply(answer: Optional[bytes]) -> None:
            if answer is not None and self.transport is not None:
                self.transport.write(answer, addr)

        d.addCallback(reply)
        d.addErrback(lambda f: log.failure("run {run_id}: DNS answer failed", f, run_id=self.gw.runID.hex()))


class _DNSTCP(Protocol):
    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway
        self.buf = b""

    def connectionMade(self) -> None:
        self._timer = self.gw._reactor.callLater(self.gw.limits.peekTimeout, self.transport.abortConnection)

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


class _DNSTCPFactory(Factory):
    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway

    def buildProtocol(self, addr: Any) -> _DNSTCP:
        return _DNSTCP(self.gw)


class _UDPSink(DatagramProtocol):
    def __init__(self, gateway: RunGateway) -> None:
        self.gw = gateway

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self.gw._datagram(data, "udp", self.gw._destOf((self.gw.address, self.gw.udpPort), addr))
        except Exception:
            log.failure("run {run_id}: recording a datagram failed", run_id=self.gw.runID.hex())
