"""
Tests for L{fangs.runner.sandbox}.

The unit tests inject a hand-written fake of the docker SDK's low-level API
and a thread pool that runs calls at once, so they are synchronous.  The
real tests launch containers of the real sandbox image under the real
reactor and cgroup hierarchy.
"""

import io
import os
import secrets
import shlex
import tarfile

import docker
from docker import errors as dockerErrors
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fangs.runner import image as imagemod
from fangs.runner.cgroups import CgroupManager, cgroupOfPid
from fangs.runner.sandbox import (
    DockerSandbox,
    ExitInfo,
    SandboxError,
    baitTar,
    makeBait,
    npmInstallCommand,
    planLaunch,
)
from fangs.wire import RunID, SandboxSpec
from tests import prereq

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

    def __init__(self, images=("fangs-sandbox/node:20",)):
        self.images = {name: "sha256:" + secrets.token_hex(32) for name in images}
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


def fakeSandbox(api):
    return DockerSandbox(FakeReactor(), lambda: FakeClient(api), threadpool=ImmediatePool())


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
        self.assertEqual(plan.create["command"], ["true"])
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
        self.assertIn("nosuid", hc["Tmpfs"]["/tmp"])
        self.assertIn("nodev", hc["Tmpfs"]["/tmp"])
        self.assertIn("size=", hc["Tmpfs"]["/tmp"])
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

    def test_baitPerRunAndPrivate(self):
        root = planLaunch(runID(), S(user="0:0"), "/fangs/x")
        other = planLaunch(runID(), S(user="0:0"), "/fangs/x")
        self.assertEqual(sorted(root.bait), ["/root/.aws/credentials", "/root/.npmrc", "/root/.ssh/id_rsa"])
        self.assertNotEqual(root.bait, other.bait)
        self.assertRegex(root.bait["/root/.npmrc"], r"^//registry\.npmjs\.org/:_authToken=npm_[A-Za-z0-9]{36}\n$")
        self.assertIn("BEGIN OPENSSH PRIVATE KEY", root.bait["/root/.ssh/id_rsa"])
        self.assertEqual(len(root.baitTars), 1)
        members = untar(root.baitTars[0])
        self.assertEqual(members["root/.ssh"][:3], (0o700, 0, True))
        self.assertEqual(members["root/.ssh/id_rsa"], (0o600, 0, False, root.bait["/root/.ssh/id_rsa"]))
        self.assertNotIn("root", members)  # /root itself keeps the image's mode

    def test_baitForNonRootUser(self):
        plan = planLaunch(runID(), S(), "/fangs/x")
        self.assertIn("/home/node/.npmrc", plan.bait)
        self.assertIn("/root/.npmrc", plan.bait)
        members = untar(plan.baitTars[1])
        self.assertEqual(members["home/node/.npmrc"][:3], (0o600, 1000, False))


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
        self.assertEqual([p for p, _ in c["archives"]], ["/", "/"])
        self.assertEqual(c["State"]["Status"], "running")
        self.assertIn("/root/.npmrc", handle.bait)

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


# ---------------------------------------------------------------------------
# Real Docker


