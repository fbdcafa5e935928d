# -*- test-case-name: tests.runner.test_service -*-
"""
The runner daemon: control-plane loops and the job lifecycle.

L{RunnerService} starts the sensor, reaps containers left over by an earlier
runner process, registers with the orchestrator (retrying with backoff for as
long as it takes: the runner may start before the orchestrator), heartbeats,
and long-polls for jobs, running up to C{maxConcurrent} of them at once.

Each job (L{fangs.runner.jobrunner.JobRunner.run}) goes through the same
steps, each failure turned into a result rather than an exception:

 1. a per-run cgroup is created; the sandbox is created (not started) with
    that cgroup as its parent, its bait planted in the home of the user it
    runs as;
 2. the run is registered with the sensor I{before} the container starts,
    with the run's own L{EventStreamer} as the sink, the job's watched
    paths plus the bait's (cred-tagged, in the real home) and the bait
    values as canaries; once started, the bait files are marked for the
    sensor's fanotify watch (C{watchBaitFiles}, when the sensor has it);
 3. the whole life of the install is observed
    (L{fangs.runner.jobrunner.JobRunner._observe}): until the install has exited I{and} every process it left behind has
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

from typing import Any, Callable, Dict, List, Optional, Sequence

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from fangs.runner.client import NotRegistered, OrchestratorError, UnknownRun
from fangs.runner.jobrunner import CANCELLED, SHUTTING_DOWN, ActiveRun, JobRunner, cgroupInode, describeError
from fangs.runner.streamer import EventStreamer
from fangs.wire import PROTO_VERSION, SECOND, Heartbeat, Job, RegistrationAck, RunnerRegistration, ScanResult

log = Logger()

#: Used when the registration ack carries no heartbeat interval.
DEFAULT_HEARTBEAT = 30.0


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
    @param egress: the L{fangs.runner.egress.EgressManager} (None: sandboxes
        keep the network their job names).

    Each job runs in the L{JobRunner} (L{fangs.runner.jobrunner}); this
    service decides when, and posts its result.
    """

    name = "fangs-runner"

    def __init__(self, clock: IReactorTime, client: Any, sensor: Any, sandbox: Any, cgroups: Any,
                 runnerID: str, hostname: str, kernelVersion: str, maxConcurrent: int = 1,
                 capabilities: Sequence[str] = ("sensor", "sandbox.docker", "events_dropped.per_run"),
                 retryPolicy: Optional[Callable[[int], float]] = None,
                 streamerFactory: Optional[Callable[[IReactorTime, Any, Any], Any]] = None,
                 cgroupInode: Callable[[str], int] = cgroupInode,
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
        self._resultRetryWindow = resultRetryWindow
        self._shutdownTimeout = shutdownTimeout
        self._egress = egress
        self._jobs = JobRunner(clock, client, sensor, sandbox, cgroups, streamerFactory or EventStreamer,
                               cgroupInode=cgroupInode, streamCloseTimeout=streamCloseTimeout, egress=egress)

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
        self.runs: Dict[str, ActiveRun] = {}

    # -- service lifecycle ----------------------------------------------------

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

    # -- registration and heartbeat -------------------------------------------

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
                         "{delay:.1f}s", runner_id=self.runnerID, error=describeError(e), delay=delay)
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
            log.warn("heartbeat failed: {error}", error=describeError(e))
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

    # -- polling --------------------------------------------------------------

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
                         error=describeError(e), delay=delay)
                await deferLater(self._clock, delay)
                continue
            failures = 0
            if job is None:
                if self._pollInterval > 0:
                    await deferLater(self._clock, self._pollInterval)
                continue
            self._startJob(job)

    # -- jobs -----------------------------------------------------------------

    def _startJob(self, job: Job) -> None:
        runHex = job.run_id.hex()
        if runHex in self.runs:
            log.warn("run {run_id} is already running here; ignoring the duplicate",
                     run_id=runHex)
            return
        run = ActiveRun(job=job, hex=runHex)
        self.runs[runHex] = run
        if self._stopping:
            run.requestStop(SHUTTING_DOWN)
        log.info("run {run_id} started: {kind} {package}@{version}", run_id=runHex,
                 kind=job.kind, package=job.package_name, version=job.version)
        d = Deferred.fromCoroutine(self._runJob(run))
        run.done = d
        d.addErrback(self._runCrashed, run)
        d.addBoth(self._runEnded, run)

    async def _runJob(self, run: ActiveRun) -> None:
        result = await self._jobs.run(run)
        run.reporting = True
        self._wake(self._slotWaiters)
        await self._reportResult(result)

    def _runCrashed(self, failure: Any, run: ActiveRun) -> None:
        if not failure.check(CancelledError):
            log.failure("run {run_id} crashed", failure, run_id=run.hex)

    def _runEnded(self, _: Any, run: ActiveRun) -> None:
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

    # -- results --------------------------------------------------------------

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
                              run_id=runHex, error=describeError(e))
                    return False
                log.warn("run {run_id}: posting the result failed ({error}); retrying in "
                         "{delay:.1f}s", run_id=runHex, error=describeError(e), delay=delay)
                await deferLater(self._clock, delay)
                continue
            return True
