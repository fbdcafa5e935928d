"""
Tests for L{fangs.orchestrator.artifacts}: the integrity check, the fetcher
against a registry on loopback that serves real tarball bytes, the artifact
route, and C{fangs run artifact} through a real orchestrator.
"""

import base64
import hashlib
import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from fangs import wire
from fangs.orchestrator.artifacts import MISMATCH, SKIPPED, VERIFIED, ArtifactFetcher, checkIntegrity, sameHost
from fangs.orchestrator.registryclient import RegistryClient
from fangs.orchestrator.watcher import scanRequest
from tests.orchestrator.fakeregistry import FakeRegistry
from tests.orchestrator.helpers import batchLine
from tests.orchestrator.test_review import BENIGN
from tests.procs import REPO, OrchestratorProcess, httpClient, jsonCall

TARBALL = b"\x1f\x8b" + os.urandom(3000)


def sri(data: bytes, algo: str = "sha512") -> str:
    return algo + "-" + base64.b64encode(hashlib.new(algo, data).digest()).decode()


class IntegrityTests(SynchronousTestCase):
    def test_sha512(self):
        self.assertEqual(checkIntegrity(TARBALL, sri(TARBALL)), (True, "sha512 matches the registry's integrity"))
        ok, why = checkIntegrity(TARBALL + b"x", sri(TARBALL))
        self.assertFalse(ok)
        self.assertIn("does not match", why)

    def test_strongestDecides(self):
        # A matching sha1 next to a wrong sha512 is a mismatch.
        self.assertFalse(checkIntegrity(TARBALL, sri(b"other") + " " + sri(TARBALL, "sha1"))[0])
        self.assertTrue(checkIntegrity(TARBALL, sri(TARBALL, "sha1") + " " + sri(TARBALL))[0])

    def test_shasumFallbackAndNothing(self):
        self.assertTrue(checkIntegrity(TARBALL, "", hashlib.sha1(TARBALL).hexdigest())[0])
        self.assertFalse(checkIntegrity(TARBALL, "", "0" * 40)[0])
        self.assertEqual(checkIntegrity(TARBALL, ""), (False, "the registry publishes no integrity or shasum for this release"))
        self.assertFalse(checkIntegrity(TARBALL, "sha512-@@@not base64")[0])

    def test_sameHost(self):
        self.assertTrue(sameHost("https://registry.npmjs.org/x/-/x-1.0.0.tgz", "https://registry.npmjs.org"))
        self.assertFalse(sameHost("https://evil.example/x.tgz", "https://registry.npmjs.org"))
        self.assertFalse(sameHost("http://registry.npmjs.org/x.tgz", "https://registry.npmjs.org"))
        self.assertFalse(sameHost("file:///etc/passwd", "https://registry.npmjs.org"))


