"""
What a run's process really opened: the sensor's path resolver.

The kernel hands over what a process typed (and the fd it got back); this
module turns that into the object opened, within the container's root:

  - relative paths against the process's working directory or the directory
    fd (per-process fd tables fed by open exits, dup/dup2/dup3/fcntl, close,
    fork, memfd_create; C{fchdir} resolved when it is made; threads share
    their process's cwd and fds, since both are keyed by tgid);
  - C{.}, C{..}, C{//};
  - C{/proc/<pid>|self|thread-self/{root,cwd,fd/N,exe}} and C{/dev/fd/N},
    C{/dev/std*} (container pids are mapped to host pids through the
    C{NSpid} lines of the run's processes);
  - symbolic links, component by component: links the run created (from the
    sensor's link records, in order, so a link made and removed at once is
    still followed) and the filesystem's own (read through
    C{/proc/<pid>/root}, absolute targets kept inside that root, cached);
  - hard links and renames made during the run: the new name is an alias of
    the old object, whose canonical path is reported.

Pure logic over an injected L{ProcFS}; no Twisted.  What cannot be resolved
raises L{Unresolved} with a reason, for the sensor to report and count.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Optional, Set, Tuple

import attrs

AT_FDCWD = -100
MAX_LINKS = 40
_CACHE_MAX = 65536
_FDS_MAX = 4096

_DIGITS = re.compile(rb"^[0-9]+$")


class Unresolved(Exception):
    """
    The path cannot be resolved; C{args[0]} says why.  C{harmless}: what
    is unknown cannot be a watched object (an fd route through an fd the
    run never got from an open of a watched path, e.g. one runc passed in:
    every open that can reach a watched object is reported, and its fd
    learnt).
    """

    def __init__(self, reason: str, harmless: bool = False) -> None:
        super().__init__(reason)
        self.harmless = harmless

    @property
    def reason(self) -> str:
        return str(self.args[0])


class ProcFS:
    """
    The real C{/proc}, as the resolver reads it.
    """

    def readlink(self, path: str) -> Optional[bytes]:
        """
        The target of a C{/proc} magic link (C{/proc/<pid>/cwd},
        C{/proc/<pid>/fd/<n>}), absolute, or C{None}.
        """
        try:
            target = os.readlink(path.encode())
        except OSError:
            return None
        if not target.startswith(b"/"):
            return None  # pipe:[...], socket:[...], anon_inode:...
        return target

    def linkIn(self, pid: int, path: bytes) -> Tuple[bool, Optional[bytes]]:
        """
        Whether C{path} (absolute, in the root of C{pid}) could be looked
        at, and its symlink target when it is a symlink.
        """
        try:
            return True, os.readlink(b"/proc/%d/root%s" % (pid, path))
        except OSError as e:
            import errno

            if e.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                return True, None
            return False, None

    def nspid(self, pid: int) -> Optional[int]:
        """
        The pid of C{pid} in its innermost pid namespace.
        """
        try:
            with open("/proc/%d/status" % (pid,), "rb") as f:
                for line in f:
                    if line.startswith(b"NSpid:"):
                        return int(line.split()[-1])
        except (OSError, ValueError):
            return None
        return None

    def alive(self, pid: int) -> bool:
        return os.path.exists("/proc/%d/root" % (pid,))


@attrs.define
class _Proc:
    cwd: Optional[bytes] = None
    #: fd -> canonical path; strong entries are followed by the kernel (close
    #: and reuse reported), weak ones were learnt from a reported open.
    fds: Dict[int, bytes] = attrs.Factory(dict)
    weak: Dict[int, bytes] = attrs.Factory(dict)


@attrs.define
class RunPaths:
    """
    A run's view of its filesystem: links it made, its processes' pids.
    """

    symlinks: Dict[bytes, bytes] = attrs.Factory(dict)
    #: new name -> canonical path of the object it names (hard links, renames)
    aliases: Dict[bytes, Tuple[bytes, str]] = attrs.Factory(dict)
    cache: Dict[bytes, Optional[bytes]] = attrs.Factory(dict)
    pids: Set[int] = attrs.Factory(set)
    nspids: Dict[int, int] = attrs.Factory(dict)
    rootPid: int = 0


@attrs.frozen
class Resolution:
    """
    C{path}: where the object is (canonical, symlinks followed); C{name}:
    its canonical identity (the original path of a hard link or renamed
    file, else C{path}); C{routes}: how the process got there.
    """

    path: bytes
    name: bytes
    routes: Tuple[str, ...]


def _components(path: bytes) -> List[bytes]:
    return [c for c in path.split(b"/") if c and c != b"."]


def _join(out: List[bytes]) -> bytes:
    return b"/" + b"/".join(out)


class Resolver:
    """
    Per-process state (cwd, fds) keyed by host tgid, and the resolution of
    paths.  See the module docstring.
    """

    def __init__(self, procfs: Optional[ProcFS] = None) -> None:
        self._fs = procfs or ProcFS()
        self._procs: Dict[int, _Proc] = {}
        #: Counters for diagnostics.
        self.fsLookups = 0

    # ------------------------------------------------------------------
    # Process state

    def _proc(self, pid: int) -> _Proc:
        p = self._procs.get(pid)
        if p is None:
            if len(self._procs) >= 65536:
                for old in list(self._procs)[:8192]:
                    del self._procs[old]
            p = self._procs[pid] = _Proc()
        return p

    def knows(self, pid: int) -> bool:
        return pid in self._procs

    def cwdOf(self, pid: int, tid: int = 0) -> Optional[bytes]:
        p = self._proc(pid)
        if p.cwd is None:
            p.cwd = self._fs.readlink("/proc/%d/cwd" % (pid,))
        return p.cwd

    def fdOf(self, pid: int, fd: int) -> Optional[bytes]:
        """
        What fd C{fd} of C{pid} refers to: a followed entry, else the live
        C{/proc} link, else a learnt one.
        """
        p = self._proc(pid)
        known = p.fds.get(fd)
        if known is not None:
            return known
        live = self._fs.readlink("/proc/%d/fd/%d" % (pid, fd))
        if live is not None:
            if live.endswith(b" (deleted)"):
                live = live[: -len(b" (deleted)")]
            return live
        return p.weak.get(fd)

    def setCwd(self, pid: int, cwd: Optional[bytes]) -> None:
        self._proc(pid).cwd = cwd

    def opened(self, pid: int, fd: int, path: bytes, followed: bool) -> None:
        """
        A reported open (or memfd) returned C{fd} for C{path}.
        """
        p = self._proc(pid)
        if followed:
            p.weak.pop(fd, None)
            if fd in p.fds or len(p.fds) < _FDS_MAX:
                p.fds[fd] = path
        else:
            p.fds.pop(fd, None)
            if fd in p.weak or len(p.weak) < _FDS_MAX:
                p.weak[fd] = path

    def closed(self, pid: int, first: int, last: int) -> None:
        p = self._procs.get(pid)
        if p is None:
            return
        if last - first > 4096:
            for table in (p.fds, p.weak):
                for fd in [f for f in table if first <= f <= last]:
                    del table[fd]
            return
        for fd in range(first, last + 1):
            p.fds.pop(fd, None)
            p.weak.pop(fd, None)

    def duped(self, pid: int, old: int, new: int) -> None:
        p = self._proc(pid)
        p.fds.pop(new, None)
        p.weak.pop(new, None)
        if old in p.fds:
            p.fds[new] = p.fds[old]
        elif old in p.weak:
            p.weak[new] = p.weak[old]

    def forked(self, parent: int, child: int) -> None:
        p = self._procs.get(parent)
        c = self._proc(child)
        if p is None:
            c.cwd = self.cwdOf(parent)
            return
        c.cwd = p.cwd
        # The sensor asks the kernel to follow the child's copies of followed
        # fds too (L{unfollow} when it cannot).
        c.weak = dict(p.weak)
        c.fds = dict(p.fds)

    def unfollow(self, pid: int, fd: int) -> None:
        p = self._procs.get(pid)
        if p is not None and fd in p.fds:
            p.weak[fd] = p.fds.pop(fd)

    def exited(self, pid: int) -> None:
        self._procs.pop(pid, None)

    def followedFds(self, pid: int) -> Iterable[int]:
        p = self._procs.get(pid)
        return list(p.fds) if p is not None else []

    # ------------------------------------------------------------------
    # Links made by the run

    def linked(self, run: RunPaths, pid: int, tid: int, kind: str, olddfd: int, old: bytes, newdfd: int, new: bytes) -> None:
        """
        A successful symlink(old -> new), link(old, new) or rename(old, new).
        """
        try:
            newAt = self.resolve(run, pid, tid, newdfd, new, final=False)
        except Unresolved:
            return
        run.cache.clear()
        if kind == "symlink":
            run.symlinks[newAt.path] = old
            run.aliases.pop(newAt.path, None)
            return
        try:
            oldAt = self.resolve(run, pid, tid, olddfd, old, final=kind == "hardlink")
        except Unresolved:
            return
        if kind == "rename":
            target = run.symlinks.pop(oldAt.path, None)
            if target is not None:
                run.symlinks[newAt.path] = target
            # Everything below the old name moved with it.
            prefix = oldAt.path + b"/"
            for k in [k for k in run.symlinks if k.startswith(prefix)]:
                run.symlinks[newAt.path + k[len(oldAt.path):]] = run.symlinks.pop(k)
        run.symlinks.pop(newAt.path, None)
        if oldAt.name != newAt.path:
            run.aliases[newAt.path] = (oldAt.name, kind)

    # ------------------------------------------------------------------
    # Resolution

    def base(self, run: RunPaths, pid: int, tid: int, dfd: int) -> bytes:
        if dfd == AT_FDCWD:
            cwd = self.cwdOf(pid, tid)
            if cwd is None:
                raise Unresolved("working directory of %d unknown" % (pid,))
            return cwd
        target = self.fdOf(pid, dfd)
        if target is None:
            raise Unresolved("directory fd %d of %d unknown" % (dfd, pid))
        return target

    def resolve(self, run: RunPaths, pid: int, tid: int, dfd: int, raw: bytes, final: bool = True) -> Resolution:
        """
        Resolve C{raw} as C{pid} (thread C{tid}) typed it relative to
        C{dfd}.  C{final}: follow a symlink in the last component too (not
        for O_NOFOLLOW-like uses: the new name of a link).
        """
        routes: List[str] = []
        if raw.startswith(b"/"):
            start = b"/"
        else:
            start = self.base(run, pid, tid, dfd)
            if dfd != AT_FDCWD:
                routes.append("dirfd")
        if len(raw) >= 255:
            routes.append("long")
        path = self._walk(run, pid, tid, start, raw, routes, final)
        name = path
        # Aliases: the longest prefix of the path made by a link or rename.
        comps = _components(path)
        for i in range(len(comps), 0, -1):
            prefix = _join(comps[:i])
            alias = run.aliases.get(prefix)
            if alias is not None:
                name = alias[0] + path[len(prefix):]
                routes.append(alias[1])
                break
        seen: List[str] = []
        for r in routes:
            if r not in seen:
                seen.append(r)
        return Resolution(path, name, tuple(seen))

    def _procTarget(self, run: RunPaths, pid: int, tid: int, out: List[bytes]) -> Optional[bytes]:
        """
        The host-side meaning of a C{/proc/<x>/...} or C{/dev/fd/N} route in
        C{out}, when C{out} is one; C{None} otherwise.
        """
        n = len(out)
        if out[0] == b"dev" and n >= 2:
            if n == 2 and out[1] in (b"stdin", b"stdout", b"stderr"):
                return self._fdTarget(pid, {b"stdin": 0, b"stdout": 1, b"stderr": 2}[out[1]])
            if n == 3 and out[1] == b"fd" and _DIGITS.match(out[2]):
                return self._fdTarget(pid, int(out[2]))
            return None
        if out[0] != b"proc" or n < 3:
            return None
        who = out[1]
        rest = out[2:]
        if who == b"self":
            host = pid
        elif who == b"thread-self":
            host = pid
        elif _DIGITS.match(who):
            host = self._hostPid(run, int(who))
            if len(rest) >= 2 and rest[0] == b"task" and _DIGITS.match(rest[1]):
                rest = rest[2:]
        else:
            return None
        if not rest:
            return None
        if rest == [b"root"]:
            return b"/"
        if rest == [b"cwd"]:
            cwd = self.cwdOf(host)
            if cwd is None:
                raise Unresolved("working directory of %d unknown" % (host,))
            return cwd
        if rest == [b"exe"]:
            exe = self._fs.readlink("/proc/%d/exe" % (host,))
            if exe is None:
                raise Unresolved("executable of %d unknown" % (host,))
            return exe
        if len(rest) == 2 and rest[0] == b"fd" and _DIGITS.match(rest[1]):
            return self._fdTarget(host, int(rest[1]))
        return None

    def _fdTarget(self, pid: int, fd: int) -> bytes:
        target = self.fdOf(pid, fd)
        if target is None:
            raise Unresolved("fd %d of %d unknown" % (fd, pid), harmless=True)
        return target

    def _hostPid(self, run: RunPaths, nspid: int) -> int:
        host = run.nspids.get(nspid)
        if host is not None:
            return host
        for pid in list(run.pids):
            if pid in run.nspids.values():
                continue
            ns = self._fs.nspid(pid)
            if ns is not None:
                run.nspids[ns] = pid
        host = run.nspids.get(nspid)
        if host is None:
            raise Unresolved("pid %d of the container unknown" % (nspid,))
        return host

    def _fsLink(self, run: RunPaths, pid: int, cand: bytes) -> Optional[bytes]:
        if cand in run.cache:
            return run.cache[cand]
        self.fsLookups += 1
        target = None
        known = False
        for p in (pid, run.rootPid, *sorted(run.pids)[:4]):
            if not p:
                continue
            ok, target = self._fs.linkIn(p, cand)
            if ok and (target is not None or self._fs.alive(p)):
                known = True
                break
        if not known:
            return None
        if len(run.cache) >= _CACHE_MAX:
            run.cache.clear()
        run.cache[cand] = target
        return target

    def _walk(self, run: RunPaths, pid: int, tid: int, start: bytes, raw: bytes, routes: List[str], final: bool) -> bytes:
        out: List[bytes] = [] if raw.startswith(b"/") else _components(start)
        todo: List[bytes] = _components(raw)
        # Components are taken from the end of a reversed list.
        todo.reverse()
        expansions = 0
        while todo:
            comp = todo.pop()
            if comp == b"..":
                if out:
                    out.pop()
                continue
            out.append(comp)
            more = bool(todo)
            target = self._procTarget(run, pid, tid, out)
            if target is not None:
                expansions += 1
                if expansions > MAX_LINKS:
                    raise Unresolved("too many levels of links")
                routes.append("proc")
                out = []
                todo.extend(reversed(_components(target)))
                continue
            if not more and not final:
                break
            cand = _join(out)
            link = run.symlinks.get(cand)
            if link is None and out[0] != b"proc":
                # procfs links would resolve as the sensor, not the process.
                link = self._fsLink(run, pid, cand)
            if link is None:
                continue
            routes.append("symlink")
            expansions += 1
            if expansions > MAX_LINKS:
                raise Unresolved("too many levels of links")
            out.pop()
            if link.startswith(b"/"):
                out = []
            todo.extend(reversed(_components(link)))
        return _join(out)
