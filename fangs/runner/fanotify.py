"""
fanotify inode marks on a run's bait files.

Syscall tracepoints see the path a process typed; a mark on the bait file's
inode sees the open itself, whatever the route: a symlink or hard link made on
the spot, C{/proc/self/root/...}, a file descriptor passed around, or an
io_uring read that passes no syscall tracepoint at all.  Marks are placed from
the host through C{/proc/<container-pid>/root/...}; events carry the host pid
of the accessing process.

One fanotify group per run, so removing the run is closing one fd.  The
group's fd is a reactor reader (L{BaitWatch.doRead}); libc is called through
ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import attrs
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_MARK_ADD = 0x1
FAN_ACCESS = 0x1
FAN_MODIFY = 0x2
FAN_OPEN = 0x20
FAN_OPEN_EXEC = 0x1000
FAN_Q_OVERFLOW = 0x4000
FAN_NOFD = -1
AT_FDCWD = -100

MASK = FAN_OPEN | FAN_ACCESS | FAN_MODIFY | FAN_OPEN_EXEC

_META = struct.Struct("<IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid

_libc: Optional[ctypes.CDLL] = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        lib.fanotify_mark.restype = ctypes.c_int
        _libc = lib
    return _libc


@attrs.frozen
class BaitEvent:
    """
    One access to a marked file: the host pid, the file's in-container path,
    C{"read"} or C{"write"} (or C{"exec"}), and the fanotify mask.
    """

    pid: int
    path: str
    access: str
    mask: int


def parseEvents(buf: bytes) -> List[Tuple[int, int, int]]:
    """
    C{(mask, fd, pid)} of each fanotify_event_metadata in C{buf}.
    """
    out = []
    off = 0
    while off + _META.size <= len(buf):
        eventLen, _vers, _res, _metaLen, mask, fd, pid = _META.unpack_from(buf, off)
        if eventLen < _META.size:
            break
        out.append((mask, fd, pid))
        off += eventLen
    return out


@implementer(IReadDescriptor)
class BaitWatch:
    """
    A fanotify group whose marks are one run's bait files.  C{callback}
    receives a L{BaitEvent} per reported access (an open, or the first read
    or write of a process that never opened the file itself), on the reactor
    thread.  C{overflows} counts events the kernel's queue lost.
    """

    def __init__(self, callback: Callable[[BaitEvent], None]) -> None:
        self._callback = callback
        fd = libc().fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_CLASS_NOTIF, os.O_RDONLY | os.O_LARGEFILE)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, "fanotify_init: " + os.strerror(e))
        self._fd = fd
        self._inodes: Dict[Tuple[int, int], str] = {}
        self._seen: Set[Tuple[int, Tuple[int, int], str]] = set()
        self.overflows = 0
        self.events = 0

    def mark(self, rootPid: int, paths: Sequence[str]) -> List[str]:
        """
        Mark each in-container path of the container whose init is
        C{rootPid}; returns the paths that could not be marked.
        """
        missing = []
        for path in paths:
            host = "/proc/%d/root/%s" % (rootPid, path.lstrip("/"))
            try:
                st = os.stat(host)
            except OSError:
                missing.append(path)
                continue
            if libc().fanotify_mark(self._fd, FAN_MARK_ADD, MASK, AT_FDCWD, host.encode()) != 0:
                e = ctypes.get_errno()
                log.warn("fanotify_mark {path}: {error}", path=path, error=os.strerror(e))
                missing.append(path)
                continue
            self._inodes[(st.st_dev, st.st_ino)] = path
        return missing

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def doRead(self) -> None:
        while self._fd >= 0:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return None
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                log.warn("fanotify read: {error}", error=str(e))
                return None
            if not buf:
                return None
            for mask, fd, pid in parseEvents(buf):
                try:
                    self._one(mask, fd, pid)
                except Exception:
                    log.failure("fanotify event dropped")
                finally:
                    if fd >= 0:
                        os.close(fd)
        return None

    def _one(self, mask: int, fd: int, pid: int) -> None:
        if mask & FAN_Q_OVERFLOW or fd == FAN_NOFD:
            self.overflows += 1
            return
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        path = self._inodes.get(key)
        if path is None:
            try:
                path = os.readlink("/proc/self/fd/%d" % (fd,))
            except OSError:
                path = "?"
        if mask & FAN_OPEN_EXEC:
            access = "exec"
        elif mask & FAN_MODIFY:
            access = "write"
        else:
            access = "read"
        opened = bool(mask & (FAN_OPEN | FAN_OPEN_EXEC))
        # Opens are reported each time; reads and writes once per process
        # and file (a read with no open seen: an inherited fd, io_uring).
        if not opened:
            seenKey = (pid, key, access)
            if seenKey in self._seen or (pid, key, "open") in self._seen:
                if access == "read":
                    return
                if seenKey in self._seen:
                    return
            self._seen.add(seenKey)
        else:
            self._seen.add((pid, key, "open"))
        if len(self._seen) > 65536:
            self._seen.clear()
        self.events += 1
        self._callback(BaitEvent(pid, path, access, mask))

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "fanotify"
