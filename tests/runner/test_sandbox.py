"""
Tests for L{fangs.runner.sandbox} and its parts (L{fangs.runner.containerspec},
L{fangs.runner.dockerops}, L{fangs.runner.sandboxprocs}).

The unit tests inject a hand-written fake of the docker SDK's low-level API
and a thread pool that runs calls at once, so they are synchronous.  The
real containers are in L{tests.integration.runner.test_sandbox}.
"""

import io
import os
import secrets
import shlex
import tarfile

from docker import errors as dockerErrors
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import bait as baitmod
from fangs.runner.containerspec import (
    INIT_NAME,
    INIT_SCRIPT,
    INSTALL_STATUS,
    SandboxError,
    SandboxUser,
    baitTar,
    loadSeccompProfile,
    planLaunch,
    resolveUser,
    seccompProfilePath,
)
from fangs.runner.sandbox import DockerSandbox, ExitInfo, npmInstallCommand
from fangs.runner.sandboxprocs import _thd_snapshot, cgroupProcs, readInstallStatus, readProcess
from fangs.wire import RunID, SandboxSpec, WatchedPath

PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" \
    "node:x:1000:1000:node:/home/node:/bin/sh\n"

#: One bait for the unit tests (RSA key generation is not free).
BAIT = baitmod.makeBait(rsaBits=1024)

MiB = 1024 * 1024


def runID() -> RunID:
    return RunID(os.urandom(16))


def S(**kw) -> SandboxSpec:
    """
    A spec with a command (an empty one is refused).
    """
    kw.setdefault("command", ["true"])
    return SandboxSpec(**kw)


# ---------------------------------------------------------------------------
# Fakes


class FakeReactor(Clock):
    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class ImmediatePool:
    """
    A thread pool that runs each call at once on the calling thread.
    """

    def callInThreadWithCallback(self, onResult, f, *args, **kw):
        try:
            result = f(*args, **kw)
        except BaseException:
            from twisted.python.failure import Failure

            onResult(False, Failure())
        else:
            onResult(True, result)


