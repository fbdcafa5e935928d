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
  - the command runs under a small shell init (L{INIT_SCRIPT}, PID 1 of
    the container) that records the install's exit status and then stays,
    so processes the install leaves behind are observed until they end
    (L{SandboxHandle.snapshot} reads them from the host);
  - logs are kept until L{SandboxHandle.stop} and read for failure reasons;
  - containers left by a dead runner are reaped at start.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import sys
import tarfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
import docker
from docker import errors as dockerErrors
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger

from fangs.npm import installSpecCommand
from fangs.runner import bait as baitmod
from fangs.runner.cgroups import cgroupOfPid
from fangs.wire import RunID, SandboxSpec, WatchedPath

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

#: C{/tmp} is where C{npmInstallCommand} installs.  It stays executable
#: (Docker mounts a tmpfs C{noexec} unless told C{exec}): packages whose
#: install scripts run binaries from C{node_modules} (esbuild, sharp,
#: @swc/core) must behave as they do on a developer's machine, and a
#: dropper's second stage must run, or the scan would not observe the real
#: behaviour.  C{nosuid} and C{nodev} stay.
TMPFS = {
    "/tmp": "rw,exec,nosuid,nodev,size=256m",
    # Replaces Docker's own noexec /dev/shm: second stages dropped there run
    # under observation too.
    "/dev/shm": "rw,exec,nosuid,nodev,size=64m",
    "/run": "rw,nosuid,nodev,noexec,size=16m",
}

#: The seccomp profile every sandbox gets, shipped in C{conf/}.
SECCOMP_PROFILE = "seccomp-sandbox.json"
IO_URING_SYSCALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")

#: Where the init records the install's exit status (C{/tmp} is the
#: sandbox's own tmpfs, writable by any sandbox user).
INSTALL_STATUS = "/tmp/.fangs-install-exit"

#: PID 1 of every sandbox: run the command (C{"$@"}) with stdin closed,
#: record its exit status, then stay until the runner stops the container
#: (the container's stdin is held open and never written, so C{read}
#: blocks without a process or a timer of its own).  When the init exits
#: the kernel kills every process left in the container, so it must not be
#: the install itself.  If stdin ever reaches its end the init exits with
#: the install's status.  Only shell builtins run after the command: the
#: sensor sees nothing of the init but its one C{sh}.
INIT_SCRIPT = (
    '"$@" </dev/null; s=$?; echo "$s" >' + INSTALL_STATUS
    + '; while read -r _; do :; done; exit "$s"'
)
INIT_NAME = "fangs-init"


