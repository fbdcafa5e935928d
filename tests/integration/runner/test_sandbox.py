"""
Real sandboxes (L{fangs.runner.sandbox.DockerSandbox}): containers of the real
sandbox image under the real reactor and cgroup hierarchy, and real npm
installs in them.  Needs root and Docker (L{tests.prereq.requireSandboxImage}).
"""

import os
import secrets

import docker
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from fangs.runner import image as imagemod
from fangs.runner.cgroups import CgroupManager, cgroupOfPid
from fangs.runner.containerspec import INIT_NAME, INIT_SCRIPT, SandboxError
from fangs.runner.sandbox import DockerSandbox, ExitInfo, npmInstallCommand
from tests import prereq
from tests.runner.test_sandbox import MiB, S, runID


async def waitInstall(handle, timeout=240.0):
    """
    Poll the handle's life snapshot until the install's exit is recorded
    (or the container ended); the exit code.
    """
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        snap = await handle.snapshot()
        if snap.installExit is not None:
            return snap.installExit
        if not snap.initAlive:
            return (await handle.wait()).exitCode
        await deferLater(reactor, 0.2, lambda: None)
    raise AssertionError("install did not finish in %ss" % (timeout,))


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
            self.assertEqual(await waitInstall(zero), 0)
            self.assertEqual(await waitInstall(three), 3)
            # The container stays: its init is PID 1 and keeps the namespace.
            snap = await three.snapshot()
            self.assertTrue(snap.initAlive)
            self.assertEqual(snap.processes, ())

        return self.d(go())

    def test_initIsPidOneAndOutlivesTheInstall(self):
        """
        A child that detaches (setsid) from the install is not killed when
        the install exits: it is seen from the host until it ends, and its
        late read happens.
        """
        async def go():
            cg = self.cgroups.create(secrets.token_hex(16))
            self.addCleanup(lambda: Deferred.fromCoroutine(self.cgroups.remove(cg, reactor)))
            handle = await self.run_(["sh", "-c", "tr '\\0' ' ' </proc/1/cmdline; echo; "
                                      "setsid sh -c 'sleep 2; cat ~/.npmrc; echo late-read-done' "
                                      "</dev/null & exit 0"], cgroupParent=cg.relPath)
            self.assertEqual(await waitInstall(handle), 0)
            # The install's own shell may still be listed for an instant
            # after its exit status arrived, and its child may still be
            # between fork and exec (setsid, then sh): the detached child is
            # the one whose script is the late read, seen within a second
            # (it lives two).
            from twisted.internet.task import deferLater

            late = "sleep 2; cat ~/.npmrc; echo late-read-done"
            for _ in range(20):
                snap = await handle.snapshot()
                detached = [p for p in snap.processes if p.argv[:3] == ("sh", "-c", late)]
                if detached:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            self.assertTrue(detached, snap.processes)
            self.assertEqual(detached[0].exe, "/usr/bin/dash")
            self.assertEqual(detached[0].uid, 1000)
            self.assertGreater(snap.installExitedMonoNs, 0)
            self.assertLessEqual(snap.installExitedMonoNs, snap.monoNs)
            while snap.processes:
                await deferLater(reactor, 0.2, lambda: None)
                snap = await handle.snapshot()
            logs = await handle.logs(50)
            self.assertIn("sh -c " + INIT_SCRIPT[:20], logs)
            self.assertIn(INIT_NAME, logs.splitlines()[0])
            self.assertIn("late-read-done", logs)
            self.assertIn(handle.bait["/home/node/.npmrc"].strip(), logs)

        return self.d(go())

    def test_ioUringRefused(self):
        """
        io_uring_setup fails with EPERM in the sandbox (it succeeds under
        Docker's default profile); Node, told to use io_uring, still reads.
        """
        async def go():
            probe = ("perl -e '$p = \"\\0\" x 120; $r = syscall(425, 8, $p); print \"io_uring_setup=$r $!\\n\"'; "
                     "UV_USE_IO_URING=1 node -e 'console.log(require(\"fs\").readFileSync(\"/etc/hostname\").length > 0)'")
            handle = await self.run_(["sh", "-c", probe])
            self.assertEqual(await waitInstall(handle), 0)
            logs = await handle.logs()
            self.assertIn("io_uring_setup=-1 Operation not permitted", logs)
            self.assertIn("true", logs)

            def defaultProfile():
                return docker.from_env().containers.run(prereq.SANDBOX_IMAGE, ["sh", "-c", probe], remove=True,
                                                        network_mode="none").decode()

            out = await deferToThread(defaultProfile)
            self.assertRegex(out, r"io_uring_setup=[0-9]+ ")  # the control: a real ring fd

        return self.d(go())

    def test_tmpAllowsExecWithoutSuidOrDevices(self):
        async def go():
            handle = await self.run_(["sh", "-c", "grep ' /tmp ' /proc/mounts; grep ' /dev/shm ' /proc/mounts; "
                                      "cp /bin/true /tmp/x && /tmp/x "
                                      "&& echo tmp-exec-ok; mkdir -p /tmp/w && cd /tmp/w && cp /bin/echo ./e "
                                      "&& ./e workdir-exec-ok; cp /bin/echo /dev/shm/e && /dev/shm/e shm-exec-ok"])
            self.assertEqual(await waitInstall(handle), 0)
            logs = await handle.logs()
            self.assertIn("tmp-exec-ok", logs)
            self.assertIn("workdir-exec-ok", logs)
            self.assertIn("shm-exec-ok", logs)
            for line in logs.splitlines()[:2]:
                options = line.split()[3].split(",")
                self.assertIn("nosuid", options)
                self.assertIn("nodev", options)
                self.assertNotIn("noexec", options)

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
            self.assertEqual((await handle.wait()).exitCode, 137)  # killed: the init ignores SIGTERM
            self.assertTrue(await self.cgroups.remove(cg, reactor))
            self.assertFalse(os.path.exists(cg.absPath))
            self.assertFalse(os.path.exists("/sys/fs/cgroup/memory" + cg.relPath))

        return self.d(go())

    def test_baitPlanted(self):
        async def go():
            handle = await self.run_(["sh", "-c", "cat /root/.npmrc /root/.ssh/id_rsa; stat -c '%a %u' "
                                      "/root/.ssh/id_rsa /root/.ssh /root/.aws/credentials; "
                                      "ssh-keygen -y -f /root/.ssh/id_ed25519 2>&1 || true; echo token=$GITHUB_TOKEN"],
                                     user="0:0")
            self.assertEqual(await waitInstall(handle), 0)
            out = await handle.logs(200)
            self.assertEqual(handle.home, "/root")
            self.assertIn(handle.bait["/root/.npmrc"].strip(), out)
            self.assertIn(handle.bait["/root/.ssh/id_rsa"].splitlines()[1], out)
            self.assertIn("600 0\n700 0\n600 0", out)
            self.assertIn("token=" + handle.baitEnv["GITHUB_TOKEN"], out)
            # The default user gets its bait in its own home, /home/node.
            user = await self.run_(["sh", "-c", "id -u; echo $HOME; cat ~/.npmrc ~/.config/gh/hosts.yml; "
                                    "ls ~/.kube ~/.docker ~/.config/gcloud; cat /root/.npmrc 2>/dev/null || echo denied"])
            self.assertEqual(await waitInstall(user), 0)
            out = await user.logs(200)
            self.assertTrue(out.startswith("1000\n/home/node\n"), out)
            self.assertEqual(user.home, "/home/node")
            self.assertIn(user.bait["/home/node/.npmrc"].strip(), out)
            self.assertIn("oauth_token: gho_", out)
            self.assertIn("application_default_credentials.json", out)
            self.assertIn("denied", out)
            self.assertNotEqual(user.canaries, handle.canaries)

        return self.d(go())

    def test_limitsAndHardeningApplied(self):
        async def go():
            handle = await self.run_(["sleep", "30"])
            info = await deferToThread(lambda: docker.from_env().api.inspect_container(handle.containerID))
            hc = info["HostConfig"]
            self.assertEqual((hc["Memory"], hc["MemorySwap"]), (512 * MiB, 512 * MiB))
            self.assertEqual((hc["PidsLimit"], hc["NanoCpus"]), (256, 1_000_000_000))
            self.assertEqual(hc["CapDrop"], ["ALL"])
            self.assertEqual(hc["SecurityOpt"][0], "no-new-privileges:true")
            self.assertTrue(hc["SecurityOpt"][1].startswith("seccomp={"), hc["SecurityOpt"][1][:40])
            self.assertEqual(info["Config"]["User"], "1000:1000")
            self.assertEqual(info["Config"]["Labels"]["io.fangs.role"], "sandbox")
            self.assertEqual(info["Mounts"], [])

        return self.d(go())

    def test_oomKilledReported(self):
        async def go():
            handle = await self.run_(["node", "-e", "const a=[]; for(;;) a.push(Buffer.alloc(1<<20, 1))"],
                                     memory_bytes=48 * MiB)
            # The OOM killer ends node, not the container's init.
            self.assertEqual(await waitInstall(handle), 137)
            self.assertGreaterEqual((await handle.snapshot()).oomKills, 1)

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
        code = await waitInstall(handle)
        return ExitInfo(code), await handle.logs()

    def test_registryInstall(self):
        async def go():
            info, logs = await self.install("is-number", "7.0.0", user="0:0")
            self.assertEqual(info.exitCode, 0, logs)
            self.assertIn("added 1 package", logs)

        return Deferred.fromCoroutine(go())

    def test_registryInstallAsTheDefaultUser(self):
        """
        The bait C{~/.npmrc} (an auth token line for the registry) in the
        default user's home does not break a registry install.
        """
        async def go():
            info, logs = await self.install("is-number", "7.0.0")
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