class FakeAPI:
    """
    The part of C{docker.APIClient} the sandbox uses, in memory.
    """

    def __init__(self, images=("fangs-sandbox/node:20",), files=None):
        self.images = {name: "sha256:" + secrets.token_hex(32) for name in images}
        #: The image's files get_archive answers for (a path -> its content,
        #: None for a directory).
        self.files = {"/etc/passwd": PASSWD, "/root": None, "/home/node": None} if files is None else files
        self.containers_ = {}
        self.calls = []
        self.pullStream = None  # messages the next pull yields
        self.startError = None
        self.exitOnStart = None  # exit code the container has right after start

    def _missing(self, cid):
        if cid not in self.containers_:
            raise dockerErrors.NotFound("No such container: " + cid)
        return self.containers_[cid]

    def inspect_image(self, name):
        self.calls.append(("inspect_image", name))
        if name not in self.images:
            raise dockerErrors.ImageNotFound("No such image: " + name)
        return {"Id": self.images[name]}

    def pull(self, repo, tag=None, stream=False, decode=False):
        self.calls.append(("pull", repo, tag))
        messages = self.pullStream or [{"status": "Downloaded"}]
        if not any("error" in m for m in messages):
            self.images["%s:%s" % (repo, tag)] = "sha256:" + secrets.token_hex(32)
        return iter(messages)

    def create_container(self, image, name=None, **kw):
        self.calls.append(("create_container", image, name))
        cid = secrets.token_hex(32)
        self.containers_[cid] = {"image": image, "name": name, "kw": kw, "archives": [], "logs": b"",
                                 "State": {"Status": "created", "Pid": 0, "ExitCode": 0, "OOMKilled": False}}
        return {"Id": cid, "Warnings": []}

    def get_archive(self, cid, path):
        self._missing(cid)
        self.calls.append(("get_archive", path))
        if path not in self.files:
            raise dockerErrors.NotFound("Could not find the file %s in container %s" % (path, cid))
        content = self.files[path]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(os.path.basename(path))
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = content.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return iter([buf.getvalue()]), {"name": os.path.basename(path)}

    def put_archive(self, cid, path, data):
        self._missing(cid)["archives"].append((path, data))
        return True

    def start(self, cid):
        c = self._missing(cid)
        self.calls.append(("start", cid))
        if self.startError:
            raise dockerErrors.APIError(self.startError)
        if self.exitOnStart is not None:
            c["State"] = {"Status": "exited", "Pid": 0, "ExitCode": self.exitOnStart, "OOMKilled": False}
        else:
            c["State"] = {"Status": "running", "Pid": 4242, "ExitCode": 0, "OOMKilled": False}

    def inspect_container(self, cid):
        return {"Id": cid, "State": dict(self._missing(cid)["State"])}

    def exit(self, cid, code, oom=False, logs=b""):
        self.containers_[cid]["State"] = {"Status": "exited", "Pid": 0, "ExitCode": code, "OOMKilled": oom}
        self.containers_[cid]["logs"] = logs

    def stop(self, cid, timeout=None):
        self.calls.append(("stop", cid, timeout))
        c = self._missing(cid)
        if c["State"]["Status"] == "running":
            c["State"] = {"Status": "exited", "Pid": 0, "ExitCode": 143, "OOMKilled": False}

    def logs(self, cid, stdout=True, stderr=True, tail="all"):
        lines = self._missing(cid)["logs"].splitlines(True)
        return b"".join(lines[-tail:])

    def remove_container(self, cid, force=False):
        self.calls.append(("remove_container", cid, force))
        self._missing(cid)
        del self.containers_[cid]

    def containers(self, all=False, filters=None):
        key, _, value = filters["label"].partition("=")
        return [{"Id": cid, "Labels": c["kw"]["labels"]} for cid, c in self.containers_.items()
                if c["kw"]["labels"].get(key) == value]


class FakeClient:
    def __init__(self, api):
        self.api = api


def fakeSandbox(api, **kw):
    kw.setdefault("seccompProfile", '{"defaultAction":"SCMP_ACT_ERRNO"}')
    return DockerSandbox(FakeReactor(), lambda: FakeClient(api), threadpool=ImmediatePool(),
                         makeBait=lambda: BAIT, **kw)


def untar(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (m.mode, m.uid, m.isdir(), tar.extractfile(m).read().decode() if m.isfile() else None)
                for m in tar.getmembers()}


# ---------------------------------------------------------------------------
# Unit tests


