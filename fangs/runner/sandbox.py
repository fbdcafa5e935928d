"""
The Docker sandbox a run's C{npm install} executes in.

Every docker SDK call runs in a C{_thd_*} function on a thread pool, one hop
per logical operation (launch, poll, stop, logs, reap), with plain data in
and out; nothing here blocks the reactor.

Status rules the runner applies to a sandboxed run (the install's exit is
what the init recorded, or the container's own exit if the init ended):

  - C{ok} only when the install exited with code 0 before the deadline;
  - C{failed} on a non-zero exit (the reason names the exit code, the OOM
    kill and the last lines of L{SandboxHandle.logs}, npm's own error) or
    when L{DockerSandbox.create} or L{SandboxHandle.start} raised
    L{SandboxError} (its one-line message is the reason);
  - C{timeout} when the run's duration ran out before the install exited.

Differences from the Go reference (section 7.7 and items 11, 20, 28, 30 of
section 15 of the reference):

  - a container that exits at once is a normal exit, not a launch failure;
  - image pull errors reported inside Docker's progress stream are detected,
    and C{missing} never contacts a registry when the image is present;
    the container is created from the resolved image id, not the tag;
  - C{host} and C{container:*} network modes are refused;
  - swap is bounded (C{MemorySwap = Memory}), OOM kills are reported;
  - C{npmInstallCommand} quotes the package and keeps npm's exit status
    (the reference's C{| tail; sleep 2} made every failure exit 0) and
    forces install scripts on (npm 11's C{allowScripts} and npm 12);
  - bait credentials (L{fangs.runner.bait}), unique per run, are planted in
    the home of the user the sandbox runs as before start;
  - io_uring is refused by the sandbox's own seccomp profile
    (C{conf/seccomp-sandbox.json}: Docker 20.10's default minus
    C{io_uring_setup}, C{io_uring_enter}, C{io_uring_register});
  - the command runs under a small shell init (L{fangs.runner.containerspec.INIT_SCRIPT}, PID 1 of
    the container) that records the install's exit status and then stays,
    so processes the install leaves behind are observed until they end
    (L{SandboxHandle.snapshot} reads them from the host);
  - logs are kept until L{SandboxHandle.stop} and read for failure reasons;
  - containers left by a dead runner are reaped at start.

The container's makings are in L{fangs.runner.containerspec}, the Docker
calls in L{fangs.runner.dockerops}, what the host sees of the install in
L{fangs.runner.sandboxprocs}; this module holds the Twisted-facing
L{DockerSandbox} and L{SandboxHandle}.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import docker
from docker import errors as dockerErrors
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger

from fangs.npm import installSpecCommand
from fangs.runner import bait as baitmod
from fangs.runner.containerspec import DEFAULT_IMAGE, SandboxError, loadSeccompProfile, planLaunch
from fangs.runner.dockerops import (
    ExitInfo,
    _oneLine,
    _thd_create,
    _thd_exitState,
    _thd_logs,
    _thd_reap,
    _thd_start,
    _thd_stop,
)
from fangs.runner.sandboxprocs import LifeSnapshot, _thd_snapshot, processStartTime
from fangs.wire import RunID, SandboxSpec, WatchedPath

log = Logger()

#: How often L{SandboxHandle.wait} asks Docker whether the container exited.
POLL_INTERVAL = 0.2


def npmInstallCommand(package: str, version: str) -> List[str]:
    """
    The sandbox command that installs C{package@version} (or any npm install
    spec, such as a local tarball path, with an empty C{version}): the one
    command of L{fangs.npm.installSpecCommand}, with install scripts forced
    on and npm's own exit status kept.  The spec reaches the shell quoted
    after C{--}, so it can never be read as an npm option.
    """
    if not isinstance(package, str) or not package or package.startswith("-") or "\0" in package:
        raise ValueError("bad package name %r" % (package,))
    if not isinstance(version, str) or version.startswith("-") or "\0" in version:
        raise ValueError("bad version %r" % (version,))
    return installSpecCommand(package + "@" + version if version else package)


def _isAlive(pid: int, start: str) -> bool:
    return processStartTime(pid) == start


class SandboxHandle:
    """
    A created container, started by L{start}.  It stays (exited, not
    removed) until L{stop}, so its exit code and logs can be read.

    @ivar containerID: Docker's id of the container.
    @ivar imageID: the image id it was created from (the resolved digest).
    @ivar pid: the container's init on this machine right after start (0
        before start or if it had already exited).
    @ivar cgroupPath: that process's cgroup v2 path, C{<cgroup_parent>/<id>}
        ("" before start or if it had already exited).
    @ivar home: the home of the user the sandbox runs as.
    @ivar bait: the planted fake credentials, path in the sandbox → content.
    @ivar baitEnv: the bait environment variables given to the sandbox.
    @ivar canaries: bait name → value, for the sensor's payload matching.
    @ivar baitPaths: the planted files' paths in the sandbox.
    @ivar watchedPaths: cred-tagged watched paths of the bait in C{home}.
    """

    def __init__(self, sandbox: "DockerSandbox", containerID: str, imageID: str, pid: int,
                 bait: Dict[str, str], cgroupPath: str = "", home: str = "/root",
                 baitEnv: Optional[Dict[str, str]] = None, canaries: Optional[Dict[str, str]] = None) -> None:
        self._sandbox = sandbox
        self.containerID = containerID
        self.imageID = imageID
        self.pid = pid
        self.cgroupPath = cgroupPath
        self.bait = bait
        self.home = home
        self.baitEnv = dict(baitEnv or {})
        self.canaries = dict(canaries or {})
        self.baitPaths = sorted(bait)
        self._started = False
        self._exit: Optional[ExitInfo] = None
        self._waiters: List[Deferred] = []
        self._polling = False
        self._stopping: Optional[Deferred] = None
        self._finalLogs: Optional[str] = None

    def watchedPaths(self, jobPaths: Optional[List[WatchedPath]] = None) -> List[WatchedPath]:
        """
        Watched paths to add to the job's: the bait in this sandbox's home
        (cred-tagged) and the job's C{/root/...} paths mirrored there.
        """
        return baitmod.watchedPathsFor(self.home, jobPaths)

    async def start(self) -> None:
        """
        Start the created container; C{pid} and C{cgroupPath} are set
        after.  Raises L{SandboxError} (the container is removed).
        """
        if self._started:
            return
        self._started = True
        started = await self._sandbox._launchStep(_thd_start, self.containerID)
        self.pid = started["pid"]
        self.cgroupPath = started["cgroup"]
        log.info("sandbox {cid} started ({status}, init pid {pid})", cid=self.containerID[:12],
                 status=started["status"], pid=self.pid)

    async def snapshot(self) -> LifeSnapshot:
        """
        One look from the host at the running container: the install's
        recorded exit and every live process besides the init.
        """
        rel = self.cgroupPath.lstrip("/")
        cgroupDir = os.path.join(self._sandbox.cgroupRoot, rel) if rel else ""
        if not cgroupDir or not self.pid:
            return LifeSnapshot(None, 0, 0, (), self._sandbox.monotonicNs(), 0, False)
        memoryDir = os.path.join(self._sandbox.memoryRoot, rel) if self._sandbox.memoryRoot else ""
        return await self._sandbox._callPlain(_thd_snapshot, cgroupDir, self.pid, self._sandbox.monotonicNs,
                                              self._sandbox.wallNs, "/proc", memoryDir)

    def _settle(self, info: ExitInfo) -> None:
        if self._exit is not None:
            return
        self._exit = info
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(info)

    def _whenExited(self) -> Deferred:
        if self._exit is not None:
            return succeed(self._exit)

        def cancel(d: Deferred) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        d = Deferred(cancel)
        self._waiters.append(d)
        if not self._polling:
            self._polling = True
            polling = Deferred.fromCoroutine(self._poll())
            polling.addErrback(lambda f: log.failure("polling {cid}", f, cid=self.containerID[:12]))
        return d

    async def _poll(self) -> None:
        failures = 0
        try:
            while self._exit is None:
                if self._stopping is not None:
                    await self._stopping
                    return
                try:
                    info = await self._sandbox._call(_thd_exitState, self.containerID)
                    failures = 0
                except Exception as e:
                    failures += 1
                    if failures >= 10:
                        info = ExitInfo(exitCode=-1, error="docker: " + _oneLine(str(e)))
                    else:
                        info = None
                if info is not None:
                    self._settle(info)
                    return
                await deferLater(self._sandbox._reactor, POLL_INTERVAL, lambda: None)
        finally:
            self._polling = False

    async def wait(self) -> ExitInfo:
        """
        The container's exit.  Cancelling the wait leaves the container alone.
        """
        return await self._whenExited()

    async def stop(self, timeout: float = 0) -> None:
        """
        Stop (SIGTERM, SIGKILL after C{timeout} s; the init ignores SIGTERM, so
        by default it is killed at once: observation is over) and force-remove the
        container.  Idempotent and safe after the container exited; the
        exit state and last logs are kept for L{wait} and L{logs}.
        """
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop(timeout))
        d = Deferred()
        self._stopping.addBoth(lambda r: (d.callback(None), r)[1])
        await d

    async def _stop(self, timeout: float) -> None:
        try:
            result = await self._sandbox._call(_thd_stop, self.containerID, timeout, 200)
        except Exception as e:
            log.warn("stop {cid} failed: {error}", cid=self.containerID[:12], error=_oneLine(str(e)))
            self._settle(ExitInfo(exitCode=-1, error="stop failed: " + _oneLine(str(e))))
            return
        if result["logs"] is not None:
            self._finalLogs = result["logs"]
        self._settle(result["exit"] or ExitInfo(exitCode=-1, error="container removed before it was seen to exit"))

    async def logs(self, tail: int = 50) -> str:
        """
        The last C{tail} lines of the container's output (stdout and stderr).
        """
        text = None
        if self._finalLogs is None:
            text = await self._sandbox._call(_thd_logs, self.containerID, tail)
        if text is None:
            text = self._finalLogs or ""
        lines = text.splitlines()
        return "\n".join(lines[-tail:]) if tail > 0 else ""


class DockerSandbox:
    """
    Launches hardened sandbox containers.

    @param reactor: for thread hops and the exit poll's timer.
    @param dockerClientFactory: makes the docker SDK client, called once on
        a pool thread (its API version negotiation blocks).
    @param threadpool: where the SDK calls run; the reactor's by default.
    """

    def __init__(self, reactor, dockerClientFactory: Callable[[], Any] = docker.from_env, threadpool=None,
                 defaultImage: str = DEFAULT_IMAGE, seccompProfile: Optional[str] = None,
                 cgroupRoot: str = "/sys/fs/cgroup/unified", memoryRoot: str = "/sys/fs/cgroup/memory",
                 makeBait: Callable[[], Any] = baitmod.makeBait,
                 monotonicNs: Callable[[], int] = time.monotonic_ns,
                 wallNs: Callable[[], int] = time.time_ns) -> None:
        self._reactor = reactor
        self._factory = dockerClientFactory
        self._threadpool = threadpool
        self.defaultImage = defaultImage
        #: The seccomp profile's JSON text (the shipped one by default).
        self.seccomp = loadSeccompProfile() if seccompProfile is None else seccompProfile
        self.cgroupRoot = cgroupRoot
        #: The cgroup v1 memory controller's mount (hybrid hierarchies), for
        #: OOM kills; "" when there is none.
        self.memoryRoot = memoryRoot
        self._makeBait = makeBait
        self.monotonicNs = monotonicNs
        self.wallNs = wallNs
        self._client = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._start = processStartTime(self._pid)

    def _api(self):
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._factory()
                except dockerErrors.DockerException as e:
                    raise SandboxError("docker daemon unreachable: %s" % (_oneLine(str(e)),)) from None
            return getattr(self._client, "api", self._client)

    def _call(self, f, *args) -> Deferred:
        def run():
            return f(self._api(), *args)

        return self._callPlain(run)

    async def _launchStep(self, f, *args) -> Any:
        """
        L{_call} for a step of a launch: a docker SDK error becomes a
        L{SandboxError}, whose one-line message is the run's reason.
        """
        try:
            return await self._call(f, *args)
        except dockerErrors.DockerException as e:
            raise SandboxError("docker: %s" % (_oneLine(str(e)),)) from None

    def _callPlain(self, f, *args) -> Deferred:
        if self._threadpool is not None:
            return deferToThreadPool(self._reactor, self._threadpool, f, *args)
        return deferToThread(f, *args)

    async def reapStale(self) -> int:
        """
        Remove sandbox containers whose runner process is gone (a runner
        that died); returns how many.  Sandboxes of this process and of
        other live runners (pid and start time match) are kept.
        """
        reaped = await self._call(_thd_reap, self._pid, self._start, _isAlive)
        for cid in reaped:
            log.info("reaped stale sandbox {cid}", cid=cid[:12])
        return len(reaped)

    async def create(self, runID: RunID, spec: SandboxSpec, cgroupParent: str) -> SandboxHandle:
        """
        Pull per policy, create, plant this run's bait in the sandbox user's
        home; not started (see L{SandboxHandle.start}), so the sensor can be
        told the bait before any process runs.  Raises L{SandboxError} with
        a one-line reason.
        """
        plan = planLaunch(runID, spec, cgroupParent, self.defaultImage, self._pid, self._start,
                          seccomp=self.seccomp, makeBait=self._makeBait)
        made = await self._launchStep(_thd_create, plan)
        bait = made["bait"]
        log.info("sandbox {cid} for run {run} from {image} (user {uid}, home {home})", cid=made["id"][:12],
                 run=runID.hex(), image=plan.image, uid=made["uid"], home=made["home"])
        return SandboxHandle(self, made["id"], made["imageID"], 0, bait.filesIn(made["home"]), "", made["home"],
                             dict(bait.env), dict(bait.canaries))

    async def launch(self, runID: RunID, spec: SandboxSpec, cgroupParent: str) -> SandboxHandle:
        """
        L{create} then L{SandboxHandle.start}.  A container that exits at
        once is not an error (see L{SandboxHandle.wait}).
        """
        handle = await self.create(runID, spec, cgroupParent)
        await handle.start()
        return handle
