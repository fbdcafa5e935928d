# -*- test-case-name: tests.runner.test_service -*-
"""
The runner daemon: control-plane loops and the job lifecycle.

L{RunnerService} starts the sensor, reaps containers left over by an earlier
runner process, registers with the orchestrator (retrying with backoff for as
long as it takes: the runner may start before the orchestrator), heartbeats,
and long-polls for jobs, running up to C{maxConcurrent} of them at once.

Each job (L{RunnerService._runJob}) goes through the same steps, each
failure turned into a result rather than an exception:

 1. a per-run cgroup is created; the sandbox is created (not started) with
    that cgroup as its parent, its bait planted in the home of the user it
    runs as;
 2. the run is registered with the sensor I{before} the container starts,
    with the run's own L{EventStreamer} as the sink, the job's watched
    paths plus the bait's (cred-tagged, in the real home) and the bait
    values as canaries; once started, the bait files are marked for the
    sensor's fanotify watch (C{watchBaitFiles}, when the sensor has it);
 3. the whole life of the install is observed (L{RunnerService._observe}):
    until the install has exited I{and} every process it left behind has
    ended, or the job's duration (counted from the moment the container
    runs) is over, or a stop is requested (operator cancel, runner
    shutdown).  Every process still alive after the install exited is
    recorded once as a C{detached} event with its argv;
 4. the container is stopped;
 5. the run's own drop and unresolved counts are read, the run leaves the
    sensor (which drains), the streamer is closed (every event acknowledged
    or counted), the cgroup is removed;
 6. the L{ScanResult} is posted (with the install's exit code, when it
    finished and when observation ended), retried for a few minutes.

A run stopped by the runner's shutdown is reported C{failed}, never C{ok}.
The job's C{grace_period} is no longer waited for: observation ends when the
last process of the run has ended, and a process that outlives the duration
is reported (the result's reason says so) rather than waited for.
"""

from __future__ import annotations

import datetime
import inspect
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, race
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from fangs.runner.client import NotRegistered, OrchestratorError, UnknownRun
from fangs.runner.streamer import EventStreamer
from fangs.wire import (
    PROTO_VERSION,
    SECOND,
    TAG_INTERESTING,
    EventType,
    Heartbeat,
    Job,
    RegistrationAck,
    RunnerRegistration,
    ScanResult,
)

log = Logger()

CANCELLED = "cancelled by operator"
SHUTTING_DOWN = "runner shutting down"
TIMED_OUT = "job duration exceeded before the install exited"

#: How often the run's processes are looked at (from the host) while it is
#: observed.
LIFE_POLL_INTERVAL = 0.2

#: Used when a job carries no duration (the orchestrator defaults it to 10 s).
DEFAULT_DURATION = 10.0
#: Used when the registration ack carries no heartbeat interval.
DEFAULT_HEARTBEAT = 30.0


@attrs.define(eq=False)
class _ActiveRun:
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
class _Life:
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


def detachedPayload(runID: Any, snapshot: Any, process: Any, life: _Life) -> Dict[str, Any]:
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


def _asDeferred(result: Any) -> Deferred[Any]:
    if isinstance(result, Deferred):
        return result
    return Deferred.fromCoroutine(result)


def _shortLogs(text: str, limit: int = 400) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    short = " | ".join(lines)
    if len(short) > limit:
        short = "\N{HORIZONTAL ELLIPSIS}" + short[-(limit - 1):]
    return short


def _cgroupInode(path: str) -> int:
    return os.stat(path).st_ino