class PlanTests(SynchronousTestCase):
    def test_defaultsAndHardening(self):
        rid = runID()
        plan = planLaunch(rid, S(command=["true"]), "/fangs/" + rid.hex(), runnerPid=77, runnerStart="9")
        hc = plan.create["host_config"]
        self.assertEqual(plan.image, "fangs-sandbox/node:20")
        self.assertEqual(plan.pullPolicy, "missing")
        self.assertEqual(plan.create["user"], "1000:1000")
        # The command runs under the init, which stays PID 1 (not Docker's tini).
        self.assertEqual(plan.create["command"], ["sh", "-c", INIT_SCRIPT, INIT_NAME, "true"])
        self.assertTrue(plan.create["stdin_open"])
        self.assertFalse(hc["Init"])
        self.assertIn("NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt", plan.create["environment"])
        self.assertEqual(plan.create["labels"], {"io.fangs.role": "sandbox", "io.fangs.run": rid.hex(),
                                                 "io.fangs.runner-pid": "77", "io.fangs.runner-start": "9"})
        self.assertEqual(hc["NetworkMode"], "bridge")
        self.assertEqual((hc["Memory"], hc["MemorySwap"]), (512 * MiB, 512 * MiB))
        self.assertEqual(hc["NanoCpus"], 1_000_000_000)
        self.assertEqual(hc["PidsLimit"], 256)
        self.assertEqual(hc["CgroupParent"], "/fangs/" + rid.hex())
        self.assertEqual(hc["CapDrop"], ["ALL"])
        self.assertEqual(hc["CapAdd"], [])
        self.assertEqual(hc["SecurityOpt"], ["no-new-privileges:true"])
        self.assertFalse(hc["Privileged"])
        self.assertFalse(hc["AutoRemove"])
        self.assertEqual((hc["Binds"], hc["Mounts"]), ([], []))
        tmp = hc["Tmpfs"]["/tmp"].split(",")
        # Docker mounts a tmpfs noexec unless told exec: installs run binaries there.
        self.assertIn("exec", tmp)
        self.assertNotIn("noexec", tmp)
        self.assertIn("nosuid", tmp)
        self.assertIn("nodev", tmp)
        self.assertTrue([o for o in tmp if o.startswith("size=")])
        shm = hc["Tmpfs"]["/dev/shm"].split(",")
        self.assertEqual([o for o in shm if "exec" in o or o in ("nosuid", "nodev")], ["exec", "nosuid", "nodev"])
        self.assertEqual({u["Name"] for u in hc["Ulimits"]}, {"nofile", "nproc", "fsize"})
        self.assertEqual(hc["LogConfig"]["Type"], "json-file")
        self.assertIn("max-size", hc["LogConfig"]["Config"])
        self.assertEqual(hc["RestartPolicy"], {"Name": "no"})
        self.assertEqual(plan.name, "fangs-" + rid.hex())

    def test_specValuesWin(self):
        spec = S(image="other:1", command=["a"], env={"NODE_EXTRA_CA_CERTS": "/x", "K": "v"},
                           working_dir="/tmp", user="0:0", network_mode="none", memory_bytes=64 * MiB,
                           nano_cpus=500_000_000, pids_limit=32, pull_policy="never")
        plan = planLaunch(runID(), spec, "/fangs/x")
        hc = plan.create["host_config"]
        self.assertEqual(plan.image, "other:1")
        self.assertEqual(plan.pullPolicy, "never")
        self.assertEqual(plan.create["environment"], ["K=v", "NODE_EXTRA_CA_CERTS=/x"])
        self.assertEqual(plan.create["working_dir"], "/tmp")
        self.assertEqual(plan.create["command"][4:], ["a"])
        self.assertEqual(plan.create["user"], "0:0")
        self.assertTrue(plan.create["network_disabled"])
        self.assertEqual((hc["Memory"], hc["MemorySwap"], hc["NanoCpus"], hc["PidsLimit"]),
                         (64 * MiB, 64 * MiB, 500_000_000, 32))

    def test_refused(self):
        for spec in [S(network_mode="host"), S(network_mode="container:abc"),
                     S(network_mode="ns:/proc/1/ns/net"), S(pull_policy="sometimes"),
                     S(pids_limit=-1), S(memory_bytes=1024), S(user="0:0; x"),
                     S(image="bad image"), S(env={"A=B": "c"}), SandboxSpec(command=[])]:
            self.assertRaises(SandboxError, planLaunch, runID(), spec, "/fangs/x")
        self.assertRaises(SandboxError, planLaunch, runID(), S(), "/fangs/../etc")

    def test_seccompProfileApplied(self):
        plan = planLaunch(runID(), S(), "/fangs/x", seccomp='{"defaultAction":"SCMP_ACT_ERRNO"}')
        self.assertEqual(plan.create["host_config"]["SecurityOpt"],
                         ["no-new-privileges:true", 'seccomp={"defaultAction":"SCMP_ACT_ERRNO"}'])

    def test_envHomeKept(self):
        self.assertEqual(planLaunch(runID(), S(env={"HOME": "/work"}), "/fangs/x").envHome, "/work")


