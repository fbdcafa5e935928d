"""
The npm watcher against a fake registry: in memory (StubTreq + Clock + the
in-memory orchestrator) for the logic, and on a loopback socket once (the
real registry: L{tests.integration.orchestrator.test_watcher}).
"""

import json
import random

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.application.internet import TimerService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from fangs import npm, wire
from fangs.orchestrator import registryclient as rc
from fangs.orchestrator import tap
from fangs.orchestrator.config import DEFAULT_SANDBOX_IMAGE
from fangs.orchestrator.compose import watcherSubmit
from fangs.orchestrator.watcher import Watcher, idempotencyKey
from tests.orchestrator.fakeregistry import FakeRegistry
from tests.orchestrator.helpers import InMemoryOrchestrator, batchLine

REGISTRY = "http://registry.test"


class Harness:
    def __init__(self, test, fake=None, **clientArgs):
        self.test = test
        self.o = InMemoryOrchestrator(test)
        self.fake = fake or FakeRegistry()
        self.stub = StubTreq(self.fake)
        self.client = rc.RegistryClient(self.stub, self.o.clock, REGISTRY, rng=random.Random(5), **clientArgs)
        self.failSubmits = {}  # key -> "before" | "after" (fail once)
        self.submitted = []
        self.watcher = Watcher(self.o.clock, self.o.store, self.client, self.submit)

    async def submit(self, request, key):
        how = self.failSubmits.pop(key, None)
        if how == "before":
            raise RuntimeError("store unavailable")
        runID, _ = await self.o.core.submitScan(request, key, requireTarget=False)
        self.submitted.append((key, runID))
        if how == "after":
            raise RuntimeError("connection lost after commit")
        return runID

    def watch(self, *names):
        for n in names:
            code, body = self.o.call("POST", "/v1/packages", {"name": n})
            self.test.assertEqual(code, 201, body)

    def poll(self, maxSteps=600):
        d = Deferred.fromCoroutine(self.watcher.pollOnce())
        for _ in range(maxSteps):
            self.stub.flush()
            if d.called:
                break
            self.o.clock.advance(0.1)
        return self.test.successResultOf(d)

    def runs(self):
        code, body = self.o.call("GET", "/v1/runs?page_size=500")
        self.test.assertEqual(code, 200)
        return list(reversed(body["runs"]))  # oldest first

    def releases(self, name):
        return {r["version"]: r for r in self.status(name)["releases"]}

    def status(self, name):
        code, body = self.o.call("GET", "/v1/packages/%s/releases" % (name,))
        self.test.assertEqual(code, 200, body)
        return body

    def queueOrder(self):
        """
        The versions in the order a runner is handed them.
        """
        self.o.register("order-runner")
        out = []
        while True:
            code, job = self.o.poll("order-runner")
            if code != 200:
                return out
            out.append(job["version"])


class PureTests(SynchronousTestCase):
    def test_scopedURL(self):
        self.assertEqual(rc.packumentURL("https://r.test/", "@scope/pkg"), "https://r.test/@scope%2fpkg")
        self.assertEqual(rc.packumentURL("https://r.test", "is-number"), "https://r.test/is-number")

    def test_versionOrder(self):
        vs = ["1.10.0", "1.2.0", "1.2.0-beta.2", "1.2.0-beta.10", "1.2.0-alpha", "0.9.9"]
        self.assertEqual(
            sorted(vs, key=rc.versionKey),
            ["0.9.9", "1.2.0-alpha", "1.2.0-beta.2", "1.2.0-beta.10", "1.2.0", "1.10.0"],
        )

    def test_retryAfter(self):
        self.assertEqual(rc.parseRetryAfter(b"7", 0), 7.0)
        self.assertEqual(rc.parseRetryAfter(b"Thu, 01 Jan 1970 00:01:40 GMT", 40.0), 60.0)
        self.assertIsNone(rc.parseRetryAfter(b"soon", 0))
        self.assertIsNone(rc.parseRetryAfter(None, 0))

    def test_parseSkipsJunk(self):
        p = rc.parsePackument(
            {"dist-tags": {"latest": "1.0.0", "next": "2.0.0-rc.1"},
             "versions": {"1.0.0": {"dist": {"shasum": "ab"}}, "2.0.0-rc.1": {}, "garbage": {}, "1.0.1": "x"},
             "time": {"1.0.0": "2026-01-01T00:00:00.000Z"}},
            "p",
        )
        self.assertEqual(sorted(r.version for r in p.releases), ["1.0.0", "2.0.0-rc.1"])
        self.assertEqual(p.release("1.0.0").published_ns, 1767225600 * 10**9)
        self.assertEqual(p.release("2.0.0-rc.1").dist_tags, ("next",))
        self.assertRaises(rc.RegistryError, rc.parsePackument, {"versions": []}, "p")


class WatcherTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(self)
        for v in ("1.0.0", "1.1.0", "2.0.0"):
            self.h.fake.publish("left-pad", v)
        self.h.watch("left-pad")

    def test_firstPollSeeds(self):
        stats = self.h.poll()
        self.assertEqual((stats.fetched, stats.seeded, stats.queued, stats.errors), (1, 1, 1, 0))
        runs = self.h.runs()
        self.assertEqual([(r["package_name"], r["version"], r["target_runner"]) for r in runs], [("left-pad", "2.0.0", None)])
        code, run = self.h.o.call("GET", "/v1/runs/" + runs[0]["run_id"])
        self.assertEqual(run["job"]["sandbox"]["command"], npm.installCommand("left-pad", "2.0.0"))
        self.assertEqual(run["job"]["sandbox"]["image"], DEFAULT_SANDBOX_IMAGE)
        self.assertEqual(run["job"]["duration"], 120 * wire.SECOND)
        rel = self.h.releases("left-pad")
        self.assertEqual(sorted(rel), ["1.0.0", "1.1.0", "2.0.0"])
        self.assertEqual([rel[v]["seeded"] for v in ("1.0.0", "1.1.0", "2.0.0")], [True, True, False])
        latest = rel["2.0.0"]
        self.assertEqual((latest["queued"], latest["run_id"], latest["dist_tags"]), (True, runs[0]["run_id"], ["latest"]))
        self.assertEqual(len(latest["shasum"]), 40)
        self.assertTrue(latest["integrity"].startswith("sha512-"))
        self.assertTrue(latest["tarball"].endswith("/left-pad-2.0.0.tgz"))
        self.assertTrue(latest["published_at"].startswith("2026-01-01T00:03:00"))
        code, pkg = self.h.o.call("GET", "/v1/packages/left-pad")
        self.assertEqual(pkg["last_seen_version"], "2.0.0")
        self.assertIsNotNone(pkg["last_checked_at"])

    def test_threeVersionsBetweenPollsAllScannedOldestFirst(self):
        self.h.poll()
        self.h.fake.publish("left-pad", "2.1.0")
        self.h.fake.publish("left-pad", "3.0.0-beta.1", tag="next")
        self.h.fake.publish("left-pad", "2.2.0")
        stats = self.h.poll()
        self.assertEqual(stats.queued, 3)
        self.assertEqual(self.h.queueOrder(), ["2.0.0", "2.1.0", "3.0.0-beta.1", "2.2.0"])
        rel = self.h.releases("left-pad")
        self.assertEqual(rel["3.0.0-beta.1"]["dist_tags"], ["next"])
        self.assertTrue(all(rel[v]["queued"] for v in ("2.1.0", "3.0.0-beta.1", "2.2.0")))
        self.assertEqual(self.h.poll().queued, 0)  # nothing twice

    def test_noTimesInAbbreviatedFetchesFullOnlyWhenNew(self):
        self.h.poll()
        accepts = [a for _, s, a, _ in self.h.fake.log if s == 200]
        self.assertEqual(len(accepts), 2)
        self.assertIn("install-v1", accepts[0])
        self.assertEqual(accepts[1], "application/json")
        self.h.fake.publish("left-pad", "2.0.1")
        self.h.poll()
        self.assertEqual(len([s for s in self.h.fake.statuses() if s == 200]), 4)

    def test_newReleasesFetchTheFullDocument(self):
        """
        Even an abbreviated packument with publish times lacks the scripts,
        repository and maintainers the manifest deltas compare: a new
        release costs one full fetch; an unchanged package none.
        """
        h = Harness(self, FakeRegistry(abbreviatedHasTimes=True))
        h.fake.publish("x", "1.0.0")
        h.watch("x")
        h.poll()
        self.assertEqual(h.fake.statuses(), [200, 200])
        self.assertNotIn("install-v1", h.fake.log[-1][2])
        self.assertIsNotNone(h.releases("x")["1.0.0"]["published_at"])
        h.poll()
        self.assertEqual(h.fake.statuses(), [200, 200, 304])

    def test_queueFailureRetriedNothingLost(self):
        self.h.poll()
        for v in ("2.1.0", "2.2.0", "2.3.0"):
            self.h.fake.publish("left-pad", v)
        self.h.failSubmits[idempotencyKey("left-pad", "2.2.0")] = "before"
        stats = self.h.poll()
        self.assertEqual((stats.queued, stats.queue_failures), (1, 1))
        rel = self.h.releases("left-pad")
        self.assertEqual([rel[v]["queued"] for v in ("2.1.0", "2.2.0", "2.3.0")], [True, False, False])
        self.assertEqual(rel["2.2.0"]["attempts"], 1)
        self.assertIn("store unavailable", rel["2.2.0"]["last_error"])
        # The next cycle gets a 304 and still retries from the releases table.
        stats = self.h.poll()
        self.assertEqual((stats.not_modified, stats.queued, stats.queue_failures), (1, 2, 0))
        self.assertEqual(self.h.queueOrder(), ["2.0.0", "2.1.0", "2.2.0", "2.3.0"])

    def test_failureAfterCommitNeverQueuesTwice(self):
        self.h.poll()
        self.h.fake.publish("left-pad", "2.1.0")
        self.h.failSubmits[idempotencyKey("left-pad", "2.1.0")] = "after"
        self.assertEqual(self.h.poll().queue_failures, 1)
        self.assertEqual(self.h.poll().queued, 1)
        runs = [r for r in self.h.runs() if r["version"] == "2.1.0"]
        self.assertEqual(len(runs), 1)
        self.assertEqual(self.h.submitted[-1][1], self.h.submitted[-2][1])
        self.assertEqual(self.h.releases("left-pad")["2.1.0"]["run_id"], runs[0]["run_id"])

    def test_notModifiedCostsNoParsing(self):
        self.h.poll()
        parsed = self.h.client.parsed
        for _ in range(3):
            stats = self.h.poll()
            self.assertEqual((stats.not_modified, stats.fetched), (1, 0))
        self.assertEqual(self.h.client.parsed, parsed)
        self.assertEqual(self.h.fake.statuses()[-3:], [304, 304, 304])
        self.assertIsNotNone(self.h.fake.log[-1][3])

    def test_retryAfterHonoured(self):
        self.h.fake.fail("left-pad", 429, retryAfter="7")
        d = Deferred.fromCoroutine(self.h.watcher.pollOnce())
        self.h.stub.flush()
        self.assertEqual(self.h.fake.statuses(), [429])
        self.h.o.clock.advance(6.9)
        self.h.stub.flush()
        self.assertEqual(self.h.fake.statuses(), [429])
        self.h.o.clock.advance(0.2)
        self.h.stub.flush()
        self.h.o.clock.advance(0)
        self.h.stub.flush()
        self.assertEqual(self.h.fake.statuses(), [429, 200, 200])
        self.assertEqual(self.successResultOf(d).queued, 1)

    def test_longRetryAfterDefersThePackage(self):
        self.h.fake.publish("other", "1.0.0")
        self.h.watch("other")
        self.h.fake.fail("left-pad", 429, retryAfter="3600")
        stats = self.h.poll()
        # The wait applies to the whole registry: "other" is not asked either.
        self.assertEqual(stats.errors, 2)
        self.assertEqual(self.h.fake.statuses(), [429])
        status = self.h.status("left-pad")
        self.assertIn("Retry-After 3600", status["last_error"])
        self.assertIsNotNone(status["next_check_at"])
        self.h.o.clock.advance(3601)
        stats = self.h.poll()
        self.assertEqual((stats.packages, stats.queued), (2, 2))

    def test_serverErrorsBackOffAndRetry(self):
        self.h.fake.fail("left-pad", 503, times=2)
        stats = self.h.poll()
        self.assertEqual(self.h.fake.statuses()[:3], [503, 503, 200])
        self.assertEqual(stats.queued, 1)

    def test_persistentErrorsRecordedNotRaised(self):
        self.h.fake.fail("left-pad", 500, times=5)
        stats = self.h.poll(maxSteps=3000)
        self.assertEqual((stats.errors, stats.queued), (1, 0))
        self.assertIn("after 5 attempts", self.h.status("left-pad")["last_error"])
        self.assertEqual(self.h.poll().queued, 1)

    def test_unknownPackage(self):
        self.h.watch("no-such-package")
        stats = self.h.poll()
        self.assertEqual((stats.errors, stats.queued), (1, 1))
        self.assertIn("not on the registry", self.h.status("no-such-package")["last_error"])

    def test_scopedPackage(self):
        self.h.fake.publish("@acme/widget", "0.1.0")
        self.h.watch("@acme/widget")
        self.h.poll()
        self.assertNotIn(400, self.h.fake.statuses())
        run = [r for r in self.h.runs() if r["package_name"] == "@acme/widget"][0]
        code, body = self.h.o.call("GET", "/v1/runs/" + run["run_id"])
        self.assertIn(" @acme/widget@0.1.0 ", body["job"]["sandbox"]["command"][2])
        self.assertEqual(list(self.h.releases("@acme/widget")), ["0.1.0"])

    def test_runnerTakesSharedQueueOnNextPoll(self):
        self.h.poll()
        self.h.o.register("late-runner")
        code, job = self.h.o.poll("late-runner")
        self.assertEqual((code, job["package_name"], job["version"]), (200, "left-pad", "2.0.0"))

    def test_removeCascadesReleases(self):
        self.h.poll()
        code, _ = self.h.o.call("DELETE", "/v1/packages/left-pad")
        self.assertEqual(code, 200)
        self.assertEqual(self.successResultOf(self.h.o.store.listReleases("left-pad")), [])
        code, body = self.h.o.call("GET", "/v1/packages/left-pad/releases")
        self.assertEqual(code, 404)

    def test_tickNeverRaisesAndDoesNotOverlap(self):
        self.h.fake.fail("left-pad", 429, retryAfter="5")
        d1 = self.h.watcher.tick()
        d2 = self.h.watcher.tick()
        self.assertIs(d1, d2)
        self.h.o.clock.advance(5)
        self.h.stub.flush()
        self.h.o.clock.advance(0)
        self.h.stub.flush()
        self.assertIsNone(self.successResultOf(d1))


