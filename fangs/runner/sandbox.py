"""
The Docker sandbox a run's C{npm install} executes in.

Every docker SDK call runs in a C{_thd_*} function on a thread pool, one hop
per logical operation (launch, poll, stop, logs, reap), with plain data in
and out; nothing here blocks the reactor.

Status rules the runner applies to a sandboxed run:

  - C{ok} only when the container exited with code 0 before the deadline;
  - C{failed} on a non-zero exit (the reason names the exit code, the OOM
    flag and the last lines of L{SandboxHandle.logs}) or when L{launch}
    raised L{SandboxError} (its one-line message is the reason);
  - C{timeout} when the run's duration ran out before the container exited.

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
  - bait credentials, unique per run, are planted before start;
  - logs are kept until L{SandboxHandle.stop} and read for failure reasons;
  - containers left by a dead runner are reaped at start.
"""

from __future__ import annotations

import base64
import io
import os
import re
import secrets
import tarfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import attrs
import docker
from docker import errors as dockerErrors
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger

from fangs.npm import installSpecCommand
from fangs.runner.cgroups import cgroupOfPid
from fangs.wire import RunID, SandboxSpec

log = Logger()

DEFAULT_IMAGE = "fangs-sandbox/node:20"
DEFAULT_USER = "1000:1000"
DEFAULT_NETWORK = "bridge"
DEFAULT_MEMORY = 512 * 1024 * 1024
MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses less
DEFAULT_NANO_CPUS = 1_000_000_000
DEFAULT_PIDS = 256
DEFAULT_PULL = "missing"
PULL_POLICIES = ("never", "missing", "always")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

#: Capabilities kept.  None: npm 9+ no longer switches uid or chowns, and an
#: install with postinstall scripts as uid 0 into C{/tmp} and C{/root}
#: (both owned by root) works with every capability dropped (verified with
#: C{npm install} of the fixtures and of C{is-number@7.0.0}).
CAP_ADD: List[str] = []

#: C{/tmp} is where C{npmInstallCommand} installs.  It stays executable:
#: packages whose install scripts run binaries from C{node_modules} (esbuild
#: and the like) must behave as they do on a developer's machine, or the
#: scan would not observe their real behaviour.
TMPFS = {
    "/tmp": "rw,nosuid,nodev,size=256m",
    "/run": "rw,nosuid,nodev,noexec,size=16m",
}

#: nproc is per uid across the whole host, so it is only a safety net; the
#: per-sandbox bound on processes is the cgroup's C{PidsLimit}.
ULIMITS = [
    {"Name": "nofile", "Soft": 1024, "Hard": 2048},
    {"Name": "nproc", "Soft": 4096, "Hard": 4096},
    {"Name": "fsize", "Soft": 268435456, "Hard": 268435456},
]

LOG_CONFIG = {"Type": "json-file", "Config": {"max-size": "2m", "max-file": "2"}}

LABEL_ROLE = "io.fangs.role"
LABEL_RUN = "io.fangs.run"
LABEL_PID = "io.fangs.runner-pid"
LABEL_START = "io.fangs.runner-start"

_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_ENV_KEY = re.compile(r"^[^=\0]+$")

#: How often L{SandboxHandle.wait} asks Docker whether the container exited.
POLL_INTERVAL = 0.2


class SandboxError(Exception):
    """
    A sandbox could not be launched; the message is a one-line reason.
    """


@attrs.frozen
class ExitInfo:
    """
    How a container ended.  C{exitCode} is -1 when it is unknown (the
    container vanished or Docker failed), with C{error} saying why.
    """

    exitCode: int
    error: str = ""
    oomKilled: bool = False

    def describe(self) -> str:
        text = "exit_code=%d" % (self.exitCode,)
        if self.oomKilled:
            text += " oom_killed=true"
        if self.error:
            text += " error=" + self.error
        return text


# ---------------------------------------------------------------------------
# The npm scan command


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


# ---------------------------------------------------------------------------
# Bait credentials


def makeBait(home: str = "/root") -> Dict[str, str]:
    """
    Fresh fake credentials for one run: an npm token, AWS keys and an SSH
    key that look real enough for a stealer, each with random parts so a
    leak can be traced to its run.
    """
    npmToken = "npm_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "b")[:36]
    akid = "AKIA" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
    secret = secrets.token_urlsafe(30)[:40]
    body = secrets.token_bytes(900)

    b64 = base64.b64encode(b"openssh-key-v1\0" + body).decode()
    lines = [b64[i:i + 70] for i in range(0, len(b64), 70)]
    return {
        home + "/.npmrc": "//registry.npmjs.org/:_authToken=%s\n" % (npmToken,),
        home + "/.aws/credentials": "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (akid, secret),
        home + "/.ssh/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\n%s\n-----END OPENSSH PRIVATE KEY-----\n"
        % ("\n".join(lines),),
    }