class SeccompProfileTests(SynchronousTestCase):
    def test_shippedProfileIsTheEngineDefaultWithoutIoUring(self):
        import json

        with open(seccompProfilePath()) as f:
            profile = json.load(f)
        self.assertEqual(profile["defaultAction"], "SCMP_ACT_ERRNO")
        allowed = {n for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for n in rule["names"]}
        for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
            self.assertNotIn(name, allowed)
        # What ordinary installs need stays.
        for name in ("openat", "execve", "clone", "connect", "epoll_wait", "statx", "clone3", "pidfd_open"):
            self.assertIn(name, allowed)
        self.assertGreater(len(allowed), 300)
        text = loadSeccompProfile()
        self.assertEqual(json.loads(text), profile)
        self.assertNotIn("\n", text)

    def test_profileThatAllowsIoUringRefused(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","io_uring_setup"],'
                    '"action":"SCMP_ACT_ALLOW"}]}')
        self.assertRaises(SandboxError, loadSeccompProfile, path)
        with open(path, "w") as f:
            f.write('{"defaultAction":"SCMP_ACT_ALLOW"}')
        self.assertRaises(SandboxError, loadSeccompProfile, path)
        self.assertRaises(SandboxError, loadSeccompProfile, path + ".missing")


class UserTests(SynchronousTestCase):
    def test_resolve(self):
        self.assertEqual(resolveUser("0:0", PASSWD), SandboxUser(0, 0, "/root"))
        self.assertEqual(resolveUser("root", PASSWD), SandboxUser(0, 0, "/root"))
        self.assertEqual(resolveUser("1000:1000", PASSWD), SandboxUser(1000, 1000, "/home/node"))
        self.assertEqual(resolveUser("node", PASSWD), SandboxUser(1000, 1000, "/home/node"))
        self.assertEqual(resolveUser("node:50", PASSWD), SandboxUser(1000, 50, "/home/node"))
        # A uid the image does not list: Docker gives it HOME=/.
        self.assertEqual(resolveUser("4242", PASSWD), SandboxUser(4242, 4242, "/"))
        self.assertEqual(resolveUser("1000", PASSWD, envHome="/work/"), SandboxUser(1000, 1000, "/work"))
        self.assertEqual(resolveUser("root", ""), SandboxUser(0, 0, "/root"))
        self.assertRaises(SandboxError, resolveUser, "ghost", PASSWD)

    def test_baitTarBelowTheHome(self):
        files = BAIT.filesIn("/home/node")
        members = untar(baitTar(files, 1000, 1000, "/home/node"))
        self.assertNotIn("home", members)
        self.assertNotIn("home/node", members)  # the home keeps the image's owner and mode
        self.assertEqual(members["home/node/.ssh"][:3], (0o700, 1000, True))
        self.assertEqual(members["home/node/.config/gh"][:3], (0o700, 1000, True))
        self.assertEqual(members["home/node/.npmrc"], (0o600, 1000, False, BAIT.files[".npmrc"]))
        # A home the image lacks is made, owned by the user.
        members = untar(baitTar(files, 1000, 1000, "/home/node", includeHome=True))
        self.assertEqual(members["home/node"][:3], (0o755, 1000, True))
        self.assertNotIn("home", members)


