"""
The eBPF sensor: C{bpf/sensor.c} compiled by BCC, attached to syscall and
sched tracepoints, filtered in the kernel by cgroup, delivering events of each
registered run to that run's sink on the reactor thread.

Kernel side (see the C file): a run is a cgroup directly below the
C{<cgroup2>/fangs} parent; every process in that cgroup's subtree is watched.
Each run owns a slot: its watched prefixes live in a shared LPM trie keyed by
C{(slot, path)}, and its ring buffer drops are counted per slot.

Userspace side: the ring buffer map's fd is a reactor reader
(L{fangs.runner.fdreader.ConsumingReader}) that drains records with
C{ring_buffer_consume()}.  Paths the kernel could not judge (relative, or
with C{.}, C{..} or C{//} segments) are resolved here against the process's
working directory, which is followed through chdir/fork/exit records, falling
back to C{/proc/<pid>/cwd} and C{/proc/<pid>/fd/<dfd>}, then canonicalised
and matched again against the run's prefixes: every file event is re-matched
on its canonical path before it is delivered.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attrs
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from fangs.runner import decode
from fangs.runner.fdreader import ConsumingReader
from fangs.wire import RunID, WatchedPath

log = Logger()

MAX_SLOTS = 64  # sensor.c MAX_SLOTS
DEFAULT_RINGBUF_PAGES = 32768  # 128 MiB with 4 KiB pages
_MAX_CWDS = 65536
_TLS_DEDUP_NS = 5_000_000_000

#: (tracepoint, function, mandatory)
TRACEPOINTS: List[Tuple[str, str, bool]] = [
    ("syscalls:sys_enter_openat", "tp_openat", True),
    ("syscalls:sys_enter_openat2", "tp_openat2", False),
    ("syscalls:sys_enter_open", "tp_open", False),
    ("syscalls:sys_enter_creat", "tp_creat", False),
    ("syscalls:sys_exit_openat", "tp_exit_openat", True),
    ("syscalls:sys_exit_openat2", "tp_exit_openat2", False),
    ("syscalls:sys_exit_open", "tp_exit_open", False),
    ("syscalls:sys_enter_chdir", "tp_enter_chdir", True),
    ("syscalls:sys_exit_chdir", "tp_exit_chdir", True),
    ("syscalls:sys_exit_fchdir", "tp_exit_fchdir", False),
    ("sched:sched_process_fork", "tp_fork", True),
    ("sched:sched_process_exec", "tp_exec_done", False),
    ("sched:sched_process_exit", "tp_exit", True),
    ("syscalls:sys_enter_execve", "tp_execve", True),
    ("syscalls:sys_enter_execveat", "tp_execveat", False),
    ("syscalls:sys_enter_connect", "tp_connect", True),
    ("syscalls:sys_enter_write", "tp_write", True),
    ("syscalls:sys_enter_writev", "tp_writev", False),
    ("syscalls:sys_enter_sendto", "tp_sendto", True),
    ("syscalls:sys_enter_sendmsg", "tp_sendmsg", True),
    ("syscalls:sys_enter_sendmmsg", "tp_sendmmsg", False),
]

Sink = Callable[[int, Dict[str, Any]], None]


def defaultSourcePath() -> str:
    """
    C{bpf/sensor.c} of the source tree this package sits in, else the copy
    installed under C{<prefix>/share/fangs/bpf}.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.join(os.path.dirname(os.path.dirname(here)), "bpf", "sensor.c")
    if os.path.exists(repo):
        return repo
    return os.path.join(sys.prefix, "share", "fangs", "bpf", "sensor.c")


def _thd_compile(sourcePath: str, cflags: List[str], functions: List[str]) -> Any:
    """
    Compile and verify every program (seconds of CPU): runs on a pool thread.
    """
    from bcc import BPF

    bpf = BPF(src_file=sourcePath.encode(), cflags=cflags)
    try:
        for name in functions:
            bpf.load_func(name.encode(), BPF.TRACEPOINT)
    except BaseException:
        bpf.cleanup()
        raise
    return bpf


@attrs.define
class _Run:
    runID: RunID
    cgroupID: int
    slot: int
    matcher: decode.PrefixMatcher
    lpmKeys: List[bytes]
    sink: Sink
    outside: bool = False
    delivered: int = 0
    unresolved: int = 0


