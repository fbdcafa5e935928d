"""
The eBPF sensor: C{bpf/sensor.c} compiled by BCC, attached to syscall and
sched tracepoints, filtered in the kernel by cgroup, delivering events of each
registered run to that run's sink on the reactor thread.

Kernel side (see the C file): a run is a cgroup directly below the
C{<cgroup2>/fangs} parent; every process in that cgroup's subtree is watched.
Each run owns a slot: its watched prefixes live in a shared LPM trie keyed by
C{(slot, path)}, its ring buffer drops are counted per slot, and it may hold
at most half the ring buffer unconsumed (a flood costs the flooding run).

Userspace side: the ring buffer map's fd is a reactor reader
(L{fangs.runner.fdreader.ConsumingReader}) that drains records with
C{ring_buffer_consume()}.

  - Files: opens arrive at syscall exit with the fd returned.  Those the
    kernel could not judge go through L{fangs.runner.resolver.Resolver}
    (fd tables, links made by the run and on disk, /proc routes, aliases of
    hard links and renames) and are matched again on the canonical path;
    what cannot be resolved is an UNRESOLVED event, counted
    (L{Sensor.unresolvedFor}).  Bait files are also marked with fanotify
    (L{Sensor.watchBaitFiles}).
  - Network: connects (with AF_UNIX paths and TCP Fast Open), datagrams to
    any address (DNS_QUERY when they parse as one, else UDP_SEND), the first
    writes of each connection reassembled into a TLS ClientHello (SNI), a
    plain-HTTP request (HTTP_REQUEST) or DNS over TCP; canaries (the run's
    bait values, L{fangs.runner.canary.CanaryMatcher}) in any of them are
    CANARY_EXFILTRATED events.
  - Processes: EXEC (execveat of an fd or memfd named from the fd table),
    PROCESS_FORK, PROCESS_EXIT, IO_URING (setup attempts, refused or not).
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import attrs
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from fangs.runner import decode
from fangs.runner.canary import CanaryMatcher
from fangs.runner.fanotify import BaitEvent, BaitWatch
from fangs.runner.fdreader import ConsumingReader
from fangs.runner.resolver import ProcFS, Resolution, Resolver, RunPaths, Unresolved
from fangs.wire import RunID, WatchedPath

log = Logger()

MAX_SLOTS = 64  # sensor.c MAX_SLOTS
DEFAULT_RINGBUF_PAGES = 32768  # 128 MiB with 4 KiB pages
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
    ("syscalls:sys_exit_creat", "tp_exit_creat", False),
    ("syscalls:sys_enter_close", "tp_close", True),
    ("syscalls:sys_enter_close_range", "tp_close_range", False),
    ("syscalls:sys_enter_dup", "tp_dup", True),
    ("syscalls:sys_enter_dup2", "tp_dup2", False),
    ("syscalls:sys_enter_dup3", "tp_dup3", True),
    ("syscalls:sys_enter_fcntl", "tp_fcntl", True),
    ("syscalls:sys_exit_dup", "tp_exit_dup", True),
    ("syscalls:sys_exit_dup2", "tp_exit_dup2", False),
    ("syscalls:sys_exit_dup3", "tp_exit_dup3", True),
    ("syscalls:sys_exit_fcntl", "tp_exit_fcntl", True),
    ("syscalls:sys_enter_memfd_create", "tp_memfd", False),
    ("syscalls:sys_exit_memfd_create", "tp_exit_memfd", False),
    ("syscalls:sys_enter_symlink", "tp_symlink", False),
    ("syscalls:sys_enter_symlinkat", "tp_symlinkat", True),
    ("syscalls:sys_enter_link", "tp_link", False),
    ("syscalls:sys_enter_linkat", "tp_linkat", True),
    ("syscalls:sys_enter_rename", "tp_rename", False),
    ("syscalls:sys_enter_renameat", "tp_renameat", False),
    ("syscalls:sys_enter_renameat2", "tp_renameat2", True),
    ("syscalls:sys_exit_symlink", "tp_exit_symlink", False),
    ("syscalls:sys_exit_symlinkat", "tp_exit_symlinkat", True),
    ("syscalls:sys_exit_link", "tp_exit_link", False),
    ("syscalls:sys_exit_linkat", "tp_exit_linkat", True),
    ("syscalls:sys_exit_rename", "tp_exit_rename", False),
    ("syscalls:sys_exit_renameat", "tp_exit_renameat", False),
    ("syscalls:sys_exit_renameat2", "tp_exit_renameat2", True),
    ("syscalls:sys_enter_unlink", "tp_unlink", False),
    ("syscalls:sys_enter_unlinkat", "tp_unlinkat", True),
    ("syscalls:sys_enter_rmdir", "tp_rmdir", False),
    ("syscalls:sys_exit_unlink", "tp_exit_unlink", False),
    ("syscalls:sys_exit_unlinkat", "tp_exit_unlinkat", True),
    ("syscalls:sys_exit_rmdir", "tp_exit_rmdir", False),
    ("syscalls:sys_enter_chdir", "tp_enter_chdir", True),
    ("syscalls:sys_exit_chdir", "tp_exit_chdir", True),
    ("syscalls:sys_enter_fchdir", "tp_enter_fchdir", False),
    ("syscalls:sys_exit_fchdir", "tp_exit_fchdir", False),
    ("syscalls:sys_enter_clone", "tp_clone", False),
    ("syscalls:sys_enter_clone3", "tp_clone3", False),
    ("sched:sched_process_fork", "tp_fork", True),
    ("sched:sched_process_exec", "tp_exec_done", False),
    ("syscalls:sys_enter_exit_group", "tp_exit_group", False),
    ("sched:sched_process_exit", "tp_exit", True),
    ("syscalls:sys_enter_execve", "tp_execve", True),
    ("syscalls:sys_enter_execveat", "tp_execveat", False),
    ("syscalls:sys_exit_io_uring_setup", "tp_exit_io_uring_setup", False),
    ("syscalls:sys_enter_socket", "tp_socket", True),
    ("syscalls:sys_exit_socket", "tp_exit_socket", True),
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


#: How a file was reached, most telling first (one goes into C{Route}).
_ROUTE_ORDER = ("hardlink", "rename", "symlink", "proc", "dirfd", "fd", "long")
_STREAM_CAP = 16384
#: Links (symlinks, hard links, renames) one run may make before the rest are
#: reported unresolved instead of followed.
_MAX_LINKS = 200_000
_STREAM_WRITES = 8  # sensor.c STREAM_WRITES
_MAX_STREAMS = 4096


@attrs.define
class _Stream:
    """
    The first bytes written on one connection, reassembled.
    """

    family: int
    ip: str
    port: int
    buf: bytearray = attrs.Factory(bytearray)
    writes: int = 0
    kind: str = ""
    reported: bool = False
    canaries: Set[str] = attrs.Factory(set)
    #: plain HTTP: offset of the request being parsed, requests reported, last Host
    offset: int = 0
    requests: Set[int] = attrs.Factory(set)
    host: str = ""


@attrs.define
class _Run:
    runID: RunID
    cgroupID: int
    slot: int
    matcher: decode.PrefixMatcher
    lpmKeys: List[bytes]
    sink: Sink
    canary: CanaryMatcher
    paths: RunPaths = attrs.Factory(RunPaths)
    outside: bool = False
    delivered: int = 0
    unresolved: int = 0
    consumed: int = 0
    #: every tgid seen in this run's records (bounded), for fanotify events
    seen: "collections.OrderedDict[int, str]" = attrs.Factory(collections.OrderedDict)
    bait: Any = None


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
        procfs: Optional[ProcFS] = None,
        monotonicNs: Callable[[], int] = time.monotonic_ns,
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
        self._finishedUnresolved: "collections.OrderedDict[RunID, int]" = collections.OrderedDict()
        self._resolver = Resolver(procfs)
        self._procfs = procfs or ProcFS()
        self._now = monotonicNs
        self._streams: Dict[Tuple[int, int], _Stream] = {}
        self._pendingExec: Dict[int, Tuple[_Run, Dict[str, Any]]] = {}
        self._sockets: Dict[int, Set[int]] = {}
        self._tlsSeen: Dict[Tuple[int, str], Tuple[int, str]] = {}
        self._consuming = False
        self._consumedDirty: Set[int] = set()
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
            for name in ("config", "runs", "paths", "drops", "events", "produced", "consumed", "sockdest", "fdtrack"):
                self._tables[name] = bpf[name]
            cfg = self._tables["config"]
            leaf = cfg.Leaf()
            leaf.parent_id = self.parentCgroupID
            leaf.parent_level = level
            leaf.others = 0
            # One run may hold at most half the ring buffer unconsumed.
            leaf.quota = self._ringbufPages * 4096 // 2
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
        for run in list(self._runs.values()):
            self._stopBait(run)
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

    def addRun(
        self,
        runID: RunID,
        cgroupID: int,
        watchedPaths: Sequence[WatchedPath],
        sink: Sink,
        canaries: Optional[Mapping[str, str]] = None,
    ) -> None:
        """
        Watch the processes of cgroup C{cgroupID} (and its subtree) as run
        C{runID}: their file accesses under C{watchedPaths}, execs, network
        activity, process tree, delivered to C{sink(type, payload)}.
        C{canaries} (bait name -> value): captured payloads holding one
        become CANARY_EXFILTRATED events.
        """
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
        run = _Run(runID, cgroupID, slot, decode.PrefixMatcher(watched), [], sink, CanaryMatcher(dict(canaries or {})))
        run.outside = not self._isParentChild(cgroupID)
        try:
            if run.outside:
                self._adjustOthers(+1)
            drops = self._tables["drops"]
            drops[ctypes.c_int(slot)] = drops.Leaf()
            for name in ("produced", "consumed"):
                self._tables[name][ctypes.c_int(slot)] = ctypes.c_ulonglong(0)
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
            leaf.linked = 0
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
            "run {run_id} watched: cgroup {cgroup}{where}, slot {slot}, {n} prefixes, {c} canaries",
            run_id=runID.hex(),
            cgroup=cgroupID,
            where=" (outside the parent: slow path on)" if run.outside else "",
            slot=slot,
            n=len(watched),
            c=len(canaries or {}),
        )

    def watchBaitFiles(self, runID: RunID, rootPid: int, paths: Sequence[str]) -> None:
        """
        Mark the bait files C{paths} (in-container absolute paths) of a
        running container, through C{/proc/<rootPid>/root}, with fanotify:
        every open or read of them by a process of the run, by whatever
        route (links, /proc, io_uring), becomes a cred-tagged file_access
        event with C{Route: "fanotify"}.  Marks go at L{removeRun}.
        """
        run = self._runs.get(runID)
        if run is None:
            raise KeyError(runID)
        run.paths.rootPid = rootPid
        if run.bait is None:
            run.bait = BaitWatch(lambda ev, r=run: self._onBait(r, ev))
            self._reactor.addReader(run.bait)
        missing = run.bait.mark(rootPid, paths)
        if missing:
            log.warn("run {run_id}: bait files not marked: {missing}", run_id=runID.hex(), missing=", ".join(missing))

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
        if run.bait is not None:
            run.bait.doRead()
        drops = self.dropsFor(runID)
        self._stopBait(run)
        for pid, (prun, _payload) in list(self._pendingExec.items()):
            if prun is run:
                self._flushExec(run, pid)
        del self._runs[runID]
        del self._slots[run.slot]
        self._forgetPaths(run)
        if run.outside:
            self._adjustOthers(-1)
        self._freeSlots.append(run.slot)
        self._finishedDrops[runID] = drops
        self._finishedUnresolved[runID] = run.unresolved
        while len(self._finishedDrops) > 1024:
            self._finishedDrops.popitem(last=False)
        while len(self._finishedUnresolved) > 1024:
            self._finishedUnresolved.popitem(last=False)
        for pid in list(run.seen):
            self._forgetProcess(pid)
        self._sweepKernelMaps()

        log.info(
            "run {run_id} unwatched: {delivered} events, {drops} dropped, {unresolved} unresolved",
            run_id=runID.hex(),
            delivered=run.delivered,
            drops=drops,
            unresolved=run.unresolved,
        )

    def dropsFor(self, runID: RunID) -> int:
        run = self._runs.get(runID)
        if run is None:
            return self._finishedDrops[runID]
        lost = run.bait.overflows if run.bait is not None else 0
        return int(sum(self._tables["drops"][ctypes.c_int(run.slot)])) + lost

    def unresolvedFor(self, runID: RunID) -> int:
        """
        File accesses of the run that could not be resolved to the object
        opened (each also delivered as an UNRESOLVED event).
        """
        run = self._runs.get(runID)
        if run is None:
            return self._finishedUnresolved[runID]
        return run.unresolved

    def _stopBait(self, run: _Run) -> None:
        if run.bait is not None:
            self._reactor.removeReader(run.bait)
            run.bait.close()
            run.bait = None

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
            self._publishConsumed()

    def _publishConsumed(self) -> None:
        if not self._consumedDirty or "consumed" not in self._tables:
            return
        table = self._tables["consumed"]
        for slot in self._consumedDirty:
            run = self._slots.get(slot)
            if run is not None:
                table[ctypes.c_int(slot)] = ctypes.c_ulonglong(run.consumed)
        self._consumedDirty.clear()

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
        slot = payload.pop("_slot")
        run = self._slots.get(slot)
        if run is None or run.runID.raw != payload.pop("_run"):
            self.stats["stray"] += 1
            return
        run.consumed += len(raw)
        self._consumedDirty.add(slot)
        header = payload["Header"]
        pid = header["PID"]
        if pid not in run.seen:
            run.paths.pids.add(pid)
            if len(run.seen) >= 16384:
                run.seen.popitem(last=False)
        run.seen[pid] = payload["CommStr"]
        handler = self._handlers.get(rtype)
        if handler is None:
            self._deliver(run, rtype, payload)
        else:
            handler(self, run, payload)

    def _deliver(self, run: _Run, rtype: int, payload: Dict[str, Any]) -> None:
        for k in [k for k in payload if k.startswith("_")]:
            del payload[k]
        payload["Header"]["Type"] = rtype
        run.delivered += 1
        run.sink(rtype, payload)

    def _derived(self, payload: Dict[str, Any], rtype: int, **fields: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {"Header": dict(payload["Header"], Type=rtype, Tags=0)}
        out.update(fields)
        out["CommStr"] = payload["CommStr"]
        return out

    def _unresolved(self, run: _Run, payload: Dict[str, Any], raw: bytes, reason: str, harmless: bool = False) -> None:
        """
        Report an access that could not be resolved, with the raw string;
        counted (L{unresolvedFor}) unless it provably is harmless.
        """
        if harmless:
            self.stats["unresolved_harmless"] += 1
        else:
            run.unresolved += 1
            self.stats["unresolved"] += 1
        ev = self._derived(
            payload,
            decode.T_UNRESOLVED,
            RawPath=decode.text(raw),
            DFD=payload.get("DFD", decode.AT_FDCWD),
            Reason=reason,
            Flags=payload.get("Flags", 0),
            Ret=payload.get("Ret", 0),
            Harmless=harmless,
        )
        self._deliver(run, decode.T_UNRESOLVED, ev)

    # -- files -----------------------------------------------------------

    def _onFile(self, run: _Run, payload: Dict[str, Any]) -> None:
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
        route = next((r for r in _ROUTE_ORDER if r in routes), "")
        if route:
            payload["Route"] = route
            payload["Routes"] = list(routes)
        payload["PathLen"] = len(name)
        payload["Access"] = "write" if payload["Flags"] & decode.WRITE_FLAGS else "read"
        self._deliver(run, decode.T_FILE, payload)

    def _onUnlink(self, run: _Run, payload: Dict[str, Any]) -> None:
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
        route = next((r for r in _ROUTE_ORDER if r in routes), "")
        if route:
            payload["Route"] = route
            payload["Routes"] = list(routes)
        payload["PathLen"] = len(path)
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

    def _onChdir(self, run: _Run, payload: Dict[str, Any]) -> None:
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        try:
            if payload["_resolve"] & decode.RESOLVE_UNREADABLE:
                raise Unresolved("path unreadable")
            res = self._resolver.resolve(run.paths, pid, tid, decode.AT_FDCWD, payload["_path"])
            self._resolver.setCwd(pid, res.path)
        except Unresolved:
            self._resolver.setCwd(pid, self._procfs.readlink("/proc/%d/task/%d/cwd" % (pid, tid)))

    def _onFchdir(self, run: _Run, payload: Dict[str, Any]) -> None:
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        target = self._resolver.fdOf(pid, payload["_a"])
        if target is None:
            target = self._procfs.readlink("/proc/%d/task/%d/cwd" % (pid, tid))
        self._resolver.setCwd(pid, target)

    def _onClose(self, run: _Run, payload: Dict[str, Any]) -> None:
        self._resolver.closed(payload["Header"]["PID"], payload["_a"], payload["_b"])

    def _onDup(self, run: _Run, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        self._resolver.duped(pid, payload["_a"], payload["_b"])
        if payload["_c"] & 2:
            self._sockets.setdefault(pid, set()).add(payload["_b"])
            old = self._streams.get((pid, payload["_a"]))
            if old is not None:
                self._streams[(pid, payload["_b"])] = old

    def _onMemfd(self, run: _Run, payload: Dict[str, Any]) -> None:
        ret = payload["Ret"]
        if ret >= 0:
            self._resolver.opened(payload["Header"]["PID"], ret, b"memfd:" + payload["_path"], True)

    def _onLink(self, run: _Run, payload: Dict[str, Any]) -> None:
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

    # -- processes -------------------------------------------------------

    def _onFork(self, run: _Run, payload: Dict[str, Any]) -> None:
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

    def _onExit(self, run: _Run, payload: Dict[str, Any]) -> None:
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

    def _onExec(self, run: _Run, payload: Dict[str, Any]) -> None:
        header = payload["Header"]
        pid, tid = header["PID"], header["TID"]
        raw = payload["_bin"]
        dfd = payload["DFD"]
        target: Optional[bytes] = None
        if dfd != decode.AT_FDCWD and not raw:
            # execveat(fd, "", AT_EMPTY_PATH) / fexecve: what the fd is.
            target = self._resolver.fdOf(pid, dfd)
            payload["ExecFD"] = dfd
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

    def _flushExec(self, run: _Run, pid: int, cmdline: Optional[bytes] = None, exe: Optional[bytes] = None) -> None:
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
            if exe:
                payload["RawBinaryPathStr"] = payload.get("BinaryPathStr", "")
                payload["BinaryPathStr"] = decode.text(exe)
                payload["BinaryFrom"] = "proc"
            elif prun.runID in self._runs:
                self._unresolved(prun, payload, payload.get("_bin", b""), "executed fd %d unknown" % (fd,))
        if prun.runID in self._runs:
            self._deliver(prun, decode.T_EXEC, payload)

    def _onExecDone(self, run: _Run, payload: Dict[str, Any]) -> None:
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

    # -- network ---------------------------------------------------------

    def _onNet(self, run: _Run, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        fd = payload["Sockfd"]
        if payload["Family"] in (2, 10):
            self._sockets.setdefault(pid, set()).add(fd)
            self._streams.pop((pid, fd), None)
        self._deliver(run, decode.T_NET, payload)

    def _canary(self, run: _Run, payload: Dict[str, Any], hits: List[str], channel: str, destName: str) -> None:
        if not hits:
            return
        ev = self._derived(
            payload,
            decode.T_CANARY,
            Bait=hits,
            Channel=channel,
            DestIP=payload.get("DestIP", ""),
            DestPort=payload.get("DestPort", 0),
            DestName=destName,
        )
        ev["Header"]["Tags"] = decode.TAGS_CRED
        self._deliver(run, decode.T_CANARY, ev)

    def _onDatagram(self, run: _Run, payload: Dict[str, Any]) -> None:
        data = payload["_data"]
        pid = payload["Header"]["PID"]
        self._sockets.setdefault(pid, set()).add(payload["_fd"])
        dns = decode.dnsPayload(payload["Header"], payload["Family"], payload["DestPort"], payload["DestIP"], data, "udp")
        if dns is not None:
            dns["CommStr"] = payload["CommStr"]
            self._deliver(run, decode.T_DNS, dns)
            if run.canary:
                self._canary(run, payload, run.canary.findInName(dns["QName"]), "dns", dns["QName"])
            return
        ev = self._derived(
            payload,
            decode.T_UDP,
            DestIP=payload["DestIP"],
            DestPort=payload["DestPort"],
            Family=payload["Family"],
            Len=payload["_total"],
            Sockfd=payload["_fd"],
        )
        self._deliver(run, decode.T_UDP, ev)
        if run.canary:
            self._canary(run, payload, run.canary.find(data), "udp", "")

    def _onStream(self, run: _Run, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        fd = payload["_fd"]
        key = (pid, fd)
        self._sockets.setdefault(pid, set()).add(fd)
        st = self._streams.get(key)
        if st is None or (st.ip, st.port) != (payload["DestIP"], payload["DestPort"]):
            if len(self._streams) >= _MAX_STREAMS:
                self._streams.pop(next(iter(self._streams)))
            st = self._streams[key] = _Stream(payload["Family"], payload["DestIP"], payload["DestPort"])
        st.writes += 1
        try:
            self._onStreamBytes(run, payload, st)
        finally:
            if st.writes >= _STREAM_WRITES or (st.kind == "tls" and st.reported):
                # The kernel sends no more of this connection.
                self._streams.pop(key, None)

    def _onStreamBytes(self, run: _Run, payload: Dict[str, Any], st: _Stream) -> None:
        room = _STREAM_CAP - len(st.buf)
        if room > 0:
            st.buf += payload["_data"][:room]
        buf = bytes(st.buf)
        if not st.kind:
            if buf[:1] == b"\x16":
                st.kind = "tls"
            elif decode.looksLikeHTTP(buf):
                st.kind = "http"
            elif decode.tcpDNSMessage(buf) is not None:
                st.kind = "dns"
            elif len(buf) >= 16 or st.writes >= _STREAM_WRITES:
                st.kind = "tcp"
        last = st.writes >= _STREAM_WRITES or len(buf) >= _STREAM_CAP
        if st.kind == "tls":
            if not st.reported:
                # The ClientHello may span several writes and several TLS
                # records: joined before parsing.
                hello, complete = decode.joinHandshake(buf)
                if complete or last:
                    st.reported = True
                    self._emitTLS(run, payload, hello)
            return
        if st.kind == "http":
            host = self._httpRequests(run, payload, st, buf, last)
            if run.canary:
                self._canaryOnce(run, payload, st, run.canary.find(buf), "http", host)
            return
        if st.kind == "dns":
            if not st.reported:
                msg = decode.tcpDNSMessage(buf)
                if msg is not None:
                    st.reported = True
                    dns = decode.dnsPayload(payload["Header"], st.family, st.port, st.ip, msg, "tcp")
                    if dns is not None:
                        dns["CommStr"] = payload["CommStr"]
                        self._deliver(run, decode.T_DNS, dns)
                        if run.canary:
                            self._canaryOnce(run, payload, st, run.canary.findInName(dns["QName"]), "dns", dns["QName"])
            return
        if st.kind == "tcp" and run.canary:
            self._canaryOnce(run, payload, st, run.canary.find(buf), "tcp", "")

    def _httpRequests(self, run: _Run, payload: Dict[str, Any], st: _Stream, buf: bytes, last: bool) -> str:
        """
        Report each request of the captured bytes of a plain-HTTP connection
        once (keep-alive connections carry several); the last Host seen.
        """
        host = st.host
        while True:
            req = decode.parseHTTPRequest(buf[st.offset :])
            if req is None:
                return host
            method, path, host, headers, end = req
            st.host = host
            if end < 0 and not last:
                return host
            if st.offset not in st.requests:
                st.requests.add(st.offset)
                ev = self._derived(
                    payload,
                    decode.T_HTTP,
                    Method=method,
                    Host=host,
                    Path=path,
                    DestIP=st.ip,
                    DestPort=st.port,
                    Family=st.family,
                )
                self._deliver(run, decode.T_HTTP, ev)
            if end < 0:
                return host
            try:
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                return host
            nxt = st.offset + end + max(0, length)
            if nxt >= len(buf) or "chunked" in headers.get("transfer-encoding", ""):
                return host
            st.offset = nxt

    def _canaryOnce(self, run: _Run, payload: Dict[str, Any], st: _Stream, hits: List[str], channel: str, destName: str) -> None:
        new = [h for h in hits if h not in st.canaries]
        st.canaries.update(new)
        self._canary(run, payload, new, channel, destName)

    def _emitTLS(self, run: _Run, payload: Dict[str, Any], hello: bytes) -> None:
        try:
            sni = decode.parseClientHelloSNI(hello)
            err = None
        except ValueError:
            if not decode.isClientHello(hello):
                return
            sni, err = "", {}
        ev = self._derived(
            payload,
            decode.T_TLS,
            Source=3,
            SourceName=decode.SOURCE_NAMES[3],
            SniLen=len(sni.encode("utf-8")),
            RawPayloadLen=len(hello),
            SNI=sni,
            ParseErr=err,
            DuplicateOf="",
            Family=payload["Family"],
            DestPort=payload["DestPort"],
            DestIP=payload["DestIP"],
        )
        self._dedupTLS(ev["Header"], ev)
        self._deliver(run, decode.T_TLS, ev)
        if run.canary and sni:
            self._canary(run, payload, run.canary.findInName(sni), "tls", sni)

    _handlers: Dict[int, Callable[["Sensor", _Run, Dict[str, Any]], None]] = {
        decode.T_FILE: _onFile,
        decode.T_UNLINK: _onUnlink,
        decode.T_CHDIR: _onChdir,
        decode.T_FCHDIR: _onFchdir,
        decode.T_CLOSE: _onClose,
        decode.T_DUP: _onDup,
        decode.T_MEMFD: _onMemfd,
        decode.T_LINK: _onLink,
        decode.T_FORK: _onFork,
        decode.T_EXIT: _onExit,
        decode.T_EXEC: _onExec,
        decode.T_EXECDONE: _onExecDone,
        decode.T_NET: _onNet,
        decode.T_DGRAM: _onDatagram,
        decode.T_STREAM: _onStream,
    }

    # ------------------------------------------------------------------
    # Bait files (fanotify)

    def _onBait(self, run: _Run, ev: BaitEvent) -> None:
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