def fakeProc(test, processes, rootPid=100, status=None, statusMtimeNs=0):
    """
    A fake C{/proc} and cgroup directory: C{processes} maps pid to
    C{(state, ppid, argv)}.
    """
    base = test.mktemp()
    proc = os.path.join(base, "proc")
    cg = os.path.join(base, "cg", "fangs", "run", "cid")
    os.makedirs(cg)
    os.makedirs(os.path.join(cg, "sub"))
    pids = sorted(processes)
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write("".join("%d\n" % p for p in pids[:-1]))
    with open(os.path.join(cg, "sub", "cgroup.procs"), "w") as f:
        f.write("".join("%d\n" % p for p in pids[-1:]))
    for pid, (state, ppid, argv) in processes.items():
        d = os.path.join(proc, str(pid))
        os.makedirs(d)
        comm = argv[0][:15] if argv else "x"
        fields = [state, str(ppid)] + ["0"] * 17 + [str(pid * 7)] + ["0"] * 10
        with open(os.path.join(d, "stat"), "w") as f:
            f.write("%d (%s) %s\n" % (pid, comm + ") (tricky", " ".join(fields)))
        with open(os.path.join(d, "status"), "w") as f:
            f.write("Name:\t%s\nUid:\t1000\t1000\t1000\t1000\nGid:\t1001\t1001\t1001\t1001\n" % (comm,))
        with open(os.path.join(d, "cmdline"), "wb") as f:
            f.write(b"".join(a.encode() + b"\0" for a in argv))
        os.symlink("/usr/bin/" + comm, os.path.join(d, "exe"))
    root = os.path.join(proc, str(rootPid), "root", "tmp")
    os.makedirs(root, exist_ok=True)
    if status is not None:
        path = os.path.join(proc, str(rootPid), "root") + INSTALL_STATUS
        with open(path, "w") as f:
            f.write(status)
        os.utime(path, ns=(statusMtimeNs, statusMtimeNs))
    return proc, cg


