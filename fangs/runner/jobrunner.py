# -*- test-case-name: tests.runner.test_service -*-
"""
One job, from start to result (L{JobRunner}): the steps 1 to 5 of
L{fangs.runner.service}, each failure turned into the result's reason:

  - a sandboxed job: its cgroup, its egress (when the runner contains
    egress), the sandbox created with the bait planted, the run registered
    with the sensor before the container starts, the bait files marked,
    the whole life of the install observed (L{JobRunner._observe}: until the
    install exited and every process it left behind ended, the duration ran
    out or a stop was requested; a process that outlived the install is a
    C{detached} event), the container stopped;
  - a C{sensor_only} job: an existing cgroup of this runner's tree watched
    for the job's duration;

then the run's drop and unresolved counts are read, the run leaves the
sensor, its event stream is closed and its cgroup removed.  Posting the
L{ScanResult} is the service's.
"""

from __future__ import annotations

import datetime
import inspect
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
from twisted.internet.defer import CancelledError, Deferred, race
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from fangs.wire import SECOND, TAG_INTERESTING, EventType, Job, ScanResult

log = Logger()

CANCELLED = "cancelled by operator"
SHUTTING_DOWN = "runner shutting down"
TIMED_OUT = "job duration exceeded before the install exited"

#: How often the run's processes are looked at (from the host) while it is
#: observed.
LIFE_POLL_INTERVAL = 0.2

#: Used when a job carries no duration (the orchestrator defaults it to 10 s).
DEFAULT_DURATION = 10.0


@attrs.define(eq=False)
class ActiveRun:
    """
    A job while this runner has it: its stream, cgroup, egress, what the
    observation learned, and the stop asked of it.
    """

    job: Job
    hex: str
    streamer: Any = None
    cgroup: Any = None
    dropped: int = 0
    unresolved: int = 0
    life: Any = None
    notes: List[str] = attrs.field(factory=list)
    egress: Any = None
    reporting: bool = False
    stopReason: Optional[str] = None
    done: Optional[Deferred[None]] = None
    _stopWaiters: List[Deferred[str]] = attrs.field(factory=list)

    def requestStop(self, reason: str) -> None:
        if self.stopReason is None:
            self.stopReason = reason
        waiters, self._stopWaiters = self._stopWaiters, []
        for d in waiters:
            if not d.called:
                d.callback(self.stopReason)

    def waitStop(self) -> Deferred[str]:
        """
        Fires with the stop reason once a stop is requested (at once if one
        already was).
        """
        def cancel(d: Deferred[str]) -> None:
            if d in self._stopWaiters:
                self._stopWaiters.remove(d)

        d: Deferred[str] = Deferred(cancel)
        if self.stopReason is not None:
            d.callback(self.stopReason)
        else:
            self._stopWaiters.append(d)
        return d


@attrs.define(eq=False)
class RunLife:
    """
    What the observation of one sandboxed run learned.
    """

    installExit: Optional[int] = None
    installFinishedAt: Optional[float] = None  # wall clock seconds
    installExitedMonoNs: int = 0
    observationEndedAt: Optional[float] = None
    oomKills: int = 0
    reported: set = attrs.field(factory=set)  # (pid, startTicks) recorded as detached
    alive: Tuple[Any, ...] = ()


def detachedPayload(runID: Any, snapshot: Any, process: Any, life: RunLife) -> Dict[str, Any]:
    """
    The C{detached} event of a process still alive after the install
    exited, in the sensor's payload shape (host pids, monotonic C{TsNs}).
    """
    return {
        "Header": {
            "TsNs": snapshot.monoNs,
            "CgroupID": snapshot.cgroupID,
            "RunID": list(runID.raw),
            "PID": process.pid,
            "TID": process.pid,
            "PPID": process.ppid,
            "UID": process.uid,
            "GID": process.gid,
            "Type": int(EventType.DETACHED),
            "Tags": TAG_INTERESTING,
        },
        "CommStr": process.comm,
        "ArgvStrs": list(process.argv),
        "BinaryPathStr": process.exe,
        "InstallExitedNs": life.installExitedMonoNs,
        "InstallExitCode": life.installExit if life.installExit is not None else -1,
    }


def _accepts(method: Any, name: str) -> bool:
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _when(seconds: Optional[float]) -> Optional[datetime.datetime]:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _shortLogs(text: str, limit: int = 400) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    short = " | ".join(lines)
    if len(short) > limit:
        short = "\N{HORIZONTAL ELLIPSIS}" + short[-(limit - 1):]
    return short


