"""
Faults around a real runner (issue 10): the runner killed with SIGKILL in the
middle of a run, and dockerd restarted between two runs.

Real processes on loopback: C{twistd fangs-orchestrator}, C{twistd
fangs-runner} with the kernel's eBPF sensor, Docker sandboxes and fixture
packages.

The dockerd restart uses a private dockerd (its own socket, data root, exec
root and bridge interface, no iptables rules) started by the test, never the
machine's own: restarting that one would kill the containers of every other
test running at the same time (C{trial -j2}) and of anyone else on the
machine.  (Not C{--bridge none}: a dockerd started so deletes the machine's
C{docker0}.)
The runner under test is pointed at it with C{DOCKER_HOST}; the runner code
it exercises (the docker SDK client kept across runs) is the same.

Under C{CI=true} a missing prerequisite fails these tests; elsewhere it skips
them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from fangs.orchestrator.store import ACTIVE_STATES
from fangs.runner.containerspec import LABEL_RUN
from tests.procs import Daemon, sleep
from tests.integration.test_e2e_scan import Scanner, byType, call, fixtureJob, requireAll
from tests.integration.test_hostile_packages import HOSTILE_IMAGE, ensureHostileFixtures, hostileJob

CGROUP_ROOT = "/sys/fs/cgroup"


def _docker(*args: str, host: Optional[str] = None, check: bool = True) -> str:
    argv = ["docker"] + (["-H", host] if host else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


def _runContainers(runID: str, host: Optional[str] = None) -> List[str]:
    return _docker("ps", "-a", "-q", "--filter", "label=%s=%s" % (LABEL_RUN, runID), host=host).split()


def _removeRunCgroups(runID: str) -> None:
    """
    Remove the run's (empty) cgroup directories, v2 and v1 copies, deepest
    first.  A runner killed mid-run leaves them behind.
    """
    for controller in os.listdir(CGROUP_ROOT):
        top = os.path.join(CGROUP_ROOT, controller, "fangs", runID)
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


class RunnerKilledTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        requireAll()

    def test_killedMidRunFailsAsRunnerLost(self):
        return Deferred.fromCoroutine(self._killed())

    async def _killed(self) -> None:
        await ensureHostileFixtures()
        s = Scanner(self)
        await s.start()
        job = hostileJob("slow-fixture", duration=240)
        job["sandbox"]["env"] = {"SLOW_SECONDS": "200"}
        runID = await s.submit(job)
        self.addCleanup(_removeRunCgroups, runID)
        self.addCleanup(lambda: [_docker("rm", "-f", c, check=False) for c in _runContainers(runID)])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            code, run = await call(s.client, "GET", s.orch.url + "/v1/runs/" + runID)
            if run["state"] == "running" and run["events_received"] > 20:
                break
            await sleep(0.2)
        else:
            self.fail("no events streamed:\n" + s.runner.log()[-3000:])
        containers = await deferToThread(_runContainers, runID)
        self.assertEqual(len(containers), 1)

        s.runner.kill(signal.SIGKILL)
        killedAt = time.monotonic()
        # dockerd owns the container: it outlives its runner.
        state = await deferToThread(_docker, "inspect", "-f", "{{.State.Running}}", containers[0])
        self.assertEqual(state.strip(), "true")

        again = Daemon(self, s.runner.args, "runner")
        again.start()
        s.runner = again
        # The new runner's start reaps the dead runner's sandbox.
        while await deferToThread(_runContainers, runID):
            self.assertIsNone(again.proc.poll(), again.log()[-3000:])
            self.assertLess(time.monotonic() - killedAt, 60, again.log()[-3000:])
            await sleep(0.5)
        reapedAfter = time.monotonic() - killedAt

        # Its first heartbeat does not list the run, so the orchestrator
        # fails it at once instead of waiting for the run's deadline (here
        # 240 s + 60 s).
        run = await s.waitVerdict(runID, timeout=120)
        lostAfter = time.monotonic() - killedAt
        self.assertEqual((run["state"], run["failure_reason"], run["verdict"]), ("failed", "runner lost", "incomplete"), run)
        self.assertLess(lostAfter, 90)
        # Nothing stays active.
        code, body = await call(s.client, "GET", s.orch.url + "/v1/runs")
        self.assertEqual([r["run_id"] for r in body["runs"] if r["state"] in ACTIVE_STATES], [])
        # The new runner takes the next job.
        nextRun = await s.waitVerdict(await s.submit(hostileJob("benign-fixture")))
        self.assertEqual((nextRun["state"], nextRun["result_status"]), ("done", "ok"), nextRun)
        if os.environ.get("FANGS_E2E_LOGS"):
            print("\nrunner killed: sandbox reaped after %.1fs, run failed after %.1fs" % (reapedAfter, lostAfter))


class PrivateDockerd:
    """
    A dockerd of the test's own: socket, data root and exec root in a fresh
    directory, a bridge interface of its own that carries no traffic (the
    sandboxes run with C{network_mode none}) and no iptables rules, so
    starting and stopping it touches nothing else on the machine.

    Never C{--bridge none}: dockerd then deletes C{docker0}, the machine's
    own dockerd's bridge.
    """

    def __init__(self, test: TestCase) -> None:
        self.dir = tempfile.mkdtemp(prefix="fdk-", dir="/tmp")
        self.bridge = "fdk%d" % (os.getpid() % 100000,)
        self.bridgeAddr = "10.254.%d.1/24" % (os.getpid() % 250,)
        self.host = "unix://%s/docker.sock" % (self.dir,)
        self.proc: Optional[subprocess.Popen] = None
        self.logPath = os.path.join(self.dir, "dockerd.log")
        test.addCleanup(self.cleanup)

    def _thd_start(self) -> None:
        if not os.path.exists("/sys/class/net/" + self.bridge):
            subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", self.bridgeAddr, "dev", self.bridge], check=True)
        with open(self.logPath, "ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--host", self.host, "--data-root", self.dir + "/data", "--exec-root", self.dir + "/x",
                 "--pidfile", self.dir + "/docker.pid", "--bridge", self.bridge, "--iptables=false", "--ip6tables=false",
                 "--ip-masq=false", "--exec-opt", "native.cgroupdriver=cgroupfs", "--storage-driver", "overlay2"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("private dockerd exited:\n" + self.log())
            if subprocess.run(["docker", "-H", self.host, "info"], capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("private dockerd not ready in 60 s:\n" + self.log())

    def _thd_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def start(self) -> Deferred:
        return deferToThread(self._thd_start)

    def stop(self) -> Deferred:
        return deferToThread(self._thd_stop)

    def _thd_load(self, image: str) -> None:
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", self.host, "load"], stdin=save.stdout, capture_output=True)
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise AssertionError("loading %s into the private dockerd failed: %s" % (image, load.stderr[-2000:]))

    def load(self, image: str) -> Deferred:
        return deferToThread(self._thd_load, image)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for cid in _docker("ps", "-a", "-q", host=self.host, check=False).split():
                _docker("rm", "-f", cid, host=self.host, check=False)
        self._thd_stop()
        subprocess.run(["umount", "-R", self.dir + "/x"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if os.path.exists("/sys/class/net/" + self.bridge):
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class DockerdRestartTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        requireAll()
        if shutil.which("dockerd") is None:
            raise AssertionError("dockerd not installed; run `make setup`")

    def test_nextRunAfterDockerdRestart(self):
        return Deferred.fromCoroutine(self._restart())

    def _offlineJob(self, name: str) -> Dict[str, Any]:
        job = hostileJob(name, duration=60)
        job["sandbox"]["network_mode"] = "none"
        return job

    async def _restart(self) -> None:
        await ensureHostileFixtures()
        hadDocker0 = os.path.exists("/sys/class/net/docker0")
        docker = PrivateDockerd(self)
        await docker.start()
        await docker.load(HOSTILE_IMAGE)
        s = Scanner(self)
        s.runner.env["DOCKER_HOST"] = docker.host
        await s.start()

        first = await s.waitVerdict(await s.submit(self._offlineJob("benign-fixture")))
        self.assertEqual((first["state"], first["result_status"]), ("done", "ok"), first)

        started = time.monotonic()
        await docker.stop()
        await docker.start()
        restartTook = time.monotonic() - started

        second = await s.waitVerdict(await s.submit(self._offlineJob("benign-fixture")))
        self.assertEqual((second["state"], second["result_status"]), ("done", "ok"),
                         (second, s.runner.log()[-3000:]))
        self.assertTrue([p for p in byType(await s.events(second["run_id"]), "file_access")
                         if p["PathName"] == "/etc/hostname"])
        self.assertIsNone(s.runner.proc.poll())
        self.assertEqual(await deferToThread(_docker, "ps", "-a", "-q", host=docker.host), "")
        # The machine's own dockerd's bridge is untouched.
        self.assertEqual(os.path.exists("/sys/class/net/docker0"), hadDocker0)
        if os.environ.get("FANGS_E2E_LOGS"):
            print("\ndockerd restarted in %.1fs" % (restartTook,))
