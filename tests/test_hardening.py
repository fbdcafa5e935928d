"""
The orchestrator attacked from outside, on real sockets: each finding of
issue 16 reproduced against the twistd plugin's own service (makeService,
in this process, on a loopback port), in the auth mode it needs, and shown
closed.

  1. authentication and authorisation before a body is read or a run looked
     up; event streams bounded per line and per request while they arrive;
  2. dashboard sessions server-side, signed with a key outside the database;
     private files;
  3. notifier targets: internal addresses, DNS rebinding, redirects, ${ENV};
     admin-only delivery details;
  4. package text escaped in Slack, Discord and generic bodies;
  5. Content-Type, Origin and Host checks; --auth none only on loopback;
  6. TLS: revoked and expired client certificates disconnected on reload;
     SAN URI and client-auth EKU required; operator scopes;
  7. idempotency keys per caller and bound to the body; watch: reserved;
  8. no 500 from page tokens, dates or lone surrogates;
  9. events after the result refused; scan requests within policy;
plus the Go runner's Basic credentials and cumulative drop counters.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import PrivateCertificate, optionsForClientTLS, trustRootFromCertificates, Certificate
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from fangs import pki
from fangs.orchestrator import notifier as N
from fangs.orchestrator import tap
from fangs.orchestrator.auth import rotateSessionKey
from fangs.orchestrator.store import encodeToken
from tests.orchestrator.helpers import batchLine, fileEvent
from tests.procs import freePort, httpClient, sleep
from tests.test_tls import Certs, cnOnlyCert

JSONH = {"Content-Type": ["application/json"]}
NDJSONH = {"Content-Type": ["application/x-ndjson"]}


class RawClient(Protocol):
    """
    Writes what it is told, keeps what it receives, notes when it closed.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred = Deferred()
        self.closedAt: Optional[float] = None
        self.gotData: Optional[Deferred] = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.gotData is not None and not self.gotData.called:
            d, self.gotData = self.gotData, None
            d.callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.closedAt = time.monotonic()
        self.closed.callback(None)

    def isOpen(self) -> bool:
        return self.closedAt is None

    def status(self) -> int:
        return int(self.received.split(b" ", 2)[1]) if self.received.startswith(b"HTTP/1.1 ") else 0

    def body(self) -> Any:
        return json.loads(self.received.partition(b"\r\n\r\n")[2] or b"null")


async def within(d: Deferred, seconds: float, what: str) -> None:
    timer = reactor.callLater(seconds, lambda: d.called or d.errback(AssertionError("%s: not within %ss" % (what, seconds))))
    try:
        await d
    finally:
        if timer.active():
            timer.cancel()


class Orchestrator:
    """
    The plugin's service on a free loopback port, started in this process.
    """

    def __init__(self, test: TestCase, args: List[str], scheme: str = "http") -> None:
        self.test = test
        self.port = freePort()
        self.dir = os.path.abspath(test.mktemp())
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "state", "fangs.db")
        previous = signal.getsignal(signal.SIGHUP)
        test.addCleanup(signal.signal, signal.SIGHUP, previous)
        self.options = tap.Options()
        self.options.parseOptions(
            ["--addr", "127.0.0.1:%d" % (self.port,), "--db", self.db, "--poll-wait", "1", "--watch-interval", "0",
             "--no-artifacts"] + args
        )
        self.svc = tap.makeService(self.options, reactor)
        self.core = self.svc.core
        self.store = self.svc.store
        self.url = "%s://127.0.0.1:%d" % (scheme, self.port)

    async def start(self) -> None:
        self.svc.privilegedStartService()
        self.svc.startService()
        self.test.addCleanup(self.svc.stopService)
        await self.svc._started

    async def token(self, name: str, scopes: List[str]) -> Dict[str, Any]:
        return await self.core.createToken(name, scopes, "test")

    async def connect(self, tls: Any = None) -> RawClient:
        proto = RawClient()
        endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        if tls is not None:
            endpoint = wrapClientTLS(tls, endpoint)
        await connectProtocol(endpoint, proto)

        def close() -> Any:
            if proto.isOpen():
                proto.transport.abortConnection()
            return proto.closed

        self.test.addCleanup(close)
        return proto

    async def call(self, client: Any, method: str, path: str, body: Any = None, headers: Optional[Dict[str, List[str]]] = None,
                   token: Optional[str] = None) -> Tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        h = dict(headers if headers is not None else (NDJSONH if path.endswith("/events") else JSONH) if data is not None else {})
        if token:
            h["Authorization"] = ["Bearer " + token]
        r = await client.request(method, self.url + path, data=data, headers=h, allow_redirects=False)
        content = await r.content()
        ctype = (r.headers.getRawHeaders(b"content-type") or [b""])[0]
        return r.code, (json.loads(content) if ctype.startswith(b"application/json") and content else content)

    def rows(self, sql: str, *args: Any) -> List[Any]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


def scanBody(**job: Any) -> Dict[str, Any]:
    body = {"kind": "sandbox_scan", "package_name": "left-pad", "version": "1.3.0", "sandbox": {"command": ["true"]}}
    body.update(job)
    return {"Job": body}


