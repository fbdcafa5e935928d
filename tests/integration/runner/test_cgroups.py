"""
L{fangs.runner.cgroups} on the host's real cgroup v2 hierarchy (root).
"""

import os
import secrets

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner.cgroups import CgroupManager, cgroupOfPid, findCgroup2Mount
from tests import prereq


class RealHierarchyTests(SynchronousTestCase):
    def test_realCreateRemove(self):
        prereq.requireRoot()
        mgr = CgroupManager()
        if not mgr.available():
            prereq.missing("no cgroup v2 hierarchy at /sys/fs/cgroup/unified")
        cg = mgr.create(secrets.token_hex(16))
        self.addCleanup(lambda: os.path.isdir(cg.absPath) and os.rmdir(cg.absPath))
        self.assertTrue(os.path.exists(os.path.join(cg.absPath, "cgroup.procs")))
        self.assertEqual(mgr.cgroupID(cg.relPath), cg.cgroupID)
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(mgr.remove(cg, Clock()))))
        self.assertFalse(os.path.exists(cg.absPath))

    def test_mountAndOwnCgroup(self):
        self.assertIsNotNone(findCgroup2Mount())
        self.assertIsNotNone(cgroupOfPid(os.getpid()))
        self.assertIsNone(cgroupOfPid(0))