class TarballRegistry(Resource):
    """
    The fake registry's packuments, plus tarballs at C{/<name>/-/<file>}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeRegistry()
        self.tarballs = {}
        self.base = ""

    def publish(self, name: str, version: str, data: bytes, integrity=None, url=None) -> None:
        self.fake.publish(name, version)
        path = "/%s/-/%s-%s.tgz" % (name, name.split("/")[-1], version)
        self.tarballs[path] = data
        self.fake.docs[name]["versions"][version]["dist"] = {
            "integrity": sri(data) if integrity is None else integrity,
            "shasum": hashlib.sha1(data).hexdigest(),
            "tarball": url or self.base + path,
        }
        self.fake._encoded = {}

    def render_GET(self, request):
        path = request.path.decode()
        if "/-/" in path:
            if path not in self.tarballs:
                request.setResponseCode(404)
                return b"not found"
            request.setHeader(b"Content-Type", b"application/octet-stream")
            return self.tarballs[path]
        return self.fake.render_GET(request)


class MemoryArtifacts:
    def __init__(self):
        self.blobs, self.links = {}, {}

    def putArtifact(self, sha, data, now):
        self.blobs.setdefault(sha, data)
        return Deferred.fromCoroutine(_none())

    def linkArtifact(self, link):
        self.links[link.run_id] = link
        return Deferred.fromCoroutine(_none())


async def _none():
    return None


class FetcherTests(TestCase):
    def setUp(self):
        self.registry = TarballRegistry()
        port = reactor.listenTCP(0, Site(self.registry), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.registry.base = "http://127.0.0.1:%d" % (port.getHost().port,)
        http = httpClient(self)
        self.store = MemoryArtifacts()
        self.fetcher = ArtifactFetcher(reactor, RegistryClient(http, reactor, self.registry.base, retries=0), http,
                                       self.store, maxBytes=100_000)

    def test_outcomes(self):
        return Deferred.fromCoroutine(self._outcomes())

    async def _outcomes(self):
        r = self.registry
        r.publish("good", "1.0.0", TARBALL)
        r.publish("tampered", "1.0.0", TARBALL, integrity=sri(b"what the registry vouches for"))
        r.publish("elsewhere", "1.0.0", TARBALL, url="http://127.0.0.2:1/x.tgz")
        r.publish("huge", "1.0.0", b"x" * 200_000)
        good = await self.fetcher.fetchForRun("a" * 32, "good", "1.0.0")
        self.assertEqual(good.status, VERIFIED)
        self.assertEqual(good.sha512, hashlib.sha512(TARBALL).hexdigest())
        self.assertEqual(self.store.blobs[good.sha512], TARBALL)
        self.assertEqual((good.size, good.integrity), (len(TARBALL), sri(TARBALL)))
        bad = await self.fetcher.fetchForRun("b" * 32, "tampered", "1.0.0")
        self.assertEqual(bad.status, MISMATCH)
        self.assertEqual(bad.sha512, good.sha512)  # the bytes are kept: they are the evidence
        other = await self.fetcher.fetchForRun("c" * 32, "elsewhere", "1.0.0")
        self.assertEqual((other.status, other.sha512), (SKIPPED, None))
        huge = await self.fetcher.fetchForRun("d" * 32, "huge", "1.0.0")
        self.assertEqual(huge.status, "fetch_failed")
        self.assertIn("limit", huge.detail)
        missing = await self.fetcher.fetchForRun("e" * 32, "good", "9.9.9")
        self.assertEqual(missing.status, "fetch_failed")
        self.assertEqual(sorted(self.store.links), ["a" * 32, "b" * 32, "c" * 32, "d" * 32, "e" * 32])


class ArtifactEndToEndTests(TestCase):
    timeout = 120

    def setUp(self):
        self.registry = TarballRegistry()
        port = reactor.listenTCP(0, Site(self.registry), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.registry.base = "http://127.0.0.1:%d" % (port.getHost().port,)
        self.registry.publish("left-pad", "1.3.0", TARBALL)
        self.registry.publish("left-pad", "1.3.1", TARBALL + b"!", integrity=sri(TARBALL))
        self.http = httpClient(self)
        self.orch = OrchestratorProcess(self, artifacts=True,
                                        extra=["--watch-interval", "0", "--registry-url", self.registry.base])
        return Deferred.fromCoroutine(self.orch.startAndWait(self.http))

    async def call(self, method, path, body=None, raw=None):
        return await jsonCall(self.http, method, self.orch.url + path, body, raw)

    async def fetchRaw(self, path):
        r = await self.http.get(self.orch.url + path)
        return r.code, await r.content()

    async def scan(self, version):
        code, _ = await self.call("POST", "/v1/runners/register", {"runner_id": "art", "proto_version": 1})
        code, queued = await self.call("POST", "/v1/scans",
                                       json.loads(wire.dumps(scanRequest("left-pad", version, 10 * wire.SECOND, "art"))))
        self.assertEqual(code, 202, queued)
        runID = queued["run_id"]
        code, job = await self.call("GET", "/v1/runners/art/jobs")
        await self.call("POST", "/v1/runs/%s/events" % (runID,), raw=batchLine(1, BENIGN))
        await self.call("POST", "/v1/runs/%s/result" % (runID,), {"status": "ok", "events_emitted": len(BENIGN)})
        from tests.procs import sleep

        for _ in range(100):
            code, run = await self.call("GET", "/v1/runs/" + runID)
            if run.get("artifact"):
                return run
            await sleep(0.1)
        self.fail("no artifact recorded: %s" % (run,))

    def test_artifacts(self):
        return Deferred.fromCoroutine(self._artifacts())

    async def _artifacts(self):
        run = await self.scan("1.3.0")
        art = run["artifact"]
        self.assertEqual((art["status"], art["size"]), ("verified", len(TARBALL)))
        self.assertEqual(art["url"], "/v1/artifacts/" + hashlib.sha512(TARBALL).hexdigest())
        code, data = await self.fetchRaw(art["url"])
        self.assertEqual((code, data), (200, TARBALL))
        code, body = await self.call("GET", "/v1/artifacts/" + "0" * 128)
        self.assertEqual((code, body["error"]["code"]), (404, "unknown_artifact"))
        code, body = await self.call("GET", "/v1/artifacts/xyz")
        self.assertEqual(code, 400)

        tampered = await self.scan("1.3.1")
        self.assertEqual(tampered["artifact"]["status"], "integrity_mismatch")
        # The mismatch is a critical finding of the run, whichever finished
        # first: the check or the run's own analysis.
        from tests.procs import sleep

        for _ in range(100):
            code, judged = await self.call("GET", "/v1/runs/" + tampered["run_id"])
            found = [d for d in judged["deviations"] if d["category"] == "pkg_integrity_mismatch"]
            if found:
                break
            await sleep(0.1)
        self.assertEqual([d["severity"] for d in found], ["critical"], judged)
        self.assertEqual(judged["verdict"], "deviations")

        # fangs run artifact writes the file, checked against its hash.
        out = os.path.abspath(self.mktemp())
        env = dict(os.environ, PYTHONPATH=REPO, FANGS_ORCHESTRATOR=self.orch.url)
        exe = os.path.join(os.path.dirname(sys.executable), "fangs")
        argv = ["run", "artifact", run["run_id"][:12], "-o", out]
        o, e, code = await getProcessOutputAndValue(exe, argv, env=env, path=REPO)
        self.assertEqual(code, 0, (o, e))
        self.assertIn(b"verified", o)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), TARBALL)
