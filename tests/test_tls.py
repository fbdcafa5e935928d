"""
mTLS with real handshakes on loopback: certificates made here with
L{fangs.pki}, the orchestrator's own service (twistd plugin's makeService),
and the runner's own HTTP client.  Plus bearer tokens, in memory.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl as stdssl
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from fangs import pki
from fangs.orchestrator import tap
from fangs.orchestrator.auth import Authenticator
from fangs.runner.client import makeHTTPClient
from fangs.tls import Identity, identityOf
from tests.orchestrator.helpers import InMemoryOrchestrator, batchLine, fileEvent
from tests.orchestrator.test_api import assertError
from tests.procs import freePort, sleep


class Certs:
    """
    A CA with a server certificate and client certificates of every kind,
    written to a temporary directory.
    """

    def __init__(self, directory: str) -> None:
        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.dir = directory
        self.ca, self.caKey = pki.makeCA()
        self.write("ca.pem", pki.certPEM(self.ca))
        self.server("server", ["127.0.0.1", "localhost", "::1"])
        for name in ("runner-a", "runner-b"):
            self.client(name, "runner")
        self.client("alice", "operator", scopes=("read", "write"))
        self.client("reader", "operator")
        now = datetime.datetime.now(datetime.timezone.utc)
        self.client("expired", "runner", notBefore=now - datetime.timedelta(days=30), notAfter=now - datetime.timedelta(days=1))
        self.revoked = self.client("revoked", "runner")
        self.writeCRL([self.revoked.serial_number])
        other, otherKey = pki.makeCA("other-ca")
        cert, key = pki.issue(other, otherKey, "runner-a", "runner")
        self.write("stranger.pem", pki.certPEM(cert))
        self.write("stranger-key.pem", pki.keyPEM(key))

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes) -> None:
        with open(self.path(name), "wb") as f:
            f.write(data)

    def read(self, name: str) -> bytes:
        with open(self.path(name), "rb") as f:
            return f.read()

    def server(self, name: str, names: Any) -> Any:
        cert, key = pki.issue(self.ca, self.caKey, "fangs-orchestrator", "server", names)
        self.write(name + ".pem", pki.certPEM(cert))
        self.write(name + "-key.pem", pki.keyPEM(key))
        return cert

    def client(self, name: str, kind: str, **kw: Any) -> Any:
        cert, key = pki.issue(self.ca, self.caKey, name, kind, **kw)
        self.write(name + ".pem", pki.certPEM(cert))
        self.write(name + "-key.pem", pki.keyPEM(key))
        return cert

    def writeCRL(self, serials: Any) -> None:
        self.write("crl.pem", pki.makeCRL(self.ca, self.caKey, serials).public_bytes(pki.serialization.Encoding.PEM))


class IdentityTests(SynchronousTestCase):
    def test_sanAndCN(self):
        ca, key = pki.makeCA()
        self.assertEqual(identityOf(pki.issue(ca, key, "w1", "runner")[0]).name, "w1")
        self.assertEqual(identityOf(pki.issue(ca, key, "bob", "operator")[0]), Identity("operator", "bob", "CN=bob", ("orchestrator:read",)))
        server = pki.issue(ca, key, "host-cn", "server", ["example.test"])[0]
        # A server certificate (no client-auth EKU) names nobody, not even with CN identities.
        self.assertIsNone(identityOf(server))
        self.assertIsNone(identityOf(server, acceptCN=True))

    def test_cnOnlyNeedsTheFlag(self):
        ca, key = pki.makeCA()
        withEKU = cnOnlyCert(ca, key, "w9", clientAuth=True)
        self.assertIsNone(identityOf(withEKU))
        self.assertEqual(identityOf(withEKU, acceptCN=True), Identity("runner", "w9", "CN=w9"))
        self.assertIsNone(identityOf(cnOnlyCert(ca, key, "w9", clientAuth=False), acceptCN=True))

    def test_operatorScopes(self):
        ca, key = pki.makeCA()
        reader = pki.issue(ca, key, "ann", "operator")[0]
        writer = pki.issue(ca, key, "bea", "operator", scopes=("read", "write"))[0]
        admin = pki.issue(ca, key, "cy", "operator", scopes=("admin",))[0]
        uri = writer.extensions.get_extension_for_class(pki.x509.SubjectAlternativeName).value.get_values_for_type(pki.x509.UniformResourceIdentifier)
        self.assertEqual(uri, ["fangs://operator/bea?scopes=read,write"])
        self.assertEqual(identityOf(reader).scopes, ("orchestrator:read",))
        self.assertEqual(identityOf(writer).scopes, ("orchestrator:read", "orchestrator:write"))
        self.assertEqual(identityOf(admin).scopes, ("orchestrator:admin",))
        # The config's mapping wins over the certificate's own claim.
        self.assertEqual(identityOf(admin, operatorScopes={"cy": ["read"]}).scopes, ("orchestrator:read",))
        self.assertEqual(identityOf(reader, operatorScopes={"ann": ["write"]}).scopes, ("orchestrator:write",))
        self.assertRaises(pki.PKIError, pki.issue, ca, key, "dee", "operator", scopes=("root",))

    def test_ipv6San(self):
        ca, key = pki.makeCA()
        cert = pki.issue(ca, key, "srv", "server", ["::1", "localhost"])[0]
        san = cert.extensions.get_extension_for_class(pki.x509.SubjectAlternativeName).value
        self.assertEqual([str(a) for a in san.get_values_for_type(pki.x509.IPAddress)], ["::1"])


def cnOnlyCert(ca: Any, caKey: Any, cn: str, clientAuth: bool) -> Any:
    """
    A client certificate minted outside fangs.pki: subject CN only, no SAN.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if clientAuth:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(caKey, hashes.SHA256())