class TapTests(SynchronousTestCase):
    def test_options(self):
        o = tap.Options()
        o.parseOptions(["--watch-interval", "60", "--registry-url", "http://127.0.0.1:1"])
        self.assertEqual((o["watch-interval"], o["registry-url"]), (60.0, "http://127.0.0.1:1"))
        o = tap.Options()
        o.parseOptions([])
        self.assertEqual((o["watch-interval"], o["registry-url"]), (300.0, "https://registry.npmjs.org"))

    def test_badOptions(self):
        from twisted.python import usage

        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--watch-interval", "-1"])
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--registry-url", "ftp://x"])

    def test_serviceTree(self):
        from twisted.internet.task import Clock

        def timers(args):
            o = tap.Options()
            o.parseOptions(["--db", ":memory:"] + args)
            top = tap.makeService(o, Clock())
            return [s for s in top if isinstance(s, TimerService)]

        self.assertEqual(len(timers(["--watch-interval", "0", "--retention-days", "0"])), 1)  # the sweeper only
        watched = timers(["--watch-interval", "42", "--retention-days", "0"])
        self.assertEqual(sorted(t.step for t in watched)[-1], 42.0)


class LoopbackTests(TestCase):
    timeout = 30

    def setUp(self):
        self.fake = FakeRegistry()
        port = reactor.listenTCP(0, Site(self.fake), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = "http://127.0.0.1:%d" % (port.getHost().port,)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.client = rc.RegistryClient(HTTPClient(Agent(reactor, pool=pool)), reactor, self.url, timeout=5)

    def test_realSocket(self):
        return Deferred.fromCoroutine(self._realSocket())

    async def _realSocket(self):
        self.fake.publish("@acme/widget", "1.0.0")
        self.fake.publish("plain", "1.0.0")
        o = InMemoryOrchestrator(self)
        for n in ("@acme/widget", "plain"):
            await o.store.addPackage(n, "test", 1)

        w = Watcher(reactor, o.store, self.client, watcherSubmit(o.core))
        stats = await w.pollOnce()
        self.assertEqual((stats.fetched, stats.queued, stats.errors), (2, 2, 0))
        self.fake.publish("plain", "1.1.0")
        stats = await w.pollOnce()
        self.assertEqual((stats.not_modified, stats.fetched, stats.queued), (1, 1, 1))
        self.assertEqual(self.fake.statuses("@acme/widget"), [200, 200, 304])

    def test_unreachable(self):
        return Deferred.fromCoroutine(self._unreachable())

    async def _unreachable(self):
        from tests.procs import freePort

        client = rc.RegistryClient(self.client.client, reactor, "http://127.0.0.1:%d" % (freePort(),), retries=1, backoffBase=0.01)
        with self.assertRaises(rc.RegistryError) as cm:
            await client.fetch("x")
        self.assertIn("ConnectionRefused", str(cm.exception))


class ManifestDeltaTests(SynchronousTestCase):
    """
    Manifest deltas from the packument, against the fake registry, through
    to the deviations of the release's run.
    """

    def setUp(self):
        self.h = Harness(self)
        self.h.fake.publish("axios-like", "1.0.0", meta={"dependencies": {"follow": "^1.0.0"},
                                                        "repository": {"url": "git+https://example.test/a.git"}})
        self.h.fake.publish("follow", "1.0.0", meta={"scripts": {}})
        self.h.fake.publish("crypto-thing", "4.2.1", meta={"scripts": {"postinstall": "node setup.js"}})
        self.h.fake.publish("plain-dep", "2.0.0", meta={"scripts": {}})
        self.h.watch("axios-like")
        self.h.poll()

    def deltas(self, version):
        return {(d["category"], d["value"]): d["severity"] for d in self.h.releases("axios-like")[version]["deltas"]}

    def test_seedHasNoDeltas(self):
        self.assertEqual(self.deltas("1.0.0"), {})

    def test_everyKindOfDelta(self):
        self.h.fake.publish("axios-like", "1.0.1", meta={
            "scripts": {"postinstall": "node x.js --changed", "preinstall": "node pre.js"},
            "dependencies": {"follow": "^1.0.0", "crypto-thing": "^4.2.1", "plain-dep": "2.0.0"},
            "optionalDependencies": {"fsevents-ish": "github:someone/fsevents"},
            "peerDependencies": {"ghost-dep": "^1.0.0"},
            "bin": {"axios-like": "cli.js"},
            "repository": None,
            "_npmUser": {"name": "mallory"},
        })
        self.h.poll()
        self.assertEqual(self.deltas("1.0.1"), {
            ("pkg_new_install_script", "preinstall: node pre.js"): "high",
            ("pkg_changed_install_script", "postinstall: node x.js --changed"): "high",
            ("pkg_new_dependency", "crypto-thing@^4.2.1 (direct)"): "medium",  # it has a postinstall
            ("pkg_new_dependency", "plain-dep@2.0.0 (direct)"): "low",
            ("pkg_new_dependency", "ghost-dep@^1.0.0 (peer)"): "medium",  # not on the registry: unknown
            ("pkg_git_dependency", "fsevents-ish@github:someone/fsevents (optional)"): "high",
            ("pkg_changed_bin", "axios-like=cli.js"): "medium",
            ("pkg_removed_repository", "git+https://example.test/a.git"): "medium",
            ("pkg_new_maintainer", "mallory"): "medium",
        })

    def test_deltasAreDeviationsOfTheRun(self):
        """
        axios 1.14.1 added plain-crypto-js, whose postinstall was the
        payload: the run of such a release waits for a person even when its
        behaviour alone looked like the baseline's.
        """
        from tests.orchestrator.helpers import fileEvent

        seed = self.h.releases("axios-like")["1.0.0"]["run_id"]
        self.h.fake.publish("axios-like", "1.0.1", meta={"dependencies": {"follow": "^1.0.0", "crypto-thing": "^4.2.1"},
                                                        "repository": {"url": "git+https://example.test/a.git"}})
        self.h.poll()
        later = self.h.releases("axios-like")["1.0.1"]["run_id"]
        self.h.o.register("w")
        for runID in (seed, later):
            code, job = self.h.o.poll("w")
            self.assertEqual(code, 200, job)
            self.assertEqual(bytes(job["run_id"]).hex(), runID)
            self.h.o.call("POST", "/v1/runs/%s/events" % (runID,), raw=batchLine(1, [fileEvent("/etc/hostname")]))
            code, _ = self.h.o.call("POST", "/v1/runs/%s/result" % (runID,), {"status": "ok", "events_emitted": 1})
            self.assertEqual(code, 200)
        code, run = self.h.o.call("GET", "/v1/runs/" + seed)
        self.assertEqual(run["verdict"], "baseline")
        code, run = self.h.o.call("GET", "/v1/runs/" + later)
        self.assertEqual(run["verdict"], "deviations", run)
        [dev] = [d for d in run["deviations"] if d["actor"] == "registry"]
        self.assertEqual((dev["category"], dev["value"], dev["severity"], dev["actor"]),
                         ("pkg_new_dependency", "crypto-thing@^4.2.1 (direct)", "medium", "registry"))
        self.assertEqual(run["manifest_deltas"], [dev])


class ManifestUnitTests(SynchronousTestCase):
    def test_manifestOfOddShapes(self):
        from fangs.orchestrator import manifest

        for junk in (None, 7, [], {"scripts": "x", "bin": 3, "maintainers": "bob", "dependencies": [1]}):
            m = manifest.manifestOf(junk)
            self.assertEqual(manifest.manifestDeltas(m, m), [])
        m = manifest.manifestOf({"name": "p", "bin": "cli.js", "scripts": {"test": "x", "install": "node-gyp rebuild"}})
        self.assertEqual((m["bin"], m["scripts"], m["has_install_script"]), ({"p": "cli.js"}, {"install": "node-gyp rebuild"}, True))

    def test_urlSpecs(self):
        from fangs.orchestrator.manifest import isURLSpec

        for spec in ("git+https://x/y.git", "github:a/b", "a/b", "https://x/y.tgz", "file:../x", "git://x/y"):
            self.assertTrue(isURLSpec(spec), spec)
        for spec in ("^1.2.3", "1.x", "latest", "npm:other@1", "*", ">=1 <2"):
            self.assertFalse(isURLSpec(spec), spec)

    def test_abbreviatedOnlyComparesWhatItHas(self):
        from fangs.orchestrator import manifest

        before = manifest.manifestOf({"version": "1.0.0", "dist": {}})
        after = manifest.manifestOf({"version": "1.0.1", "dist": {}, "hasInstallScript": True})
        self.assertEqual([d["category"] for d in manifest.manifestDeltas(before, after)], ["pkg_new_install_script"])
