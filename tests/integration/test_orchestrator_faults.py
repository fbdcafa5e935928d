"""
A real orchestrator whose database disk fills up (a tmpfs mounted as root):
a 507 in the envelope, earlier batches intact, health answered, ingest
working again once space is freed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from tests.orchestrator.helpers import batchLine, fileEvent
from tests.test_orchestrator_faults import LiveOrchestrator, assertEnvelope, call


class DiskFullTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("mounting a tmpfs needs root")
        self.dir = tempfile.mkdtemp(prefix="fangs-full-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", self.dir], capture_output=True)
        if mounted.returncode != 0:
            raise SkipTest("cannot mount a tmpfs: %s" % (mounted.stderr.decode(errors="replace"),))
        self.addCleanup(subprocess.run, ["umount", "-l", self.dir], capture_output=True)

    def test_diskFull(self) -> Deferred:
        return Deferred.fromCoroutine(self._full())

    async def _full(self) -> None:
        """
        Ingest until the database's disk is full: a 507 C{insufficient_storage}
        in the envelope, every acknowledged batch intact and nothing of the
        failed one, health answered; once space is freed (a ballast file
        removed) ingest works again and resends store once.
        """
        ballast = os.path.join(self.dir, "ballast")
        with open(ballast, "wb") as f:
            f.write(b"\0" * (1024 * 1024))
        o = LiveOrchestrator(self, os.path.join(self.dir, "fangs.db"))
        await o.start()
        runID = await o.dispatchedRun()
        acked, seq, code, body = 0, 0, 200, None
        while code == 200 and seq < 2000:
            seq += 1
            events = [fileEvent("/usr/lib/%d/%d/%s" % (seq, i, "p" * 200)) for i in range(20)]
            code, body = await o.post(runID, batchLine(seq, events))
            if code == 200:
                acked += body["persisted"]
        self.assertEqual(code, 507, body)
        assertEnvelope(self, body, "insufficient_storage")
        self.assertIn("disk is full", body["error"]["message"])
        self.assertEqual(await o.health(), 200)
        self.assertEqual(o.stored(runID), (acked, acked, seq - 1))
        code, run = await call(o.client, "GET", o.url + "/v1/runs/" + runID)
        self.assertEqual((code, run["events_received"]), (200, acked))

        os.remove(ballast)
        events = [fileEvent("/usr/lib/%d/%d/%s" % (seq, i, "p" * 200)) for i in range(20)]
        code, body = await o.post(runID, batchLine(seq - 1, events) + batchLine(seq, events))
        self.assertEqual((code, body["persisted"]), (200, 20), body)  # seq - 1 was stored already
        self.assertEqual(o.stored(runID), (acked + 20, acked + 20, seq))
