"""
Per-run parent cgroups in the cgroup v2 hierarchy.

Each sandboxed run gets C{<root>/fangs/<run hex>}; Docker is told
C{cgroup_parent=/fangs/<run hex>} and puts the container in a child
C{/fangs/<run hex>/<container id>} (cgroupfs driver; on these hybrid machines
the v2 tree is mounted at C{/sys/fs/cgroup/unified}).  The parent's inode
number is its cgroup id, what C{bpf_get_current_cgroup_id()} returns for
the parent, so the sensor can register it before the container starts and
match every process of the container by walking up its ancestors.

On a hybrid machine Docker's cgroupfs driver also makes
C{/sys/fs/cgroup/<controller>/fangs/<run hex>} in every v1 hierarchy and
never removes them; L{CgroupManager.remove} removes those too, so runs do
not leak directories.

The filesystem calls are tiny (mkdir, stat, rmdir) and run on the calling
thread; waiting between C{rmdir} retries goes through the injected clock.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Callable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

log = Logger()

DEFAULT_ROOT = "/sys/fs/cgroup/unified"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CgroupError(Exception):
    """
    A run's cgroup could not be created; the message says why.
    """


@attrs.frozen
class RunCgroup:
    """
    @ivar relPath: the path inside the v2 hierarchy, C{/fangs/<run hex>};
        what Docker's C{cgroup_parent} takes.
    @ivar absPath: the directory on this machine.
    @ivar cgroupID: the directory's inode number, the v2 cgroup id.
    """

    relPath: str
    absPath: str
    cgroupID: int


def findCgroup2Mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """
    The first C{cgroup2} mount point in C{mountinfo}, or C{None}.
    """
    try:
        with open(mountinfo) as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                if sep and right.split()[:1] == ["cgroup2"]:
                    return left.split()[4]
    except OSError:
        return None
    return None


def cgroupOfPid(pid: int, proc: str = "/proc") -> str | None:
    """
    The v2 path (C{0::<path>} line) of process C{pid}, or C{None}.
    """
    try:
        with open("%s/%d/cgroup" % (proc, pid)) as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


class CgroupManager:
    """
    Creates and removes the per-run parent cgroups under C{<root>/<parent>}.
    """

    def __init__(self, root: str = DEFAULT_ROOT, parent: str = "fangs", v1Root: str | None = "/sys/fs/cgroup",
                 rmdir: Callable[[str], None] = os.rmdir) -> None:
        if not _SAFE_NAME.match(parent):
            raise ValueError("cgroup parent name %r is not a plain directory name" % (parent,))
        self.root = root
        self.parent = parent
        self.v1Root = v1Root
        self._rmdir = rmdir

    def _v1Copies(self, runHex: str) -> list[str]:
        """
        The run's directories Docker made in the v1 hierarchies.
        """
        if not self.v1Root or not os.path.isdir(self.v1Root):
            return []
        found = []
        for name in sorted(os.listdir(self.v1Root)):
            candidate = os.path.join(self.v1Root, name, self.parent, runHex)
            if os.path.realpath(os.path.join(self.v1Root, name)) == os.path.realpath(self.root):
                continue
            if os.path.isdir(candidate):
                found.append(candidate)
        return found

    def ownedPath(self, path: str) -> str | None:
        """
        The directory of C{path} (C{/fangs/<name>...} relative to the v2
        root, or an absolute path under it) when it lies inside this
        runner's own C{<root>/<parent>} tree once links and C{..} are
        resolved; None for anything else (another service's cgroup, the
        root, a link out of the tree).
        """
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            return None
        absolute = path if path.startswith(self.root.rstrip("/") + "/") else self.root.rstrip("/") + path
        top = os.path.realpath(os.path.join(self.root, self.parent))
        real = os.path.realpath(absolute)
        if not real.startswith(top + "/"):
            return None
        return real

    def available(self) -> bool:
        """
        Whether C{root} is a cgroup v2 mount (it has C{cgroup.controllers}).
        """
        return os.path.exists(os.path.join(self.root, "cgroup.controllers"))

    def create(self, runHex: str) -> RunCgroup:
        """
        Make C{<root>/<parent>/<runHex>} (an existing one is reused) and
        return it with its cgroup id.  Raises L{CgroupError}.
        """
        if not _SAFE_NAME.match(runHex):
            raise CgroupError("run id %r is not a plain directory name" % (runHex,))
        if not self.available():
            raise CgroupError("no cgroup v2 hierarchy at %s" % (self.root,))
        top = os.path.join(self.root, self.parent)
        path = os.path.join(top, runHex)
        try:
            os.makedirs(top, mode=0o755, exist_ok=True)
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError("create cgroup %s: %s" % (path, e.strerror)) from None
        try:
            inode = os.stat(path).st_ino
        except OSError as e:
            _rmdirQuietly(path)
            raise CgroupError("stat cgroup %s: %s" % (path, e.strerror)) from None
        return RunCgroup(relPath="/%s/%s" % (self.parent, runHex), absPath=path, cgroupID=inode)

    def cgroupID(self, relPath: str) -> int:
        """
        The cgroup id (inode) of a path inside the v2 hierarchy.
        """
        return os.stat(os.path.join(self.root, relPath.lstrip("/"))).st_ino

    async def remove(self, cg: RunCgroup, clock: IReactorTime, attempts: int = 50,
                     interval: float = 0.1) -> bool:
        """
        Remove the run's cgroup, retrying while the kernel still says
        C{EBUSY} (Docker tears its child down asynchronously).  Child
        cgroups left behind by a dead container (no processes) are removed
        first, and so are the run's copies in the v1 hierarchies.  Returns
        whether every directory is gone; a leak is logged, never raised.
        """
        runHex = cg.relPath.rsplit("/", 1)[-1]
        pending = [cg.absPath] + self._v1Copies(runHex)
        for attempt in range(attempts):
            busy = []
            for path in pending:
                try:
                    _removeTree(path, self._rmdir)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        log.warn("cgroup {path} not removed: {error}", path=path, error=e.strerror)
                        return False
                    busy.append(path)
            if not busy:
                return True
            pending = busy
            await deferLater(clock, interval, lambda: None)
        log.warn("cgroup {paths} leaked: still busy after {n} attempts", paths=pending, n=attempts)
        return False


def _removeTree(path: str, rmdir: Callable[[str], None] = os.rmdir) -> None:
    """
    rmdir a cgroup and its (process-free) descendants, deepest first.  A
    cgroup directory's files are virtual: only directories are removed.
    """
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for d in dirnames:
            try:
                rmdir(os.path.join(dirpath, d))
            except FileNotFoundError:
                pass
    rmdir(path)


def _rmdirQuietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError as e:
        log.warn("cgroup {path} not removed: {error}", path=path, error=e.strerror)
