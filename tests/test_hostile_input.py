"""
Hostile input against the orchestrator.

In memory: a property-based fuzz (hypothesis) of every route of
L{OrchestratorAPI.app}'s URL map, read from the map itself so routes added
later are fuzzed too, through StubTreq against the real Klein resource, core
and SQLite store.  Whatever arrives (random bytes, invalid UTF-8, JSON of the
wrong types, huge numbers, deep nesting, NDJSON mixing good and bad batches,
oversize bodies, odd methods and paths), the answer is below 500, carries no
traceback, is the JSON error envelope when it is a 4xx, the server still
answers, and a request that failed changed nothing stored.

On a real socket: the twistd plugin's service on loopback with a short idle
timeout, against clients that trickle headers, send too many or too large
headers, or announce an oversize body.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.http import HTTPChannel

from fangs.orchestrator import tap
from fangs.orchestrator.api import OrchestratorAPI
from tests.orchestrator.helpers import BASE, InMemoryOrchestrator, batchLine, fileEvent, runScan
from tests.procs import freePort, httpClient, sleep

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,  # the same examples on every run: deterministic CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- strategies -----------------------------------------------------------------

HUGE_NUMBERS = [2**80, -(2**80), -1, 0, 2**63, 2**64, -(2**63) - 1, 1e308, -1e308, 1e-308, 0.5, True, False]
FIELD_NAMES = [
    "runner_id", "proto_version", "hostname", "capabilities", "kernel_version", "target_runner", "Job", "kind",
    "sandbox", "image", "duration", "watched_paths", "prefix", "cgroup_path", "package_name", "version", "run_id",
    "status", "reason", "events_emitted", "events_dropped", "seq", "events", "type", "payload", "Header", "TsNs",
    "PID", "name", "scopes", "value", "scope", "note", "url", "active_run_ids", "events_queued", "grace_period",
]

jsonScalar = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(HUGE_NUMBERS),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "\ud7ff", "a" * 3000, "../../etc/passwd", "worker-1", "sandbox_scan", "ok"]),
)
jsonValue = st.recursive(
    jsonScalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10)), children, max_size=5),
    ),
    max_leaves=20,
)
# Objects whose keys are the wire types' own names, with values of any type.
wrongTypes = st.dictionaries(st.sampled_from(FIELD_NAMES), jsonValue, min_size=1, max_size=8)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # Infinity for 1e308 * 10 never arises; big ints stay exact


def _deep(depth: int, open_: bytes, close: bytes, middle: bytes = b"1") -> bytes:
    return open_ * depth + middle + close * depth


deepBodies = st.sampled_from(
    [
        b"[" * 100_000,
        _deep(100_000, b"[", b"]"),
        _deep(50_000, b'{"a":', b"}"),
        _deep(3000, b"[", b"]"),
        b'{"seq": 1, "events": [{"type": 1, "payload": ' + _deep(2000, b'{"a":', b"}", b"{}") + b"}]}\n",
        b'{"seq": 1, "events": [{"type": 1, "payload": ' + _deep(300, b'{"a":', b"}", b"{}") + b"}]}\n",
    ]
)
invalidUTF8 = st.one_of(
    st.binary(max_size=64).map(lambda b: b + b"\xff\xfe\xc3\x28"),
    st.sampled_from(
        [
            b'{"runner_id": "\xff\xfe", "proto_version": 1}',
            b'{"name": "\xc3\x28", "scopes": ["orchestrator:read"]}',
            b'{"seq": 1, "events": [{"type": 1, "payload": {"PathName": "\xed\xa0\x80"}}]}\n',
            b"\xef\xbb\xbf{}",  # a byte-order mark
        ]
    ),
)
oversize = st.sampled_from([b"x" * (2 * 1024 * 1024), b'{"a": "' + b"y" * (1024 * 1024 + 10) + b'"}', b"[" + b"1," * 300_000 + b"1]"])


def _badLine(value: Any) -> bytes:
    return _dumps(value) + b"\n"


goodEvent = st.builds(
    lambda path, pid: fileEvent(path, pid=pid),
    st.text(min_size=1, max_size=30).map(lambda t: "/tmp/" + t),
    st.integers(min_value=0, max_value=2**31),
)
badBatch = st.one_of(
    wrongTypes.map(_badLine),
    st.binary(min_size=1, max_size=40).filter(lambda b: b.strip() and b"\n" not in b).map(lambda b: b + b"\n"),
    st.sampled_from(HUGE_NUMBERS).map(lambda n: _badLine({"seq": n, "events": []})),
    st.sampled_from(HUGE_NUMBERS).map(lambda n: _badLine({"seq": 1, "events": [{"type": n, "payload": {}}]})),
    st.just(b'{"seq": 1, "events": [{"type": 1, "payload": []}]}\n'),
    st.just(_deep(5000, b"[", b"]") + b"\n"),
)
ndjsonBody = st.lists(st.one_of(st.lists(goodEvent, max_size=3).map(lambda evs: ("good", evs)), badBatch.map(lambda b: ("bad", b))), min_size=1, max_size=6)

bodies = st.one_of(
    st.none(),
    st.binary(max_size=256),
    invalidUTF8,
    jsonValue.map(_dumps),
    wrongTypes.map(_dumps),
    deepBodies,
    oversize,
    badBatch,
    st.lists(badBatch, min_size=1, max_size=4).map(b"".join),
)

# Path segments: sensible ones, so handlers run past routing, and hostile ones.
hostileSegments = [
    "", ".", "..", "%00", "a%00b", "%2e%2e", "%2F", "%ff%fe", "%", "%zz", "a" * 5000, "%C3%A9t%C3%A9",
    "0" * 32, "f" * 32, "F" * 32, "worker-1", "left-pad", "@scope%2Fname", "left-pad/baseline", "left-pad/releases",
    "..%2F..%2Fetc%2Fpasswd", "%E2%80%AE", " ", "%20", "%0d%0aX-Injected:%201",
]
segment = st.one_of(
    st.sampled_from(hostileSegments),
    st.text(max_size=20).map(lambda t: quote(t, safe="")),
)
queryParams = st.dictionaries(
    st.sampled_from(["page_size", "page_token", "state", "since", "until", "type", "limit", "run", "severity", "package", "x"]),
    st.one_of(
        st.sampled_from(["-1", "0", "1", "501", str(2**80), "1e308", "%00", "%ff", "pending", "2026-05-22T01:23:45Z", "9999-99-99", "file_access", "a" * 3000]),
        st.text(max_size=12).map(lambda t: quote(t, safe="")),
    ),
    max_size=3,
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO", "get"])
headerSets = st.dictionaries(
    st.sampled_from(["Content-Type", "Idempotency-Key", "traceparent", "Authorization", "Accept", "X-Forwarded-For"]),
    st.one_of(
        st.sampled_from(["application/json", "application/x-ndjson", "text/html", "", "a" * 500, "00-" + "0" * 32 + "-" + "0" * 16 + "-00", "Bearer x.y.z"]),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    ),
    max_size=3,
)

_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def allRules() -> List[Tuple[str, List[str]]]:
    """
    Every route of the API's URL map, with its methods, as declared.
    """
    rules = []
    for rule in OrchestratorAPI.app.url_map.iter_rules():
        rules.append((rule.rule, sorted(rule.methods or ["GET", "POST", "DELETE"])))
    return sorted(rules)


RULES = allRules()


@st.composite
def requests(draw: Any) -> Tuple[str, str, Optional[bytes], Dict[str, str]]:
    rule, ruleMethods = draw(st.sampled_from(RULES))
    valid = draw(st.booleans())

    def fill(m: "re.Match[str]") -> str:
        if valid and m.group(1) in ("runID", "deviationID"):
            return draw(st.sampled_from(["@RUN@", "0" * 32]))
        return draw(segment)

    path = _ARG.sub(fill, rule)
    if draw(st.integers(0, 9)) == 0:
        path = path.rstrip("/") + "/" + "/".join(draw(st.lists(segment, min_size=1, max_size=4)))
    query = draw(queryParams)
    if query:
        path += "?" + "&".join("%s=%s" % kv for kv in query.items())
    method = draw(st.one_of(st.sampled_from(ruleMethods), methods))
    headers = draw(headerSets)
    if "Content-Type" not in headers and draw(st.integers(0, 3)):
        # Mostly what a real client sends, so the handlers behind the
        # Content-Type check are reached too.
        headers["Content-Type"] = "application/x-ndjson" if path.split("?")[0].endswith("/events") else "application/json"
    return method, path, draw(bodies), headers


# -- the in-memory fuzz ------------------------------------------------------------


class Snapshot:
    """
    What the store holds, read through a second connection: every table's
    row count, and SQLite's C{data_version}, which changes whenever another
    connection commits.
    """

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def take(self) -> Tuple[Any, ...]:
        tables = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        counts = tuple((t, self.conn.execute('SELECT count(*) FROM "%s"' % (t,)).fetchone()[0]) for t in tables)
        return counts + (("data_version", self.conn.execute("PRAGMA data_version").fetchone()[0]),)

    def count(self, sql: str, *args: Any) -> int:
        return self.conn.execute(sql, args).fetchone()[0]


class FuzzBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp() + ".db"
        self.o = InMemoryOrchestrator(self, path=self.path)
        # An accepted GET /v1/runs/stream never ends, and every request here
        # must complete: the fuzz covers the other routes (the stream's are
        # tests.orchestrator.test_stream and tests.test_run_stream).
        self.o.api.stream = None
        self.o.register()
        self.runID = runScan(self.o, [fileEvent("/etc/passwd")])
        self.o.call("POST", "/v1/packages", {"name": "left-pad"})
        self.snapshot = Snapshot(self.path)
        self.addCleanup(self.snapshot.conn.close)

    def send(self, method: str, path: str, body: Optional[bytes], headers: Dict[str, str]) -> Tuple[int, Dict[str, Any], bytes]:
        d = self.o.treq.request(method, BASE + path, data=body, headers=headers or None, allow_redirects=False)
        self.o.treq.flush()

        def answered() -> bool:
            # Fired, and not waiting on a chained Deferred.
            return d.called and not isinstance(getattr(d, "result", None), Deferred)

        if not answered():
            # A long poll: let its wait run out.
            self.o.clock.advance(self.o.dispatcher.pollWait + 1)
            self.o.treq.flush()
        self.assertTrue(answered(), "%s %s did not complete" % (method, path[:200]))
        failures: List[Any] = []
        d.addErrback(failures.append)
        if failures and len(path) > HTTPChannel.MAX_LENGTH and failures[0].check(ResponseNeverReceived):
            return 0, None, b""  # a request line over 16 KiB: Twisted closes the connection
        self.assertEqual(failures, [], "%s %s (%d bytes) headers %r: no answer" % (method, path[:200], len(path), headers))
        response = d.result
        content = self.successResultOf(response.content())
        return response.code, response.headers, content

    def assertSane(self, method: str, path: str, code: int, headers: Any, content: bytes) -> None:
        what = "%s %s -> %d %r" % (method, path[:200], code, content[:300])
        self.assertLess(code, 500, what)
        self.assertNotIn(b"Traceback", content, what)
        api = path.startswith(("/v1/", "/metrics"))  # the rest is the dashboard's HTML
        if api:
            self.assertNotIn(b"<html", content.lower(), what)
        if 400 <= code < 500 and method.upper() != "HEAD" and api:
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"], what)
            body = json.loads(content)
            self.assertEqual(set(body), {"error"}, what)
            self.assertEqual(set(body["error"]), {"code", "message", "trace_id"}, what)
            self.assertIsInstance(body["error"]["code"], str)
            self.assertTrue(body["error"]["message"], what)
            self.assertRegex(body["error"]["trace_id"], "^[0-9a-f]{32}$")

    def assertResponsive(self) -> None:
        code, _, content = self.send("GET", "/v1/health", None, {})
        self.assertEqual(code, 200, content)


class FuzzTests(FuzzBase):

    @settings(FUZZ, max_examples=600)
    @given(requests())
    def test_everyRoute(self, req: Tuple[str, str, Optional[bytes], Dict[str, str]]) -> None:
        """
        Any method, path, query, headers and body on any route: below 500, no
        traceback, the envelope for a 4xx, and a failed request stores
        nothing.
        """
        method, path, body, headers = req
        path = path.replace("@RUN@", self.runID)
        before = self.snapshot.take()
        code, rheaders, content = self.send(method, path, body, headers)
        self.assertSane(method, path, code, rheaders, content)
        if code >= 400 or code == 0:
            self.assertEqual(self.snapshot.take(), before, "%s %s -> %d changed the store" % (method, path[:200], code))
        self.assertResponsive()

    def test_everyRouteIsFuzzed(self) -> None:
        """
        The fuzz draws from the live URL map, not a list kept by hand.
        """
        self.assertEqual(len(RULES), len(list(OrchestratorAPI.app.url_map.iter_rules())))
        self.assertIn("/v1/runs/<runID>/events", [r for r, _ in RULES])
        self.assertGreaterEqual(len(RULES), 30)

    @FUZZ
    @given(ndjsonBody)
    def test_ndjsonMixedBatches(self, lines: List[Tuple[str, Any]]) -> None:
        """
        An event stream mixing good and bad batches: the good batches before
        the first bad one are stored, exactly once, the rest is not, and
        the answer says how many were stored.
        """
        runID = self.o.submit()
        self.o.poll()
        body, expectStored, expectBatches, bad = b"", 0, 0, False
        for seq, (kind, value) in enumerate(lines, 1):
            if kind == "good":
                body += batchLine(seq, value)
                if not bad:
                    expectStored += len(value)
                    expectBatches += 1
            else:
                body += value
                bad = True
        before = self.snapshot.take()
        code, rheaders, content = self.send("POST", "/v1/runs/%s/events" % (runID,), body, {"Content-Type": "application/x-ndjson"})
        self.assertSane("POST", "/v1/runs/<id>/events", code, rheaders, content)
        stored = self.snapshot.count("SELECT count(*) FROM events WHERE run_id = ?", runID)
        batches = self.snapshot.count("SELECT count(*) FROM batches WHERE run_id = ?", runID)
        self.assertEqual((stored, batches), (expectStored, expectBatches), content)
        if bad:
            self.assertEqual(code, 400, content)
            self.assertIn("%d batches before it were stored" % (expectBatches,), json.loads(content)["error"]["message"])
            if expectBatches == 0:
                self.assertEqual(self.snapshot.take(), before)
        else:
            self.assertEqual((code, json.loads(content)["persisted"]), (200, expectStored))
        # A resend of the same stream stores nothing twice.
        self.send("POST", "/v1/runs/%s/events" % (runID,), body, {"Content-Type": "application/x-ndjson"})
        self.assertEqual(self.snapshot.count("SELECT count(*) FROM events WHERE run_id = ?", runID), expectStored)

    @FUZZ
    @given(st.sampled_from([r for r in RULES if "POST" in r[1]]), st.one_of(wrongTypes.map(_dumps), deepBodies, invalidUTF8, st.sampled_from(HUGE_NUMBERS).map(_dumps)))
    def test_postBodies(self, rule: Tuple[str, List[str]], body: bytes) -> None:
        """
        Every POST route with a body of the wrong shape: a 4xx envelope (or
        a success that really stored), never a 500.
        """
        path = _ARG.sub(lambda m: self.runID if m.group(1) == "runID" else "worker-1", rule[0])
        before = self.snapshot.take()
        code, rheaders, content = self.send("POST", path, body, {"Content-Type": "application/json"})
        self.assertSane("POST", path, code, rheaders, content)
        if code >= 400:
            self.assertEqual(self.snapshot.take(), before, "POST %s -> %d changed the store" % (path, code))


# -- the same fuzz with credentials -------------------------------------------------

#: Routes anyone may call (and the dashboard's redirect to its sign-in page).
_PUBLIC = re.compile(r"^/(v1/health|ui/login|ui/static/|ui/?$|$|favicon)")
CREDENTIALS = ["admin", "writer", "reader", "runner", "other-runner", "revoked", "foreign", "malformed", "basic-runner", "none"]
BAD_CREDENTIALS = {"revoked", "foreign", "malformed", "none"}


class CredentialFuzzBase(FuzzBase):
    """
    The route fuzz in an authenticated mode, each request carrying one of
    valid, invalid, revoked and foreign credentials: never a 5xx, a refused
    request changes nothing, and bad credentials get nothing but the
    public routes.
    """

    mode = "token"

    def setUp(self) -> None:
        super().setUp()
        from fangs.orchestrator.auth import Authenticator, SessionKeys

        def token(name: str, scopes: List[str]) -> Dict[str, Any]:
            return self.successResultOf(Deferred.fromCoroutine(self.o.core.createToken(name, scopes, "fuzz")))

        self.tokens = {
            "admin": token("root", ["orchestrator:admin"])["token"],
            "writer": token("writer", ["orchestrator:write"])["token"],
            "reader": token("reader", ["orchestrator:read"])["token"],
            "runner": token("worker-1", ["runner"])["token"],
            "other-runner": token("worker-2", ["runner"])["token"],
        }
        revoked = token("gone", ["orchestrator:admin"])
        self.successResultOf(self.o.store.revokeToken(revoked["id"], "fuzz", 1))
        self.tokens["revoked"] = revoked["token"]
        self.tokens["foreign"] = "fangs_%s_%s" % ("ab" * 8, "c" * 48)  # well formed, another orchestrator's
        self.identity: Any = None
        self.o.api.auth = Authenticator(self.mode, self.o.store, peerIdentity=lambda request: self.identity,
                                        clock=self.o.clock, sessionKeys=SessionKeys(self.mktemp()))
        self.snapshot.take()

    def credential(self, name: str, headers: Dict[str, str]) -> Dict[str, str]:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        self.identity = None
        if name == "malformed":
            headers["Authorization"] = "Bearer fangs_zz"
        elif name == "basic-runner":
            headers["Authorization"] = "Basic " + base64.b64encode(b"worker-1:" + self.tokens["runner"].encode()).decode()
        elif name in self.tokens:
            headers["Authorization"] = "Bearer " + self.tokens[name]
        return headers

    def checkWithCredentials(self, req: Tuple[str, str, Optional[bytes], Dict[str, str]], cred: str) -> None:
        method, path, body, headers = req
        path = path.replace("@RUN@", self.runID)
        headers = self.credential(cred, headers)
        before = self.snapshot.take()
        code, rheaders, content = self.send(method, path, body, headers)
        self.assertSane(method, path, code, rheaders, content)
        what = "%s %s with %s -> %d %r" % (method, path[:200], cred, code, content[:200])
        if code >= 400 or code == 0:
            self.assertEqual(self.snapshot.take(), before, what)
        if cred in BAD_CREDENTIALS and self.identity is None and 200 <= code < 300:
            self.assertTrue(_PUBLIC.match(path.split("?")[0]), what)
        if cred in BAD_CREDENTIALS and self.identity is None and not _PUBLIC.match(path.split("?")[0]):
            self.assertEqual(self.snapshot.take(), before, what)
        self.assertResponsive()


    EXPECTED = {"admin": 200, "writer": 200, "reader": 200, "runner": 403, "other-runner": 403, "revoked": 401,
                "foreign": 401, "malformed": 401, "basic-runner": 403, "none": 401}

    def checkCredentials(self) -> None:
        """
        The credentials the fuzz draws are what they claim to be.
        """
        seen = {}
        for cred in self.EXPECTED:
            code, _, content = self.send("GET", "/v1/runs", None, self.credential(cred, {}))
            seen[cred] = code
        self.assertEqual(seen, self.EXPECTED)
        code, _, _ = self.send("POST", "/v1/runners/worker-1/heartbeat", b"{}", self.credential("basic-runner", {"Content-Type": "application/json"}))
        self.assertEqual(code, 200)


class TokenFuzzTests(CredentialFuzzBase):
    mode = "token"

    def test_credentialsAsExpected(self) -> None:
        self.checkCredentials()

    @settings(FUZZ, max_examples=300)
    @given(requests(), st.sampled_from(CREDENTIALS))
    def test_everyRouteWithCredentials(self, req: Tuple[str, str, Optional[bytes], Dict[str, str]], cred: str) -> None:
        self.checkWithCredentials(req, cred)


class MutualTLSFuzzTests(CredentialFuzzBase):
    """
    In mtls mode the credential is mostly the peer certificate's identity
    (what L{fangs.tls.peerIdentity} makes of it): runner and operator
    certificates of every scope; a revoked, expired, foreign-CA or CN-only
    certificate never reaches the application (the handshake refuses it,
    see tests/test_tls.py) or names nobody, which is no identity here.
    """

    mode = "mtls"
    IDENTITIES = {
        "cert-runner": ("runner", "worker-1", ()),
        "cert-other-runner": ("runner", "worker-2", ()),
        "cert-reader": ("operator", "ann", ("orchestrator:read",)),
        "cert-writer": ("operator", "bea", ("orchestrator:read", "orchestrator:write")),
        "cert-admin": ("operator", "cy", ("orchestrator:admin",)),
    }

    def credential(self, name: str, headers: Dict[str, str]) -> Dict[str, str]:
        from fangs.tls import Identity

        if name.startswith("cert-"):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            kind, who, scopes = self.IDENTITIES[name]
            self.identity = Identity(kind, who, "CN=" + who, scopes)
            return headers
        return super().credential(name, headers)

    EXPECTED = dict(CredentialFuzzBase.EXPECTED, **{"cert-runner": 403, "cert-other-runner": 403, "cert-reader": 200,
                                                    "cert-writer": 200, "cert-admin": 200})

    @settings(FUZZ, max_examples=300)
    @given(requests(), st.sampled_from(CREDENTIALS + sorted(IDENTITIES)))
    def test_everyRouteWithCredentials(self, req: Tuple[str, str, Optional[bytes], Dict[str, str]], cred: str) -> None:
        self.checkWithCredentials(req, cred)

    def test_credentialsAsExpected(self) -> None:
        self.checkCredentials()


# -- real sockets ------------------------------------------------------------------


class RawClient(Protocol):
    """
    A TCP client that writes what it is told and keeps what it receives.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred = Deferred()
        self.closedAt: Optional[float] = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.closedAt = time.monotonic()
        self.closed.callback(None)

    def isOpen(self) -> bool:
        return self.closedAt is None


