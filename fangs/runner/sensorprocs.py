# -*- test-case-name: tests.runner.test_sensor_records -*-
"""
The sensor's process records: forks (the child inherits followed fds),
exits (the process's state here and in the kernel's maps goes), and execs
(of a path, an fd or a memfd, named from the fd table; argv or the binary
completed from /proc once the new image runs).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from twisted.logger import Logger

from fangs.runner import decode
from fangs.runner.resolver import Unresolved
from fangs.runner.sensorrun import RecordHandlers, WatchedRun

log = Logger()


class ProcessRecords(RecordHandlers):
    """
    Handlers of process records (a mixin of L{fangs.runner.sensor.Sensor}).
    """

    def _onFork(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        child = payload["ChildPID"]
        self._resolver.forked(pid, child)
        # The child's copies of followed fds are followed too (from now on).
        table = self._tables.get("fdtrack")
        if table is not None:
            for fd in self._resolver.followedFds(child):
                k = table.Key()
                k.tgid = child
                k.fd = fd
                try:
                    table[k] = table.Leaf(1)
                except Exception:
                    self.stats["fdtrack_full"] += 1
                    self._resolver.unfollow(child, fd)
        run.paths.pids.add(child)
        if child not in run.seen:
            run.seen[child] = payload["CommStr"]
        self._deliver(run, decode.T_FORK, payload)

    def _onExit(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        self._flushExec(run, pid)
        self._deliver(run, decode.T_EXIT, payload)
        run.paths.pids.discard(pid)
        for ns, host in list(run.paths.nspids.items()):
            if host == pid:
                del run.paths.nspids[ns]
        self._forgetProcess(pid)

    def _forgetProcess(self, pid: int) -> None:
        """
        A process ended: its state here and its entries in the kernel's fd
        and socket maps go.
        """
        fds = set(self._resolver.followedFds(pid)) | self._sockets.pop(pid, set())
        self._resolver.exited(pid)
        for key in [k for k in self._streams if k[0] == pid]:
            del self._streams[key]
        for name in ("fdtrack", "sockdest"):
            table = self._tables.get(name)
            if table is None:
                continue
            for fd in fds:
                k = table.Key()
                k.tgid = pid
                k.fd = fd
                try:
                    del table[k]
                except KeyError:
                    pass

    def _sweepKernelMaps(self) -> None:
        """
        Drop the kernel's fd and socket entries of processes that are gone
        (sockets never connected, fds of processes the sensor never heard
        of): a full map would cost the next runs state, counted as drops.
        """
        alive: Dict[int, bool] = {}
        for name in ("fdtrack", "sockdest"):
            table = self._tables.get(name)
            if table is None:
                continue
            try:
                keys = list(table.keys())
            except Exception:
                log.failure("listing the kernel's {name} map failed", name=name)
                continue
            for k in keys:
                tgid = k.tgid
                if tgid not in alive:
                    alive[tgid] = os.path.exists("/proc/%d" % (tgid,))
                if not alive[tgid]:
                    try:
                        del table[k]
                    except KeyError:
                        pass
            self.stats[name + "_entries"] = len(keys)

    def _onExec(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        raw = payload["_bin"]
        dfd = payload["DFD"]
        target: Optional[bytes] = None
        if dfd != decode.AT_FDCWD and not raw:
            # execveat(fd, "", AT_EMPTY_PATH) / fexecve: what the fd is.
            target = self._resolver.fdOf(pid, dfd)
            payload["ExecFD"] = dfd
            if target == b"/":
                # A directory is never executed: the fd was looked up after
                # the new image reused its number (the exec closed it), so
                # what ran is what /proc/<pid>/exe shows.
                target = None
            if target is None:
                # An fd opened before the sensor saw the process (runc's
                # cloned binary, say): what the kernel executed is
                # /proc/<pid>/exe once the new image runs (T_EXECDONE).
                payload["_fdUnknown"] = dfd
        elif dfd != decode.AT_FDCWD or raw.startswith((b"/proc/", b"/dev/fd/")) or (raw and not raw.startswith(b"/")):
            try:
                target = self._resolver.resolve(run.paths, pid, tid, dfd, raw).name
            except Unresolved:
                target = None
            if dfd != decode.AT_FDCWD:
                payload["ExecFD"] = dfd
        if target is not None and target != raw:
            payload["RawBinaryPathStr"] = payload["BinaryPathStr"]
            payload["BinaryPathStr"] = decode.text(target)
        self._flushExec(run, pid)
        if payload.pop("_unreadable", False):
            # Strings not faulted in at the call: completed from /proc once
            # the new image runs (T_EXECDONE), or delivered as they are.
            payload["_argvPending"] = True
        if "_argvPending" in payload or "_fdUnknown" in payload:
            self._pendingExec[pid] = (run, payload)
            return
        self._deliver(run, decode.T_EXEC, payload)

    def _flushExec(self, run: WatchedRun, pid: int, cmdline: Optional[bytes] = None, exe: Optional[bytes] = None) -> None:
        """
        Deliver the exec record waiting for the new image of C{pid}: its
        argv from C{cmdline} and, for an exec of an fd the sensor never saw
        opened, what was executed from C{exe} (C{/proc/<pid>/exe}); without
        them, as it is (an unknown fd is then counted as unresolved).
        """
        pending = self._pendingExec.pop(pid, None)
        if pending is None:
            return
        prun, payload = pending
        if payload.pop("_argvPending", False):
            if cmdline:
                argv = [decode.text(a) for a in cmdline.split(b"\0")[:-1] or cmdline.split(b"\0")]
                payload["ArgvStrs"] = [a[: decode.ARG_CAP - 1] for a in argv[:16]]
                payload["Argc"] = len(payload["ArgvStrs"])
                payload["ArgvTruncated"] = 1 if len(argv) > 16 else 0
                payload["ArgvFrom"] = "proc"
            else:
                payload["ArgvUnreadable"] = True
        fd = payload.pop("_fdUnknown", None)
        if fd is not None:
            if exe and exe != b"/":
                payload["RawBinaryPathStr"] = payload.get("BinaryPathStr", "")
                payload["BinaryPathStr"] = decode.text(exe)
                payload["BinaryFrom"] = "proc"
            elif prun.runID in self._runs:
                self._unresolved(prun, payload, payload.get("_bin", b""), "executed fd %d unknown" % (fd,))
        if prun.runID in self._runs:
            self._deliver(prun, decode.T_EXEC, payload)

    def _onExecDone(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        pending = self._pendingExec.get(pid)
        if pending is None:
            return
        cmdline = exe = None
        if "_argvPending" in pending[1]:
            try:
                with open("/proc/%d/cmdline" % (pid,), "rb") as f:
                    cmdline = f.read(65536)
            except OSError:
                pass
        if "_fdUnknown" in pending[1]:
            exe = self._procfs.readlink("/proc/%d/exe" % (pid,))
        self._flushExec(run, pid, cmdline, exe)
