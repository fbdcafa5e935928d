# -*- test-case-name: tests.runner.test_sensor_routes -*-
"""
The sensor's file records: opens (judged in the kernel, or resolved through
L{fangs.runner.resolver.Resolver}: fd tables, links made by the run, /proc
routes), removals, links and renames of watched files, and the fd and cwd
bookkeeping the resolver needs (close, dup, memfd, chdir, fchdir); and the
bait files' fanotify events.  What cannot be resolved is an UNRESOLVED event.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from fangs.runner import decode
from fangs.runner.fanotify import BaitEvent
from fangs.runner.resolver import Resolution, Unresolved
from fangs.runner.sensorrun import RecordHandlers, WatchedRun

#: How a file was reached, most telling first (one goes into C{Route}).
_ROUTE_ORDER = ("hardlink", "rename", "symlink", "proc", "dirfd", "fd", "long")
#: Links (symlinks, hard links, renames) one run may make before the rest are
#: reported unresolved instead of followed.
_MAX_LINKS = 200_000


def _setRoute(payload: Dict[str, Any], routes: Tuple[str, ...], name: bytes) -> None:
    """
    Say how the file C{name} was reached (the most telling route first) and
    how long its name is.
    """
    route = next((r for r in _ROUTE_ORDER if r in routes), "")
    if route:
        payload["Route"] = route
        payload["Routes"] = list(routes)
    payload["PathLen"] = len(name)


class FileRecords(RecordHandlers):
    """
    Handlers of file records (a mixin of L{fangs.runner.sensor.Sensor}).
    """

    def _onFile(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        raw = payload.pop("_path")
        resolve = payload.pop("_resolve")
        ret = payload["Ret"]
        dfd = payload["DFD"]
        routes: Tuple[str, ...] = ()
        if not resolve:
            # Judged in the kernel: absolute, canonical, watched.
            path = name = raw
            if ret >= 0:
                self._resolver.opened(pid, ret, path, True)
        else:
            try:
                if resolve & decode.RESOLVE_UNREADABLE:
                    raise Unresolved("path unreadable")
                if payload["Truncated"]:
                    raise Unresolved("path longer than %d bytes" % (decode.PATH_CAP - 1,))
                res = self._resolver.resolve(run.paths, pid, tid, dfd, raw)
            except Unresolved as e:
                res = self._byFd(pid, ret, raw)
                if res is None:
                    if ret >= 0:
                        self._unresolved(run, payload, raw, e.reason, e.harmless)
                    else:
                        self.stats["unresolved_failed"] += 1
                    return
            path, name, routes = res.path, res.name, res.routes
            if ret >= 0:
                self._resolver.opened(pid, ret, path, True)
        tags = run.matcher.match(name)
        candidates = [path]
        if raw.startswith(b"/") and raw != name:
            # A prefix may watch a route itself (/proc/1/root/): the typed
            # path, made canonical without following anything, counts too.
            candidates.append(decode.canonicalPath(raw))
        for other in candidates:
            if other != name:
                more = run.matcher.match(other)
                if more is not None:
                    tags = (tags or 0) | more
        if tags is None:
            return
        header["Tags"] = tags
        payload["PathName"] = decode.text(name)
        if name != raw:
            payload["RawPath"] = payload["RawPathName"] = decode.text(raw)
        if path != name:
            payload["OpenedPath"] = decode.text(path)
        _setRoute(payload, routes, name)
        payload["Access"] = "write" if payload["Flags"] & decode.WRITE_FLAGS else "read"
        self._deliver(run, decode.T_FILE, payload)

    def _onUnlink(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        """
        A watched path removed (unlink, unlinkat, rmdir): a file_access of
        C{Access: "delete"}.  The name is resolved without following its
        last component, as the kernel removes the link, not its target (nor
        the file a hard link made during the run names).
        """
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        raw = payload.pop("_path")
        resolve = payload.pop("_resolve")
        path = raw
        routes: Tuple[str, ...] = ()
        if resolve:
            try:
                if resolve & decode.RESOLVE_UNREADABLE:
                    raise Unresolved("path unreadable")
                res = self._resolver.resolve(run.paths, pid, tid, payload["DFD"], raw, final=False)
            except Unresolved as e:
                self._unresolved(run, payload, raw, "unlink: " + e.reason, e.harmless)
                return
            # The name removed is where it is: removing a hard link to a
            # watched file leaves the file.
            path, routes = res.path, tuple(r for r in res.routes if r not in ("hardlink", "rename"))
        run.paths.symlinks.pop(path, None)
        run.paths.aliases.pop(path, None)
        tags = run.matcher.match(path)
        if tags is None:
            return
        header["Tags"] = tags
        payload["PathName"] = decode.text(path)
        if path != raw:
            payload["RawPath"] = decode.text(raw)
        _setRoute(payload, routes, path)
        payload["Access"] = "delete"
        # A removal modifies what is watched: O_WRONLY|O_TRUNC for readers
        # that judge writes by the open flags.
        payload["Flags"] = 0o1001
        self._deliver(run, decode.T_FILE, payload)

    def _byFd(self, pid: int, ret: int, raw: bytes) -> Optional[Resolution]:
        """
        The kernel's own answer for an open it completed: the returned fd's
        /proc link, while it is still open (and plausibly the same file).
        """
        if ret < 0:
            return None
        live = self._procfs.readlink("/proc/%d/fd/%d" % (pid, ret))
        if live is None:
            return None
        if raw and os.path.basename(raw.rstrip(b"/")) not in (b"", b".", b"..", os.path.basename(live)):
            return None
        return Resolution(live, live, ("fd",))

    def _onChdir(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        try:
            if payload["_resolve"] & decode.RESOLVE_UNREADABLE:
                raise Unresolved("path unreadable")
            res = self._resolver.resolve(run.paths, pid, tid, decode.AT_FDCWD, payload["_path"])
            self._resolver.setCwd(pid, res.path)
        except Unresolved:
            self._resolver.setCwd(pid, self._procfs.readlink("/proc/%d/task/%d/cwd" % (pid, tid)))

    def _onFchdir(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        target = self._resolver.fdOf(pid, payload["_a"])
        if target is None:
            target = self._procfs.readlink("/proc/%d/task/%d/cwd" % (pid, tid))
        self._resolver.setCwd(pid, target)

    def _onClose(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        self._resolver.closed(payload["Header"]["PID"], payload["_a"], payload["_b"])

    def _onDup(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        self._resolver.duped(pid, payload["_a"], payload["_b"])
        if payload["_c"] & 2:
            self._sockets.setdefault(pid, set()).add(payload["_b"])
            old = self._streams.get((pid, payload["_a"]))
            if old is not None:
                self._streams[(pid, payload["_b"])] = old

    def _onMemfd(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        ret = payload["Ret"]
        if ret >= 0:
            self._resolver.opened(payload["Header"]["PID"], ret, b"memfd:" + payload["_path"], True)

    def _onLink(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        kind = decode.LINK_KINDS.get(payload["_kind"], "")
        if len(run.paths.symlinks) + len(run.paths.aliases) >= _MAX_LINKS:
            self._unresolved(run, payload, payload["_new"], "too many links made by the run (%d)" % (_MAX_LINKS,))
            return
        if payload["_truncated"]:
            self._unresolved(run, payload, payload["_new"], "%s paths unreadable or too long" % (kind,))
            return
        self._resolver.linked(run.paths, pid, tid, kind, payload["_olddfd"], payload["_old"], payload["_newdfd"], payload["_new"])
        if kind == "symlink":
            return
        # Linking or moving a watched file is itself an access to it.
        try:
            old = self._resolver.resolve(run.paths, pid, tid, payload["_olddfd"], payload["_old"], final=False)
        except Unresolved:
            return
        # After a rename the old name is gone: the alias table names it.
        name = old.name
        tags = run.matcher.match(name)
        if tags is None and kind == "rename":
            try:
                new = self._resolver.resolve(run.paths, pid, tid, payload["_newdfd"], payload["_new"], final=False)
                name = new.name
                tags = run.matcher.match(name)
            except Unresolved:
                return
        if tags is None:
            return
        header["Tags"] = tags
        ev = self._derived(
            payload,
            decode.T_FILE,
            PathName=decode.text(name),
            RawPath=decode.text(payload["_new"]),
            Route=kind,
            Routes=[kind],
            Access=kind,
            DFD=payload["_newdfd"],
            Flags=0,
            Ret=0,
            PathLen=len(name),
        )
        ev["Header"]["Tags"] = tags
        self._deliver(run, decode.T_FILE, ev)

    # -- bait files (fanotify) -------------------------------------------

    def _onBait(self, run: WatchedRun, ev: BaitEvent) -> None:
        # Fork and exec records of the accessing process may still wait in
        # the ring buffer: take them first.
        if not self._consuming:
            self._drain()
        if run.runID not in self._runs:
            return
        if ev.pid not in run.seen and not self._inCgroup(ev.pid, run.cgroupID):
            self.stats["bait_foreign"] += 1
            return
        comm = self._comm(ev.pid) or run.seen.get(ev.pid, "")
        ppid, uid, gid = self._ids(ev.pid)
        tags = run.matcher.match(ev.path.encode("utf-8", "surrogateescape"))
        header = {
            "TsNs": self._now(),
            "CgroupID": run.cgroupID,
            "RunID": list(run.runID.raw),
            "PID": ev.pid,
            "TID": ev.pid,
            "PPID": ppid,
            "UID": uid,
            "GID": gid,
            "Type": decode.T_FILE,
            "Tags": (tags or 0) | decode.TAGS_CRED,
        }
        payload = {
            "Header": header,
            "PathName": ev.path,
            "PathLen": len(ev.path.encode("utf-8", "surrogateescape")),
            "Access": ev.access,
            "Route": "fanotify",
            "Routes": ["fanotify"],
            "FanotifyMask": ev.mask,
            "DFD": decode.AT_FDCWD,
            "Flags": 0,
            "Ret": 0,
            "CommStr": comm,
        }
        self._deliver(run, decode.T_FILE, payload)

    def _ids(self, pid: int) -> Tuple[int, int, int]:
        """
        C{(ppid, uid, gid)} of a live process, zeros once it is gone.
        """
        ppid = uid = gid = 0
        try:
            with open("/proc/%d/status" % (pid,), "rb") as f:
                for line in f:
                    if line.startswith(b"PPid:"):
                        ppid = int(line.split()[1])
                    elif line.startswith(b"Uid:"):
                        uid = int(line.split()[1])
                    elif line.startswith(b"Gid:"):
                        gid = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return ppid, uid, gid

    def _comm(self, pid: int) -> str:
        try:
            with open("/proc/%d/comm" % (pid,), "rb") as f:
                return decode.text(f.read().strip())
        except OSError:
            return ""

    def _inCgroup(self, pid: int, cgroupID: int) -> bool:
        """
        Whether process C{pid} sits in the cgroup C{cgroupID} or below it.
        """
        try:
            with open("/proc/%d/cgroup" % (pid,), "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return False
        for line in lines:
            if not line.startswith("0::"):
                continue
            rel = line[3:].strip().lstrip("/")
            parts = rel.split("/") if rel else []
            for i in range(len(parts), 0, -1):
                try:
                    if os.stat(os.path.join(self._cgroupRoot, *parts[:i])).st_ino == cgroupID:
                        return True
                except OSError:
                    continue
        return False