class RealSandboxTests(TestCase):
    """
    Real containers of the real image under the real reactor.
    """

    timeout = 300

    def setUp(self):
        prereq.requireSandboxImage()
        self.sandbox = DockerSandbox(reactor, defaultImage=prereq.SANDBOX_IMAGE)
        self.cgroups = CgroupManager()

    async def run_(self, command, image="", user="", cgroupParent="", **kw):
        handle = await self.sandbox.launch(runID(), S(image=image, command=command, user=user, **kw),
                                           cgroupParent)
        self.addCleanup(lambda: Deferred.fromCoroutine(handle.stop(timeout=0)))
        return handle

    def d(self, coro):
        return Deferred.fromCoroutine(coro)

    def test_exitCodes(self):
        async def go():
            zero = await self.run_(["sh", "-c", "exit 0"])
            three = await self.run_(["sh", "-c", "exit 3"])
            self.assertEqual(await zero.wait(), ExitInfo(0))
            self.assertEqual((await three.wait()).exitCode, 3)

        return self.d(go())

    def test_cgroupPlacementAndCleanup(self):
        async def go():
            cg = self.cgroups.create(secrets.token_hex(16))
            self.addCleanup(lambda: Deferred.fromCoroutine(self.cgroups.remove(cg, reactor)))
            handle = await self.run_(["sleep", "30"], cgroupParent=cg.relPath)
            path = cgroupOfPid(handle.pid)
            self.assertTrue(path.startswith(cg.relPath + "/"), path)
            self.assertTrue(path.endswith(handle.containerID), path)
            self.assertEqual(handle.cgroupPath, path)
            child = os.path.join(cg.absPath, handle.containerID)
            self.assertTrue(os.path.isdir(child))
            self.assertEqual(os.stat(child).st_ino, self.cgroups.cgroupID(path))
            await handle.stop(timeout=0)
            self.assertIn((await handle.wait()).exitCode, (137, 143))  # killed (init forwards SIGTERM)
            self.assertTrue(await self.cgroups.remove(cg, reactor))
            self.assertFalse(os.path.exists(cg.absPath))
            self.assertFalse(os.path.exists("/sys/fs/cgroup/memory" + cg.relPath))

        return self.d(go())

    def test_baitPlanted(self):
        async def go():
            handle = await self.run_(["sh", "-c", "cat /root/.npmrc /root/.ssh/id_rsa; stat -c '%a %u' "
                                      "/root/.ssh/id_rsa /root/.ssh /root/.aws/credentials"], user="0:0")
            self.assertEqual((await handle.wait()).exitCode, 0)
            out = await handle.logs(200)
            self.assertIn(handle.bait["/root/.npmrc"].strip(), out)
            self.assertIn(handle.bait["/root/.ssh/id_rsa"].splitlines()[1], out)
            self.assertIn("600 0\n700 0\n600 0", out)
            # The default user reads its own copy and not root's.
            user = await self.run_(["sh", "-c", "id -u; cat ~/.npmrc; cat /root/.npmrc || echo denied"])
            self.assertEqual((await user.wait()).exitCode, 0)
            out = await user.logs()
            self.assertTrue(out.startswith("1000\n"), out)
            self.assertIn(user.bait["/home/node/.npmrc"].strip(), out)
            self.assertIn("denied", out)

        return self.d(go())

    def test_limitsAndHardeningApplied(self):
        async def go():
            handle = await self.run_(["sleep", "30"])
            info = await deferToThread(lambda: docker.from_env().api.inspect_container(handle.containerID))
            hc = info["HostConfig"]
            self.assertEqual((hc["Memory"], hc["MemorySwap"]), (512 * MiB, 512 * MiB))
            self.assertEqual((hc["PidsLimit"], hc["NanoCpus"]), (256, 1_000_000_000))
            self.assertEqual(hc["CapDrop"], ["ALL"])
            self.assertEqual(hc["SecurityOpt"], ["no-new-privileges:true"])
            self.assertEqual(info["Config"]["User"], "1000:1000")
            self.assertEqual(info["Config"]["Labels"]["io.fangs.role"], "sandbox")
            self.assertEqual(info["Mounts"], [])

        return self.d(go())

    def test_oomKilledReported(self):
        async def go():
            handle = await self.run_(["node", "-e", "const a=[]; for(;;) a.push(Buffer.alloc(1<<20, 1))"],
                                     memory_bytes=48 * MiB)
            info = await handle.wait()
            self.assertTrue(info.oomKilled, info)
            self.assertNotEqual(info.exitCode, 0)

        return self.d(go())

    def test_hostNetworkRefused(self):
        return self.assertFailure(self.d(self.run_(["true"], network_mode="host")), SandboxError)

    def test_reapStale(self):
        def leftover():
            api = docker.from_env().api
            c = api.create_container(prereq.SANDBOX_IMAGE, command=["true"],
                                     labels={"io.fangs.role": "sandbox", "io.fangs.runner-pid": "999999999",
                                             "io.fangs.runner-start": "1"})
            return c["Id"]

        async def go():
            cid = await deferToThread(leftover)
            mine = await self.run_(["sleep", "30"])
            self.assertGreaterEqual(await self.sandbox.reapStale(), 1)
            ids = await deferToThread(lambda: [c["Id"] for c in docker.from_env().api.containers(all=True)])
            self.assertNotIn(cid, ids)
            self.assertIn(mine.containerID, ids)

        return self.d(go())


class RealNpmTests(TestCase):
    """
    C{npmInstallCommand} in real sandboxes: the npm registry and the fixtures.
    """

    timeout = 300

    def setUp(self):
        prereq.requireSandboxImage()
        self.sandbox = DockerSandbox(reactor, defaultImage=prereq.SANDBOX_IMAGE)

    async def install(self, package, version, **kw):
        handle = await self.sandbox.launch(runID(), S(command=npmInstallCommand(package, version), **kw), "")
        self.addCleanup(lambda: Deferred.fromCoroutine(handle.stop(timeout=0)))
        info = await handle.wait()
        return info, await handle.logs()

    def test_registryInstall(self):
        async def go():
            info, logs = await self.install("is-number", "7.0.0", user="0:0")
            self.assertEqual(info.exitCode, 0, logs)
            self.assertIn("added 1 package", logs)

        return Deferred.fromCoroutine(go())

    def test_npmFailureIsNotOk(self):
        async def go():
            info, logs = await self.install("fangs-test-does-not-exist-zz9", "1.0.0")
            self.assertNotEqual(info.exitCode, 0, logs)
            self.assertIn("npm error", logs)

        return Deferred.fromCoroutine(go())

    def test_maliciousFixture(self):
        async def go():
            await deferToThread(imagemod.ensureFixturesImage, imagemod.FIXTURES_IMAGE, prereq.SANDBOX_IMAGE)
            info, logs = await self.install("/fixtures/malicious-fixture.tgz", "", user="0:0",
                                            image=imagemod.FIXTURES_IMAGE, pull_policy="never")
            self.assertEqual(info.exitCode, 0, logs)
            for line in ("read /root/.ssh/id_rsa ok", "relative read id_rsa ok", "sh -c id ok (uid=0(root)",
                         "dns query sent", "tcp 31337 ECONNREFUSED", "bytes of ClientHello",
                         "malicious-fixture: done"):
                self.assertIn(line, logs, logs)

        return Deferred.fromCoroutine(go())