class TokenModeTests(TestCase):
    """
    Findings 1, 2, 5, 7, 8 and 9 and the Go fleet's needs, with --auth token.
    """

    timeout = 60

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        self.o = Orchestrator(self, ["--auth", "token", "--max-stream-body", "65536", "--max-line", "4096"])
        await self.o.start()
        self.http = httpClient(self)
        self.admin = (await self.o.token("root", ["orchestrator:admin"]))["token"]
        self.writer = (await self.o.token("writer", ["orchestrator:write"]))["token"]
        self.writer2 = (await self.o.token("writer2", ["orchestrator:write"]))["token"]
        self.reader = await self.o.token("reader", ["orchestrator:read"])
        self.runner = (await self.o.token("worker-1", ["runner"]))["token"]
        self.runner2 = (await self.o.token("worker-2", ["runner"]))["token"]

    async def call(self, method: str, path: str, body: Any = None, token: Optional[str] = None, **kw: Any) -> Tuple[int, Any]:
        return await self.o.call(self.http, method, path, body, token=token, **kw)

    async def dispatchedRun(self, **job: Any) -> str:
        reg = {"runner_id": "worker-1", "proto_version": 1, "capabilities": ["events_dropped.per_run"]}
        self.assertEqual((await self.call("POST", "/v1/runners/register", reg, self.runner))[0], 200)
        code, queued = await self.call("POST", "/v1/scans", dict(scanBody(**job), target_runner="worker-1"), self.writer)
        self.assertEqual(code, 202, queued)
        code, _ = await self.call("GET", "/v1/runners/worker-1/jobs", token=self.runner)
        self.assertEqual(code, 200)
        return queued["run_id"]

    # -- 1. authenticate before the body -------------------------------------------

    def test_unauthenticatedStreamRefusedBeforeItsBody(self) -> Deferred:
        return Deferred.fromCoroutine(self._unauthenticatedStream())

    async def _unauthenticatedStream(self) -> None:
        """
        A chunked event stream without credentials, to a well-formed run id
        nobody knows: 401 (not 404) as soon as the headers are in, the
        connection closed; the server read none of the 200 MiB announced.
        """
        for auth in (b"", b"Authorization: Bearer fangs_0011223344556677_" + b"x" * 30 + b"\r\n"):
            proto = await self.o.connect()
            proto.gotData = Deferred()
            proto.transport.write(
                b"POST /v1/runs/" + b"ab" * 16 + b"/events HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
                + b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
            )
            sent = 0x10000
            while proto.isOpen() and sent < 200 * 1024 * 1024:
                if proto.received:
                    break
                proto.transport.write(b"10000\r\n" + b"a" * 0x10000 + b"\r\n")
                sent += 0x10000
                await sleep(0.001)
            await within(proto.closed, 10, "connection closed")
            self.assertEqual(proto.status(), 401, proto.received[:300])
            self.assertEqual(proto.body()["error"]["code"], "unauthorized")
            self.assertLess(sent, 16 * 1024 * 1024)  # answered long before the stream ended
        # Probing run ids: 401 for every id, known or not.
        runID = await self.dispatchedRun()
        for rid in (runID, "cd" * 16):
            for method, path in (("POST", "/v1/runs/%s/events"), ("POST", "/v1/runs/%s/result"), ("GET", "/v1/runs/%s")):
                code, body = await self.call(method, path % (rid,), b"{}" if method == "POST" else None)
                self.assertEqual(code, 401, (method, path, body))
        # An operator cannot post events, for any id: 403, before a lookup.
        for rid in (runID, "cd" * 16):
            code, body = await self.call("POST", "/v1/runs/%s/events" % (rid,), batchLine(1, []), self.admin)
            self.assertEqual(code, 403, body)
        # Another runner: 403 for a real run of someone else.
        code, body = await self.call("POST", "/v1/runs/%s/events" % (runID,), batchLine(1, []), self.runner2)
        self.assertEqual(code, 403, body)
        self.assertEqual(self.o.rows("SELECT count(*) FROM batches")[0][0], 0)

    def test_streamLimitsWhileReading(self) -> Deferred:
        return Deferred.fromCoroutine(self._streamLimits())

    async def _streamLimits(self) -> None:
        """
        An authenticated runner's stream: a line over --max-line, or a
        stream over --max-stream-body, is answered 413 while it arrives.
        """
        runID = await self.dispatchedRun()
        for chunk, what in ((b"x" * 1000, "line"), (batchLine(1, [fileEvent("/tmp/a")]) * 4, "request")):
            proto = await self.o.connect()
            proto.transport.write(
                b"POST /v1/runs/" + runID.encode() + b"/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + self.runner.encode() + b"\r\n"
                b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            sent = 0
            while proto.isOpen() and not proto.received and sent < 50 * 1024 * 1024:
                proto.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                await sleep(0.001)
            await within(proto.closed, 10, "connection closed")
            self.assertEqual(proto.status(), 413, (what, proto.received[:300]))
            self.assertIn(what == "line" and "line exceeds 4096" or "exceeds 65536", proto.body()["error"]["message"])
            self.assertLess(sent, 2 * 1024 * 1024, what)
        # A stream within the limits is taken.
        code, ack = await self.call("POST", "/v1/runs/%s/events" % (runID,), batchLine(1, [fileEvent("/etc/passwd")]), self.runner)
        self.assertEqual((code, ack["persisted"]), (200, 1))

    # -- 2. sessions -------------------------------------------------------------

    def test_sessionsServerSideAndKeyOutsideTheDatabase(self) -> Deferred:
        return Deferred.fromCoroutine(self._sessions())

    async def login(self, token: str) -> bytes:
        r = await self.http.post(
            self.o.url + "/ui/login", data={"token": token}, allow_redirects=False,
        )
        await r.content()
        self.assertEqual(r.code, 302)
        cookie = [c for c in r.headers.getRawHeaders(b"set-cookie") if c.startswith(b"fangs_session=")][0]
        return cookie.split(b";")[0].split(b"=", 1)[1]

    async def page(self, cookie: bytes, path: str = "/ui/") -> int:
        r = await self.http.get(self.o.url + path, headers={"Cookie": [b"fangs_session=" + cookie], "Accept": ["text/html"]},
                                allow_redirects=False)
        await r.content()
        return r.code

    async def logout(self, cookie: bytes) -> None:
        r = await self.http.post(self.o.url + "/ui/logout", headers={"Cookie": [b"fangs_session=" + cookie]}, allow_redirects=False)
        await r.content()

    async def _sessions(self) -> None:
        cookie = await self.login(self.admin)
        self.assertEqual(await self.page(cookie), 200)
        # Logout ends the session server-side: the same cookie replayed is refused.
        await self.logout(cookie)
        self.assertEqual(await self.page(cookie), 302)
        # Revoking the token ends its sessions at once.
        readerCookie = await self.login(self.reader["token"])
        self.assertEqual(await self.page(readerCookie), 200)
        code, _ = await self.call("DELETE", "/v1/tokens/" + self.reader["id"], token=self.admin)
        self.assertEqual(code, 200)
        self.assertEqual(await self.page(readerCookie), 302)
        # Whoever reads the database cannot make a session: neither the old
        # scheme (HMAC keyed by the token's stored hash) nor the stored row.
        cookie = await self.login(self.admin)
        tokenID = self.admin.split("_")[1]
        secretHash = self.o.rows("SELECT secret_hash FROM api_tokens WHERE id = ?", tokenID)[0][0]
        payload = "%s.%d" % (tokenID, int(time.time()) + 3600)
        forged = "%s.%s" % (payload, hmac.new(secretHash.encode(), payload.encode(), hashlib.sha256).hexdigest())
        self.assertEqual(await self.page(forged.encode()), 302)
        (idHash,) = [r[0] for r in self.o.rows("SELECT id_hash FROM dashboard_sessions")]
        self.assertNotIn(idHash.encode(), cookie)
        self.assertEqual(await self.page(idHash.encode() + b"." + b"0" * 64), 302)
        self.assertEqual(await self.page(cookie), 200)
        # The key lives in a private file beside the database, not in it.
        keyFile = os.path.join(os.path.dirname(self.o.db), "session.key")
        self.assertEqual(os.stat(keyFile).st_mode & 0o777, 0o600)
        with open(keyFile) as f:
            key = f.read().split()[0]
        dump = b"".join(open(p, "rb").read() for p in (self.o.db, self.o.db + "-wal") if os.path.exists(p))
        self.assertNotIn(key.encode(), dump)
        # Rotation: with the old key dropped (keep=0), SIGHUP signs everybody out.
        rotateSessionKey(keyFile, keep=0)
        os.kill(os.getpid(), signal.SIGHUP)
        await sleep(0.2)
        self.assertEqual(await self.page(cookie), 302)
        self.assertEqual(await self.page(await self.login(self.admin)), 200)

    def test_filesPrivate(self) -> Deferred:
        return Deferred.fromCoroutine(self._files())

    async def _files(self) -> None:
        await self.dispatchedRun()
        state = os.path.dirname(self.o.db)
        self.assertEqual(os.stat(state).st_mode & 0o777, 0o700)
        for name in os.listdir(state):
            self.assertEqual(os.stat(os.path.join(state, name)).st_mode & 0o077, 0, name)
        self.assertTrue(os.path.exists(self.o.db + "-wal"))

    # -- 5. browser safety in token mode too ----------------------------------------

    def test_browserChecksInTokenMode(self) -> Deferred:
        return Deferred.fromCoroutine(self._browserToken())

    async def _browserToken(self) -> None:
        code, body = await self.call("POST", "/v1/packages", {"name": "left-pad"}, self.writer, headers={"Content-Type": ["text/plain"]})
        self.assertEqual((code, body["error"]["code"]), (415, "unsupported_media_type"))
        code, body = await self.call("POST", "/v1/packages", {"name": "left-pad"}, self.writer,
                                     headers=dict(JSONH, Origin=["https://evil.example"]))
        self.assertEqual((code, body["error"]["code"]), (403, "cross_origin"))
        code, body = await self.call("GET", "/v1/runs", token=self.writer, headers={"Host": ["rebound.example:%d" % self.o.port]})
        self.assertEqual((code, body["error"]["code"]), (403, "unknown_host"))
        code, body = await self.call("POST", "/v1/packages", {"name": "left-pad"}, self.writer,
                                     headers=dict(JSONH, Origin=["http://127.0.0.1:%d" % self.o.port]))
        self.assertEqual(code, 201, body)

    # -- 7. idempotency -----------------------------------------------------------

    def test_idempotencyKeysPerCallerAndBody(self) -> Deferred:
        return Deferred.fromCoroutine(self._idempotency())

    async def _idempotency(self) -> None:
        key = {"Idempotency-Key": ["release-42"]}
        a = scanBody(version="1.0.0")
        code, first = await self.call("POST", "/v1/scans", a, self.writer, headers=dict(JSONH, **key))
        self.assertEqual(code, 202)
        code, again = await self.call("POST", "/v1/scans", a, self.writer, headers=dict(JSONH, **key))
        self.assertEqual((code, again["run_id"]), (202, first["run_id"]))
        code, body = await self.call("POST", "/v1/scans", scanBody(version="6.6.6"), self.writer, headers=dict(JSONH, **key))
        self.assertEqual((code, body["error"]["code"]), (409, "idempotency_key_reused"))
        # Another caller's same key is another run.
        code, other = await self.call("POST", "/v1/scans", scanBody(version="6.6.6"), self.writer2, headers=dict(JSONH, **key))
        self.assertEqual(code, 202)
        self.assertNotEqual(other["run_id"], first["run_id"])
        # The watcher's keys cannot be taken: a decoy under watch:<pkg>@<ver>
        # queues the watcher's own scan of that release, not the decoy.
        decoy = scanBody(version="1.3.1", sandbox={"command": ["true"], "image": "fangs-sandbox/node:20"})
        key = {"Idempotency-Key": ["watch:left-pad@1.3.1"]}
        code, queued = await self.call("POST", "/v1/scans", decoy, self.writer, headers=dict(JSONH, **key))
        self.assertEqual(code, 202, queued)
        job = json.loads(self.o.rows("SELECT job FROM runs WHERE id = ?", queued["run_id"])[0][0])
        self.assertNotEqual(job["sandbox"]["command"], ["true"])
        self.assertIn("left-pad@1.3.1", " ".join(job["sandbox"]["command"]))
        from fangs import wire
        from fangs.orchestrator.watcher import idempotencyKey, scanRequest

        runID, created = await self.o.core.submitScan(scanRequest("left-pad", "1.3.1"), idempotencyKey("left-pad", "1.3.1"), requireTarget=False)
        self.assertEqual((runID, created), (queued["run_id"], False))  # the watcher finds the real scan
        for bad in (scanBody(version="9.9.9"), scanBody(package_name="other", version="1.3.1")):
            code, body = await self.call("POST", "/v1/scans", bad, self.writer, headers=dict(JSONH, **key))
            self.assertEqual(code, 403, body)
        code, body = await self.call("POST", "/v1/scans", scanBody(version="1.0.0"), self.writer,
                                     headers=dict(JSONH, **{"Idempotency-Key": ["watch:../x"]}))
        self.assertEqual(code, 403, body)
        del wire

    # -- 8. no 500 ------------------------------------------------------------------

    def test_noServerErrorFromOutOfRangeInput(self) -> Deferred:
        return Deferred.fromCoroutine(self._outOfRange())

    async def _outOfRange(self) -> None:
        runID = await self.dispatchedRun()
        for query in ("page_token=" + encodeToken([2**80, "x"]), "page_token=" + encodeToken([-(2**70), "x"]),
                      "since=9999-12-31T23:59:59Z", "until=0001-01-01T00:00:00%2B14:00", "since=1969-01-01T00:00:00Z"):
            code, body = await self.call("GET", "/v1/runs?" + query, token=self.admin)
            self.assertEqual(code, 400, (query, body))
        code, body = await self.call("GET", "/v1/pending?page_token=" + encodeToken([2**80, "x"]), token=self.admin)
        self.assertEqual(code, 400, body)
        code, body = await self.call("GET", "/v1/deviations?since=9999-12-31T23:59:59Z", token=self.admin)
        self.assertEqual(code, 400, body)
        before = self.o.rows("SELECT count(*) FROM allowlist")[0][0] if self._hasTable("allowlist") else None
        code, body = await self.call("POST", "/v1/allow", b'{"kind": "path", "value": "/tmp/x", "note": "a\\ud800b"}', self.writer)
        self.assertEqual(code, 400, body)
        if before is not None:
            self.assertEqual(self.o.rows("SELECT count(*) FROM allowlist")[0][0], before)
        line = b'{"seq": 1, "events": [{"type": 1, "payload": {"PathName": "/tmp/\\udc80", "Header": {"TsNs": 1}}}]}\n'
        code, body = await self.call("POST", "/v1/runs/%s/events" % (runID,), batchLine(1, [fileEvent("/tmp/ok")]) + line.replace(b'"seq": 1', b'"seq": 2'), self.runner)
        self.assertEqual(code, 400, body)
        self.assertIn("1 batches before it were stored", body["error"]["message"])
        self.assertEqual(self.o.rows("SELECT count(*) FROM batches WHERE run_id = ?", runID)[0][0], 1)

    def _hasTable(self, name: str) -> bool:
        return bool(self.o.rows("SELECT 1 FROM sqlite_master WHERE name = ?", name))

    # -- 9. events after the result; scan policy -------------------------------------

    def test_eventsAfterResultRefused(self) -> Deferred:
        return Deferred.fromCoroutine(self._afterResult())

    async def _afterResult(self) -> None:
        runID = await self.dispatchedRun()
        first = batchLine(1, [fileEvent("/etc/passwd")])
        self.assertEqual((await self.call("POST", "/v1/runs/%s/events" % (runID,), first, self.runner))[0], 200)
        code, _ = await self.call("POST", "/v1/runs/%s/result" % (runID,), {"status": "ok", "events_emitted": 1}, self.runner)
        self.assertEqual(code, 200)
        code, body = await self.call("POST", "/v1/runs/%s/events" % (runID,), batchLine(2, [fileEvent("/root/.ssh/id_rsa")]), self.runner)
        self.assertEqual((code, body["error"]["code"]), (409, "run_finished"))
        # A resend of what was stored before the result is fine.
        code, ack = await self.call("POST", "/v1/runs/%s/events" % (runID,), first, self.runner)
        self.assertEqual((code, ack["persisted"]), (200, 0))
        self.assertEqual(self.o.rows("SELECT count(*) FROM events WHERE run_id = ?", runID)[0][0], 1)

    def test_scanPolicy(self) -> Deferred:
        return Deferred.fromCoroutine(self._policy())

    async def _policy(self) -> None:
        refused = [
            {"Job": {"kind": "sensor_only", "cgroup_path": "/sys/fs/cgroup/unified/system.slice/sshd.service"}},
            {"Job": {"kind": "sensor_only", "cgroup_path": "/sys/fs/cgroup/unified/fangs/../system.slice"}},
            {"Job": {"kind": "sensor_only", "cgroup_path": "/"}},
            scanBody(cgroup_path="/fangs/abc"),
            scanBody(sandbox={"image": "attacker/miner:latest"}),
            scanBody(sandbox={"image": "fangs-sandbox/node:20", "memory_bytes": 2**40}),
            scanBody(sandbox={"image": "fangs-sandbox/node:20", "nano_cpus": 64 * 10**9}),
            scanBody(sandbox={"image": "fangs-sandbox/node:20", "pids_limit": 10**7}),
            scanBody(sandbox={"image": "fangs-sandbox/node:20", "pull_policy": "sometimes"}),
            scanBody(sandbox={"image": "fangs-sandbox/node:20", "pull_policy": "always"}),
            scanBody(sandbox={"image": "fangs-sandbox/node:20", "network_mode": "container:postgres"}),
            scanBody(sandbox={"image": "fangs-sandbox/node:20", "network_mode": "internal-db-net"}),
            scanBody(sandbox={"image": "fangs-sandbox/node:20", "cgroup_parent": "/system.slice"}),
        ]
        for body in refused:
            code, reply = await self.call("POST", "/v1/scans", body, self.writer)
            self.assertEqual(code, 400, (body, reply))
        self.assertEqual(self.o.rows("SELECT count(*) FROM runs")[0][0], 0)
        for body in ({"Job": {"kind": "sensor_only", "cgroup_path": "/sys/fs/cgroup/unified/fangs/watch-me"}},
                     scanBody(sandbox={"image": "fangs-sandbox/fixtures:test", "memory_bytes": 512 * 2**20})):
            code, reply = await self.call("POST", "/v1/scans", body, self.writer)
            self.assertEqual(code, 202, (body, reply))

    # -- Go fleets -------------------------------------------------------------------

    def test_goRunnerBasicAuthAndCumulativeDrops(self) -> Deferred:
        return Deferred.fromCoroutine(self._goRunner())

    async def _goRunner(self) -> None:
        basic = {"Authorization": ["Basic " + base64.b64encode(b"worker-1:" + self.runner.encode()).decode()]}
        reg = {"runner_id": "worker-1", "proto_version": 1, "capabilities": ["sensor"]}
        code, body = await self.call("POST", "/v1/runners/register", reg, headers=dict(JSONH, **basic))
        self.assertEqual(code, 200, body)
        wrong = {"Authorization": ["Basic " + base64.b64encode(b"worker-1:fangs_0011223344556677_" + b"y" * 30).decode()]}
        self.assertEqual((await self.call("POST", "/v1/runners/register", reg, headers=dict(JSONH, **wrong)))[0], 401)
        dropped = []
        for cumulative in (10, 25, 25, 3):  # 3: the runner restarted
            code, queued = await self.call("POST", "/v1/scans", dict(scanBody(), target_runner="worker-1"), self.writer)
            self.assertEqual((await self.call("GET", "/v1/runners/worker-1/jobs", headers=basic))[0], 200)
            result = {"status": "ok", "events_emitted": 100, "events_dropped": cumulative}
            self.assertEqual((await self.call("POST", "/v1/runs/%s/result" % queued["run_id"], result, headers=dict(JSONH, **basic)))[0], 200)
            code, run = await self.call("GET", "/v1/runs/" + queued["run_id"], token=self.admin)
            dropped.append(run["events_dropped"])
        self.assertEqual(dropped, [10, 15, 0, 3])


class NoneModeTests(TestCase):
    """
    Finding 5 with --auth none: what a browser page can make the
    orchestrator do (the Chromium test in tests/integration/test_browser.py drives a
    real browser through the same cases).
    """

    timeout = 30

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        self.o = Orchestrator(self, ["--auth", "none"])
        await self.o.start()
        self.http = httpClient(self)

    def test_crossSiteWritesRefused(self) -> Deferred:
        return Deferred.fromCoroutine(self._crossSite())

    async def _crossSite(self) -> None:
        attacks = [
            ("POST", "/v1/allow", b'{"kind": "path", "value": "/root/.ssh/"}', {"Content-Type": ["text/plain"]}),
            ("POST", "/v1/tokens", b'{"name": "evil", "scopes": ["orchestrator:admin"]}', {"Content-Type": ["text/plain;charset=UTF-8"]}),
            ("POST", "/v1/notifiers", b'{"name": "x", "url": "https://evil.example/"}', {}),
            ("POST", "/v1/tokens", b'{"name": "evil", "scopes": ["orchestrator:admin"]}',
             {"Content-Type": ["application/json"], "Origin": ["https://evil.example"]}),
            ("POST", "/v1/tokens", b'{"name": "evil", "scopes": ["orchestrator:admin"]}',
             {"Content-Type": ["application/json"], "Origin": ["null"]}),
            ("POST", "/v1/packages", b'{"name": "left-pad"}',
             {"Content-Type": ["application/x-www-form-urlencoded"]}),
            ("POST", "/v1/tokens", b'{"name": "evil", "scopes": ["orchestrator:admin"]}',
             {"Content-Type": ["application/json"], "Host": ["attacker.example:%d" % self.o.port]}),
        ]
        for method, path, body, headers in attacks:
            code, reply = await self.o.call(self.http, method, path, body, headers=headers)
            self.assertIn(code, (403, 415), (path, headers, reply))
        self.assertEqual(self.o.rows("SELECT count(*) FROM api_tokens")[0][0], 0)
        self.assertEqual(self.o.rows("SELECT count(*) FROM notifiers")[0][0], 0)
        self.assertEqual(self.o.rows("SELECT count(*) FROM packages")[0][0], 0)
        # A rebound name cannot read either.
        code, reply = await self.o.call(self.http, "GET", "/v1/runs", headers={"Host": ["attacker.example:%d" % self.o.port]})
        self.assertEqual(code, 403)
        # The CLI's way still works.
        code, reply = await self.o.call(self.http, "POST", "/v1/packages", {"name": "left-pad"})
        self.assertEqual(code, 201, reply)


class AuthNoneAddressTests(SynchronousTestCase):
    def test_noneRefusedOffLoopback(self) -> None:
        for args in (["--addr", "0.0.0.0:8443", "--auth", "none"], ["--listen", "tcp:8443", "--auth", "none"],
                     ["--addr", "192.0.2.1:8443", "--auth", "none"]):
            e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, args + ["--db", ":memory:"])
            self.assertIn("--i-know-this-is-unauthenticated", str(e))
        o = tap.Options()
        o.parseOptions(["--addr", "0.0.0.0:8443", "--auth", "none", "--i-know-this-is-unauthenticated", "--db", ":memory:"])
        self.assertEqual(o["auth-mode"], "none")
        o = tap.Options()
        o.parseOptions(["--addr", "127.0.0.1:8443", "--auth", "none", "--db", ":memory:"])
        self.assertEqual(o["public-urls"], ["http://127.0.0.1:8443", "http://localhost:8443", "http://[::1]:8443"])