def seccompProfilePath() -> str:
    """
    The shipped seccomp profile: the checkout's C{conf/} copy when running
    from one, else the installed data file.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(here, "..", "..", "conf", SECCOMP_PROFILE),
        os.path.join(sys.prefix, "share", "fangs", "conf", SECCOMP_PROFILE),
    ]
    for c in candidates:
        if os.path.exists(c):
            return os.path.normpath(c)
    raise SandboxError("seccomp profile %s not found (looked in %s)" % (SECCOMP_PROFILE, ", ".join(candidates)))


def loadSeccompProfile(path: Optional[str] = None) -> str:
    """
    The profile as compact JSON text for C{SecurityOpt} (C{seccomp=<json>}).
    Refuses a profile that allows any io_uring system call.
    """
    path = path or seccompProfilePath()
    try:
        with open(path, "rb") as f:
            profile = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise SandboxError("seccomp profile %s: %s" % (path, e)) from None
    if not isinstance(profile, dict) or profile.get("defaultAction") != "SCMP_ACT_ERRNO":
        raise SandboxError("seccomp profile %s must deny by default" % (path,))
    for rule in profile.get("syscalls") or []:
        if rule.get("action") == "SCMP_ACT_ALLOW" and set(rule.get("names") or ()) & set(IO_URING_SYSCALLS):
            raise SandboxError("seccomp profile %s allows io_uring" % (path,))
    return json.dumps(profile, separators=(",", ":"))

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
# Bait files and the sandbox user's home


def baitTar(files: Dict[str, str], uid: int = 0, gid: int = 0, home: str = "/root",
            includeHome: bool = False) -> bytes:
    """
    A tar of the bait files (mode 0600) and their parent directories below
    C{home} (0700) for C{put_archive} at C{/}.  The home itself keeps the
    image's owner and mode; it is only included (owned by the user, mode
    0755, 0700 for root's) with C{includeHome}, when the image lacks it.
    """
    buf = io.BytesIO()
    now = int(time.time())  # file mtimes only, not logic
    homeParts = len(home.strip("/").split("/")) if home.strip("/") else 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = set()
        for path in files:
            parts = path.strip("/").split("/")
            for i in range(max(1, homeParts + 1), len(parts)):  # below the home
                dirs.add("/".join(parts[:i]))
        if includeHome and home.strip("/"):
            info = tarfile.TarInfo(home.strip("/"))
            info.type, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, uid, gid, now
            info.mode = 0o700 if uid == 0 else 0o755
            tar.addfile(info)
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o700, uid, gid, now
            tar.addfile(info)
        for path, content in sorted(files.items()):
            data = content.encode()
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o600, uid, gid, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@attrs.frozen
class SandboxUser:
    """
    Who the sandbox runs as, resolved against the image's C{/etc/passwd}.
    """

    uid: int
    gid: int
    home: str


def resolveUser(user: str, passwd: str, envHome: str = "") -> SandboxUser:
    """
    The uid, gid and home of C{user} (C{uid[:gid]} or C{name[:group]}) in
    an image whose C{/etc/passwd} is C{passwd}.  C{HOME} from the spec wins;
    a uid the file does not list gets Docker's own choice, C{/}.  Raises
    L{SandboxError} for a name the image does not know.
    """
    name, _, group = user.partition(":")
    entries = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2].isdigit() and fields[3].isdigit():
            entries.append(fields)
    entry = None
    for fields in entries:
        if (name.isdigit() and fields[2] == str(int(name))) or fields[0] == name:
            entry = fields
            break
    if entry is None and not name.isdigit():
        if name == "root":
            entry = ["root", "x", "0", "0", "root", "/root", "/bin/sh"]
        else:
            raise SandboxError("user %r is not in the image's /etc/passwd" % (name,))
    uid = int(entry[2]) if entry else int(name)
    gid = int(entry[3]) if entry else uid
    if group:
        gid = int(group) if group.isdigit() else gid
    home = envHome or (entry[5] if entry else "/")
    if not home.startswith("/") or "\0" in home:
        home = "/"
    return SandboxUser(uid=uid, gid=gid, home=os.path.normpath(home))


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
    Everything L{_thd_create} needs, validated: plain data, and the bait
    factory (called on the pool thread: RSA key generation blocks).
    """

    image: str
    pullPolicy: str
    name: str
    create: Dict[str, Any]
    user: str
    envHome: str = ""
    makeBait: Callable[[], Any] = baitmod.makeBait


def planLaunch(runID: RunID, spec: SandboxSpec, cgroupParent: str, defaultImage: str = DEFAULT_IMAGE,
               runnerPid: int = 0, runnerStart: str = "", seccomp: str = "",
               makeBait: Callable[[], Any] = baitmod.makeBait) -> LaunchPlan:
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
    security = ["no-new-privileges:true"]
    if seccomp:
        security.append("seccomp=" + seccomp)

    runHex = runID.hex()
    labels = {LABEL_ROLE: "sandbox", LABEL_RUN: runHex, LABEL_PID: str(runnerPid), LABEL_START: runnerStart}
    hostConfig = {
        "NetworkMode": network,
        "CapDrop": ["ALL"],
        "CapAdd": list(CAP_ADD),
        "SecurityOpt": security,
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
        # PID 1 is INIT_SCRIPT's shell, not Docker's tini: tini exits with
        # its child, and the kernel would kill what the install left behind.
        "Init": False,
        "LogConfig": {"Type": LOG_CONFIG["Type"], "Config": dict(LOG_CONFIG["Config"])},
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
    }
    create = {
        "command": ["sh", "-c", INIT_SCRIPT, INIT_NAME] + command,
        "stdin_open": True,
        "user": user,
        "environment": ["%s=%s" % kv for kv in sorted(env.items())],
        "working_dir": spec.working_dir or None,
        "labels": labels,
        "host_config": hostConfig,
        "network_disabled": network == "none",
    }
    return LaunchPlan(image=image, pullPolicy=pull, name="fangs-" + runHex, create=create, user=user,
                      envHome=env.get("HOME", ""), makeBait=makeBait)


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


def _thd_readFile(api, cid: str, path: str, limit: int = 1 << 20) -> Optional[str]:
    """
    A regular file of a created container (C{get_archive}), or C{None}.
    """
    try:
        stream, _ = api.get_archive(cid, path)
        data = b"".join(stream)
    except dockerErrors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.size <= limit:
                f = tar.extractfile(member)
                return f.read().decode("utf-8", "replace") if f is not None else None
    return None


