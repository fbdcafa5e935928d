"""
The watcher's registry client against the real npm registry (the only
outside host a test may reach).
"""

import os

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from fangs.orchestrator import registryclient as rc
from fangs.orchestrator.watcher import Watcher
from tests.orchestrator.helpers import InMemoryOrchestrator


class RealRegistryTests(TestCase):
    """
    Opt-in: FANGS_REAL_REGISTRY=1 polls https://registry.npmjs.org.  CI
    (CI=true) opts in too: it reaches the registry for the end-to-end scans
    anyway.
    """

    timeout = 60

    def setUp(self):
        from tests import prereq

        if os.environ.get("FANGS_REAL_REGISTRY") != "1" and not prereq.required():
            raise SkipTest("set FANGS_REAL_REGISTRY=1 to poll the real npm registry")
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.client = rc.RegistryClient(HTTPClient(Agent(reactor, pool=pool)), reactor)

    def test_realPackages(self):
        return Deferred.fromCoroutine(self._real())

    async def _real(self):
        o = InMemoryOrchestrator(self)
        for n in ("is-number", "@sindresorhus/is"):
            await o.store.addPackage(n, "test", 1)

        async def submit(request, key):
            return (await o.core.submitScan(request, key, requireTarget=False))[0]

        w = Watcher(reactor, o.store, self.client, submit)
        stats = await w.pollOnce()
        self.assertEqual((stats.fetched, stats.queued, stats.errors), (2, 2, 0), stats)
        rows = await o.store.listReleases("is-number", 1000)
        latest = [r for r in rows if "latest" in r["dist_tags"]][0]
        self.assertTrue(latest["integrity"].startswith("sha512-"))
        self.assertEqual(len(latest["shasum"]), 40)
        self.assertIsNotNone(latest["published_ns"])
        self.assertGreater(len(rows), 5)
        with self.assertRaises(rc.PackageNotFound):
            await self.client.fetch("fangs-no-such-package-" + os.urandom(6).hex())