# -- 3 and 4: notifier targets ------------------------------------------------------


class Receiver(Resource):
    isLeaf = True

    def __init__(self, code: int = 200, location: bytes = b"") -> None:
        super().__init__()
        self.requests: List[Tuple[Dict[str, str], bytes]] = []
        self.code = code
        self.location = location

    def render_POST(self, request: Any) -> bytes:
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((headers, request.content.read()))
        request.setResponseCode(self.code)
        if self.location:
            request.setHeader(b"Location", self.location)
        return b"internal secret answer"


HOSTILE = {
    "run_id": "ab" * 16, "package_name": "evil-pkg", "version": "1.0.0", "state": "done",
    "verdict": "deviations", "max_severity": "critical",
}
HOSTILE_VALUE = "@everyone <!channel> <@U024BE7LH> [click here](https://evil.example/x) *bold* `x` @here https://evil.example"


def hostileDevs() -> List[Dict[str, Any]]:
    return [{"id": "d1", "category": "net_new_host", "value": HOSTILE_VALUE, "severity": "critical",
             "reason": "<https://evil.example|Click> @channel", "evidence_event_id": 1}]


class NotifierTargetTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.receiver = Receiver()
        self.port = reactor.listenTCP(0, Site(self.receiver), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        from twisted.web.client import HTTPConnectionPool

        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    def service(self, allow: Tuple[str, ...] = (), answers: Tuple[str, ...] = ("127.0.0.1",), env: Tuple[str, ...] = ()) -> N.NotifierService:
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        return N.NotifierService(
            reactor, None, HTTPClient(Agent(reactor, pool=self.pool)),
            environ={"HOOK_TOKEN": "t0k", "DATABASE_PASSWORD": "hunter2"},
            policy=N.TargetPolicy.fromConfig(allow, env),
            resolver=lambda host: succeed(list(answers)),
            httpFor=N.pinnedClients(reactor, self.pool),
        )

    def target(self, url: str, **kw: Any) -> Dict[str, Any]:
        return dict({"name": "hook", "url": url, "template": "generic", "secret_env": None, "headers": {}}, **kw)

    def test_internalTargetsRefused(self) -> Deferred:
        return Deferred.fromCoroutine(self._internal())

    async def _internal(self) -> None:
        port = self.port.getHost().port
        for url in ("http://127.0.0.1:%d/h" % port, "https://localhost:%d/h" % port, "https://169.254.169.254/latest/",
                    "https://10.0.0.1/", "https://[::1]:%d/" % port, "https://[fe80::1]/"):
            self.assertRaises(Exception, N.parseNotifier, "hook", {"url": url})
        # A public-looking name that resolves (at delivery) to loopback: refused, nothing sent.
        svc = self.service(answers=("127.0.0.1",))
        result = await svc.sendTest(self.target("https://rebind.example:%d/h" % port))
        self.assertEqual((result["ok"], result["status"]), (False, "permanent"))
        self.assertIn("loopback", result["error"])
        svc = self.service(answers=("169.254.169.254",))
        result = await svc.sendTest(self.target("https://rebind.example/h"))
        self.assertIn("metadata", result["error"])
        self.assertEqual(self.receiver.requests, [])
        # Allowlisted by the operator: delivered, to the checked address, with the name as Host.
        svc = self.service(allow=("127.0.0.0/8",))
        result = await svc.sendTest(self.target("http://rebind.example:%d/h" % port))
        self.assertEqual((result["ok"], result["http_status"]), (True, 200), result)
        self.assertEqual(self.receiver.requests[0][0]["host"], "rebind.example:%d" % port)

    def test_redirectsNotFollowedAndEnvLimited(self) -> Deferred:
        return Deferred.fromCoroutine(self._redirects())

    async def _redirects(self) -> None:
        inner = Receiver()
        innerPort = reactor.listenTCP(0, Site(inner), interface="127.0.0.1")
        self.addCleanup(innerPort.stopListening)
        self.receiver.code = 307
        self.receiver.location = b"http://127.0.0.1:%d/internal" % (innerPort.getHost().port,)
        svc = self.service(allow=("127.0.0.0/8",), env=("HOOK_TOKEN",))
        url = "http://127.0.0.1:%d/h" % (self.port.getHost().port,)
        result = await svc.sendTest(self.target(url))
        self.assertEqual((result["ok"], result["status"], result["http_status"]), (False, "permanent", 307))
        self.assertEqual(inner.requests, [])
        # ${ENV}: only listed names, at creation and at delivery.
        policy = svc.policy
        self.assertRaises(Exception, N.parseNotifier, "hook", {"url": url, "headers": {"X-Leak": "${DATABASE_PASSWORD}"}}, policy)
        self.assertRaises(Exception, N.parseNotifier, "hook", {"url": url, "secret_env": "DATABASE_PASSWORD"}, policy)
        N.parseNotifier("hook", {"url": url, "headers": {"Authorization": "${HOOK_TOKEN}"}}, policy)
        self.receiver.code, self.receiver.location = 200, b""
        result = await svc.sendTest(self.target(url, headers={"X-Leak": "${DATABASE_PASSWORD}"}))
        self.assertFalse(result["ok"])
        self.assertNotIn("hunter2", json.dumps([r[0] for r in self.receiver.requests]))
        result = await svc.sendTest(self.target(url, headers={"Authorization": "${HOOK_TOKEN}"}))
        self.assertTrue(result["ok"], result)
        self.assertEqual(self.receiver.requests[-1][0]["authorization"], "t0k")

    def test_packageTextEscaped(self) -> Deferred:
        return Deferred.fromCoroutine(self._escaped())

    async def _escaped(self) -> None:
        """
        Slack, Discord and generic bodies as a receiver gets them: no live
        mention, no masked or bare link, no markup from the package.
        """
        svc = self.service(allow=("127.0.0.0/8",))
        url = "http://127.0.0.1:%d/h" % (self.port.getHost().port,)
        for template in ("slack", "discord", "generic"):
            body, ctype = N.render(template, HOSTILE, hostileDevs())
            status, code, error, excerpt, _ = await svc._send(self.target(url, template=template), body, ctype)
            self.assertEqual(status, "sent", error)
            received = json.loads(self.receiver.requests[-1][1])
            texts = _strings(received)
            joined = "\n".join(texts)
            for live in ("@everyone", "@here", "@channel", "<!channel>", "<@U024BE7LH>", "](https://", "https://evil",
                         "<https://", "*bold*"):
                self.assertNotIn(live, joined, (template, live))
            if template == "discord":
                self.assertEqual(received["allowed_mentions"], {"parse": []})
            if template == "slack":
                self.assertEqual(joined.count("`"), joined.count("`"))  # spans stay balanced:
                for t in texts:
                    self.assertEqual(t.count("`") % 2, 0, t)


def _strings(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


class NotifierAdminOnlyTests(TestCase):
    timeout = 30

    def test_readersSeeNoTargetsOrAnswers(self) -> Deferred:
        return Deferred.fromCoroutine(self._readers())

    async def _readers(self) -> None:
        o = Orchestrator(self, ["--auth", "token"])
        await o.start()
        http = httpClient(self)
        reader = (await o.token("reader", ["orchestrator:read"]))["token"]
        admin = (await o.token("root", ["orchestrator:admin"]))["token"]
        code, _ = await o.call(http, "POST", "/v1/notifiers", {"name": "hook", "url": "https://hooks.example.com/x"}, token=admin)
        self.assertEqual(code, 201)
        for path in ("/v1/notifiers", "/v1/notifiers/hook", "/v1/notifiers/hook/deliveries"):
            self.assertEqual((await o.call(http, "GET", path, token=reader))[0], 403, path)
        r = await http.post(o.url + "/ui/login", data={"token": reader}, allow_redirects=False)
        await r.content()
        cookie = [c for c in r.headers.getRawHeaders(b"set-cookie") if c.startswith(b"fangs_session=")][0].split(b";")[0]
        r = await http.get(o.url + "/ui/notifiers", headers={"Cookie": [cookie]}, allow_redirects=False)
        page = await r.content()
        self.assertEqual(r.code, 403)
        self.assertNotIn(b"hooks.example.com", page)
        self.assertEqual((await o.call(http, "GET", "/v1/notifiers", token=admin))[0], 200)


# -- 6. TLS ----------------------------------------------------------------------------


class TLSHardeningTests(TestCase):
    timeout = 60

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        self.certs = Certs(self.mktemp())
        self.certs.client("writer-op", "operator", scopes=("read", "write"))
        ca, key = self.certs.ca, self.certs.caKey
        cn = cnOnlyCert(ca, key, "cn-runner", clientAuth=True)
        self.certs.write("cn-runner.pem", pki.certPEM(cn))
        self.o = Orchestrator(self, [
            "--tls-cert", self.certs.path("server.pem"), "--tls-key", self.certs.path("server-key.pem"),
            "--tls-client-ca", self.certs.path("ca.pem"), "--tls-crl", self.certs.path("crl.pem"),
            "--tls-reload-interval", "0",
        ], scheme="https")
        await self.o.start()
        self.tls = self.o.options["tls"]

    def clientOptions(self, name: str) -> Any:
        ca = trustRootFromCertificates([Certificate.loadPEM(self.certs.read("ca.pem"))])
        cert = PrivateCertificate.loadPEM(self.certs.read(name + ".pem") + b"\n" + self.certs.read(name + "-key.pem"))
        return optionsForClientTLS("127.0.0.1", trustRoot=ca, clientCertificate=cert)

    async def request(self, proto: RawClient, method: str, path: str, body: bytes = b"") -> int:
        proto.received = b""
        got: Deferred = Deferred()
        proto.gotData = got
        proto.transport.write(
            b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (method.encode(), path.encode(), len(body), body)
        )
        await within(got, 10, "answer")
        return proto.status()

    def test_revokedConnectionClosedOnReload(self) -> Deferred:
        return Deferred.fromCoroutine(self._revoked())

    async def _revoked(self) -> None:
        victim = self.certs.client("runner-c", "runner")
        keep = await self.o.connect(self.clientOptions("runner-c"))
        other = await self.o.connect(self.clientOptions("runner-a"))
        reg = json.dumps({"runner_id": "runner-c", "proto_version": 1}).encode()
        self.assertEqual(await self.request(keep, "POST", "/v1/runners/register", reg), 200)
        self.assertEqual(await self.request(other, "GET", "/v1/health"), 200)
        self.certs.writeCRL([self.certs.revoked.serial_number, victim.serial_number])
        os.kill(os.getpid(), signal.SIGHUP)
        await within(keep.closed, 5, "the revoked certificate's connection closed")
        self.assertTrue(other.isOpen())
        self.assertEqual(await self.request(other, "GET", "/v1/health"), 200)

    def test_expiredConnectionClosed(self) -> Deferred:
        return Deferred.fromCoroutine(self._expired())

    async def _expired(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certs.client("short", "runner", notAfter=now + datetime.timedelta(seconds=3))
        proto = await self.o.connect(self.clientOptions("short"))
        self.assertEqual(await self.request(proto, "GET", "/v1/health"), 200)
        await sleep(3.5)
        self.assertFalse(self.tls.reloadIfChanged())  # files unchanged: only the sweep
        await within(proto.closed, 5, "the expired certificate's connection closed")

    def test_identityRules(self) -> Deferred:
        return Deferred.fromCoroutine(self._identity())

    async def _identity(self) -> None:
        # A CN-only certificate (no SAN URI) is nobody without --accept-cn-identity.
        cn = await self.o.connect(self.clientOptionsFor("cn-runner"))
        reg = json.dumps({"runner_id": "cn-runner", "proto_version": 1}).encode()
        self.assertEqual(await self.request(cn, "POST", "/v1/runners/register", reg), 401)
        # Operators are read-only unless their certificate (or the config) says more.
        reader = await self.o.connect(self.clientOptions("reader"))
        scan = json.dumps(scanBody()).encode()
        self.assertEqual(await self.request(reader, "GET", "/v1/runs"), 200)
        self.assertEqual(await self.request(reader, "POST", "/v1/scans", scan), 403)
        writer = await self.o.connect(self.clientOptions("writer-op"))
        self.assertEqual(await self.request(writer, "POST", "/v1/scans", scan), 202)
        self.assertEqual(await self.request(writer, "GET", "/v1/tokens"), 403)

    def clientOptionsFor(self, name: str) -> Any:
        # cn-runner's key is not kept by Certs: issue it again with its own key here.
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certs.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.certs.caKey, hashes.SHA256())
        )
        self.certs.write(name + ".pem", pki.certPEM(cert))
        self.certs.write(name + "-key.pem", pki.keyPEM(key))
        return self.clientOptions(name)


class TwistdFilesTests(TestCase):
    """
    Finding 2 and 9 under the real twistd: the log file, database and key
    files are created private, and the --init-admin-token secret is not in
    the log.
    """

    timeout = 60

    def test_privateFilesAndNoSecretInLog(self) -> Deferred:
        return Deferred.fromCoroutine(self._twistd())

    async def _twistd(self) -> None:
        import subprocess

        from tests.procs import REPO, TWISTD

        top = os.path.abspath(self.mktemp())
        os.makedirs(top)
        os.chmod(top, 0o755)
        logPath = os.path.join(top, "orchestrator.log")
        state = os.path.join(top, "state")
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile=" + logPath, "fangs-orchestrator", "--addr", "127.0.0.1:%d" % (freePort(),),
                      "--db", os.path.join(state, "fangs.db"), "--watch-interval", "0", "--auth", "token", "--init-admin-token"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

        def stop() -> None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)

        self.addCleanup(stop)
        tokenFile = os.path.join(state, "initial-admin-token")
        for _ in range(150):
            if os.path.exists(tokenFile) and os.path.getsize(tokenFile) and os.path.exists(logPath) and b"written to" in open(logPath, "rb").read():
                break
            await sleep(0.1)
        with open(tokenFile) as f:
            token = f.read().strip()
        self.assertTrue(token.startswith("fangs_"))
        with open(logPath, "rb") as f:
            log = f.read()
        self.assertNotIn(token.split("_")[2].encode(), log)
        self.assertIn(b"initial admin token", log)
        self.assertEqual(os.stat(logPath).st_mode & 0o077, 0)
        self.assertEqual(os.stat(state).st_mode & 0o777, 0o700)
        for name in ("fangs.db", "session.key", "initial-admin-token"):
            self.assertEqual(os.stat(os.path.join(state, name)).st_mode & 0o077, 0, name)
