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
C{ring_buffer_consume()}; each record goes to its run's handler.  This module
holds the lifecycle (L{fangs.runner.sensorbpf} compiles and attaches the
programs), the runs' kernel slots and the dispatch; the handlers live in
L{fangs.runner.sensorfiles}, L{fangs.runner.sensornet} and
L{fangs.runner.sensorprocs} (mixins over L{fangs.runner.sensorrun}):

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
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Set, Tuple

from twisted.logger import Logger

from fangs.runner import decode, sensorbpf
from fangs.runner.canary import CanaryMatcher
from fangs.runner.fanotify import BaitWatch
from fangs.runner.fdreader import ConsumingReader
from fangs.runner.resolver import ProcFS, Resolver
from fangs.runner.sensorfiles import FileRecords
from fangs.runner.sensornet import NetworkRecords, Stream
from fangs.runner.sensorprocs import ProcessRecords
from fangs.runner.sensorrun import Sink, WatchedRun
from fangs.wire import RunID, WatchedPath

log = Logger()

MAX_SLOTS = 64  # sensor.c MAX_SLOTS
DEFAULT_RINGBUF_PAGES = 32768  # 128 MiB with 4 KiB pages


class Sensor(FileRecords, NetworkRecords, ProcessRecords):
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
        self._sourcePath = sourcePath or sensorbpf.defaultSourcePath()
        self._cgroupRoot = cgroupRoot
        self._parentName = parentName.strip("/")
        self._ringbufPages = ringbufPages
        self._bpf: Any = None
        self._reader: Optional[ConsumingReader] = None
        self._tables: Dict[str, Any] = {}
        self._runs: Dict[RunID, WatchedRun] = {}
        self._slots: Dict[int, WatchedRun] = {}
        self._freeSlots = list(range(MAX_SLOTS - 1, -1, -1))
        self._finishedDrops: "collections.OrderedDict[RunID, int]" = collections.OrderedDict()
        self._finishedUnresolved: "collections.OrderedDict[RunID, int]" = collections.OrderedDict()
        self._resolver = Resolver(procfs)
        self._procfs = procfs or ProcFS()
        self._now = monotonicNs
        self._streams: Dict[Tuple[int, int], Stream] = {}
        self._pendingExec: Dict[int, Tuple[WatchedRun, Dict[str, Any]]] = {}
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
        bpf, attached = await sensorbpf.load(self._reactor, self._sourcePath, self._ringbufPages)
        try:
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
            count=attached,
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
        run = WatchedRun(runID, cgroupID, slot, decode.PrefixMatcher(watched), [], sink, CanaryMatcher(dict(canaries or {})))
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

    def _stopBait(self, run: WatchedRun) -> None:
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

    def _forgetPaths(self, run: WatchedRun) -> None:
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

    _handlers: Dict[int, Callable[["Sensor", WatchedRun, Dict[str, Any]], None]] = {
        decode.T_FILE: FileRecords._onFile,
        decode.T_UNLINK: FileRecords._onUnlink,
        decode.T_CHDIR: FileRecords._onChdir,
        decode.T_FCHDIR: FileRecords._onFchdir,
        decode.T_CLOSE: FileRecords._onClose,
        decode.T_DUP: FileRecords._onDup,
        decode.T_MEMFD: FileRecords._onMemfd,
        decode.T_LINK: FileRecords._onLink,
        decode.T_FORK: ProcessRecords._onFork,
        decode.T_EXIT: ProcessRecords._onExit,
        decode.T_EXEC: ProcessRecords._onExec,
        decode.T_EXECDONE: ProcessRecords._onExecDone,
        decode.T_NET: NetworkRecords._onNet,
        decode.T_DGRAM: NetworkRecords._onDatagram,
        decode.T_STREAM: NetworkRecords._onStream,
    }