def baitTar(bait: Dict[str, str], uid: int = 0, gid: int = 0) -> bytes:
    """
    A tar of the bait files (mode 0600) and their parent directories (0700)
    for C{put_archive} at C{/}.
    """
    buf = io.BytesIO()
    now = int(time.time())  # file mtimes only, not logic
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = set()
        for path in bait:
            parts = path.strip("/").split("/")
            for i in range(2, len(parts)):  # below the home directory itself
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o700, uid, gid, now
            tar.addfile(info)
        for path, content in sorted(bait.items()):
            data = content.encode()
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o600, uid, gid, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Spec → Engine API request


def _splitImage(image: str) -> tuple[str, str]:
    """
    Repository and tag of an image reference (digest references keep the
    digest as the tag; no tag means C{latest}).
    """
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:]
    return image, "latest"


@attrs.frozen
class LaunchPlan:
    """
    Everything L{_thd_launch} needs, validated: plain data.
    """

    image: str
    pullPolicy: str
    name: str
    create: Dict[str, Any]
    bait: Dict[str, str]
    baitTars: List[bytes]


def planLaunch(runID: RunID, spec: SandboxSpec, cgroupParent: str, defaultImage: str = DEFAULT_IMAGE,
               runnerPid: int = 0, runnerStart: str = "", bait: Optional[Dict[str, str]] = None) -> LaunchPlan:
    """
    Validate C{spec}, fill the defaults and return the container creation
    request (Engine API names) with the hardening applied.  Raises
    L{SandboxError}.
    """
    image = spec.image or defaultImage
    if not image or any(c.isspace() for c in image):
        raise SandboxError("bad image reference %r" % (image,))
    pull = spec.pull_policy or DEFAULT_PULL
    if pull not in PULL_POLICIES:
        raise SandboxError("pull_policy %r is not one of never, missing, always" % (spec.pull_policy,))
    network = spec.network_mode or DEFAULT_NETWORK
    if network == "host" or network.startswith("container:"):
        raise SandboxError("network_mode %r is refused: it would share a namespace outside the sandbox" % (network,))
    if network != "none" and not _NETWORK_NAME.match(network):
        raise SandboxError("network_mode %r is not a network name" % (network,))
    user = spec.user or DEFAULT_USER
    if not _USER.match(user):
        raise SandboxError("user %r is not uid[:gid] or name[:group]" % (user,))
    memory = spec.memory_bytes or DEFAULT_MEMORY
    if memory < MIN_MEMORY:
        raise SandboxError("memory_bytes %d is below Docker's minimum of 6 MiB" % (spec.memory_bytes,))
    cpus = spec.nano_cpus or DEFAULT_NANO_CPUS
    if cpus < 0:
        raise SandboxError("nano_cpus %d is negative" % (cpus,))
    pids = spec.pids_limit or DEFAULT_PIDS
    if pids < 0:
        raise SandboxError("pids_limit %d is negative (unlimited is refused)" % (pids,))
    if cgroupParent and not re.match(r"^/[A-Za-z0-9_./-]+$", cgroupParent) or ".." in cgroupParent:
        raise SandboxError("cgroup_parent %r is not a cgroup path" % (cgroupParent,))
    env = {"NODE_EXTRA_CA_CERTS": CA_BUNDLE}
    for key, value in (spec.env or {}).items():
        if not _ENV_KEY.match(key) or "\0" in value:
            raise SandboxError("bad environment variable %r" % (key,))
        env[key] = value
    command = list(spec.command or [])
    if not command or not all(isinstance(word, str) and "\0" not in word for word in command):
        # The image's default command is a shell that exits 0 at once: a
        # run that did nothing must not be reported ok.
        raise SandboxError("sandbox command is empty or not a list of strings")

    if bait is None:
        bait = makeBait("/root")
    tars = [baitTar(bait, 0, 0)]
    uidPart = user.split(":")[0]
    if uidPart not in ("0", "root"):
        # The sandbox user gets its own copy it can read; /root stays 0700.
        userBait = makeBait("/home/node")
        uid = int(uidPart) if uidPart.isdigit() else 1000
        gidPart = user.split(":")[1] if ":" in user else uidPart
        gid = int(gidPart) if gidPart.isdigit() else uid
        tars.append(baitTar(userBait, uid, gid))
        bait = {**bait, **userBait}

    runHex = runID.hex()
    labels = {LABEL_ROLE: "sandbox", LABEL_RUN: runHex, LABEL_PID: str(runnerPid), LABEL_START: runnerStart}
    hostConfig = {
        "NetworkMode": network,
        "CapDrop": ["ALL"],
        "CapAdd": list(CAP_ADD),
        "SecurityOpt": ["no-new-privileges:true"],
        "Privileged": False,
        "Memory": memory,
        "MemorySwap": memory,
        "NanoCpus": cpus,
        "PidsLimit": pids,
        "CgroupParent": cgroupParent,
        "Ulimits": [dict(u) for u in ULIMITS],
        "Tmpfs": dict(TMPFS),
        "Binds": [],
        "Mounts": [],
        "PublishAllPorts": False,
        "Init": True,
        "LogConfig": {"Type": LOG_CONFIG["Type"], "Config": dict(LOG_CONFIG["Config"])},
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
    }
    create = {
        "command": command,
        "user": user,
        "environment": ["%s=%s" % kv for kv in sorted(env.items())],
        "working_dir": spec.working_dir or None,
        "labels": labels,
        "host_config": hostConfig,
        "network_disabled": network == "none",
    }
    return LaunchPlan(image=image, pullPolicy=pull, name="fangs-" + runHex, create=create, bait=bait,
                      baitTars=tars)