def describeError(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    text = str(e)
    return text if text else e.__class__.__name__


def _duration(job: Job) -> float:
    """
    How long a job is observed, in seconds.
    """
    duration = job.duration / SECOND
    return duration if duration > 0 else DEFAULT_DURATION


def _joined(reason: str, note: str) -> str:
    return reason + "; " + note if reason else note


def cgroupInode(path: str) -> int:
    return os.stat(path).st_ino


class JobRunner:
    """
    Runs jobs on this machine; see the module docstring.

    @param clock: the reactor (only its time is used).
    @param client: an L{OrchestratorClient}, for the runs' event streams.
    @param sensor: the eBPF L{Sensor} (C{addRun}, C{removeRun}, C{dropsFor};
        C{watchBaitFiles}, C{unresolvedFor} and C{addRun}'s C{canaries} are
        used when it has them).
    @param sandbox: the L{DockerSandbox} (C{create}; handles with C{start},
        C{snapshot}, C{wait}, C{logs}, C{stop}).
    @param cgroups: the L{CgroupManager} (C{create}, C{remove}, C{ownedPath}).
    @param streamerFactory: C{(clock, client, runID) -> EventStreamer}.
    @param egress: the L{fangs.runner.egress.EgressManager} (None: sandboxes
        keep the network their job names).
    """

    def __init__(self, clock: IReactorTime, client: Any, sensor: Any, sandbox: Any, cgroups: Any,
                 streamerFactory: Callable[[IReactorTime, Any, Any], Any],
                 cgroupInode: Callable[[str], int] = cgroupInode, streamCloseTimeout: float = 60.0,
                 egress: Any = None) -> None:
        self._clock = clock
        self._client = client
        self._sensor = sensor
        self._sandbox = sandbox
        self._cgroups = cgroups
        self._streamerFactory = streamerFactory
        self._cgroupInode = cgroupInode
        self._streamCloseTimeout = streamCloseTimeout
        self._egress = egress

    async def run(self, run: ActiveRun) -> ScanResult:
        """
        Run the job of C{run} to its result; every failure is a result's
        reason, never an exception (but cancellation).
        """
        job = run.job
        start = self._clock.seconds()
        streamer = self._streamerFactory(self._clock, self._client, job.run_id)
        run.streamer = streamer
        try:
            status, reason = await self._execute(run)
        except CancelledError:
            raise
        except Exception as e:
            log.failure("run {run_id} failed inside the runner", run_id=run.hex)
            status, reason = "failed", "runner error: %s" % (describeError(e),)
        if run.stopReason == SHUTTING_DOWN and status == "ok":
            status, reason = "failed", SHUTTING_DOWN

        try:
            stats = await streamer.close(self._clock.seconds() + self._streamCloseTimeout)
            emitted = stats.eventsEmitted
        except CancelledError:
            raise
        except Exception:
            log.failure("run {run_id}: closing the event stream failed", run_id=run.hex)
            emitted = streamer.stats().eventsEmitted
        if run.cgroup is not None:
            try:
                await self._cgroups.remove(run.cgroup, self._clock)
            except CancelledError:
                raise
            except Exception:
                log.failure("run {run_id}: removing cgroup failed", run_id=run.hex)

        if run.unresolved:
            note = "%d file accesses could not be resolved" % (run.unresolved,)
            reason = _joined(reason, note)
        for note in run.notes:
            reason = _joined(reason, note)
        life = run.life or RunLife()
        result = ScanResult(
            run_id=job.run_id,
            status=status,
            reason=reason,
            events_emitted=emitted,
            events_dropped=run.dropped,
            duration=int(round((self._clock.seconds() - start) * SECOND)),
            install_exit_code=life.installExit,
            install_finished_at=_when(life.installFinishedAt),
            observation_ended_at=_when(life.observationEndedAt),
            events_unresolved=run.unresolved,
        )
        log.info("run {run_id} finished: {status} {reason} ({emitted} events, {dropped} dropped)",
                 run_id=run.hex, status=status, reason=reason, emitted=emitted,
                 dropped=run.dropped)
        return result

    async def _execute(self, run: ActiveRun) -> tuple[str, str]:
        job = run.job
        watched = list(job.watched_paths or [])
        if job.sandbox is None:
            return await self._executeSensorOnly(run, watched)
        try:
            run.cgroup = self._cgroups.create(run.hex)
        except Exception as e:
            return "failed", "create cgroup: %s" % (describeError(e),)
        if self._egress is not None:
            try:
                run.egress = await self._egress.open(job, run.cgroup.cgroupID, run.streamer.add)
            except Exception as e:
                return "failed", "egress: %s" % (describeError(e),)
            run.job = job = run.egress.job
        try:
            return await self._executeContained(run, watched)
        finally:
            if run.egress is not None:
                # After the container is gone: the gateway saw all it will.
                await run.egress.close()

    async def _executeContained(self, run: ActiveRun, watched: List[Any]) -> tuple[str, str]:
        job = run.job
        assert job.sandbox is not None
        if run.stopReason is not None:
            return "failed", run.stopReason
        try:
            handle = await self._sandbox.create(job.run_id, job.sandbox, run.cgroup.relPath)
        except CancelledError:
            raise
        except Exception as e:
            return "failed", "sandbox launch: %s" % (describeError(e),)
        attached = False
        if run.egress is not None:
            # The run's bait values: the gateway looks for them in what it sinkholes.
            run.egress.baitPlanted(dict(handle.canaries))
        try:
            try:
                self._addRun(job.run_id, run.cgroup.cgroupID, watched + list(handle.watchedPaths(watched)),
                             run.streamer.add, dict(handle.canaries))
                attached = True
            except Exception as e:
                return "failed", "sensor attach: %s" % (describeError(e),)
            return await self._executeSandbox(run, handle)
        finally:
            # Every process of the run ends with the container; then the
            # sensor drains what they did.
            try:
                await handle.stop()
            except CancelledError:
                raise
            except Exception:
                log.failure("run {run_id}: stopping container failed", run_id=run.hex)
            if attached:
                self._detach(run)

    def _addRun(self, runID: Any, cgroupID: int, watched: List[Any], sink: Any,
                canaries: Dict[str, str]) -> None:
        if canaries and _accepts(self._sensor.addRun, "canaries"):
            self._sensor.addRun(runID, cgroupID, watched, sink, canaries=canaries)
        else:
            self._sensor.addRun(runID, cgroupID, watched, sink)

    async def _executeSandbox(self, run: ActiveRun, handle: Any) -> tuple[str, str]:
        if run.stopReason is not None:
            return "failed", run.stopReason
        try:
            await handle.start()
        except CancelledError:
            raise
        except Exception as e:
            return "failed", "sandbox launch: %s" % (describeError(e),)
        watch = getattr(self._sensor, "watchBaitFiles", None)
        if watch is not None and handle.pid:
            try:
                watch(run.job.run_id, handle.pid, list(handle.baitPaths))
            except Exception as e:
                log.failure("run {run_id}: marking bait files failed", run_id=run.hex)
                run.notes.append("bait files not watched: %s" % (describeError(e),))
        return await self._observe(run, handle)

    async def _observe(self, run: ActiveRun, handle: Any) -> tuple[str, str]:
        """
        Watch the sandbox until the install exited and every process it
        left behind ended, the container exited, the duration ran out or a
        stop was requested; record every process that outlived the install.
        """
        duration = _duration(run.job)
        deadline = self._clock.seconds() + duration
        life = run.life = RunLife()
        exited: Any = None
        while True:
            snapshot = await self._snapshot(run, handle)
            if snapshot is not None:
                self._absorb(run, life, snapshot)
            if exited is not None:
                break
            if life.installExit is not None and snapshot is not None and not snapshot.processes:
                break
            if run.stopReason is not None:
                life.observationEndedAt = self._clock.seconds()
                return "failed", run.stopReason
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                break
            index, value = await race([
                Deferred.fromCoroutine(self._waitExit(handle)),
                deferLater(self._clock, min(LIFE_POLL_INTERVAL, remaining)),
                run.waitStop(),
            ])
            if index == 0:
                exited = value
        life.observationEndedAt = self._clock.seconds()
        if exited is not None:
            if isinstance(exited, Exception):
                return "failed", "container wait: %s" % (describeError(exited),)
            if life.installExit is None:
                # The init ended with the install (its exit status is the install's).
                life.installExit = exited.exitCode
                life.installFinishedAt = life.observationEndedAt
            oom = exited.oomKilled or (life.oomKills > 0 and life.installExit != 0)
            return await self._verdict(handle, life.installExit, oom, exited.error or "")
        if life.installExit is None:
            return "timeout", TIMED_OUT
        status, reason = await self._verdict(handle, life.installExit, life.oomKills > 0 and life.installExit != 0, "")
        if life.alive:
            note = "observation ended at the job's duration with %d processes still running: %s" % (
                len(life.alive), ", ".join(" ".join(p.argv)[:120] or p.comm for p in life.alive[:5]))
            reason = _joined(reason, note)
        return status, reason

    async def _snapshot(self, run: ActiveRun, handle: Any) -> Any:
        try:
            return await handle.snapshot()
        except CancelledError:
            raise
        except Exception:
            log.failure("run {run_id}: looking at the sandbox's processes failed", run_id=run.hex)
            return None

    def _absorb(self, run: ActiveRun, life: RunLife, snapshot: Any) -> None:
        life.oomKills = max(life.oomKills, getattr(snapshot, "oomKills", 0))
        if life.installExit is None and snapshot.installExit is not None:
            life.installExit = snapshot.installExit
            life.installFinishedAt = (snapshot.installExitedWallNs / 1e9 if snapshot.installExitedWallNs
                                      else self._clock.seconds())
            life.installExitedMonoNs = snapshot.installExitedMonoNs
            log.info("run {run_id}: install exited with {code}; {n} processes still running",
                     run_id=run.hex, code=life.installExit, n=len(snapshot.processes))
        if life.installExit is None:
            return
        life.alive = tuple(snapshot.processes)
        alive = {p.pid for p in snapshot.processes}
        for process in snapshot.processes:
            key = (process.pid, process.startTicks)
            if key in life.reported or process.ppid in alive:
                # Children of a surviving process are its own work (the
                # sensor records their execs), not another escape.
                continue
            life.reported.add(key)
            log.info("run {run_id}: process {pid} outlived the install: {argv}", run_id=run.hex,
                     pid=process.pid, argv=" ".join(process.argv)[:200])
            run.streamer.add(int(EventType.DETACHED), detachedPayload(run.job.run_id, snapshot, process, life))

    async def _verdict(self, handle: Any, exitCode: int, oomKilled: bool, error: str) -> tuple[str, str]:
        if exitCode == 0 and not oomKilled and not error:
            return "ok", ""
        reason = "exit code %d" % (exitCode,)
        if oomKilled:
            reason += " (OOM killed)"
        if error:
            reason += " error: %s" % (error,)
        try:
            tail = _shortLogs(await handle.logs(20))
        except CancelledError:
            raise
        except Exception as e:
            tail = "(logs unavailable: %s)" % (describeError(e),)
        if tail:
            reason += ": " + tail
        return "failed", reason

    @staticmethod
    async def _waitExit(handle: Any) -> Any:
        try:
            return await handle.wait()
        except CancelledError:
            raise
        except Exception as e:
            return e

    async def _executeSensorOnly(self, run: ActiveRun, watched: List[Any]) -> tuple[str, str]:
        """
        Watch an existing cgroup (C{cgroup_path}) for the job's full duration.
        """
        job = run.job
        if not job.cgroup_path:
            return "failed", "sensor_only job without cgroup_path"
        # Whatever the orchestrator let through: this runner watches only
        # cgroups of its own /fangs/ tree, never another service's.
        path = self._cgroups.ownedPath(job.cgroup_path)
        if path is None:
            return "failed", "cgroup_path %s is not under this runner's own /fangs/ cgroup tree" % (job.cgroup_path[:200],)
        try:
            cgroupID = self._cgroupInode(path)
        except OSError as e:
            return "failed", "resolve cgroup id: %s" % (describeError(e),)
        try:
            self._sensor.addRun(job.run_id, cgroupID, watched, run.streamer.add)
        except Exception as e:
            return "failed", "sensor attach: %s" % (describeError(e),)
        try:
            duration = _duration(job)
            index, value = await race([deferLater(self._clock, duration), run.waitStop()])
            if index == 1:
                return "failed", value
            return "ok", ""
        finally:
            self._detach(run)

    def _detach(self, run: ActiveRun) -> None:
        """
        Take the run's own drop count, then take it out of the sensor (which
        drains its pending records into the streamer).
        """
        try:
            run.dropped = int(self._sensor.dropsFor(run.job.run_id))
        except Exception:
            log.failure("run {run_id}: reading drops failed", run_id=run.hex)
        unresolvedFor = getattr(self._sensor, "unresolvedFor", None)
        if unresolvedFor is not None:
            try:
                run.unresolved = int(unresolvedFor(run.job.run_id))
            except Exception:
                log.failure("run {run_id}: reading unresolved accesses failed", run_id=run.hex)
        try:
            self._sensor.removeRun(run.job.run_id)
        except Exception:
            log.failure("run {run_id}: removing from the sensor failed", run_id=run.hex)