class RunnerService(Service):
    """
    The runner's control plane; see the module docstring.

    @param clock: the reactor (only its time is used).
    @param client: an L{OrchestratorClient}.
    @param sensor: the eBPF L{Sensor} (C{start}, C{addRun}, C{removeRun},
        C{dropsFor}, C{stop}; C{watchBaitFiles}, C{unresolvedFor} and
        C{addRun}'s C{canaries} are used when it has them).
    @param sandbox: the L{DockerSandbox} (C{reapStale}, C{create}; handles
        with C{start}, C{snapshot}, C{wait}, C{logs}, C{stop}).
    @param cgroups: the L{CgroupManager} (C{create}, C{remove}).
    @param retryPolicy: C{attempt -> seconds} for every retry loop.
    @param streamerFactory: C{(clock, client, runID) -> EventStreamer}.
    """

    name = "fangs-runner"

    def __init__(self, clock: IReactorTime, client: Any, sensor: Any, sandbox: Any, cgroups: Any,
                 runnerID: str, hostname: str, kernelVersion: str, maxConcurrent: int = 1,
                 capabilities: Sequence[str] = ("sensor", "sandbox.docker", "events_dropped.per_run"),
                 retryPolicy: Optional[Callable[[int], float]] = None,
                 streamerFactory: Optional[Callable[[IReactorTime, Any, Any], Any]] = None,
                 cgroupInode: Callable[[str], int] = _cgroupInode,
                 streamCloseTimeout: float = 60.0, resultRetryWindow: float = 300.0,
                 shutdownTimeout: float = 30.0, egress: Any = None) -> None:
        if maxConcurrent < 1:
            raise ValueError("maxConcurrent must be at least 1")
        self._clock = clock
        self._client = client
        self._sensor = sensor
        self._sandbox = sandbox
        self._cgroups = cgroups
        self.runnerID = runnerID
        self._hostname = hostname
        self._kernelVersion = kernelVersion
        self._maxConcurrent = maxConcurrent
        self._capabilities = list(capabilities)
        self._retryPolicy = retryPolicy or backoffPolicy(initialDelay=1.0, maxDelay=30.0)
        self._streamerFactory = streamerFactory or EventStreamer
        self._cgroupInode = cgroupInode
        self._streamCloseTimeout = streamCloseTimeout
        self._resultRetryWindow = resultRetryWindow
        self._shutdownTimeout = shutdownTimeout
        #: The L{fangs.runner.egress.EgressManager} (None: sandboxes keep
        #: the network their job names, as before).
        self._egress = egress

        self.ack: Optional[RegistrationAck] = None
        self._pollInterval = 0.0
        self._heartbeat: Optional[LoopingCall] = None
        self._heartbeatInterval = 0.0
        self._main: Optional[Deferred[None]] = None
        self._registering: Optional[Deferred[None]] = None
        self._registerWaiters: List[Deferred[None]] = []
        self._slotWaiters: List[Deferred[None]] = []
        self._idleWaiters: List[Deferred[None]] = []
        self._stopping = False
        self.runs: Dict[str, _ActiveRun] = {}

    # -- service lifecycle ---------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = False
        self._main = Deferred.fromCoroutine(self._mainLoop())
        self._main.addErrback(lambda f: log.failure("runner main loop failed", f))

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self._stopping = True
        log.info("runner {runner_id} draining: {n} runs to stop", runner_id=self.runnerID,
                 n=len(self.runs))
        for d in (self._main, self._registering):
            if d is not None and not d.called:
                d.cancel()
        for run in list(self.runs.values()):
            run.requestStop(SHUTTING_DOWN)
        self._wake(self._slotWaiters)
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        if self.runs:
            waiter: Deferred[None] = Deferred()
            self._idleWaiters.append(waiter)
            waiter.addTimeout(self._shutdownTimeout, self._clock)
            try:
                await waiter
            except Exception:
                log.error("runs {runs} still reporting after {timeout}s; abandoning them",
                          runs=sorted(self.runs), timeout=self._shutdownTimeout)
                for run in list(self.runs.values()):
                    if run.done is not None and not run.done.called:
                        run.done.cancel()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        try:
            self._sensor.stop()
        except Exception:
            log.failure("stopping the sensor failed")

    async def _mainLoop(self) -> None:
        try:
            try:
                await self._sensor.start()
            except Exception:
                log.failure("the sensor did not start; this runner will not take jobs")
                return
            try:
                reaped = await self._sandbox.reapStale()
                if reaped:
                    log.info("removed {n} stale sandbox containers", n=reaped)
            except Exception:
                log.failure("reaping stale sandbox containers failed")
            if self._egress is not None:
                try:
                    await self._egress.reapStale()
                except Exception:
                    log.failure("reaping stale egress networks failed")
            await self._ensureRegistered()
            await self._pollLoop()
        except CancelledError:
            pass

    # -- registration and heartbeat ----------------------------------------

    async def _ensureRegistered(self) -> None:
        """
        Register (once, however many callers ask at the same time), retrying
        with backoff until the orchestrator accepts us or we stop.
        """
        if self._stopping:
            return
        waiter: Deferred[None] = Deferred()
        self._registerWaiters.append(waiter)
        if self._registering is None:
            d = Deferred.fromCoroutine(self._registerUntilDone())
            if not d.called:
                self._registering = d
            d.addBoth(self._registrationEnded)
        await waiter

    def _registrationEnded(self, result: Any) -> None:
        self._registering = None
        if isinstance(result, Failure) and not result.check(CancelledError):
            log.failure("registration failed", result)
        self._wake(self._registerWaiters)

    async def _registerUntilDone(self) -> None:
        registration = RunnerRegistration(
            runner_id=self.runnerID,
            hostname=self._hostname,
            capabilities=self._capabilities,
            kernel_version=self._kernelVersion,
            proto_version=PROTO_VERSION,
        )
        attempt = 0
        while not self._stopping:
            try:
                ack = await self._client.register(registration)
            except CancelledError:
                raise
            except Exception as e:
                delay = self._retryPolicy(attempt)
                attempt += 1
                log.warn("registering runner {runner_id} failed ({error}); retrying in "
                         "{delay:.1f}s", runner_id=self.runnerID, error=_describe(e), delay=delay)
                await deferLater(self._clock, delay)
                continue
            self._applyAck(ack)
            log.info("runner {runner_id} registered with {orchestrator}",
                     runner_id=self.runnerID, orchestrator=ack.orchestrator_id)
            return

    def _applyAck(self, ack: RegistrationAck) -> None:
        self.ack = ack
        self._pollInterval = max(0.0, ack.job_poll_interval / SECOND)
        interval = ack.heartbeat_interval / SECOND
        if interval <= 0:
            interval = DEFAULT_HEARTBEAT
        if self._heartbeat is not None and self._heartbeat.running:
            if interval == self._heartbeatInterval:
                return
            self._heartbeat.stop()
        self._heartbeatInterval = interval
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._clock
        # Beat at once: after a restart, the orchestrator learns right away
        # which runs this runner no longer has (they are lost).
        self._heartbeat.start(interval, now=True).addErrback(
            lambda f: log.failure("heartbeat loop stopped", f))

    def _beat(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._sendHeartbeat())

    def heartbeatBody(self) -> Heartbeat:
        active = list(self.runs)
        if self._stopping:
            status = "draining"
        elif active:
            status = "running"
        else:
            status = "idle"
        queued = 0
        for run in self.runs.values():
            if run.streamer is not None:
                queued += run.streamer.unacked
        return Heartbeat(
            runner_id=self.runnerID,
            active_run_id=active[0] if active else "",
            status=status,
            events_queued=queued,
            active_run_ids=active,
        )

    async def _sendHeartbeat(self) -> None:
        try:
            ack = await self._client.heartbeat(self.runnerID, self.heartbeatBody())
        except NotRegistered:
            self._reregister("heartbeat answered 404")
            return
        except Exception as e:
            log.warn("heartbeat failed: {error}", error=_describe(e))
            return
        try:
            if ack.unknown_runner or not ack.ok:
                self._reregister("heartbeat says the runner is unknown")
            for runHex in ack.cancel_runs:
                run = self.runs.get(runHex.lower())
                if run is None:
                    log.info("cancel for run {run_id} which is not running here", run_id=runHex)
                    continue
                log.info("run {run_id} cancelled by the orchestrator", run_id=run.hex)
                run.requestStop(CANCELLED)
        except Exception:
            log.failure("handling the heartbeat answer failed")

    def _reregister(self, why: str) -> None:
        if self._stopping or self._registering is not None:
            return
        log.info("registering runner {runner_id} again: {why}", runner_id=self.runnerID, why=why)
        d = Deferred.fromCoroutine(self._ensureRegistered())
        d.addErrback(lambda f: log.failure("re-registration failed", f))

    # -- polling -------------------------------------------------------------

    def _busySlots(self) -> int:
        return sum(1 for run in self.runs.values() if not run.reporting)

    async def _pollLoop(self) -> None:
        failures = 0
        while not self._stopping:
            if self._busySlots() >= self._maxConcurrent:
                waiter: Deferred[None] = Deferred()
                self._slotWaiters.append(waiter)
                await waiter
                continue
            try:
                job = await self._client.poll(self.runnerID)
            except CancelledError:
                raise
            except NotRegistered:
                log.info("orchestrator does not know runner {runner_id}; registering again",
                         runner_id=self.runnerID)
                await self._ensureRegistered()
                continue
            except Exception as e:
                delay = self._retryPolicy(failures)
                failures += 1
                log.warn("polling for jobs failed ({error}); retrying in {delay:.1f}s",
                         error=_describe(e), delay=delay)
                await deferLater(self._clock, delay)
                continue
            failures = 0
            if job is None:
                if self._pollInterval > 0:
                    await deferLater(self._clock, self._pollInterval)
                continue
            self._startJob(job)

    def _startJob(self, job: Job) -> None:
        runHex = job.run_id.hex()
        if runHex in self.runs:
            log.warn("run {run_id} is already running here; ignoring the duplicate",
                     run_id=runHex)
            return
        run = _ActiveRun(job=job, hex=runHex)
        self.runs[runHex] = run
        if self._stopping:
            run.requestStop(SHUTTING_DOWN)
        log.info("run {run_id} started: {kind} {package}@{version}", run_id=runHex,
                 kind=job.kind, package=job.package_name, version=job.version)
        d = Deferred.fromCoroutine(self._runJob(run))
        run.done = d
        d.addErrback(self._runCrashed, run)
        d.addBoth(self._runEnded, run)

    def _runCrashed(self, failure: Any, run: _ActiveRun) -> None:
        if not failure.check(CancelledError):
            log.failure("run {run_id} crashed", failure, run_id=run.hex)

    def _runEnded(self, _: Any, run: _ActiveRun) -> None:
        self.runs.pop(run.hex, None)
        self._wake(self._slotWaiters)
        if not self.runs:
            self._wake(self._idleWaiters)

    @staticmethod
    def _wake(waiters: List[Deferred[None]]) -> None:
        pending = list(waiters)
        del waiters[:]
        for d in pending:
            if not d.called:
                d.callback(None)

    # -- the job lifecycle ---------------------------------------------------

    async def _runJob(self, run: _ActiveRun) -> None:
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
            status, reason = "failed", "runner error: %s" % (_describe(e),)
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
            reason = reason + "; " + note if reason else note
        for note in run.notes:
            reason = reason + "; " + note if reason else note
        life = run.life or _Life()
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
        run.reporting = True
        self._wake(self._slotWaiters)
        await self._reportResult(result)

    async def _execute(self, run: _ActiveRun) -> tuple[str, str]:
        job = run.job
        watched = list(job.watched_paths or [])
        if job.sandbox is None:
            return await self._executeSensorOnly(run, watched)
        try:
            run.cgroup = self._cgroups.create(run.hex)
        except Exception as e:
            return "failed", "create cgroup: %s" % (_describe(e),)
        if self._egress is not None:
            try:
                run.egress = await self._egress.open(job, run.cgroup.cgroupID, run.streamer.add)
            except Exception as e:
                return "failed", "egress: %s" % (_describe(e),)
            run.job = job = run.egress.job
        try:
            return await self._executeContained(run, watched)
        finally:
            if run.egress is not None:
                # After the container is gone: the gateway saw all it will.
                await run.egress.close()

    async def _executeContained(self, run: _ActiveRun, watched: List[Any]) -> tuple[str, str]:
        job = run.job
        assert job.sandbox is not None
        if run.stopReason is not None:
            return "failed", run.stopReason
        try:
            handle = await self._sandbox.create(job.run_id, job.sandbox, run.cgroup.relPath)
        except CancelledError:
            raise
        except Exception as e:
            return "failed", "sandbox launch: %s" % (_describe(e),)
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
                return "failed", "sensor attach: %s" % (_describe(e),)
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

    async def _executeSandbox(self, run: _ActiveRun, handle: Any) -> tuple[str, str]:
        if run.stopReason is not None:
            return "failed", run.stopReason
        try:
            await handle.start()
        except CancelledError:
            raise
        except Exception as e:
            return "failed", "sandbox launch: %s" % (_describe(e),)
        watch = getattr(self._sensor, "watchBaitFiles", None)
        if watch is not None and handle.pid:
            try:
                watch(run.job.run_id, handle.pid, list(handle.baitPaths))
            except Exception as e:
                log.failure("run {run_id}: marking bait files failed", run_id=run.hex)
                run.notes.append("bait files not watched: %s" % (_describe(e),))
        return await self._observe(run, handle)

    async def _observe(self, run: _ActiveRun, handle: Any) -> tuple[str, str]:
        """
        Watch the sandbox until the install exited and every process it
        left behind ended, the container exited, the duration ran out or a
        stop was requested; record every process that outlived the install.
        """
        duration = run.job.duration / SECOND
        if duration <= 0:
            duration = DEFAULT_DURATION
        deadline = self._clock.seconds() + duration
        life = run.life = _Life()
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
                return "failed", "container wait: %s" % (_describe(exited),)
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
            reason = reason + "; " + note if reason else note
        return status, reason

    async def _snapshot(self, run: _ActiveRun, handle: Any) -> Any:
        try:
            return await handle.snapshot()
        except CancelledError:
            raise
        except Exception:
            log.failure("run {run_id}: looking at the sandbox's processes failed", run_id=run.hex)
            return None

    def _absorb(self, run: _ActiveRun, life: _Life, snapshot: Any) -> None:
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
            tail = "(logs unavailable: %s)" % (_describe(e),)
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

    async def _executeSensorOnly(self, run: _ActiveRun, watched: List[Any]) -> tuple[str, str]:
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
            return "failed", "resolve cgroup id: %s" % (_describe(e),)
        try:
            self._sensor.addRun(job.run_id, cgroupID, watched, run.streamer.add)
        except Exception as e:
            return "failed", "sensor attach: %s" % (_describe(e),)
        try:
            duration = job.duration / SECOND
            if duration <= 0:
                duration = DEFAULT_DURATION
            index, value = await race([deferLater(self._clock, duration), run.waitStop()])
            if index == 1:
                return "failed", value
            return "ok", ""
        finally:
            self._detach(run)

    def _detach(self, run: _ActiveRun) -> None:
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

    async def _reportResult(self, result: ScanResult) -> bool:
        """
        Post the result, retrying transient failures for
        C{resultRetryWindow} seconds: the verdict depends on it.
        """
        runHex = result.run_id.hex()
        deadline = self._clock.seconds() + self._resultRetryWindow
        attempt = 0
        while True:
            try:
                await self._client.postResult(result.run_id, result)
            except CancelledError:
                raise
            except UnknownRun as e:
                log.error("run {run_id}: orchestrator does not know the run ({error}); "
                          "result dropped", run_id=runHex, error=str(e))
                return False
            except Exception as e:
                if isinstance(e, OrchestratorError) and e.isPermanent():
                    log.error("run {run_id}: orchestrator refused the result ({error})",
                              run_id=runHex, error=str(e))
                    return False
                delay = self._retryPolicy(attempt)
                attempt += 1
                if self._clock.seconds() + delay > deadline:
                    log.error("run {run_id}: giving up posting the result ({error})",
                              run_id=runHex, error=_describe(e))
                    return False
                log.warn("run {run_id}: posting the result failed ({error}); retrying in "
                         "{delay:.1f}s", run_id=runHex, error=_describe(e), delay=delay)
                await deferLater(self._clock, delay)
                continue
            return True


def _describe(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    text = str(e)
    return text if text else e.__class__.__name__