def _thd_exists(api, cid: str, path: str) -> bool:
    try:
        stream, _ = api.get_archive(cid, path)
    except dockerErrors.NotFound:
        return False
    close = getattr(stream, "close", None)
    if close is not None:
        close()
    return True


def _thd_create(api, plan: LaunchPlan) -> Dict[str, Any]:
    """
    Pull per policy, make the run's bait, create the container with the
    bait's environment, resolve its user's home and plant the bait there.
    The container is not started.
    """
    imageID = _thd_ensureImage(api, plan.image, plan.pullPolicy)
    bait = plan.makeBait()
    create = dict(plan.create)
    env = list(create.get("environment") or [])
    given = {item.split("=", 1)[0] for item in env}
    env += ["%s=%s" % kv for kv in sorted(bait.env.items()) if kv[0] not in given]
    create["environment"] = env
    try:
        created = api.create_container(imageID, name=plan.name, **create)
    except dockerErrors.APIError as e:
        raise SandboxError("create container: %s" % (_oneLine(e.explanation or str(e)),)) from None
    cid = created["Id"]
    for warning in created.get("Warnings") or []:
        log.warn("docker create {cid}: {warning}", cid=cid[:12], warning=warning)
    try:
        user = resolveUser(plan.user, _thd_readFile(api, cid, "/etc/passwd") or "", plan.envHome)
        files = bait.filesIn(user.home)
        missingHome = user.home != "/" and not _thd_exists(api, cid, user.home)
        if not api.put_archive(cid, "/", baitTar(files, user.uid, user.gid, user.home, missingHome)):
            raise SandboxError("planting bait files failed")
    except BaseException as e:
        _removeQuietly(api, cid)
        if isinstance(e, dockerErrors.APIError):
            raise SandboxError("plant bait: %s" % (_oneLine(e.explanation or str(e)),)) from None
        raise
    return {"id": cid, "imageID": imageID, "bait": bait, "home": user.home, "uid": user.uid, "gid": user.gid}


def _removeQuietly(api, cid: str) -> None:
    try:
        api.remove_container(cid, force=True)
    except dockerErrors.APIError:
        log.warn("container {cid} not removed after a failed launch", cid=cid[:12])


def _thd_start(api, cid: str) -> Dict[str, Any]:
    try:
        api.start(cid)
        state = api.inspect_container(cid)["State"]
    except BaseException as e:
        _removeQuietly(api, cid)
        if isinstance(e, dockerErrors.APIError):
            raise SandboxError("start container: %s" % (_oneLine(e.explanation or str(e)),)) from None
        raise
    # A container that already exited is not a launch failure: wait() reports it.
    pid = state.get("Pid") or 0
    return {"pid": pid, "status": state.get("Status", ""),
            "cgroup": (cgroupOfPid(pid) or "") if pid else ""}


# ---------------------------------------------------------------------------
# The life of the install, read from the host


@attrs.frozen
class ProcessInfo:
    """
    A live process of a sandbox, as the host's C{/proc} shows it (host pids).
    """

    pid: int
    ppid: int
    uid: int
    gid: int
    comm: str
    argv: Tuple[str, ...]
    exe: str
    startTicks: int


@attrs.frozen
class LifeSnapshot:
    """
    One look at a running sandbox.

    @ivar installExit: the exit status the init recorded, C{None} while the
        install runs (or when the record is unreadable).
    @ivar installExitedWallNs: when it was recorded (the file's mtime, wall
        clock ns), 0 if unknown.
    @ivar installExitedMonoNs: the same moment on the monotonic clock the
        sensor's C{TsNs} uses, 0 if unknown.
    @ivar processes: live processes of the container other than its init
        (zombies are gone); only listed once the install has exited.
    @ivar monoNs: when the snapshot was taken (monotonic ns).
    @ivar cgroupID: the container cgroup's id (what BPF reports), 0 if gone.
    @ivar initAlive: whether the container's init still runs.
    @ivar oomKills: processes of the container the kernel's OOM killer
        ended (the container itself survives them: its init is small).
    """

    installExit: Optional[int]
    installExitedWallNs: int
    installExitedMonoNs: int
    processes: Tuple[ProcessInfo, ...]
    monoNs: int
    cgroupID: int = 0
    initAlive: bool = True
    oomKills: int = 0


