"""
Tests for L{fangs.runner.service.RunnerService}: control-plane loops and the
job lifecycle, with a fake clock, a scripted client and fake sensor,
sandbox and cgroups.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner.client import NotRegistered, OrchestratorError
from fangs.runner.jobrunner import CANCELLED, SHUTTING_DOWN, TIMED_OUT
from fangs.runner.service import RunnerService
from fangs.runner.streamer import EventStreamer
from fangs.wire import SECOND, TAG_INTERESTING, HeartbeatAck, Job, RegistrationAck, SandboxSpec, WatchedPath
from tests.runner.fakes import (
    FakeCgroups,
    FakeClient,
    FakeSandbox,
    FakeSandboxError,
    FakeSensor,
    fakeProcess,
    runID,
)


def makeJob(n: int, duration: float = 60, grace: float = 2, sandbox: bool = True) -> Job:
    return Job(
        run_id=runID(n),
        kind="sandbox_scan" if sandbox else "sensor_only",
        package_name="left-pad",
        version="1.0.%d" % (n,),
        cgroup_path="" if sandbox else "/sys/fs/cgroup/unified/fangs/some-where",
        watched_paths=[WatchedPath("/etc/"), WatchedPath("/etc/shadow", cred_tagged=True)],
        duration=int(duration * SECOND),
        sandbox=SandboxSpec(image="fangs-sandbox/node:20", command=["npm", "install"],
                            grace_period=int(grace * SECOND)) if sandbox else None,
    )


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


class LegacySensor(FakeSensor):
    """
    The sensor before canaries, fanotify bait marks and unresolved counts.
    """

    watchBaitFiles = None  # type: ignore[assignment]
    unresolvedFor = None  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.legacyAdds = 0

    def addRun(self, runID: Any, cgroupID: int, watchedPaths: Any, sink: Any) -> None:  # type: ignore[override]
        self.legacyAdds += 1
        super().addRun(runID, cgroupID, watchedPaths, sink)


class ServiceTestsMixin:
    maxConcurrent = 1

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeClient()
        self.sensor = FakeSensor()
        self.sandbox = FakeSandbox()
        self.cgroups = FakeCgroups()
        self.setUp_service()

    def setUp_service(self) -> None:
        self.service = RunnerService(
            self.clock, self.client, self.sensor, self.sandbox, self.cgroups,
            runnerID="r1", hostname="host-1", kernelVersion="6.1.0",
            maxConcurrent=self.maxConcurrent,
            retryPolicy=lambda attempt: 2.0 ** attempt,
            streamerFactory=lambda clock, client, run: EventStreamer(
                clock, client, run, retryPolicy=lambda attempt: 1.0),
            cgroupInode=lambda path: 4242,
        )

    def calls(self, name: str) -> int:
        return sum(1 for c in self.client.calls if c[0] == name)

    def start(self) -> None:
        self.service.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.service.running:
            d = self.service.stopService()
            self.clock.advance(60)
            self.successResultOf(d)

    def startJob(self, job: Job) -> Any:
        self.client.answerPoll(job)
        return self.sandbox.handles.get(job.run_id.hex())

    def result(self, n: int) -> Any:
        [result] = [r for r in self.client.results if r.run_id == runID(n)]
        return result


class ControlPlaneTests(ServiceTestsMixin, SynchronousTestCase):
    def test_startupOrder(self) -> None:
        self.start()
        self.assertEqual(self.sensor.log[0], ("start",))
        self.assertEqual(self.sandbox.log[0], ("reapStale",))
        [kind, reg] = self.client.calls[0]
        self.assertEqual(kind, "register")
        self.assertEqual((reg.runner_id, reg.hostname, reg.kernel_version, reg.proto_version,
                          reg.capabilities), ("r1", "host-1", "6.1.0", 1,
                                              ["sensor", "sandbox.docker", "events_dropped.per_run"]))
        self.assertEqual(self.client.calls[1], ("heartbeat", "r1"))
        self.assertEqual(self.client.calls[2], ("poll", "r1"))

    def test_registerRetriesWhileOrchestratorDown(self) -> None:
        self.client.registerScript = [ConnectionRefusedError()] * 3
        self.start()
        self.assertEqual(self.calls("register"), 1)
        self.clock.advance(1)
        self.assertEqual(self.calls("register"), 2)
        self.clock.advance(2)
        self.assertEqual(self.calls("register"), 3)
        self.assertEqual(self.calls("poll"), 0)
        self.clock.advance(4)
        self.assertEqual(self.calls("register"), 4)
        self.assertEqual(self.calls("poll"), 1)

    def test_sensorFailureMeansNoRegistration(self) -> None:
        self.sensor.startError = RuntimeError("no BPF")
        self.start()
        self.assertEqual(self.client.calls, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_pollNotRegisteredReregisters(self) -> None:
        self.start()
        self.client.answerPoll(NotRegistered(404, "", "runner not registered"))
        self.assertEqual(self.calls("register"), 2)
        self.assertEqual(self.calls("poll"), 2)

    def test_poll204WaitsPollInterval(self) -> None:
        self.client.ack = RegistrationAck(ok=True, orchestrator_id="o",
                                          job_poll_interval=5 * SECOND,
                                          heartbeat_interval=30 * SECOND)
        self.start()
        self.client.answerPoll(None)
        self.clock.advance(4.9)
        self.assertEqual(self.calls("poll"), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.calls("poll"), 2)

    def test_pollErrorBacksOff(self) -> None:
        self.start()
        self.client.answerPoll(OrchestratorError(500, "", "db down"))
        self.assertEqual(self.calls("poll"), 1)
        self.clock.advance(1)
        self.assertEqual(self.calls("poll"), 2)
        self.client.answerPoll(ConnectionRefusedError())
        self.clock.advance(1.9)
        self.assertEqual(self.calls("poll"), 2)
        self.clock.advance(0.1)
        self.assertEqual(self.calls("poll"), 3)

    def test_heartbeat(self) -> None:
        self.start()
        # One at once (after a restart the orchestrator learns which runs
        # this runner no longer has), then one per interval.
        self.assertEqual(self.calls("heartbeat"), 1)
        hb = self.client.heartbeats[0]
        self.assertEqual((hb.runner_id, hb.status, hb.active_run_id, hb.active_run_ids),
                         ("r1", "idle", "", []))
        self.clock.advance(29.9)
        self.assertEqual(self.calls("heartbeat"), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.calls("heartbeat"), 2)
        self.clock.advance(30)
        self.assertEqual(self.calls("heartbeat"), 3)

    def test_heartbeatUnknownRunnerReregisters(self) -> None:
        self.client.heartbeatScript = [HeartbeatAck(ok=False, unknown_runner=True)]
        self.start()
        self.clock.advance(30)
        self.assertEqual(self.calls("register"), 2)
        self.clock.advance(30)
        self.assertEqual(self.calls("register"), 2)

    def test_heartbeatIntervalFromAck(self) -> None:
        self.client.ack = RegistrationAck(ok=True, orchestrator_id="o", job_poll_interval=0,
                                          heartbeat_interval=10 * SECOND)
        self.start()
        self.clock.advance(10)
        self.assertEqual(self.calls("heartbeat"), 2)

    def test_heartbeatErrorsAreSurvived(self) -> None:
        self.client.heartbeatScript = [ConnectionRefusedError()]
        self.start()
        self.clock.advance(30)
        self.clock.advance(30)
        self.assertEqual(self.calls("heartbeat"), 3)

    def test_stopWhileIdle(self) -> None:
        self.start()
        d = self.service.stopService()
        self.successResultOf(d)
        self.assertTrue(self.sensor.stopped)
        self.assertTrue(self.client.pendingPolls[0].called)  # cancelled


class JobTests(ServiceTestsMixin, SynchronousTestCase):
    def test_happyPath(self) -> None:
        self.start()
        job = makeJob(1)
        handle = self.startJob(job)
        hexID = runID(1).hex()
        cg = self.cgroups.created[0]
        self.assertEqual(self.sandbox.log[-1], ("create", hexID, "/fangs/" + hexID))
        self.assertEqual(self.sensor.log[1], ("addRun", hexID, cg.cgroupID))
        sensorRun = self.sensor.runs[hexID]
        # The job's paths, then the bait's in the sandbox user's real home.
        self.assertEqual(sensorRun.watchedPaths, job.watched_paths + handle.extraWatched)
        self.assertEqual(sensorRun.canaries, handle.canaries)
        self.assertEqual(handle.starts, 1)
        # The bait files are marked once the container runs, through its init.
        self.assertEqual(self.sensor.log[2], ("watchBaitFiles", hexID, handle.pid))
        self.assertEqual(sensorRun.baitWatches, [(handle.pid, handle.baitPaths)])
        self.assertIs(handle.spec, job.sandbox)

        for i in range(5):
            self.sensor.emit(runID(1), 1, {"i": i})
        self.sensor.drops[hexID] = 3
        self.clock.advance(1)
        self.assertEqual(self.calls("poll"), 1)  # one slot, taken
        self.assertEqual(handle.stops, 0)
        handle.installExit(0, wallNs=1_500_000_000)
        self.clock.advance(0.2)  # the next look sees no process left: observation ends
        self.assertEqual(handle.stops, 1)
        result = self.result(1)
        self.assertEqual((result.status, result.reason, result.events_emitted,
                          result.events_dropped), ("ok", "", 5, 3))
        self.assertEqual(result.duration, int(1.2 * SECOND))
        self.assertEqual(result.install_exit_code, 0)
        self.assertEqual(result.install_finished_at, at(1.5))
        self.assertEqual(result.observation_ended_at, at(1.2))
        self.assertEqual(result.events_unresolved, 0)
        self.assertEqual(len(self.client.eventsOf(runID(1))), 5)
        self.assertEqual(self.cgroups.removed, [cg])
        self.assertNotIn(hexID, self.sensor.runs)
        self.assertEqual(self.sensor.log[-3:], [("dropsFor", hexID), ("unresolvedFor", hexID),
                                                ("removeRun", hexID)])
        self.assertEqual(self.calls("poll"), 2)  # the slot is free again
        self.assertEqual(self.service.runs, {})

    def test_noGracePeriodOnceEverythingExited(self) -> None:
        """
        The grace period is not waited for: observation ends when the last
        process ends.  Events drained by removeRun are sent and counted.
        """
        self.start()
        handle = self.startJob(makeJob(1, grace=30))
        self.sensor.emit(runID(1))
        self.sensor.pendingOnRemove[runID(1).hex()] = [(2, {"late": True})]
        handle.installExit(0)
        self.clock.advance(0.2)
        result = self.result(1)
        self.assertEqual((result.status, result.events_emitted), ("ok", 2))
        self.assertEqual(len(self.client.eventsOf(runID(1))), 2)

    def test_detachedProcessObservedUntilItExits(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1, duration=60))
        npm = fakeProcess(50, ("npm", "install"))
        handle.processes = [npm]
        self.clock.advance(1)
        self.assertEqual(self.client.eventsOf(runID(1)), [])  # npm while the install runs is no finding
        child = fakeProcess(51, ("node", "-e", "setTimeout(steal, 3000)"), ppid=1)
        # Its own child is its work, not a second escape.
        handle.processes = [child, fakeProcess(52, ("sleep", "3"), ppid=51)]
        handle.installExit(0, wallNs=int(1.1 * SECOND), monoNs=7 * SECOND)
        handle.monoNs = 8 * SECOND
        self.clock.advance(0.2)
        self.clock.advance(0.2)
        self.clock.advance(3)
        self.assertEqual(handle.stops, 0)  # the detached child still runs: so does the run
        handle.processes = []
        self.clock.advance(0.2)
        self.assertEqual(handle.stops, 1)
        result = self.result(1)
        self.assertEqual((result.status, result.reason, result.install_exit_code), ("ok", "", 0))
        self.assertEqual(result.install_finished_at, at(1.1))
        self.assertEqual(result.observation_ended_at, at(4.6))
        [event] = self.client.eventsOf(runID(1))  # recorded once
        self.assertEqual(event.type, 10)
        p = event.payload
        self.assertEqual(p["ArgvStrs"], ["node", "-e", "setTimeout(steal, 3000)"])
        self.assertEqual(p["BinaryPathStr"], "/usr/bin/node")
        self.assertEqual(p["InstallExitedNs"], 7 * SECOND)
        self.assertEqual(p["InstallExitCode"], 0)
        self.assertEqual(p["CommStr"], "node")
        h = p["Header"]
        self.assertEqual((h["PID"], h["TID"], h["PPID"], h["UID"], h["GID"], h["Type"], h["TsNs"], h["CgroupID"]),
                         (51, 51, 1, 1000, 1000, 10, 8 * SECOND, 77))
        self.assertEqual(bytes(h["RunID"]), runID(1).raw)
        self.assertEqual(h["Tags"] & TAG_INTERESTING, TAG_INTERESTING)

    def test_detachedProcessOutlivesTheDuration(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1, duration=10))
        handle.installExit(0)
        handle.processes = [fakeProcess(60, ("sh", "-c", "sleep 999"))]
        self.clock.pump([0.2] * 49)
        self.assertEqual(handle.stops, 0)
        self.clock.pump([0.2] * 2)
        self.assertEqual(handle.stops, 1)
        result = self.result(1)
        self.assertEqual(result.status, "ok")
        self.assertEqual(result.reason, "observation ended at the job's duration with 1 processes still running:"
                                        " sh -c sleep 999")
        self.assertEqual([e.type for e in self.client.eventsOf(runID(1))], [10])

    def test_nonZeroExit(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1))
        handle.installExit(1)
        self.clock.advance(0.2)
        result = self.result(1)
        self.assertEqual(result.status, "failed")
        self.assertEqual(result.reason, "exit code 1: line 1 | npm ERR! boom")
        self.assertEqual(result.install_exit_code, 1)

    def test_containerExitEndsObservation(self) -> None:
        """
        If the init itself ends (the container exited), its status is the
        install's and observation is over at once.
        """
        self.start()
        handle = self.startJob(makeJob(1))
        self.clock.advance(0.4)
        handle.exit(2)
        result = self.result(1)
        self.assertEqual((result.status, result.reason), ("failed", "exit code 2: line 1 | npm ERR! boom"))
        self.assertEqual(result.install_exit_code, 2)
        self.assertEqual(result.install_finished_at, at(0.4))

    def test_oomKilled(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1))
        handle.logText = ""
        handle.exit(137, oomKilled=True)
        self.assertEqual(self.result(1).reason, "exit code 137 (OOM killed)")

    def test_oomKilledChild(self) -> None:
        """
        The OOM killer ends the install's process, not the container (its
        init is small): the cgroup's OOM count says why it died.
        """
        self.start()
        handle = self.startJob(makeJob(1))
        handle.logText = ""
        handle.oomKills = 1
        handle.installExit(137)
        self.clock.advance(0.2)
        self.assertEqual((self.result(1).status, self.result(1).reason), ("failed", "exit code 137 (OOM killed)"))

    def test_timeout(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1, duration=60, grace=2))
        handle.processes = [fakeProcess(50, ("npm", "install"))]
        self.clock.pump([0.2] * 299)
        self.assertEqual(handle.stops, 0)
        self.clock.pump([0.2] * 2)
        self.assertEqual(handle.stops, 1)
        result = self.result(1)
        self.assertEqual((result.status, result.reason), ("timeout", TIMED_OUT))
        self.assertIsNone(result.install_exit_code)
        self.assertIsNone(result.install_finished_at)
        self.assertEqual(self.client.eventsOf(runID(1)), [])  # npm never outlived itself

    def test_snapshotFailuresAreSurvived(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1, duration=5))
        handle.snapshotError = OSError("proc unreadable")
        self.clock.advance(0.2)
        handle.snapshotError = None
        handle.installExit(0)
        self.clock.advance(0.2)
        self.assertEqual(self.result(1).status, "ok")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_unresolvedAccessesCounted(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1))
        self.sensor.unresolved[runID(1).hex()] = 4
        handle.installExit(0)
        self.clock.advance(0.2)
        result = self.result(1)
        self.assertEqual((result.status, result.events_unresolved), ("ok", 4))
        self.assertEqual(result.reason, "4 file accesses could not be resolved")

    def test_sensorWithoutTheNewCalls(self) -> None:
        """
        A sensor without canaries, bait marks or unresolved counts still runs
        the job.
        """
        self.sensor = LegacySensor()
        self.setUp_service()
        self.start()
        handle = self.startJob(makeJob(1))
        handle.installExit(0)
        self.clock.advance(0.2)
        self.assertEqual(self.result(1).status, "ok")
        self.assertEqual(self.sensor.legacyAdds, 1)

    def test_baitWatchFailureIsNoted(self) -> None:
        self.sensor.watchError = OSError("fanotify_mark: ENOENT")
        self.start()
        handle = self.startJob(makeJob(1))
        handle.installExit(0)
        self.clock.advance(0.2)
        result = self.result(1)
        self.assertEqual((result.status, result.reason), ("ok", "bait files not watched: fanotify_mark: ENOENT"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_launchFailure(self) -> None:
        self.sandbox.launchError = FakeSandboxError("image fangs-sandbox/node:20 missing")
        self.start()
        self.startJob(makeJob(1))
        result = self.result(1)
        self.assertEqual((result.status, result.reason, result.events_dropped),
                         ("failed", "sandbox launch: image fangs-sandbox/node:20 missing", 0))
        self.assertNotIn(("addRun", runID(1).hex(), 1001), self.sensor.log)
        self.assertEqual(len(self.cgroups.removed), 1)

    def test_startFailure(self) -> None:
        self.sandbox.launchError = None
        self.start()
        job = makeJob(1)
        self.sensor.drops[runID(1).hex()] = 1
        original = self.sandbox.create

        async def create(*args: Any) -> Any:
            handle = await original(*args)
            handle.startError = FakeSandboxError("OCI runtime create failed")
            return handle

        self.sandbox.create = create  # type: ignore[method-assign]
        handle = self.startJob(job)
        result = self.result(1)
        self.assertEqual((result.status, result.reason, result.events_dropped),
                         ("failed", "sandbox launch: OCI runtime create failed", 1))
        self.assertEqual(handle.stops, 1)
        self.assertNotIn(runID(1).hex(), self.sensor.runs)
        self.assertNotIn("watchBaitFiles", [c[0] for c in self.sensor.log])

    def test_sensorAttachFailureRemovesTheContainer(self) -> None:
        self.sensor.addError = RuntimeError("slots full")
        self.start()
        handle = self.startJob(makeJob(1))
        result = self.result(1)
        self.assertEqual((result.status, result.reason), ("failed", "sensor attach: slots full"))
        self.assertEqual((handle.starts, handle.stops), (0, 1))

    def test_cgroupFailure(self) -> None:
        self.cgroups.createError = OSError("no cgroup v2")
        self.start()
        self.startJob(makeJob(1))
        result = self.result(1)
        self.assertEqual((result.status, result.reason), ("failed", "create cgroup: no cgroup v2"))
        self.assertEqual(self.sandbox.handles, {})

    def test_cancelledByOperator(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1))
        self.client.heartbeatScript = [HeartbeatAck(ok=True, cancel_runs=[runID(1).hex()])]
        self.sensor.emit(runID(1))
        self.clock.pump([0.2] * 151)
        self.assertEqual(handle.stops, 1)
        result = self.result(1)
        self.assertEqual((result.status, result.reason, result.events_emitted),
                         ("failed", CANCELLED, 1))

    def test_shutdownReportsFailed(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1))
        self.sensor.emit(runID(1))
        d = self.service.stopService()
        self.assertEqual(handle.stops, 1)
        result = self.result(1)
        self.assertEqual((result.status, result.reason, result.events_emitted),
                         ("failed", SHUTTING_DOWN, 1))
        self.successResultOf(d)
        self.assertTrue(self.sensor.stopped)

    def test_shutdownWhileADetachedProcessRunsIsNotOk(self) -> None:
        self.start()
        handle = self.startJob(makeJob(1))
        handle.installExit(0)
        handle.processes = [fakeProcess(70)]
        self.clock.advance(0.2)
        d = self.service.stopService()
        self.successResultOf(d)
        self.assertEqual((self.result(1).status, self.result(1).reason), ("failed", SHUTTING_DOWN))

    def test_shutdownWaitsForTheResult(self) -> None:
        self.start()
        self.startJob(makeJob(1))
        self.client.resultScript = [ConnectionRefusedError()]
        d = self.service.stopService()
        self.assertNoResult(d)
        self.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(self.result(1).status, "failed")

    def test_resultPostRetried(self) -> None:
        self.client.resultScript = [ConnectionRefusedError(),
                                    OrchestratorError(502, "", "bad gateway")]
        self.start()
        handle = self.startJob(makeJob(1))
        handle.exit(0)
        self.assertEqual(self.calls("postResult"), 1)
        self.clock.advance(1)
        self.assertEqual(self.calls("postResult"), 2)
        self.clock.advance(2)
        self.assertEqual(self.calls("postResult"), 3)
        self.assertEqual(self.result(1).status, "ok")

    def test_resultPermanentErrorNotRetried(self) -> None:
        self.client.resultScript = [OrchestratorError(400, "bad", "bad status")]
        self.start()
        self.startJob(makeJob(1)).exit(0)
        self.clock.advance(100)
        self.assertEqual(self.calls("postResult"), 1)

    def test_heartbeatWhileRunning(self) -> None:
        self.start()
        self.startJob(makeJob(1, duration=120))
        for _ in range(3):
            self.sensor.emit(runID(1))
        self.clock.pump([1] * 30)
        hb = self.client.heartbeats[-1]
        self.assertEqual((hb.status, hb.active_run_id, hb.active_run_ids),
                         ("running", runID(1).hex(), [runID(1).hex()]))
        self.assertEqual(hb.events_queued, 0)  # the 5 s segment ended, acknowledged
        self.sensor.emit(runID(1))
        self.clock.advance(30)
        self.assertEqual(self.client.heartbeats[-1].events_queued, 1)

    def test_sensorOnly(self) -> None:
        self.start()
        self.startJob(makeJob(1, duration=20, sandbox=False))
        self.assertEqual(self.sensor.log[1], ("addRun", runID(1).hex(), 4242))
        self.sensor.emit(runID(1))
        self.clock.advance(20)
        result = self.result(1)
        self.assertEqual((result.status, result.events_emitted), ("ok", 1))
        self.assertEqual(self.cgroups.created, [])
        self.assertEqual(self.sandbox.handles, {})

    def test_sensorOnlyOutsideOwnTreeRefused(self) -> None:
        """
        A sensor_only job may watch only a cgroup of the runner's own
        /fangs/ tree, whatever the orchestrator let through.
        """
        self.start()
        for n, path in enumerate(["/sys/fs/cgroup/unified/system.slice/sshd.service", "/fangs/../system.slice",
                                  "/", "relative/fangs/x"], 1):
            self.startJob(attrs.evolve(makeJob(n, duration=20, sandbox=False), cgroup_path=path))
            result = self.result(n)
            self.assertEqual(result.status, "failed")
            self.assertIn("not under this runner's own /fangs/ cgroup tree", result.reason)
        self.assertNotIn("addRun", [entry[0] for entry in self.sensor.log])


class ConcurrentJobTests(ServiceTestsMixin, SynchronousTestCase):
    maxConcurrent = 2

    def test_twoJobsAtOnce(self) -> None:
        self.start()
        first = self.startJob(makeJob(1))
        self.assertEqual(self.calls("poll"), 2)
        second = self.startJob(makeJob(2))
        self.assertEqual(self.calls("poll"), 2)  # both slots taken
        for _ in range(4):
            self.sensor.emit(runID(1))
        self.sensor.emit(runID(2))
        self.sensor.drops[runID(2).hex()] = 7
        second.installExit(1)
        self.clock.advance(0.2)
        self.assertEqual(self.calls("poll"), 3)
        for _ in range(2):
            self.sensor.emit(runID(1))
        first.installExit(0)
        self.clock.advance(0.2)
        one, two = self.result(1), self.result(2)
        self.assertEqual((one.status, one.events_emitted, one.events_dropped), ("ok", 6, 0))
        self.assertEqual((two.status, two.events_emitted, two.events_dropped), ("failed", 1, 7))
        self.assertEqual(len(self.client.eventsOf(runID(1))), 6)
        self.assertEqual(len(self.client.eventsOf(runID(2))), 1)
        self.assertNotEqual(first.cgroupParent, second.cgroupParent)
