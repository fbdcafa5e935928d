"""
Unit tests (in memory, fake clock) of the pieces behind issue 16; the same
findings on real sockets are in tests/test_hardening.py.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from fangs import wire
from fangs.errors import BadRequest
from fangs.orchestrator import notifier as N
from fangs.orchestrator.api import BrowserPolicy, policyFor
from fangs.orchestrator.auth import Authenticator, SessionKeys, rotateSessionKey
from fangs.orchestrator.config import OrchestratorConfig
from fangs.orchestrator.core import checkScanPolicy
from tests.orchestrator.helpers import InMemoryOrchestrator


class BrowserPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.o = InMemoryOrchestrator(self)
        self.o.api.policy = policyFor(["https://fangs.example:8443"], ["orchestrator.test"])

    def post(self, headers: Any, body: bytes = b'{"name": "left-pad"}') -> int:
        return self.o.call("POST", "/v1/packages", raw=body, headers=headers)[0]

    def test_contentType(self) -> None:
        for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "application/x-ndjson"):
            self.assertEqual(self.post({"Content-Type": ctype}), 415, ctype)
        d = self.o.treq.request("POST", "http://orchestrator.test/v1/packages", data=b'{"name": "left-pad"}')
        self.o.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 415)  # a body without a type (a no-cors fetch of a Blob)
        self.assertEqual(self.post({"Content-Type": "application/json; charset=utf-8"}), 201)

    def test_origin(self) -> None:
        json_ = {"Content-Type": "application/json"}
        for origin in ("https://evil.example", "null", "https://fangs.example", "http://fangs.example:8443"):
            self.assertEqual(self.post(dict(json_, Origin=origin)), 403, origin)
        self.assertEqual(self.post(dict(json_, **{"Sec-Fetch-Site": "cross-site"})), 403)
        self.assertEqual(self.post(dict(json_, Origin="https://fangs.example:8443")), 201)
        # Reads are not refused for their Origin (CORS keeps their answers from the page).
        self.assertEqual(self.o.call("GET", "/v1/packages", headers={"Origin": "https://evil.example"})[0], 200)

    def test_host(self) -> None:
        treq = StubTreq(self.o.api.resource())
        for host, want in (("evil.example", 403), ("fangs.example:8443", 200), ("127.0.0.1:1", 200), ("[::1]:8443", 200),
                           ("localhost", 200), ("orchestrator.test", 200)):
            d = treq.get("http://orchestrator.test/v1/runs", headers={"Host": host})
            treq.flush()
            self.assertEqual(self.successResultOf(d).code, want, host)

    def test_defaultPolicyChecksNoHost(self) -> None:
        self.assertIsNone(BrowserPolicy().allowedHosts)


class SessionKeyTests(SynchronousTestCase):
    def test_fileRotation(self) -> None:
        path = self.mktemp()
        keys = SessionKeys(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        cookie = keys.sign("ab" * 32)
        self.assertEqual(keys.verify(cookie), "ab" * 32)
        self.assertIsNone(keys.verify(cookie[:-1] + ("0" if cookie[-1] != "0" else "1")))
        self.assertIsNone(keys.verify("short." + cookie.split(".")[1]))
        rotateSessionKey(path, keep=1)
        keys.reload()
        self.assertEqual(keys.verify(cookie), "ab" * 32)  # the previous key still verifies
        self.assertNotEqual(keys.sign("ab" * 32), cookie)  # the new one signs
        rotateSessionKey(path, keep=0)
        keys.reload()
        self.assertIsNone(keys.verify(cookie))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_logoutEndsSession(self) -> None:
        o = InMemoryOrchestrator(self)
        o.api.auth = Authenticator("token", o.store, peerIdentity=lambda r: None, clock=o.clock)
        created = self.successResultOf(Deferred.fromCoroutine(o.core.createToken("alice", ["orchestrator:read"], "t")))
        cookie, _ = self.successResultOf(Deferred.fromCoroutine(o.api.auth.sessionFor(created["token"], o.core.nowNs())))
        p = self.successResultOf(Deferred.fromCoroutine(o.api.auth._fromSession(cookie)))
        self.assertEqual(p.name, "alice")
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(o.api.auth.endSession(cookie))))
        self.failureResultOf(Deferred.fromCoroutine(o.api.auth._fromSession(cookie)))

    def test_basicCredentials(self) -> None:
        o = InMemoryOrchestrator(self)
        o.api.auth = Authenticator("token", o.store, peerIdentity=lambda r: None, clock=o.clock)
        token = self.successResultOf(Deferred.fromCoroutine(o.core.createToken("worker-1", ["runner"], "t")))["token"]
        basic = "Basic " + base64.b64encode(b"anything:" + token.encode()).decode()
        self.assertEqual(o.call("POST", "/v1/runners/register", {"runner_id": "worker-1", "proto_version": 1}, headers={"Authorization": basic, "Content-Type": "application/json"})[0], 200)
        for bad in ("Basic !!!", "Basic " + base64.b64encode(b"worker-1").decode(), "Basic " + base64.b64encode(b"x:" + token[:-1].encode()).decode()):
            self.assertEqual(o.call("GET", "/v1/runners/worker-1/jobs", headers={"Authorization": bad})[0], 401, bad)


class ScanPolicyTests(SynchronousTestCase):
    def job(self, **kw: Any) -> wire.Job:
        sandbox = kw.pop("sandbox", None)
        return wire.Job(kind=kw.pop("kind", "sandbox_scan"), sandbox=wire.SandboxSpec(**sandbox) if sandbox is not None else None, **kw)

    def test_policy(self) -> None:
        cfg = OrchestratorConfig(images=("fangs-sandbox/*",), maxMemoryBytes=1024**3, maxNanoCpus=2 * 10**9, maxPids=100)
        checkScanPolicy(self.job(sandbox={"image": "fangs-sandbox/node:20", "memory_bytes": 1024**3}), cfg)
        checkScanPolicy(self.job(kind="sensor_only", cgroup_path="/sys/fs/cgroup/unified/fangs/abc"), cfg)
        for job in (
            self.job(sandbox={"image": "evil/img"}),
            self.job(sandbox={"image": "fangs-sandbox/node:20", "memory_bytes": 1024**3 + 1}),
            self.job(sandbox={"image": "fangs-sandbox/node:20", "nano_cpus": -1}),
            self.job(sandbox={"image": "fangs-sandbox/node:20", "pids_limit": 101}),
            self.job(sandbox={"image": "fangs-sandbox/node:20", "pull_policy": "always"}),
            self.job(sandbox={"image": "fangs-sandbox/node:20", "network_mode": "container:db"}),
            self.job(kind="sensor_only", cgroup_path="/sys/fs/cgroup/unified/user.slice"),
            self.job(kind="sensor_only", cgroup_path="/sys/fs/cgroup/unified/fangs"),
            self.job(kind="sensor_only", cgroup_path="/fangs/a/../../b"),
            self.job(cgroup_path="/fangs/a", sandbox={"image": "fangs-sandbox/node:20"}),
        ):
            self.assertRaises(BadRequest, checkScanPolicy, job, cfg)
        # Without sandbox.images only the configured sandbox image.
        self.assertRaises(BadRequest, checkScanPolicy, self.job(sandbox={"image": "fangs-sandbox/other:1"}), OrchestratorConfig())

    def test_idempotencyThroughTheAPI(self) -> None:
        o = InMemoryOrchestrator(self)
        o.register()
        body = {"target_runner": "worker-1", "Job": {"kind": "sandbox_scan", "sandbox": {}, "package_name": "a", "version": "1.0.0"}}
        k = {"Idempotency-Key": "k1", "Content-Type": "application/json"}
        code, first = o.call("POST", "/v1/scans", body, headers=k)
        code2, again = o.call("POST", "/v1/scans", body, headers=k)
        self.assertEqual((code, code2, again["run_id"]), (202, 202, first["run_id"]))
        body["Job"]["version"] = "2.0.0"
        code, err = o.call("POST", "/v1/scans", body, headers=k)
        self.assertEqual((code, err["error"]["code"]), (409, "idempotency_key_reused"))

    def test_surrogatesRefused(self) -> None:
        o = InMemoryOrchestrator(self)
        code, err = o.call("POST", "/v1/allow", raw=b'{"kind": "path", "value": "/tmp/\\ud800", "note": "x"}')
        self.assertEqual(code, 400, err)
        code, _ = o.call("POST", "/v1/allow", raw=b'{"kind": "path", "value": "/tmp/\\ud83d\\ude00", "note": "a pair is fine"}')
        self.assertEqual(code, 201)


class TargetPolicyTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        p = N.TargetPolicy()
        for refused in ("127.0.0.1", "::1", "10.1.2.3", "172.16.5.4", "192.168.0.1", "169.254.169.254", "fe80::1", "fd00:ec2::254",
                        "100.64.0.1", "100.100.100.200", "0.0.0.0", "::", "::ffff:10.0.0.1", "224.0.0.1", "198.51.100.1", "not-an-ip"):
            self.assertIsNotNone(p.refusal(refused), refused)
        for public in ("1.1.1.1", "2606:4700:4700::1111", "140.82.112.3"):
            self.assertIsNone(p.refusal(public), public)
        allowed = N.TargetPolicy.fromConfig(["10.0.0.0/8"])
        self.assertIsNone(allowed.refusal("10.9.9.9"))
        self.assertIsNotNone(allowed.refusal("169.254.169.254"))

    def test_rebindingRefusedAtDelivery(self) -> None:
        from tests.orchestrator.test_notifier import Receiver

        receiver = Receiver()
        stub = StubTreq(receiver)
        from twisted.internet.task import Clock

        svc = N.NotifierService(Clock(), None, stub, environ={}, resolver=lambda host: succeed(["10.0.0.5"]))
        d = Deferred.fromCoroutine(svc.sendTest({"name": "h", "url": "https://hooks.example/x", "template": "generic", "headers": {}}))
        stub.flush()
        result = self.successResultOf(d)
        self.assertEqual((result["ok"], result["status"]), (False, "permanent"))
        self.assertIn("private", result["error"])
        self.assertEqual(receiver.requests, [])

    def test_escaping(self) -> None:
        hostile = "@everyone <!here> <@U1> [x](https://evil.example) `code` *b* ~s~ www.evil.example"
        for f in (N.slackText, N.slackCode, N.discordText, N.discordCode, N.plainText):
            out = f(hostile)
            for live in ("@everyone", "<!here>", "<@U1>", "](https://", "https://evil", "www.evil", "`code`"):
                self.assertNotIn(live, out, (f.__name__, live))
        self.assertEqual(N.slackText("a & b"), "a &amp; b")
        body = json.loads(N.render("discord", {"run_id": "ab" * 16, "package_name": "p", "version": "1"}, [])[0])
        self.assertEqual(body["allowed_mentions"], {"parse": []})
