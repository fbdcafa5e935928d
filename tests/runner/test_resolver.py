"""
The path resolver on its own, over a fake /proc: links (made during the run
and on disk), renames, /proc and /dev/fd routes, fd tables, limits.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fangs.runner.resolver import AT_FDCWD, Resolver, RunPaths, Unresolved
from tests.runner.test_sensor_records import FakeProcFS


class ResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fs = FakeProcFS()
        self.fs.pids[10] = 1
        self.fs.links["/proc/10/cwd"] = b"/work"
        self.r = Resolver(self.fs)
        self.run = RunPaths(pids={10})

    def resolve(self, raw: bytes, dfd: int = AT_FDCWD, pid: int = 10) -> bytes:
        return self.r.resolve(self.run, pid, pid, dfd, raw).name

    def test_lexical(self) -> None:
        self.assertEqual(self.resolve(b"a/../b//./c"), b"/work/b/c")
        self.assertEqual(self.resolve(b"/../../etc/./passwd"), b"/etc/passwd")

    def test_fsSymlinkChain(self) -> None:
        # /a -> b (relative), /b -> /c/d (absolute, inside the root)
        self.fs.symlinks[b"/a"] = b"b"
        self.fs.symlinks[b"/b"] = b"/c/d"
        res = self.r.resolve(self.run, 10, 10, AT_FDCWD, b"/a/f")
        self.assertEqual((res.path, res.routes), (b"/c/d/f", ("symlink",)))

    def test_symlinkDotDot(self) -> None:
        # /x/l -> ../y : the .. applies to the link's directory.
        self.fs.symlinks[b"/x/l"] = b"../y"
        self.assertEqual(self.resolve(b"/x/l/../z"), b"/z")
        self.assertEqual(self.resolve(b"/x/l/f"), b"/y/f")

    def test_madeLinkBeatsDisk(self) -> None:
        """
        A link the run made (and perhaps removed since) is followed even
        though the disk shows nothing there any more.
        """
        self.r.linked(self.run, 10, 10, "symlink", AT_FDCWD, b"/home/n/.npmrc", AT_FDCWD, b"/tmp/x")
        self.assertEqual(self.resolve(b"/tmp/x"), b"/home/n/.npmrc")

    def test_linkNameNotFollowed(self) -> None:
        # The new name of a link is where the link is, not where it points.
        self.fs.symlinks[b"/tmp/old"] = b"/elsewhere"
        self.r.linked(self.run, 10, 10, "symlink", AT_FDCWD, b"/t", AT_FDCWD, b"/tmp/old")
        self.assertIn(b"/tmp/old", self.run.symlinks)

    def test_renameMovesLinksBelow(self) -> None:
        self.r.linked(self.run, 10, 10, "symlink", AT_FDCWD, b"/secret", AT_FDCWD, b"/d/l")
        self.r.linked(self.run, 10, 10, "rename", AT_FDCWD, b"/d", AT_FDCWD, b"/e")
        self.assertEqual(self.resolve(b"/e/l/key"), b"/secret/key")

    def test_hardlinkChainsFlatten(self) -> None:
        self.r.linked(self.run, 10, 10, "hardlink", AT_FDCWD, b"/home/n/.npmrc", AT_FDCWD, b"/tmp/a")
        self.r.linked(self.run, 10, 10, "hardlink", AT_FDCWD, b"/tmp/a", AT_FDCWD, b"/tmp/b")
        res = self.r.resolve(self.run, 10, 10, AT_FDCWD, b"/tmp/b")
        self.assertEqual((res.name, res.path, res.routes), (b"/home/n/.npmrc", b"/tmp/b", ("hardlink",)))

    def test_loop(self) -> None:
        self.fs.symlinks[b"/l"] = b"/l"
        self.assertRaises(Unresolved, self.resolve, b"/l")

    def test_devFdAndStd(self) -> None:
        self.r.opened(10, 0, b"/home/n/.npmrc", False)
        self.assertEqual(self.resolve(b"/dev/stdin"), b"/home/n/.npmrc")
        self.r.opened(10, 5, b"/home/n", True)
        self.assertEqual(self.resolve(b"/dev/fd/5/.ssh/id"), b"/home/n/.ssh/id")

    def test_procNotReadAsTheSensor(self) -> None:
        """
        /proc paths that are not routes are kept as typed: procfs's own
        links would answer for the sensor, not for the process.
        """
        self.fs.symlinks[b"/proc/self"] = b"99999"
        self.assertEqual(self.resolve(b"/proc/self/environ"), b"/proc/self/environ")
        self.assertEqual(self.fs.lookups, 0)

    def test_procTaskRoute(self) -> None:
        self.fs.pids[20] = 7
        self.run.pids.add(20)
        self.fs.links["/proc/20/cwd"] = b"/home/n"
        self.assertEqual(self.resolve(b"/proc/7/task/7/cwd/.npmrc"), b"/home/n/.npmrc")

    def test_fdTables(self) -> None:
        self.r.opened(10, 5, b"/a", True)
        self.r.duped(10, 5, 6)
        self.r.closed(10, 5, 5)
        self.assertEqual(self.r.fdOf(10, 6), b"/a")
        self.assertIsNone(self.r.fdOf(10, 5))
        self.r.forked(10, 11)
        self.assertEqual(self.r.fdOf(11, 6), b"/a")
        self.r.closed(10, 0, 2 ** 31 - 1)  # close_range(0, ~0)
        self.assertIsNone(self.r.fdOf(10, 6))
        self.assertEqual(self.r.fdOf(11, 6), b"/a")

    def test_liveLinkBeatsLearnt(self) -> None:
        self.r.opened(10, 5, b"/learnt", False)
        self.fs.links["/proc/10/fd/5"] = b"/live (deleted)"
        self.assertEqual(self.r.fdOf(10, 5), b"/live")
        self.r.opened(10, 5, b"/followed", True)
        self.assertEqual(self.r.fdOf(10, 5), b"/followed")

    def test_cacheBounded(self) -> None:
        for i in range(100):
            self.resolve(b"/d%d/f" % (i,))
        n = self.fs.lookups
        for i in range(100):
            self.resolve(b"/d%d/f" % (i,))
        self.assertEqual(self.fs.lookups, n)
