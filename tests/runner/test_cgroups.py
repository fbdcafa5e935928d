"""
Tests for L{fangs.runner.cgroups}: a temporary directory stands in for the
hierarchy (the real v2 hierarchy: L{tests.integration.runner.test_cgroups};
a real container's placement: L{tests.integration.runner.test_sandbox}).
"""

import errno
import os
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner.cgroups import CgroupError, CgroupManager


def fakeHierarchy(testCase) -> str:
    top = tempfile.mkdtemp(prefix="fangs-cg-")
    testCase.addCleanup(lambda: __import__("shutil").rmtree(top, ignore_errors=True))
    root = os.path.join(top, "unified")
    os.makedirs(root)
    open(os.path.join(root, "cgroup.controllers"), "w").close()
    return top


class CgroupManagerTests(SynchronousTestCase):
    def test_create(self):
        top = fakeHierarchy(self)
        mgr = CgroupManager(root=os.path.join(top, "unified"), v1Root=top)
        cg = mgr.create("ab" * 16)
        self.assertEqual(cg.relPath, "/fangs/" + "ab" * 16)
        self.assertEqual(cg.absPath, os.path.join(top, "unified", "fangs", "ab" * 16))
        self.assertEqual(cg.cgroupID, os.stat(cg.absPath).st_ino)
        self.assertEqual(mgr.create("ab" * 16), cg)  # existing directory reused

    def test_createRefusesPaths(self):
        top = fakeHierarchy(self)
        mgr = CgroupManager(root=os.path.join(top, "unified"))
        for bad in ("../x", "a/b", "", ".hidden"):
            self.assertRaises(CgroupError, mgr.create, bad)
        self.assertRaises(ValueError, CgroupManager, parent="a/b")

    def test_noHierarchy(self):
        mgr = CgroupManager(root=tempfile.mkdtemp(prefix="fangs-nocg-"))
        self.assertRaises(CgroupError, mgr.create, "ab" * 16)

    def test_removeRetriesOnBusyThroughTheClock(self):
        top = fakeHierarchy(self)
        busy = [2]

        def rmdir(path):
            if path.endswith("cd" * 16) and "unified" in path and busy[0]:
                busy[0] -= 1
                raise OSError(errno.EBUSY, "Device or resource busy")
            os.rmdir(path)

        mgr = CgroupManager(root=os.path.join(top, "unified"), v1Root=top, rmdir=rmdir)
        cg = mgr.create("cd" * 16)
        os.mkdir(os.path.join(cg.absPath, "child"))  # a dead container's cgroup
        v1 = os.path.join(top, "memory", "fangs", "cd" * 16)
        os.makedirs(v1)
        clock = Clock()
        d = Deferred.fromCoroutine(mgr.remove(cg, clock))
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertTrue(self.successResultOf(d))
        self.assertFalse(os.path.exists(cg.absPath))
        self.assertFalse(os.path.exists(v1))

    def test_removeGivesUp(self):
        top = fakeHierarchy(self)

        def rmdir(path):
            raise OSError(errno.EBUSY, "Device or resource busy")

        mgr = CgroupManager(root=os.path.join(top, "unified"), v1Root=None, rmdir=rmdir)
        cg = mgr.create("ef" * 16)
        clock = Clock()
        d = Deferred.fromCoroutine(mgr.remove(cg, clock, attempts=3, interval=1))
        clock.pump([1, 1, 1])
        self.assertFalse(self.successResultOf(d))
        self.flushLoggedErrors()

    def test_removeMissingIsFine(self):
        top = fakeHierarchy(self)
        mgr = CgroupManager(root=os.path.join(top, "unified"), v1Root=top)
        cg = mgr.create("01" * 16)
        os.rmdir(cg.absPath)
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(mgr.remove(cg, Clock()))))


class OwnedPathTests(SynchronousTestCase):
    def test_ownTreeOnly(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "fangs", "run1"))
        os.makedirs(os.path.join(root, "system.slice"))
        os.symlink(os.path.join(root, "system.slice"), os.path.join(root, "fangs", "escape"))
        m = CgroupManager(root=os.path.abspath(root), v1Root=None)
        top = os.path.realpath(os.path.join(root, "fangs"))
        self.assertEqual(m.ownedPath("/fangs/run1"), os.path.join(top, "run1"))
        self.assertEqual(m.ownedPath(os.path.abspath(root) + "/fangs/run1"), os.path.join(top, "run1"))
        for bad in ("/fangs/../system.slice", "/fangs/escape", "/fangs", "/", "fangs/run1", "/system.slice"):
            self.assertIsNone(m.ownedPath(bad), bad)