def processStartTime(pid: int) -> str:
    """
    Field 22 of C{/proc/<pid>/stat} (start time in clock ticks since boot),
    which with the pid identifies a process across pid reuse; "" if gone.
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


# ---------------------------------------------------------------------------
# Thread functions: blocking docker SDK calls, plain data in and out


def _pullStreamError(messages) -> str:
    for message in messages:
        if isinstance(message, dict) and (message.get("error") or message.get("errorDetail")):
            return str(message.get("error") or message["errorDetail"].get("message", "pull failed"))
    return ""


def _thd_ensureImage(api, image: str, policy: str) -> str:
    """
    Apply the pull policy; return the image id to create the container from.
    """
    if policy != "always":
        try:
            return api.inspect_image(image)["Id"]
        except dockerErrors.ImageNotFound:
            if policy == "never":
                raise SandboxError("image %s is not present and pull_policy is never" % (image,)) from None
    repo, tag = _splitImage(image)
    try:
        error = _pullStreamError(api.pull(repo, tag=tag, stream=True, decode=True))
    except dockerErrors.APIError as e:
        raise SandboxError("pull %s: %s" % (image, _oneLine(e.explanation or str(e)))) from None
    if error:
        raise SandboxError("pull %s: %s" % (image, _oneLine(error)))
    try:
        return api.inspect_image(image)["Id"]
    except dockerErrors.ImageNotFound:
        raise SandboxError("pull %s: image still missing after the pull" % (image,)) from None


def _thd_launch(api, plan: LaunchPlan) -> Dict[str, Any]:
    imageID = _thd_ensureImage(api, plan.image, plan.pullPolicy)
    try:
        created = api.create_container(imageID, name=plan.name, **plan.create)
    except dockerErrors.APIError as e:
        raise SandboxError("create container: %s" % (_oneLine(e.explanation or str(e)),)) from None
    cid = created["Id"]
    for warning in created.get("Warnings") or []:
        log.warn("docker create {cid}: {warning}", cid=cid[:12], warning=warning)
    try:
        for data in plan.baitTars:
            if not api.put_archive(cid, "/", data):
                raise SandboxError("planting bait files failed")
        api.start(cid)
        state = api.inspect_container(cid)["State"]
    except BaseException as e:
        try:
            api.remove_container(cid, force=True)
        except dockerErrors.APIError:
            log.warn("container {cid} not removed after a failed launch", cid=cid[:12])
        if isinstance(e, SandboxError):
            raise
        if isinstance(e, dockerErrors.APIError):
            raise SandboxError("start container: %s" % (_oneLine(e.explanation or str(e)),)) from None
        raise
    # A container that already exited is not a launch failure: wait() reports it.
    pid = state.get("Pid") or 0
    return {"id": cid, "imageID": imageID, "pid": pid, "status": state.get("Status", ""),
            "cgroup": (cgroupOfPid(pid) or "") if pid else ""}


def _exitInfo(state: Dict[str, Any]) -> ExitInfo:
    return ExitInfo(exitCode=int(state.get("ExitCode", -1)), error=state.get("Error") or "",
                    oomKilled=bool(state.get("OOMKilled")))


def _thd_exitState(api, cid: str) -> Optional[ExitInfo]:
    """
    The container's L{ExitInfo} once it is no longer running, else C{None}.
    """
    try:
        state = api.inspect_container(cid)["State"]
    except dockerErrors.NotFound:
        return ExitInfo(exitCode=-1, error="container removed before it was seen to exit")
    if state.get("Status") in ("created", "running", "restarting", "paused", "removing"):
        return None
    return _exitInfo(state)


def _logText(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _thd_stop(api, cid: str, timeout: float, tail: int) -> Dict[str, Any]:
    """
    Stop, read the exit state and the last log lines, force-remove.
    """
    exit_: Optional[ExitInfo] = None
    logs = ""
    try:
        api.stop(cid, timeout=max(0, int(round(timeout))))
    except dockerErrors.NotFound:
        return {"exit": None, "logs": None}
    except dockerErrors.APIError as e:
        log.warn("stop {cid}: {error}", cid=cid[:12], error=_oneLine(str(e)))
    try:
        exit_ = _exitInfo(api.inspect_container(cid)["State"])
        logs = _logText(api.logs(cid, stdout=True, stderr=True, tail=tail))
    except dockerErrors.APIError as e:
        log.warn("inspect {cid} before removal: {error}", cid=cid[:12], error=_oneLine(str(e)))
    try:
        api.remove_container(cid, force=True)
    except dockerErrors.NotFound:
        pass
    return {"exit": exit_, "logs": logs}


def _thd_logs(api, cid: str, tail: int) -> Optional[str]:
    try:
        return _logText(api.logs(cid, stdout=True, stderr=True, tail=tail))
    except dockerErrors.NotFound:
        return None


def _thd_reap(api, ownPid: int, ownStart: str, alive: Callable[[int, str], bool]) -> List[str]:
    reaped = []
    for c in api.containers(all=True, filters={"label": LABEL_ROLE + "=sandbox"}):
        labels = c.get("Labels") or {}
        pid = labels.get(LABEL_PID, "")
        start = labels.get(LABEL_START, "")
        if pid.isdigit() and (int(pid), start) == (ownPid, ownStart):
            continue
        if pid.isdigit() and start and alive(int(pid), start):
            continue  # another live runner's sandbox
        try:
            api.remove_container(c["Id"], force=True)
            reaped.append(c["Id"])
        except dockerErrors.NotFound:
            pass
    return reaped


def _oneLine(text: str) -> str:
    return " ".join(str(text).split())[:400]


def _isAlive(pid: int, start: str) -> bool:
    return processStartTime(pid) == start


# ---------------------------------------------------------------------------
# The Twisted-facing objects


class SandboxHandle:
    """
    A launched container.  It stays (exited, not removed) until L{stop}, so
    its exit code and logs can be read.

    @ivar containerID: Docker's id of the container.
    @ivar imageID: the image id it was created from (the resolved digest).
    @ivar pid: the container's first process on this machine right after
        start (0 if it had already exited).
    @ivar cgroupPath: that process's cgroup v2 path, C{<cgroup_parent>/<id>}
        ("" if it had already exited).
    @ivar bait: the planted fake credentials, path → content.
    """

    def __init__(self, sandbox: "DockerSandbox", containerID: str, imageID: str, pid: int,
                 bait: Dict[str, str], cgroupPath: str = "") -> None:
        self._sandbox = sandbox
        self.containerID = containerID
        self.imageID = imageID
        self.pid = pid
        self.cgroupPath = cgroupPath
        self.bait = bait
        self._exit: Optional[ExitInfo] = None
        self._waiters: List[Deferred] = []
        self._polling = False
        self._stopping: Optional[Deferred] = None
        self._finalLogs: Optional[str] = None

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

    async def stop(self, timeout: float = 5) -> None:
        """
        Stop (SIGTERM, SIGKILL after C{timeout} s) and force-remove the
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
                 defaultImage: str = DEFAULT_IMAGE) -> None:
        self._reactor = reactor
        self._factory = dockerClientFactory
        self._threadpool = threadpool
        self.defaultImage = defaultImage
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

        if self._threadpool is not None:
            return deferToThreadPool(self._reactor, self._threadpool, run)
        return deferToThread(run)

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

    async def launch(self, runID: RunID, spec: SandboxSpec, cgroupParent: str) -> SandboxHandle:
        """
        Pull per policy, create, plant bait, start.  Raises L{SandboxError}
        with a one-line reason; a container that exits at once is not an
        error (see L{SandboxHandle.wait}).
        """
        plan = planLaunch(runID, spec, cgroupParent, self.defaultImage, self._pid, self._start)
        try:
            started = await self._call(_thd_launch, plan)
        except SandboxError:
            raise
        except dockerErrors.DockerException as e:
            raise SandboxError("docker: %s" % (_oneLine(str(e)),)) from None
        log.info("sandbox {cid} for run {run} from {image} ({status})", cid=started["id"][:12], run=runID.hex(),
                 image=plan.image, status=started["status"])
        return SandboxHandle(self, started["id"], started["imageID"], started["pid"], plan.bait, started["cgroup"])