class TapTLSOptionsTests(SynchronousTestCase):
    def test_certWithoutKey(self):
        o = tap.Options()
        e = self.assertRaises(tap.usage.UsageError, o.parseOptions, ["--tls-cert", "x.pem"])
        self.assertIn("go together", str(e))

    def test_unreadableFiles(self):
        o = tap.Options()
        e = self.assertRaises(tap.usage.UsageError, o.parseOptions, ["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent-key.pem"])
        self.assertIn("cannot read certificate /nonexistent.pem", str(e))

    def test_modes(self):
        certs = Certs(self.mktemp())
        o = tap.Options()
        o.parseOptions(["--tls-cert", certs.path("server.pem"), "--tls-key", certs.path("server-key.pem"), "--tls-client-ca", certs.path("ca.pem")])
        self.assertEqual(o["auth-mode"], "mtls")
        o = tap.Options()
        o.parseOptions(["--tls-cert", certs.path("server.pem"), "--tls-key", certs.path("server-key.pem")])
        self.assertEqual(o["auth-mode"], "token")


class MutualTLSTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.certs = Certs(self.mktemp())
        self.port = freePort()
        options = tap.Options()
        options.parseOptions([
            "--addr", "127.0.0.1:%d" % (self.port,),
            "--db", self.mktemp() + ".db",
            "--poll-wait", "2",
            "--tls-cert", self.certs.path("server.pem"),
            "--tls-key", self.certs.path("server-key.pem"),
            "--tls-client-ca", self.certs.path("ca.pem"),
            "--tls-crl", self.certs.path("crl.pem"),
        ])
        self.tls = options["tls"]
        self.svc = tap.makeService(options)
        self.svc.privilegedStartService()
        self.svc.startService()
        self.addCleanup(self.svc.stopService)
        self.url = "https://127.0.0.1:%d" % (self.port,)

    def client(self, name: Optional[str], ca: str = "ca.pem", persistent: bool = False) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.addCleanup(pool.closeCachedConnections)
        cert = self.certs.read(name + ".pem") if name else None
        key = self.certs.read(name + "-key.pem") if name else None
        return makeHTTPClient(reactor, self.certs.read(ca), cert, key, pool=pool)

    async def call(self, client: Any, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = None
        if data is not None:
            headers = {"Content-Type": ["application/x-ndjson" if path.endswith("/events") else "application/json"]}
        r = await client.request(method, self.url + path, data=data, headers=headers)
        content = await r.content()
        return r.code, (json.loads(content) if content[:1] == b"{" else content)

    def test_handshakeRefusals(self):
        return Deferred.fromCoroutine(self._refusals())

    async def _refusals(self) -> None:
        code, body = await self.call(self.client("runner-a"), "GET", "/v1/health")
        self.assertEqual(code, 200)
        for name in (None, "stranger", "expired", "revoked"):
            try:
                await self.call(self.client(name), "GET", "/v1/health")
            except Exception:
                continue
            self.fail("a client with %s certificate got an answer" % (name or "no",))

    def test_serverVerifiedWithHostnameCheck(self):
        return Deferred.fromCoroutine(self._hostname())

    async def _hostname(self) -> None:
        # The server certificate names 127.0.0.1, not 127.0.0.2.
        self.url = "https://127.0.0.2:%d" % (self.port,)
        try:
            await self.call(self.client("runner-a"), "GET", "/v1/health")
        except Exception:
            return
        self.fail("a server certificate for another name was accepted")

    def test_identityBoundToRunner(self):
        return Deferred.fromCoroutine(self._bound())

    async def _bound(self) -> None:
        a, b, alice = self.client("runner-a"), self.client("runner-b"), self.client("alice")
        reg = lambda rid: {"runner_id": rid, "proto_version": 1}
        self.assertEqual((await self.call(a, "POST", "/v1/runners/register", reg("runner-a")))[0], 200)
        self.assertEqual((await self.call(b, "POST", "/v1/runners/register", reg("runner-b")))[0], 200)
        code, body = await self.call(a, "POST", "/v1/runners/register", reg("runner-b"))
        self.assertEqual((code, body["error"]["code"]), (403, "forbidden"))
        self.assertIn("runner-a", body["error"]["message"])
        self.assertEqual((await self.call(a, "GET", "/v1/runners/runner-b/jobs"))[0], 403)
        self.assertEqual((await self.call(a, "POST", "/v1/runners/runner-b/heartbeat", {}))[0], 403)
        self.assertEqual((await self.call(alice, "GET", "/v1/runners/runner-a/jobs"))[0], 403)
        # Runners cannot use operator routes.
        scan = {"target_runner": "runner-a", "Job": {"kind": "sandbox_scan", "sandbox": {"command": ["true"]}}}
        self.assertEqual((await self.call(a, "POST", "/v1/scans", scan))[0], 403)
        self.assertEqual((await self.call(a, "GET", "/v1/runs"))[0], 403)
        code, queued = await self.call(alice, "POST", "/v1/scans", scan)
        self.assertEqual(code, 202)
        runID = queued["run_id"]
        code, job = await self.call(a, "GET", "/v1/runners/runner-a/jobs")
        self.assertEqual(code, 200)
        events = batchLine(1, [fileEvent("/etc/passwd")])
        self.assertEqual((await self.call(b, "POST", "/v1/runs/%s/events" % runID, events))[0], 403)
        self.assertEqual((await self.call(b, "POST", "/v1/runs/%s/result" % runID, {"status": "ok"}))[0], 403)
        self.assertEqual((await self.call(alice, "POST", "/v1/runs/%s/result" % runID, {"status": "ok"}))[0], 403)
        self.assertEqual((await self.call(a, "POST", "/v1/runs/%s/events" % runID, events))[0], 200)
        self.assertEqual((await self.call(a, "POST", "/v1/runs/%s/result" % runID, {"status": "ok", "events_emitted": 1}))[0], 200)
        code, run = await self.call(alice, "GET", "/v1/runs/" + runID)
        self.assertEqual((code, run["events_received"], run["state"]), (200, 1, "done"))

    def test_rotationOnSIGHUP(self):
        return Deferred.fromCoroutine(self._rotation())

    async def _rotation(self) -> None:
        a = self.client("runner-a", persistent=True)
        await self.call(a, "POST", "/v1/runners/register", {"runner_id": "runner-a", "proto_version": 1})
        before = await deferToThread(self._serverSerial)
        # A long poll on an established connection...
        poll = Deferred.fromCoroutine(self.call(a, "GET", "/v1/runners/runner-a/jobs"))
        await sleep(0.5)
        newCert = self.certs.server("server", ["127.0.0.1", "localhost"])
        previous = signal.getsignal(signal.SIGHUP)
        from fangs.tls import installReloadOnSIGHUP

        installReloadOnSIGHUP(self.tls, reactor)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        os.kill(os.getpid(), signal.SIGHUP)
        await sleep(0.3)
        after = await deferToThread(self._serverSerial)
        self.assertNotEqual(before, after)
        self.assertEqual(after, newCert.serial_number)
        # ...completes normally on the old context.
        code, _ = await poll
        self.assertEqual(code, 204)

    def _serverSerial(self) -> int:
        ctx = stdssl.create_default_context(cafile=self.certs.path("ca.pem"))
        ctx.load_cert_chain(self.certs.path("runner-a.pem"), self.certs.path("runner-a-key.pem"))
        with socket.create_connection(("127.0.0.1", self.port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                der = s.getpeercert(binary_form=True)
        return pki.x509.load_der_x509_certificate(der).serial_number


class TokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.o = InMemoryOrchestrator(self)
        self.o.api.auth = Authenticator("token", self.o.store, peerIdentity=lambda request: None)
        self.admin = self.token("root", ["orchestrator:admin"])

    def token(self, name: str, scopes: Any) -> str:
        return self.successResultOf(Deferred.fromCoroutine(self.o.core.createToken(name, scopes, "test")))["token"]

    def call(self, method: str, path: str, token: Optional[str], body: Any = None) -> Any:
        headers = {"Authorization": "Bearer " + token} if token else None
        return self.o.call(method, path, body, headers=headers)

    def test_noToken401(self):
        code, body = self.call("GET", "/v1/runs", None)
        assertError(self, code, body, 401, "unauthorized")
        code, body = self.call("GET", "/v1/health", None)
        self.assertEqual(code, 200)

    def test_badTokens(self):
        for bad in ["nope", "fangs_0011223344556677_" + "x" * 30, self.admin[:-2] + "zz"]:
            code, body = self.call("GET", "/v1/runs", bad)
            assertError(self, code, body, 401)

    def test_scopes(self):
        read = self.token("reader", ["orchestrator:read"])
        write = self.token("writer", ["orchestrator:write"])
        scan = {"Job": {"kind": "sandbox_scan", "sandbox": {"command": ["true"]}}}
        self.assertEqual(self.call("GET", "/v1/runs", read)[0], 200)
        self.assertEqual(self.call("POST", "/v1/scans", read, scan)[0], 403)
        self.assertEqual(self.call("POST", "/v1/scans", write, scan)[0], 202)
        self.assertEqual(self.call("GET", "/v1/runs", write)[0], 200)
        self.assertEqual(self.call("GET", "/v1/tokens", write)[0], 403)
        code, listed = self.call("GET", "/v1/tokens", self.admin)
        self.assertEqual(sorted(t["name"] for t in listed["tokens"]), ["reader", "root", "writer"])
        self.assertNotIn("secret_hash", listed["tokens"][0])

    def test_createAndRevokeThroughAPI(self):
        code, created = self.call("POST", "/v1/tokens", self.admin, {"name": "ci", "scopes": ["orchestrator:read"]})
        self.assertEqual(code, 201)
        self.assertTrue(created["token"].startswith("fangs_"))
        self.assertEqual(self.call("GET", "/v1/runs", created["token"])[0], 200)
        self.assertEqual(self.call("DELETE", "/v1/tokens/" + created["id"], self.admin)[0], 200)
        assertError(self, *self.call("GET", "/v1/runs", created["token"]), 401)
        assertError(self, *self.call("POST", "/v1/tokens", self.admin, {"name": "x", "scopes": ["root"]}), 400, inMessage="unknown scope")

    def test_runnerToken(self):
        runner = self.token("worker-1", ["runner"])
        other = self.token("worker-2", ["runner"])
        reg = {"runner_id": "worker-1", "proto_version": 1}
        self.assertEqual(self.call("POST", "/v1/runners/register", runner, reg)[0], 200)
        self.assertEqual(self.call("POST", "/v1/runners/register", other, reg)[0], 403)
        self.assertEqual(self.call("GET", "/v1/runs", runner)[0], 403)
        self.assertEqual(self.call("GET", "/v1/runners/worker-1/jobs", self.admin)[0], 403)


class DashboardSessionTests(SynchronousTestCase):
    """
    A browser cannot send a bearer token: it exchanges one for a session
    cookie at /ui/login, a server-side session bound to the token (revoking
    it or signing out ends the session at once).
    """

    def setUp(self) -> None:
        from fangs.orchestrator.auth import SessionKeys

        self.o = InMemoryOrchestrator(self)
        self.keys = SessionKeys(self.mktemp())
        self.o.api.auth = Authenticator("token", self.o.store, peerIdentity=lambda request: None, clock=self.o.clock, sessionKeys=self.keys)

    def token(self, name: str, scopes: Any) -> dict:
        return self.successResultOf(Deferred.fromCoroutine(self.o.core.createToken(name, scopes, "test")))

    def login(self, token: str) -> Any:
        d = self.o.treq.post("http://orchestrator.test/ui/login", data={"token": token}, allow_redirects=False)
        self.o.treq.flush()
        return self.successResultOf(d)

    def page(self, cookie: Optional[bytes], path: str = "/ui/") -> Any:
        from treq.testing import StubTreq

        fresh = StubTreq(self.o.api.resource())  # its own, empty cookie jar
        cookies = {"fangs_session": cookie.decode()} if cookie else None
        d = fresh.get("http://orchestrator.test" + path, cookies=cookies, headers={"Accept": "text/html"}, allow_redirects=False)
        fresh.flush()
        r = self.successResultOf(d)
        return r.code, self.successResultOf(r.content())

    def test_signInUseRevoke(self):
        t = self.token("alice", ["orchestrator:write"])
        r = self.login(t["token"])
        self.assertEqual(r.code, 302)
        cookie = [c for c in r.headers.getRawHeaders(b"set-cookie") if c.startswith(b"fangs_session=")][0]
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        value = cookie.split(b";")[0].split(b"=", 1)[1]
        code, body = self.page(value)
        self.assertEqual(code, 200, body[:300])
        self.assertEqual(self.page(None)[0], 302)  # no session: to the sign-in page
        self.assertEqual(self.page(value[:-3] + b"abc")[0], 302)  # forged
        self.successResultOf(self.o.store.revokeToken(t["id"], "test", 1))
        self.assertEqual(self.page(value)[0], 302)

    def test_sessionExpires(self):
        r = self.login(self.token("bob", ["orchestrator:read"])["token"])
        value = [c for c in r.headers.getRawHeaders(b"set-cookie") if c.startswith(b"fangs_session=")][0].split(b";")[0].split(b"=", 1)[1]
        self.o.clock.advance(11 * 3600)
        self.assertEqual(self.page(value)[0], 200)
        self.o.clock.advance(2 * 3600)
        self.assertEqual(self.page(value)[0], 302)  # 12 h after sign-in

    def test_badAndRunnerTokens(self):
        r = self.login("fangs_0011223344556677_" + "x" * 30)
        self.assertEqual(r.code, 401)
        self.assertIn(b"unknown, revoked or wrong token", self.successResultOf(r.content()))
        r = self.login(self.token("worker-1", ["runner"])["token"])
        self.assertEqual(r.code, 403)

    def test_readOnlySessionHasNoButtons(self):
        from tests.orchestrator.helpers import runScan
        from tests.orchestrator.test_review import BENIGN, MALICIOUS

        self.o.api.auth = Authenticator("none")
        self.o.register()
        runScan(self.o, BENIGN)
        bad = runScan(self.o, MALICIOUS)
        self.o.api.auth = Authenticator("token", self.o.store, peerIdentity=lambda request: None, sessionKeys=self.keys)
        reader = self.login(self.token("viewer", ["orchestrator:read"])["token"])
        value = [c for c in reader.headers.getRawHeaders(b"set-cookie") if c.startswith(b"fangs_session=")][0].split(b";")[0].split(b"=", 1)[1]
        code, body = self.page(value, "/ui/pending")
        self.assertEqual(code, 200)
        self.assertIn(bad[:12].encode(), body)
        self.assertNotIn(b"Promote", body)