def _readSmall(path: str, limit: int = 65536) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def readProcess(pid: int, proc: str = "/proc") -> Optional[ProcessInfo]:
    """
    L{ProcessInfo} of C{pid}, or C{None} when it is gone or a zombie.
    """
    raw = _readSmall("%s/%d/stat" % (proc, pid))
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        state, ppid, startTicks = fields[0], int(fields[1]), int(fields[19])
    except (ValueError, IndexError):
        return None
    if state in ("Z", "X", "x"):
        return None
    uid = gid = -1
    status = _readSmall("%s/%d/status" % (proc, pid)) or b""
    for line in status.decode("utf-8", "replace").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        elif line.startswith("Gid:"):
            gid = int(line.split()[1])
    cmdline = _readSmall("%s/%d/cmdline" % (proc, pid)) or b""
    argv = tuple(a.decode("utf-8", "replace") for a in cmdline.rstrip(b"\0").split(b"\0")) if cmdline else ()
    try:
        exe = os.readlink("%s/%d/exe" % (proc, pid))
    except OSError:
        exe = ""
    return ProcessInfo(pid=pid, ppid=ppid, uid=uid, gid=gid, comm=comm, argv=argv, exe=exe, startTicks=startTicks)


def cgroupProcs(cgroupDir: str) -> List[int]:
    """
    Every pid in the cgroup C{cgroupDir} and its descendants.
    """
    pids: List[int] = []
    for dirpath, _dirs, files in os.walk(cgroupDir):
        if "cgroup.procs" in files:
            raw = _readSmall(os.path.join(dirpath, "cgroup.procs"), 1 << 22) or b""
            pids.extend(int(x) for x in raw.split() if x.isdigit())
    return sorted(set(pids))


def readInstallStatus(rootPid: int, proc: str = "/proc") -> Tuple[Optional[int], int]:
    """
    The install's exit status recorded by the init inside the container
    (through the init's root, never following a symlink the package may
    have put there) and the record's mtime; C{(None, 0)} if there is none.
    """
    path = "%s/%d/root%s" % (proc, rootPid, INSTALL_STATUS)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, 0
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not text.isdigit():
        return None, 0
    return int(text), st.st_mtime_ns


def oomKills(cgroupDir: str, memoryDir: str = "") -> int:
    """
    How many processes the OOM killer ended in the cgroup: C{oom_kill} of
    cgroup v2's C{memory.events}, else of the v1 memory controller's
    C{memory.oom_control} at C{memoryDir}.
    """
    for path in (os.path.join(cgroupDir, "memory.events"),
                 os.path.join(memoryDir, "memory.oom_control") if memoryDir else ""):
        raw = _readSmall(path) if path else None
        if raw is None:
            continue
        for line in raw.decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
                return int(parts[1])
    return 0


def _thd_snapshot(cgroupDir: str, rootPid: int, monotonicNs: Callable[[], int],
                  wallNs: Callable[[], int], proc: str = "/proc", memoryDir: str = "",
                  detailsAlways: bool = False) -> LifeSnapshot:
    mono, wall = monotonicNs(), wallNs()
    try:
        cgroupID = os.stat(cgroupDir).st_ino
    except OSError:
        cgroupID = 0
    # The record first: once it exists the install's own process has been
    # reaped by the init, so every process listed after it outlived the
    # install.
    code, mtime = readInstallStatus(rootPid, proc)
    pids = cgroupProcs(cgroupDir) if cgroupID else []
    initAlive = rootPid in pids
    processes = []
    # While the install runs its processes are its own: only their number
    # matters then, so their details are only read once it has exited.
    for pid in pids if code is not None or detailsAlways else ():
        if pid == rootPid:
            continue
        info = readProcess(pid, proc)
        if info is not None:
            processes.append(info)
    exitedMono = mono - max(0, wall - mtime) if mtime else 0
    return LifeSnapshot(installExit=code, installExitedWallNs=mtime, installExitedMonoNs=exitedMono,
                        processes=tuple(processes), monoNs=mono, cgroupID=cgroupID, initAlive=initAlive,
                        oomKills=oomKills(cgroupDir, memoryDir))


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
        try:
            started = await self._sandbox._call(_thd_start, self.containerID)
        except SandboxError:
            raise
        except dockerErrors.DockerException as e:
            raise SandboxError("docker: %s" % (_oneLine(str(e)),)) from None
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
        try:
            made = await self._call(_thd_create, plan)
        except SandboxError:
            raise
        except dockerErrors.DockerException as e:
            raise SandboxError("docker: %s" % (_oneLine(str(e)),)) from None
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
