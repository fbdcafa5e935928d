# -*- test-case-name: tests.runner.test_sandbox -*-
"""
The life of the install, read from the host: a sandbox's processes (host
pids) from C{/proc} and its cgroup, the exit status its init recorded, the
OOM kills; L{_thd_snapshot} takes one L{LifeSnapshot} on a pool thread.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, List, Optional, Tuple

import attrs

from fangs.runner.containerspec import INSTALL_STATUS

def processStartTime(pid: int) -> str:
    """
    Field 22 of C{/proc/<pid>/stat} (start time in clock ticks since boot),
    which with the pid identifies a process across pid reuse; "" if gone.
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""



@attrs.frozen
class ProcessInfo:
    """
    A live process of a sandbox, as the host's C{/proc} shows it (host pids).
    """

    pid: int
    ppid: int
    uid: int
    gid: int
    comm: str
    argv: Tuple[str, ...]
    exe: str
    startTicks: int


@attrs.frozen
class LifeSnapshot:
    """
    One look at a running sandbox.

    @ivar installExit: the exit status the init recorded, C{None} while the
        install runs (or when the record is unreadable).
    @ivar installExitedWallNs: when it was recorded (the file's mtime, wall
        clock ns), 0 if unknown.
    @ivar installExitedMonoNs: the same moment on the monotonic clock the
        sensor's C{TsNs} uses, 0 if unknown.
    @ivar processes: live processes of the container other than its init
        (zombies are gone); only listed once the install has exited.
    @ivar monoNs: when the snapshot was taken (monotonic ns).
    @ivar cgroupID: the container cgroup's id (what BPF reports), 0 if gone.
    @ivar initAlive: whether the container's init still runs.
    @ivar oomKills: processes of the container the kernel's OOM killer
        ended (the container itself survives them: its init is small).
    """

    installExit: Optional[int]
    installExitedWallNs: int
    installExitedMonoNs: int
    processes: Tuple[ProcessInfo, ...]
    monoNs: int
    cgroupID: int = 0
    initAlive: bool = True
    oomKills: int = 0


def _readSmall(path: str, limit: int = 65536) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def readProcess(pid: int, proc: str = "/proc") -> Optional[ProcessInfo]:
    """
    L{ProcessInfo} of C{pid}, or C{None} when it is gone or a zombie.
    """
    raw = _readSmall("%s/%d/stat" % (proc, pid))
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        state, ppid, startTicks = fields[0], int(fields[1]), int(fields[19])
    except (ValueError, IndexError):
        return None
    if state in ("Z", "X", "x"):
        return None
    uid = gid = -1
    status = _readSmall("%s/%d/status" % (proc, pid)) or b""
    for line in status.decode("utf-8", "replace").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        elif line.startswith("Gid:"):
            gid = int(line.split()[1])
    cmdline = _readSmall("%s/%d/cmdline" % (proc, pid)) or b""
    argv = tuple(a.decode("utf-8", "replace") for a in cmdline.rstrip(b"\0").split(b"\0")) if cmdline else ()
    try:
        exe = os.readlink("%s/%d/exe" % (proc, pid))
    except OSError:
        exe = ""
    return ProcessInfo(pid=pid, ppid=ppid, uid=uid, gid=gid, comm=comm, argv=argv, exe=exe, startTicks=startTicks)


def cgroupProcs(cgroupDir: str) -> List[int]:
    """
    Every pid in the cgroup C{cgroupDir} and its descendants.
    """
    pids: List[int] = []
    for dirpath, _dirs, files in os.walk(cgroupDir):
        if "cgroup.procs" in files:
            raw = _readSmall(os.path.join(dirpath, "cgroup.procs"), 1 << 22) or b""
            pids.extend(int(x) for x in raw.split() if x.isdigit())
    return sorted(set(pids))


def readInstallStatus(rootPid: int, proc: str = "/proc") -> Tuple[Optional[int], int]:
    """
    The install's exit status recorded by the init inside the container
    (through the init's root, never following a symlink the package may
    have put there) and the record's mtime; C{(None, 0)} if there is none.
    """
    path = "%s/%d/root%s" % (proc, rootPid, INSTALL_STATUS)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, 0
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not text.isdigit():
        return None, 0
    return int(text), st.st_mtime_ns


def oomKills(cgroupDir: str, memoryDir: str = "") -> int:
    """
    How many processes the OOM killer ended in the cgroup: C{oom_kill} of
    cgroup v2's C{memory.events}, else of the v1 memory controller's
    C{memory.oom_control} at C{memoryDir}.
    """
    for path in (os.path.join(cgroupDir, "memory.events"),
                 os.path.join(memoryDir, "memory.oom_control") if memoryDir else ""):
        raw = _readSmall(path) if path else None
        if raw is None:
            continue
        for line in raw.decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
                return int(parts[1])
    return 0


def _thd_snapshot(cgroupDir: str, rootPid: int, monotonicNs: Callable[[], int],
                  wallNs: Callable[[], int], proc: str = "/proc", memoryDir: str = "",
                  detailsAlways: bool = False) -> LifeSnapshot:
    mono, wall = monotonicNs(), wallNs()
    try:
        cgroupID = os.stat(cgroupDir).st_ino
    except OSError:
        cgroupID = 0
    # The record first: once it exists the install's own process has been
    # reaped by the init, so every process listed after it outlived the
    # install.
    code, mtime = readInstallStatus(rootPid, proc)
    pids = cgroupProcs(cgroupDir) if cgroupID else []
    initAlive = rootPid in pids
    processes = []
    # While the install runs its processes are its own: only their number
    # matters then, so their details are only read once it has exited.
    for pid in pids if code is not None or detailsAlways else ():
        if pid == rootPid:
            continue
        info = readProcess(pid, proc)
        if info is not None:
            processes.append(info)
    exitedMono = mono - max(0, wall - mtime) if mtime else 0
    return LifeSnapshot(installExit=code, installExitedWallNs=mtime, installExitedMonoNs=exitedMono,
                        processes=tuple(processes), monoNs=mono, cgroupID=cgroupID, initAlive=initAlive,
                        oomKills=oomKills(cgroupDir, memoryDir))