class LifeSnapshotTests(SynchronousTestCase):
    def test_whileTheInstallRuns(self):
        proc, cg = fakeProc(self, {100: ("S", 0, ["sh", "-c", "init"]), 101: ("R", 100, ["npm", "install"])})
        snap = _thd_snapshot(cg, 100, lambda: 50, lambda: 1000, proc)
        self.assertIsNone(snap.installExit)
        self.assertTrue(snap.initAlive)
        self.assertEqual(snap.processes, ())  # the install's own processes are not read
        snap = _thd_snapshot(cg, 100, lambda: 50, lambda: 1000, proc, detailsAlways=True)
        [npm] = snap.processes
        self.assertEqual((npm.pid, npm.ppid, npm.argv, npm.uid, npm.gid, npm.exe, npm.startTicks),
                         (101, 100, ("npm", "install"), 1000, 1001, "/usr/bin/npm", 707))
        self.assertEqual(npm.comm, "npm) (tricky")
        self.assertEqual(snap.cgroupID, os.stat(cg).st_ino)

    def test_afterTheInstallZombiesAreGone(self):
        proc, cg = fakeProc(self, {100: ("S", 0, ["sh"]), 101: ("Z", 100, []), 102: ("S", 1, ["node", "x.js"])},
                            status="0\n", statusMtimeNs=900)
        snap = _thd_snapshot(cg, 100, lambda: 5000, lambda: 1000, proc)
        self.assertEqual((snap.installExit, snap.installExitedWallNs), (0, 900))
        # The monotonic time of the record: 100 ns before the snapshot.
        self.assertEqual((snap.monoNs, snap.installExitedMonoNs), (5000, 4900))
        self.assertEqual([p.pid for p in snap.processes], [102])

    def test_initGone(self):
        proc, cg = fakeProc(self, {101: ("S", 1, ["node"])}, status="3")
        snap = _thd_snapshot(cg, 100, lambda: 1, lambda: 1, proc)
        self.assertFalse(snap.initAlive)
        self.assertEqual(snap.installExit, 3)

    def test_cgroupGone(self):
        snap = _thd_snapshot(self.mktemp(), 100, lambda: 1, lambda: 1, self.mktemp())
        self.assertEqual((snap.processes, snap.initAlive, snap.cgroupID), ((), False, 0))

    def test_statusRecordNeverFollowsALink(self):
        proc, cg = fakeProc(self, {100: ("S", 0, ["sh"])})
        secret = os.path.join(self.mktemp())
        with open(secret, "w") as f:
            f.write("7\n")
        os.symlink(secret, os.path.join(proc, "100", "root") + INSTALL_STATUS)
        self.assertEqual(readInstallStatus(100, proc), (None, 0))
        os.unlink(os.path.join(proc, "100", "root") + INSTALL_STATUS)
        os.mkdir(os.path.join(proc, "100", "root") + INSTALL_STATUS)
        self.assertEqual(readInstallStatus(100, proc), (None, 0))

    def test_garbageRecord(self):
        proc, cg = fakeProc(self, {100: ("S", 0, ["sh"])}, status="zero")
        self.assertEqual(readInstallStatus(100, proc), (None, 0))

    def test_oomKills(self):
        base = self.mktemp()
        v2, v1 = os.path.join(base, "v2"), os.path.join(base, "v1")
        os.makedirs(v2)
        os.makedirs(v1)
        from fangs.runner.sandboxprocs import oomKills

        self.assertEqual(oomKills(v2, v1), 0)
        with open(os.path.join(v1, "memory.oom_control"), "w") as f:
            f.write("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
        self.assertEqual(oomKills(v2, v1), 2)
        with open(os.path.join(v2, "memory.events"), "w") as f:
            f.write("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        self.assertEqual(oomKills(v2, v1), 1)

    def test_helpers(self):
        proc, cg = fakeProc(self, {100: ("S", 0, ["sh"]), 105: ("S", 100, ["a"]), 103: ("S", 100, ["b"])})
        self.assertEqual(cgroupProcs(cg), [100, 103, 105])
        self.assertIsNone(readProcess(999, proc))


class NpmCommandTests(SynchronousTestCase):
    def test_shape(self):
        argv = npmInstallCommand("is-number", "7.0.0")
        self.assertEqual(argv[:2], ["sh", "-c"])
        words = shlex.split(argv[2])
        self.assertIn("is-number@7.0.0", words)
        self.assertIn("--ignore-scripts=false", words)
        self.assertIn("--dangerously-allow-all-scripts", words)
        self.assertIn("--foreground-scripts", words)
        self.assertEqual(words[words.index("is-number@7.0.0") - 1], "--")
        self.assertIn("exit ${s:-1}", argv[2])
        # No hard wait for stragglers: the init observes them.
        self.assertNotIn("sleep", argv[2])

    def test_injectionStaysOneWord(self):
        argv = npmInstallCommand("evil", "1.0.0; touch /pwned $(id) `id`")
        words = shlex.split(argv[2])
        self.assertIn("evil@1.0.0; touch /pwned $(id) `id`", words)
        self.assertNotIn("/pwned", words)

    def test_refusesOptionsAndEmpty(self):
        for package, version in [("--registry=http://x", "1"), ("", "1"), ("a", "--x"), ("a\0", "1")]:
            self.assertRaises(ValueError, npmInstallCommand, package, version)
        self.assertIn(" -- /fixtures/x.tgz", npmInstallCommand("/fixtures/x.tgz", "")[2])


class LaunchTests(SynchronousTestCase):
    def launch(self, sandbox, spec=S(command=["true"]), rid=None):
        return Deferred.fromCoroutine(sandbox.launch(rid or runID(), spec, "/fangs/x"))

    def test_missingPolicyDoesNotPullPresentImage(self):
        api = FakeAPI()
        handle = self.successResultOf(self.launch(fakeSandbox(api)))
        self.assertFalse([c for c in api.calls if c[0] == "pull"])
        c = api.containers_[handle.containerID]
        self.assertEqual(c["image"], api.images["fangs-sandbox/node:20"])  # the resolved id, not the tag
        self.assertEqual(handle.imageID, c["image"])
        self.assertEqual([p for p, _ in c["archives"]], ["/"])
        self.assertEqual(c["State"]["Status"], "running")
        self.assertEqual((handle.pid, handle.home), (4242, "/home/node"))

    def test_baitInTheRealHome(self):
        api = FakeAPI()
        handle = self.successResultOf(self.launch(fakeSandbox(api), S(user="node")))
        c = api.containers_[handle.containerID]
        self.assertEqual(handle.home, "/home/node")
        self.assertEqual(handle.bait, BAIT.filesIn("/home/node"))
        self.assertEqual(handle.baitPaths, sorted(BAIT.filesIn("/home/node")))
        self.assertIn("/home/node/.ssh/id_ed25519", handle.baitPaths)
        self.assertEqual(handle.canaries, dict(BAIT.canaries))
        members = untar(c["archives"][0][1])
        self.assertEqual(members["home/node/.aws/credentials"][:3], (0o600, 1000, False))
        # The bait environment is the container's, the spec's own values win.
        env = c["kw"]["environment"]
        for key, value in BAIT.env.items():
            self.assertIn("%s=%s" % (key, value), env)
        watched = handle.watchedPaths([WatchedPath("/root/"), WatchedPath("/root/.ssh/", True)])
        self.assertIn(WatchedPath("/home/node/", False), watched)
        self.assertIn(WatchedPath("/home/node/.ssh/", True), watched)
        self.assertIn(WatchedPath("/home/node/.config/gcloud/", True), watched)
        # Root's bait is in /root.
        root = self.successResultOf(self.launch(fakeSandbox(api), S(user="0:0")))
        self.assertEqual(root.home, "/root")
        self.assertIn("/root/.kube/config", root.bait)
        members = untar(api.containers_[root.containerID]["archives"][0][1])
        self.assertEqual(members["root/.kube/config"][:3], (0o600, 0, False))

    def test_specEnvWinsOverBaitEnv(self):
        api = FakeAPI()
        handle = self.successResultOf(self.launch(fakeSandbox(api), S(env={"GITHUB_TOKEN": "mine"})))
        env = api.containers_[handle.containerID]["kw"]["environment"]
        self.assertIn("GITHUB_TOKEN=mine", env)
        self.assertEqual([e for e in env if e.startswith("GITHUB_TOKEN=")], ["GITHUB_TOKEN=mine"])

    def test_missingHomeIsMade(self):
        api = FakeAPI(files={"/etc/passwd": PASSWD})
        handle = self.successResultOf(self.launch(fakeSandbox(api)))
        members = untar(api.containers_[handle.containerID]["archives"][0][1])
        self.assertEqual(members["home/node"][:3], (0o755, 1000, True))

    def test_unknownUserFailsAndRemoves(self):
        api = FakeAPI()
        f = self.failureResultOf(self.launch(fakeSandbox(api), S(user="ghost")), SandboxError)
        self.assertIn("ghost", str(f.value))
        self.assertEqual(api.containers_, {})

    def test_createDoesNotStart(self):
        api = FakeAPI()
        sandbox = fakeSandbox(api)
        handle = self.successResultOf(Deferred.fromCoroutine(sandbox.create(runID(), S(), "/fangs/x")))
        self.assertEqual(api.containers_[handle.containerID]["State"]["Status"], "created")
        self.assertEqual(handle.pid, 0)
        self.successResultOf(Deferred.fromCoroutine(handle.start()))
        self.assertEqual(api.containers_[handle.containerID]["State"]["Status"], "running")

    def test_pullWhenMissingAndAlways(self):
        api = FakeAPI(images=())
        self.successResultOf(self.launch(fakeSandbox(api), S(image="x/y:1")))
        self.assertIn(("pull", "x/y", "1"), api.calls)
        api.calls.clear()
        self.successResultOf(self.launch(fakeSandbox(api), S(image="x/y:1", pull_policy="always")))
        self.assertIn(("pull", "x/y", "1"), api.calls)

    def test_neverPolicyMissingImage(self):
        api = FakeAPI(images=())
        f = self.failureResultOf(self.launch(fakeSandbox(api), S(pull_policy="never")), SandboxError)
        self.assertIn("pull_policy is never", str(f.value))
        self.assertEqual(api.containers_, {})

    def test_pullErrorInStreamDetected(self):
        api = FakeAPI(images=())
        api.pullStream = [{"status": "Pulling"}, {"error": "manifest unknown", "errorDetail": {"message": "x"}}]
        f = self.failureResultOf(self.launch(fakeSandbox(api), S(image="a:b")), SandboxError)
        self.assertEqual(str(f.value), "pull a:b: manifest unknown")

    def test_startFailureRemovesContainer(self):
        api = FakeAPI()
        api.startError = "OCI runtime create failed"
        f = self.failureResultOf(self.launch(fakeSandbox(api)), SandboxError)
        self.assertIn("OCI runtime create failed", str(f.value))
        self.assertEqual(api.containers_, {})

    def test_hostNetworkNeverReachesDocker(self):
        api = FakeAPI()
        self.failureResultOf(self.launch(fakeSandbox(api), S(network_mode="host")), SandboxError)
        self.assertEqual(api.calls, [])

    def test_fastExitIsNotALaunchFailure(self):
        api = FakeAPI()
        api.exitOnStart = 3
        handle = self.successResultOf(self.launch(fakeSandbox(api)))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(handle.wait())), ExitInfo(3))

    def test_waitPollsThroughTheClock(self):
        api = FakeAPI()
        sandbox = fakeSandbox(api)
        handle = self.successResultOf(self.launch(sandbox))
        d1 = Deferred.fromCoroutine(handle.wait())
        d2 = Deferred.fromCoroutine(handle.wait())
        self.assertNoResult(d1)
        api.exit(handle.containerID, 137, oom=True, logs=b"a\nb\nc\n")
        sandbox._reactor.advance(1)
        info = self.successResultOf(d1)
        self.assertEqual(info, ExitInfo(137, "", True))
        self.assertEqual(self.successResultOf(d2), info)
        self.assertEqual(info.describe(), "exit_code=137 oom_killed=true")
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(handle.logs(2))), "b\nc")

    def test_stopIdempotentKeepsExitAndLogs(self):
        api = FakeAPI()
        handle = self.successResultOf(self.launch(fakeSandbox(api)))
        api.containers_[handle.containerID]["logs"] = b"one\ntwo\n"
        waiting = Deferred.fromCoroutine(handle.wait())
        self.successResultOf(Deferred.fromCoroutine(handle.stop(timeout=2)))
        self.assertEqual(api.containers_, {})
        self.assertIn(("stop", handle.containerID, 2), api.calls)
        self.assertEqual(self.successResultOf(waiting).exitCode, 143)
        self.successResultOf(Deferred.fromCoroutine(handle.stop()))
        self.assertEqual(len([c for c in api.calls if c[0] == "stop"]), 1)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(handle.logs())), "one\ntwo")

    def test_stopAfterContainerVanished(self):
        api = FakeAPI()
        handle = self.successResultOf(self.launch(fakeSandbox(api)))
        del api.containers_[handle.containerID]
        self.successResultOf(Deferred.fromCoroutine(handle.stop()))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(handle.wait())).exitCode, -1)

    def test_reapStale(self):
        api = FakeAPI()
        sandbox = fakeSandbox(api)
        mine = self.successResultOf(self.launch(sandbox))
        dead = self.successResultOf(self.launch(sandbox))
        api.containers_[dead.containerID]["kw"]["labels"]["io.fangs.runner-pid"] = "999999999"
        unlabelled = self.successResultOf(self.launch(sandbox))
        del api.containers_[unlabelled.containerID]["kw"]["labels"]["io.fangs.runner-pid"]
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(sandbox.reapStale())), 2)
        self.assertEqual(list(api.containers_), [mine.containerID])

    def test_daemonUnreachable(self):
        def factory():
            raise dockerErrors.DockerException("Error while fetching server API version")

        sandbox = DockerSandbox(FakeReactor(), factory, threadpool=ImmediatePool())
        f = self.failureResultOf(self.launch(sandbox), SandboxError)
        self.assertIn("docker daemon unreachable", str(f.value))