class Sensor:
    """
    See the module docstring.  Every method runs on the reactor thread.
    """

    def __init__(
        self,
        reactor: Any,
        sourcePath: Optional[str] = None,
        cgroupRoot: str = "/sys/fs/cgroup/unified",
        parentName: str = "fangs",
        ringbufPages: int = DEFAULT_RINGBUF_PAGES,
    ) -> None:
        if ringbufPages <= 0 or ringbufPages & (ringbufPages - 1):
            raise ValueError("ringbufPages must be a power of two")
        self._reactor = reactor
        self._sourcePath = sourcePath or defaultSourcePath()
        self._cgroupRoot = cgroupRoot
        self._parentName = parentName.strip("/")
        self._ringbufPages = ringbufPages
        self._bpf: Any = None
        self._reader: Optional[ConsumingReader] = None
        self._tables: Dict[str, Any] = {}
        self._runs: Dict[RunID, _Run] = {}
        self._slots: Dict[int, _Run] = {}
        self._freeSlots = list(range(MAX_SLOTS - 1, -1, -1))
        self._finishedDrops: "collections.OrderedDict[RunID, int]" = collections.OrderedDict()
        self._cwds: Dict[int, bytes] = {}
        self._dirfds: Dict[int, Dict[int, bytes]] = {}
        self._tlsSeen: Dict[Tuple[int, str], Tuple[int, str]] = {}
        self._consuming = False
        self.parentCgroupID = 0
        #: Counters for diagnostics and the benchmark.
        self.stats: Dict[str, int] = collections.Counter()

    # ------------------------------------------------------------------
    # Lifecycle

    @property
    def parentPath(self) -> str:
        return os.path.join(self._cgroupRoot, self._parentName)

    async def start(self) -> None:
        if self._bpf is not None:
            raise RuntimeError("sensor already started")
        os.makedirs(self.parentPath, mode=0o755, exist_ok=True)
        self.parentCgroupID = os.stat(self.parentPath).st_ino
        level = len(self._parentName.split("/"))
        from bcc import BPF

        wanted = [(tp, fn, must) for tp, fn, must in TRACEPOINTS if BPF.tracepoint_exists(*tp.split(":"))]
        for tp, fn, must in TRACEPOINTS:
            if must and (tp, fn, must) not in wanted:
                raise RuntimeError("mandatory tracepoint %s is missing" % (tp,))
        cflags = ["-DRINGBUF_PAGES=%d" % (self._ringbufPages,), "-Wno-unused-value", "-Wno-pointer-sign"]
        bpf = await deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), _thd_compile, self._sourcePath, cflags, [fn for _tp, fn, _m in wanted]
        )
        try:
            for tp, fn, _must in wanted:
                bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
            for name in ("config", "runs", "paths", "drops", "events"):
                self._tables[name] = bpf[name]
            cfg = self._tables["config"]
            leaf = cfg.Leaf()
            leaf.parent_id = self.parentCgroupID
            leaf.parent_level = level
            leaf.others = 0
            cfg[ctypes.c_int(0)] = leaf
            self._tables["events"].open_ring_buffer(self._onRecord)
        except BaseException:
            bpf.cleanup()
            self._tables.clear()
            raise
        self._bpf = bpf
        self._reader = ConsumingReader(self._tables["events"].map_fd, self._drain, "sensor ringbuf")
        self._reactor.addReader(self._reader)
        log.info(
            "sensor started: {count} tracepoints, parent cgroup {parent} (id {id}), ring buffer {mib} MiB",
            count=len(wanted),
            parent=self.parentPath,
            id=self.parentCgroupID,
            mib=self._ringbufPages * 4096 // (1 << 20),
        )

    def stop(self) -> None:
        if self._reader is not None:
            self._reactor.removeReader(self._reader)
            self._reader = None
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            self._tables.clear()
            bpf.cleanup()
        self._runs.clear()
        self._slots.clear()
        self._freeSlots = list(range(MAX_SLOTS - 1, -1, -1))

    # ------------------------------------------------------------------
    # Runs

    def addRun(self, runID: RunID, cgroupID: int, watchedPaths: Sequence[WatchedPath], sink: Sink) -> None:
        if self._bpf is None:
            raise RuntimeError("sensor not started")
        if runID in self._runs:
            raise ValueError("run %s is already registered" % (runID,))
        if any(r.cgroupID == cgroupID for r in self._runs.values()):
            raise ValueError("cgroup %d is already registered" % (cgroupID,))
        if not self._freeSlots:
            raise RuntimeError("too many concurrent runs (%d)" % (MAX_SLOTS,))
        watched = decode.watchedTuples(watchedPaths)
        if len(watched) != len(watchedPaths):
            log.warn("run {run_id}: ignoring watched paths that are not absolute", run_id=runID.hex())
        slot = self._freeSlots.pop()
        run = _Run(runID, cgroupID, slot, decode.PrefixMatcher(watched), [], sink)
        run.outside = not self._isParentChild(cgroupID)
        try:
            if run.outside:
                self._adjustOthers(+1)
            drops = self._tables["drops"]
            drops[ctypes.c_int(slot)] = drops.Leaf()
            paths = self._tables["paths"]
            for key, tags in decode.kernelEntries(watched).items():
                k = paths.Key()
                k.prefixlen = 32 + 8 * len(key)
                k.slot = slot
                k.path = key
                v = paths.Leaf()
                v.tags = tags
                paths[k] = v
                run.lpmKeys.append(key)
            runs = self._tables["runs"]
            leaf = runs.Leaf()
            leaf.slot = slot
            leaf.run_id = (ctypes.c_ubyte * 16)(*runID.raw)
            self._runs[runID] = run
            self._slots[slot] = run
            runs[runs.Key(cgroupID)] = leaf
        except BaseException:
            self._runs.pop(runID, None)
            self._slots.pop(slot, None)
            self._forgetPaths(run)
            if run.outside:
                self._adjustOthers(-1)
            self._freeSlots.append(slot)
            raise
        log.info(
            "run {run_id} watched: cgroup {cgroup}{where}, slot {slot}, {n} prefixes",
            run_id=runID.hex(),
            cgroup=cgroupID,
            where=" (outside the parent: slow path on)" if run.outside else "",
            slot=slot,
            n=len(watched),
        )

    def removeRun(self, runID: RunID) -> None:
        run = self._runs.get(runID)
        if run is None:
            raise KeyError(runID)
        runs = self._tables["runs"]
        try:
            del runs[runs.Key(run.cgroupID)]
        except KeyError:
            pass
        # Records already in the ring buffer still belong to the run.
        if not self._consuming:
            self._drain()
        drops = self.dropsFor(runID)
        del self._runs[runID]
        del self._slots[run.slot]
        self._forgetPaths(run)
        if run.outside:
            self._adjustOthers(-1)
        self._freeSlots.append(run.slot)
        self._finishedDrops[runID] = drops
        while len(self._finishedDrops) > 1024:
            self._finishedDrops.popitem(last=False)
        log.info(
            "run {run_id} unwatched: {delivered} events, {drops} dropped, {unresolved} unresolved relative paths",
            run_id=runID.hex(),
            delivered=run.delivered,
            drops=drops,
            unresolved=run.unresolved,
        )

    def dropsFor(self, runID: RunID) -> int:
        run = self._runs.get(runID)
        if run is None:
            return self._finishedDrops[runID]
        return int(sum(self._tables["drops"][ctypes.c_int(run.slot)]))

    def _isParentChild(self, cgroupID: int) -> bool:
        """
        Whether the cgroup is a directory right below the parent (the kernel's
        fast path); any other cgroup needs the kernel's ancestor walk.
        """
        try:
            with os.scandir(self.parentPath) as entries:
                return any(e.is_dir(follow_symlinks=False) and e.inode() == cgroupID for e in entries)
        except OSError:
            return False

    def _adjustOthers(self, delta: int) -> None:
        cfg = self._tables["config"]
        leaf = cfg[ctypes.c_int(0)]
        leaf.others = max(0, leaf.others + delta)
        cfg[ctypes.c_int(0)] = leaf

    def _forgetPaths(self, run: _Run) -> None:
        paths = self._tables.get("paths")
        if paths is None:
            return
        for key in run.lpmKeys:
            k = paths.Key()
            k.prefixlen = 32 + 8 * len(key)
            k.slot = run.slot
            k.path = key
            try:
                del paths[k]
            except KeyError:
                pass
        run.lpmKeys = []

    # ------------------------------------------------------------------
    # Records

    def _drain(self) -> None:
        if self._bpf is None or self._consuming:
            return
        self._consuming = True
        try:
            self._bpf.ring_buffer_consume()
        finally:
            self._consuming = False

    def _onRecord(self, ctx: Any, data: Any, size: int) -> int:
        # Called by libbpf inside ring_buffer_consume(), on the reactor
        # thread.  Never raise: BCC would turn some errors into exit().
        try:
            self._dispatch(ctypes.string_at(data, size))
        except Exception:
            self.stats["errors"] += 1
            log.failure("sensor record dropped")
        return 0

    def _dispatch(self, raw: bytes) -> None:
        self.stats["records"] += 1
        try:
            rtype, payload = decode.decodeRecord(raw)
        except decode.DecodeError as e:
            self.stats["decode_errors"] += 1
            log.warn("undecodable sensor record: {error}", error=str(e))
            return
        header = payload["Header"]
        if rtype >= decode.T_CHDIR:
            self._followProcess(rtype, payload)
            return
        run = self._slots.get(payload.pop("_slot"))
        if run is None or run.runID.raw != payload.pop("_run"):
            self.stats["stray"] += 1
            return
        if rtype == decode.T_FILE:
            if not self._finishFile(run, payload):
                return
        elif rtype == decode.T_TLS:
            self._dedupTLS(header, payload)
        run.delivered += 1
        run.sink(rtype, payload)

    def _finishFile(self, run: _Run, payload: Dict[str, Any]) -> bool:
        header = payload["Header"]
        raw = payload.pop("_path")
        resolve = payload.pop("_resolve")
        path = raw
        if resolve:
            base = None
            if not raw.startswith(b"/"):
                base = self._baseFor(header["PID"], header["TID"], payload["DFD"])
                if base is None:
                    run.unresolved += 1
                    self.stats["unresolved"] += 1
                    return False
            path = decode.canonicalPath(raw, base)
        tags = run.matcher.match(path)
        if tags is None:
            return False
        header["Tags"] = tags
        payload["PathName"] = decode.text(path)
        if path != raw:
            payload["RawPathName"] = decode.text(raw)
        payload["PathLen"] = len(path)
        payload["Access"] = "write" if payload["Flags"] & decode.WRITE_FLAGS else "read"
        return True

    # ------------------------------------------------------------------
    # Working directories

    def _readlink(self, link: str) -> Optional[bytes]:
        try:
            target = os.readlink(link.encode())
        except OSError:
            return None
        return target if target.startswith(b"/") else None

    def _cwdOf(self, pid: int) -> Optional[bytes]:
        cwd = self._cwds.get(pid)
        if cwd is None:
            cwd = self._readlink("/proc/%d/cwd" % (pid,))
            if cwd is not None:
                self._remember(pid, cwd)
        return cwd

    def _baseFor(self, pid: int, tid: int, dfd: int) -> Optional[bytes]:
        if dfd == decode.AT_FDCWD:
            return self._cwdOf(pid)
        known = self._dirfds.get(pid, {}).get(dfd)
        if known is not None:
            return known
        target = self._readlink("/proc/%d/fd/%d" % (pid, dfd))
        if target is None or target.endswith(b" (deleted)"):
            return None
        return target

    def _remember(self, pid: int, cwd: bytes) -> None:
        if pid not in self._cwds and len(self._cwds) >= _MAX_CWDS:
            for old in list(self._cwds)[: _MAX_CWDS // 8]:
                del self._cwds[old]
        self._cwds[pid] = cwd

    def _followProcess(self, rtype: int, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        tid = payload["Header"]["TID"]
        if rtype == decode.T_CHDIR:
            arg = payload["_path"]
            if arg.startswith(b"/"):
                self._remember(pid, decode.canonicalPath(arg))
            elif pid in self._cwds:
                self._remember(pid, decode.canonicalPath(arg, self._cwds[pid]))
            else:
                # Unknown before: the process's cwd now is the result.
                cwd = self._readlink("/proc/%d/task/%d/cwd" % (pid, tid))
                if cwd is not None:
                    self._remember(pid, cwd)
        elif rtype == decode.T_FCHDIR:
            cwd = self._readlink("/proc/%d/task/%d/cwd" % (pid, tid))
            if cwd is not None:
                self._remember(pid, cwd)
            else:
                self._cwds.pop(pid, None)
        elif rtype == decode.T_DIRFD:
            raw = payload["_path"]
            base = None
            if not raw.startswith(b"/"):
                base = self._baseFor(pid, tid, payload["DFD"])
                if base is None:
                    return
            fds = self._dirfds.setdefault(pid, {})
            if len(fds) < 4096:
                fds[payload["Flags"]] = decode.canonicalPath(raw, base)
        elif rtype == decode.T_FORK:
            child = payload["_child"]
            cwd = self._cwdOf(pid)
            if cwd is not None:
                self._remember(child, cwd)
            if pid in self._dirfds and child != pid:
                self._dirfds[child] = dict(self._dirfds[pid])
        elif rtype == decode.T_EXIT:
            self._cwds.pop(tid, None)
            self._dirfds.pop(tid, None)

    # ------------------------------------------------------------------
    # TLS

    def _dedupTLS(self, header: Dict[str, Any], payload: Dict[str, Any]) -> None:
        sni = payload["SNI"]
        if not sni:
            return
        now = header["TsNs"]
        key = (header["PID"], sni)
        seen = self._tlsSeen.get(key)
        if seen is not None and now - seen[0] <= _TLS_DEDUP_NS:
            payload["DuplicateOf"] = seen[1]
            return
        if len(self._tlsSeen) > 4096:
            self._tlsSeen = {k: v for k, v in self._tlsSeen.items() if now - v[0] <= _TLS_DEDUP_NS}
        self._tlsSeen[key] = (now, payload["SourceName"])
