# -*- test-case-name: tests.runner.test_sandbox -*-
"""
What a sandbox container is made of: the hardening every sandbox gets
(capabilities dropped, the seccomp profile that refuses io_uring, tmpfs
mounts, ulimits, bounded memory, CPU and pids), the init that records the
install's exit, the bait files for the sandbox user's home, and
L{planLaunch}: a job's L{SandboxSpec} validated into the Engine API's
container creation request (L{LaunchPlan}).  Pure: no Docker call here
(those are in L{fangs.runner.dockerops}).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
import time
from typing import Any, Callable, Dict, List, Optional

import attrs

from fangs.runner import bait as baitmod
from fangs.wire import RunID, SandboxSpec

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


class SandboxError(Exception):
    """
    A sandbox could not be launched; the message is a one-line reason.
    """


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
@attrs.frozen
class LaunchPlan:
    """
    Everything L{fangs.runner.dockerops._thd_create} needs, validated: plain data, and the bait
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
