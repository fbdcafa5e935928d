"""
The run stream of two orchestrators sharing one PostgreSQL database
(L{tests.pg}): a run queued on one is seen by the other's subscribers.
"""

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.procs import OrchestratorProcess, httpClient
from tests.test_run_stream import FINAL, StreamClients


class TwoOrchestratorStreamTests(StreamClients, TestCase):
    """
    Two orchestrators on one PostgreSQL database: a client of either sees
    every run's lines in one order, and one that reconnects to the other
    orchestrator with its cursor misses nothing.
    """

    timeout = 180

    def setUp(self):
        from tests import pg

        self.http = httpClient(self)
        dsn = pg.freshDatabase(self, "stream")
        self.a = OrchestratorProcess(self, db=dsn, extra=["--watch-interval", "0"])
        self.b = OrchestratorProcess(self, db=dsn, extra=["--watch-interval", "0"])
        return Deferred.fromCoroutine(self._start())

    async def _start(self):
        await self.a.startAndWait(self.http)
        await self.b.startAndWait(self.http)

    def test_acrossOrchestrators(self):
        return Deferred.fromCoroutine(self._across())

    async def _across(self):
        # A client of B while A does the work.
        self.orch = self.b
        onB = await self.openNDJSON()
        self.orch = self.a
        first = await self.scanOnce("1.0.0", runner="pg-a")
        await self.until(lambda: any(x["type"] in FINAL for x in onB.lines), "B to show A's run.completed")
        seenOnB = onB.runLines()
        self.assertEqual({x["run_id"] for x in seenOnB}, {first})
        self.assertEqual(seenOnB[0]["type"], "run.queued", onB.lines)
        self.assertEqual(seenOnB[-1]["type"], "run.completed")
        # The client goes away; two more runs happen on A; it comes back to A.
        onB.close()
        second = await self.scanOnce("1.0.1", runner="pg-a")
        third = await self.scanOnce("1.0.2", runner="pg-a")
        back = await self.openNDJSON("?since=%s" % (seenOnB[-1]["cursor"],))
        await self.until(lambda: sum(x["type"] in FINAL for x in back.lines) >= 2, "both missed runs replayed")
        lines = back.runLines()
        self.assertEqual([x["run_id"] for x in lines if x["type"] == "run.completed"], [second, third])
        cursors = [int(x["cursor"]) for x in lines]
        self.assertEqual(cursors, sorted(set(cursors)))
        self.assertGreater(cursors[0], int(seenOnB[-1]["cursor"]))