IDLE = 1.0


class RealSocketTests(TestCase):
    """
    The twistd plugin's service on 127.0.0.1, with a one-second idle timeout.
    """

    timeout = 60

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.port = freePort()
        options = tap.Options()
        options.parseOptions(
            ["--addr", "127.0.0.1:%d" % (self.port,), "--db", self.mktemp() + ".db", "--poll-wait", "1",
             "--idle-timeout", str(IDLE), "--watch-interval", "0"]
        )
        svc = tap.makeService(options)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        self.client = httpClient(self)
        self.url = "http://127.0.0.1:%d" % (self.port,)
        self.assertEqual(await self.health(), 200)

    async def health(self) -> int:
        r = await self.client.get(self.url + "/v1/health", timeout=5)
        await r.content()
        return r.code

    async def connect(self) -> RawClient:
        proto = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), proto)

        def close() -> Any:
            if proto.isOpen():
                proto.transport.abortConnection()
            return proto.closed

        self.addCleanup(close)
        return proto

    def test_slowLoris(self) -> Deferred:
        return Deferred.fromCoroutine(self._slowLoris())

    async def _slowLoris(self) -> None:
        """
        A client trickling its headers a byte at a time, each byte well
        within the idle timeout, is cut off once the headers have taken the
        idle timeout; other clients are answered all along.
        """
        loris = await self.connect()
        request = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 40 + b"\r\n\r\n"
        started = time.monotonic()
        answered = 0
        for i, byte in enumerate(request):
            if not loris.isOpen():
                break
            loris.transport.write(bytes([byte]))
            await sleep(0.1)
            if i % 5 == 0:
                self.assertEqual(await self.health(), 200)
                answered += 1
        await loris.closed
        took = loris.closedAt - started
        self.assertFalse(loris.received.startswith(b"HTTP/1.1 200"), loris.received)
        self.assertLess(took, IDLE + 2.5)  # the whole request would take ~7 s at this pace
        self.assertLess(i, len(request) - 1)
        self.assertGreaterEqual(answered, 2)
        self.assertEqual(await self.health(), 200)

    def test_idleConnectionClosed(self) -> Deferred:
        return Deferred.fromCoroutine(self._idle())

    async def _idle(self) -> None:
        """
        A connection that sends nothing is closed after the idle timeout.
        """
        idle = await self.connect()
        started = time.monotonic()
        await idle.closed
        self.assertLess(idle.closedAt - started, IDLE + 2.0)
        self.assertEqual(idle.received, b"")
        self.assertEqual(await self.health(), 200)

    def test_tooManyHeaders(self) -> Deferred:
        return Deferred.fromCoroutine(self._headers(b"".join(b"X-H%d: v\r\n" % (i,) for i in range(600))))

    def test_headerTooLarge(self) -> Deferred:
        return Deferred.fromCoroutine(self._headers(b"X-Big: " + b"b" * 20_000 + b"\r\n"))

    def test_headersTooLargeInTotal(self) -> Deferred:
        return Deferred.fromCoroutine(self._headers(b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 1000) for i in range(40))))

    async def _headers(self, headers: bytes) -> None:
        """
        Headers beyond Twisted's bounds (500 headers, 16 KiB each line and
        in total): a 400 or a closed connection, never a 5xx; the server
        goes on.
        """
        proto = await self.connect()
        proto.transport.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
        await proto.closed
        if proto.received:
            self.assertTrue(proto.received.startswith(b"HTTP/1.1 4"), proto.received[:200])
        self.assertEqual(await self.health(), 200)

    def test_oversizeBodyAnsweredEarly(self) -> Deferred:
        return Deferred.fromCoroutine(self._oversize())

    async def _oversize(self) -> None:
        """
        A Content-Length over the limit is answered 413 in the envelope as
        soon as the headers are in, and the connection is closed: the
        server does not wait for (or read) the body.
        """
        proto = await self.connect()
        proto.transport.write(
            b"POST /v1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n" + b"{" * 1024
        )
        await proto.closed
        head, _, body = proto.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "), proto.received[:300])
        envelope = json.loads(body)
        self.assertEqual(envelope["error"]["code"], "payload_too_large")
        self.assertEqual(set(envelope["error"]), {"code", "message", "trace_id"})
        self.assertEqual(await self.health(), 200)

    def test_garbageRequestLine(self) -> Deferred:
        return Deferred.fromCoroutine(self._garbage())

    async def _garbage(self) -> None:
        """
        Bytes that are not HTTP at all: 400 or closed, the server goes on.
        """
        for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n", b"GET\r\n\r\n", b"\xff" * 100 + b"\r\n\r\n"):
            proto = await self.connect()
            proto.transport.write(junk)
            await proto.closed
            if proto.received:
                self.assertTrue(proto.received.startswith(b"HTTP/1.1 4"), proto.received[:200])
            self.assertEqual(await self.health(), 200)
