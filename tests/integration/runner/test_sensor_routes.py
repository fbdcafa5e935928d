"""
The sensor against the real kernel and real Docker containers: fixture npm
packages (C{route-creds}, C{net-exfil}) installed by npm in the sandbox image,
and a static helper (C{data/routes.c}) for the syscall-level routes a script
cannot take, reach the bait credentials by every other name and send the npm
token out every way but a plain connect.  The sensor must report the object
opened (canonical path, cred tag), every way out, the refused io_uring setup,
and the canaries.

Every container runs with C{--network none} (only its own loopback) under a
run cgroup below C{/fangs}, as the runner places them.  Needs root, BCC,
Docker, the sandbox image and gcc (static libc): skipped without them, a
failure under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from fangs.runner import image
from fangs.runner.sensor import Sensor
from fangs.wire import RunID, WatchedPath
from tests import prereq

CGROUP_ROOT = "/sys/fs/cgroup/unified"
HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "npm_" + "Q7fK2pLx9ZbW4mTc8RvN1sHy6GdJ3aEu5Vq0"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n"
BAIT = {"/root/.npmrc": "//registry.npmjs.org/:_authToken=%s\n" % (TOKEN,), "/root/.ssh/id_ed25519": KEY}
WATCHED = [WatchedPath("/root/.npmrc", cred_tagged=True), WatchedPath("/root/.ssh/", cred_tagged=True)]
CANARIES = {"npm_token": TOKEN}
#: io_uring refused, everything else allowed (the sandbox branch ships the
#: engine default minus io_uring_*; this test only needs the refusal).
SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
    {"names": ["io_uring_setup", "io_uring_enter", "io_uring_register"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
NPM = "npm install --no-audit --no-fund --no-update-notifier --ignore-scripts=false --foreground-scripts --offline"


def _thd_docker(*args: str) -> str:
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError("docker %s: %s" % (args[0], p.stderr.strip()))
    return p.stdout.strip()


class RouteTests(TestCase):
    timeout = 300

    def setUp(self) -> Deferred:
        prereq.requireBPF()
        prereq.requireSandboxImage()
        if shutil.which("gcc") is None:
            prereq.missing("gcc is needed to build the static test helper")
        self.tmp = tempfile.mkdtemp(prefix="fangs-routes-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        self.helper = os.path.join(self.tmp, "routes")
        out, err, code = await getProcessOutputAndValue(
            "gcc", ["-static", "-O1", "-o", self.helper, os.path.join(HERE, "data", "routes.c")], env=dict(os.environ), reactor=reactor)
        if code != 0:
            prereq.missing("static build of the test helper failed: " + err.decode(errors="replace")[-500:])
        # Whatever umask this process runs under (the orchestrator's service
        # sets 077): the sandbox user must be able to run it.
        os.chmod(self.helper, 0o755)
        self.seccomp = os.path.join(self.tmp, "seccomp.json")
        with open(self.seccomp, "w") as f:
            json.dump(SECCOMP, f)
        await deferToThread(image.ensureFixturesImage)
        self.sensor = Sensor(reactor, cgroupRoot=CGROUP_ROOT, ringbufPages=4096)
        await self.sensor.start()
        self.addCleanup(self.sensor.stop)

    async def install(self, script: str, seccomp: bool = True, env: Sequence[str] = (), home: str = "/root",
                      user: str = "0:0", hardened: bool = False) -> Tuple[RunID, List[Tuple[int, Dict[str, Any]]], str]:
        """
        Run C{script} (after the bait is planted and marked) in a container
        of the fixtures image under a fresh run cgroup; the run's events and
        the container's output.
        """
        runID = RunID(os.urandom(16))
        rel = "/fangs/" + runID.hex()
        runDir = CGROUP_ROOT + rel
        os.makedirs(runDir)
        self.addCleanup(lambda: Deferred.fromCoroutine(self._rmCgroup(runDir)))
        events: List[Tuple[int, Dict[str, Any]]] = []
        watched = [WatchedPath(w.prefix.replace("/root", home, 1), cred_tagged=w.cred_tagged) for w in WATCHED]
        bait = {path.replace("/root", home, 1): content for path, content in BAIT.items()}
        self.sensor.addRun(runID, os.stat(runDir).st_ino, watched, lambda t, p: events.append((t, p)), canaries=CANARIES)
        args = ["run", "-d", "--cgroup-parent", rel, "--network", "none", "--sysctl", "net.ipv6.conf.lo.disable_ipv6=0",
                "--user", user, "-e", "HOME=" + home,
                "-v", self.helper + ":/usr/local/bin/routes:ro"]
        if hardened:
            # As the sandbox runs installs: no capabilities, no privilege
            # gain, /tmp a tmpfs of its own (exec allowed, nosuid, nodev).
            args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--tmpfs", "/tmp:rw,exec,nosuid,nodev"]
        if seccomp:
            args += ["--security-opt", "seccomp=" + self.seccomp]
        for e in env:
            args += ["-e", e]
        gate = "while [ ! -e /tmp/go ]; do sleep 0.05; done; "
        cid = await deferToThread(_thd_docker, *args, image.FIXTURES_IMAGE, "sh", "-c", gate + script)
        self.addCleanup(deferToThread, subprocess.run, ["docker", "rm", "-f", cid], capture_output=True)
        pid = int(await deferToThread(_thd_docker, "inspect", "-f", "{{.State.Pid}}", cid))
        root = "/proc/%d/root" % (pid,)
        uid, gid = (int(x) for x in user.split(":"))
        for path, content in bait.items():
            for d in (os.path.dirname(os.path.dirname(path)), os.path.dirname(path)):
                if not os.path.isdir(root + d):
                    os.makedirs(root + d)
                    os.chown(root + d, uid, gid)
            with open(root + path, "w") as f:
                f.write(content)
            os.chown(root + path, uid, gid)
            os.chmod(root + path, 0o600)
        self.sensor.watchBaitFiles(runID, pid, sorted(bait))
        open(root + "/tmp/go", "w").close()
        await deferToThread(_thd_docker, "wait", cid)
        # Both streams: a route that fails says why on stderr.
        logs = await deferToThread(lambda: subprocess.run(["docker", "logs", cid], stdout=subprocess.PIPE,
                                                          stderr=subprocess.STDOUT, text=True).stdout)
        await deferLater(reactor, 0.3, lambda: None)
        self.sensor.removeRun(runID)
        self.assertEqual(self.sensor.dropsFor(runID), 0)
        return runID, events, logs

    async def _rmCgroup(self, path: str) -> None:
        # Runs after the container is removed (cleanups run last first).
        for _ in range(50):
            try:
                for d in os.listdir(path):
                    if os.path.isdir(os.path.join(path, d)):
                        os.rmdir(os.path.join(path, d))
                os.rmdir(path)
                return
            except OSError:
                await deferLater(reactor, 0.1, lambda: None)

    def fileEvents(self, events: List[Tuple[int, Dict[str, Any]]], route: Optional[str] = None) -> List[Dict[str, Any]]:
        return [p for t, p in events if t == 1 and (route is None or p.get("Route") == route)]

    def byRaw(self, events: List[Tuple[int, Dict[str, Any]]], raw: str) -> Dict[str, Any]:
        found = [p for p in self.fileEvents(events) if p.get("RawPath") == raw and p["Access"] == "read"]
        self.assertTrue(found, "no read through %r in %r" % (raw, [(p["PathName"], p.get("RawPath"), p.get("Route")) for p in self.fileEvents(events)]))
        return found[0]

    def assertCred(self, p: Dict[str, Any], path: str) -> None:
        self.assertEqual(p["PathName"], path)
        self.assertEqual(p["Header"]["Tags"], 3)

    def test_fileRoutes(self) -> Deferred:
        return Deferred.fromCoroutine(self._fileRoutes())

    async def _fileRoutes(self) -> None:
        runID, events, logs = await self.install(
            "cd /tmp && mkdir -p t && cd t && npm init -y >/dev/null && %s /fixtures/route-creds.tgz && routes files" % (NPM,))
        self.assertIn("route-creds: done", logs)
        npmrc, key = "/root/.npmrc", "/root/.ssh/id_ed25519"
        p = self.byRaw(events, "/tmp/route-symlink")
        self.assertCred(p, npmrc)
        self.assertEqual(p["Route"], "symlink")
        self.assertEqual(p["CommStr"], "node")
        self.assertCred(self.byRaw(events, "route-dirlink/id_ed25519"), key)
        for what in ("symlink", "dirlink", "hardlink", "procroot", "proccwd", "long"):
            self.assertIn("route-creds: %s read" % (what,), logs)
        p = self.byRaw(events, "/tmp/route-hardlink")
        self.assertCred(p, key)
        self.assertEqual(p["Route"], "hardlink")
        p = self.byRaw(events, "/proc/self/root/root/.npmrc")
        self.assertCred(p, npmrc)
        self.assertEqual(p["Route"], "proc")
        procCwd = [p for p in self.fileEvents(events, "proc") if p["RawPath"].endswith("/cwd/id_ed25519")]
        self.assertTrue(procCwd)
        self.assertCred(procCwd[0], key)
        long = [p for p in self.fileEvents(events) if len(p.get("RawPath", "")) > 256]
        self.assertTrue(long)
        self.assertCred(long[0], npmrc)
        # The static helper: a reused directory fd, fd gone, dup2, fchdir.
        self.assertIn("routes: dirfd-reused read", logs)
        for raw, path in ((".npmrc", npmrc), ("id_ed25519", key)):
            reads = [p for p in self.fileEvents(events) if p.get("RawPath") == raw and p["CommStr"] == "routes"]
            self.assertTrue(reads, raw)
            for p in reads:
                self.assertCred(p, path)
        routes = [p for p in self.fileEvents(events) if p["CommStr"] == "routes" and p.get("RawPath")]
        self.assertEqual(len(routes), 6, [(p["PathName"], p.get("RawPath"), p.get("Route")) for p in routes])
        p = self.byRaw(events, "./.npmrc")
        self.assertCred(p, npmrc)
        self.assertEqual((p["Route"], p["Access"]), ("dirfd", "read"))
        # The path string was not faulted in at the call: read at the exit.
        self.assertIn("routes: unfaulted read", logs)
        self.assertCred(self.byRaw(events, "/root/./.npmrc"), npmrc)
        # Removing the key is an access to it.
        self.assertIn("routes: unlink 0", logs)
        deletes = [p for p in self.fileEvents(events) if p["Access"] == "delete"]
        self.assertEqual([(p["PathName"], p["CommStr"], p["Header"]["Tags"]) for p in deletes], [(key, "routes", 3)])
        # Nothing the run did went unresolved.
        self.assertEqual(self.sensor.unresolvedFor(runID), 0, [p for t, p in events if t == 11])
        # fanotify saw the bait read by every route, attributed to the run.
        bait = self.fileEvents(events, "fanotify")
        self.assertEqual({p["PathName"] for p in bait}, {npmrc, key})
        self.assertTrue(all(p["Header"]["Tags"] == 3 for p in bait))
        self.assertGreaterEqual(len([p for p in bait if p["PathName"] == npmrc]), 5)
        # The process tree: forks and exits of the run's processes.
        forks = [p for t, p in events if t == 13]
        exits = [p for t, p in events if t == 14]
        self.assertTrue(forks and exits)
        self.assertIn(0, [p["ExitCode"] for p in exits])
        self.assertTrue({p["ChildPID"] for p in forks} & {p["Header"]["PID"] for p in exits})
        # io_uring refused (libuv of the UV_USE_IO_URING child) and recorded.
        uring = [p for t, p in events if t == 8]
        self.assertTrue(uring)
        self.assertTrue(all(p["Refused"] and p["Errno"] == 1 for p in uring))

    def test_fileRoutesHardened(self) -> Deferred:
        return Deferred.fromCoroutine(self._fileRoutesHardened())

    async def _fileRoutesHardened(self) -> None:
        """
        The same routes as the sandbox runs an install: a user other than
        root (bait in its home), no capabilities, /tmp a tmpfs (the hard
        link falls back into the home's filesystem).
        """
        home = "/home/fangs"
        runID, events, logs = await self.install(
            "cd /tmp && mkdir -p t && cd t && npm init -y >/dev/null && %s /fixtures/route-creds.tgz && routes files" % (NPM,),
            home=home, user="1000:1000", hardened=True)
        for what in ("symlink", "dirlink", "hardlink", "procroot", "proccwd", "long"):
            self.assertIn("route-creds: %s read" % (what,), logs)
        npmrc, key = home + "/.npmrc", home + "/.ssh/id_ed25519"
        self.assertCred(self.byRaw(events, "/tmp/route-symlink"), npmrc)
        self.assertCred(self.byRaw(events, "route-dirlink/id_ed25519"), key)
        p = self.byRaw(events, home + "/.route-hardlink")
        self.assertCred(p, key)
        self.assertEqual(p["Route"], "hardlink")
        self.assertCred(self.byRaw(events, "/proc/self/root" + npmrc), npmrc)
        self.assertTrue([p for p in self.fileEvents(events, "proc") if p["RawPath"].endswith("/cwd/id_ed25519") and p["PathName"] == key])
        self.assertTrue([p for p in self.fileEvents(events) if len(p.get("RawPath", "")) > 256 and p["PathName"] == npmrc])
        self.assertIn("routes: dirfd-reused read", logs)
        self.assertEqual(len([p for p in self.fileEvents(events) if p["CommStr"] == "routes" and p.get("RawPath")]), 6)
        self.assertEqual(self.sensor.unresolvedFor(runID), 0, [p for t, p in events if t == 11])
        self.assertTrue(all(p["Header"]["UID"] == 1000 for p in self.fileEvents(events) if p["CommStr"] == "node"))
        self.assertEqual({p["PathName"] for p in self.fileEvents(events, "fanotify")}, {npmrc, key})

    def test_networkRoutes(self) -> Deferred:
        return Deferred.fromCoroutine(self._networkRoutes())

    async def _networkRoutes(self) -> None:
        runID, events, logs = await self.install(
            "cd /tmp && mkdir -p t && cd t && npm init -y >/dev/null && %s /fixtures/net-exfil.tgz && routes net && routes exec" % (NPM,))
        self.assertIn("net-exfil: done", logs)
        udp = [(p["DestIP"], p["DestPort"]) for t, p in events if t == 7]
        self.assertIn(("127.0.0.1", 9999), udp)
        self.assertIn(("::1", 9997), udp)
        self.assertEqual(udp.count(("127.0.0.1", 9996)), 2, udp)  # sendmmsg
        dns = [(p["QName"].split(".")[-2:], p["DestPort"], p["Transport"]) for t, p in events if t == 4]
        self.assertIn((["exfil", "test"], 5353, "udp"), dns)
        tcpDNS = [p for t, p in events if t == 4 and p["Transport"] == "tcp"]
        self.assertEqual(len(tcpDNS), 1, dns)
        self.assertTrue(tcpDNS[0]["QName"].startswith("tcp."))
        tls = [(p["SNI"], p["DestIP"]) for t, p in events if t == 5]
        self.assertIn(("api.github.com.exfil.test", "127.0.0.1"), tls)
        http = [(p["Method"], p["Host"], p["Path"], p["DestIP"]) for t, p in events if t == 6]
        self.assertIn(("POST", "collector.exfil.test", "/collect", "::1"), http)
        self.assertIn(("GET", "tfo.exfil.test", "/tfo", "127.0.0.1"), http)
        nets = [p for t, p in events if t == 3]
        self.assertTrue([p for p in nets if p.get("FastOpen")], nets)
        self.assertIn("/tmp/net-exfil.sock", [p.get("UnixPath") for p in nets])
        canaries = sorted((p["Channel"], tuple(p["Bait"])) for t, p in events if t == 9)
        self.assertIn(("dns", ("npm_token",)), canaries)
        self.assertIn(("http", ("npm_token",)), canaries)
        dnsCanary = [p for t, p in events if t == 9 and p["Channel"] == "dns"]
        self.assertTrue(dnsCanary[0]["DestName"].endswith(".exfil.test"))
        httpCanary = [p for t, p in events if t == 9 and p["Channel"] == "http"]
        self.assertEqual((httpCanary[0]["DestIP"], httpCanary[0]["DestName"]), ("::1", "collector.exfil.test"))
        # execveat of a memfd: what ran is named.
        execs = [p for t, p in events if t == 2 and p.get("ExecFD") is not None]
        self.assertEqual([p["BinaryPathStr"] for p in execs], ["memfd:stage2"])
        self.assertEqual(execs[0]["ArgvStrs"], ["stage2", "child"])

    def test_ioUringRefusedAndRecorded(self) -> Deferred:
        return Deferred.fromCoroutine(self._ioUring())

    async def _ioUring(self) -> None:
        runID, events, logs = await self.install("routes uring")
        self.assertIn("io_uring_setup -1", logs)
        uring = [p for t, p in events if t == 8]
        self.assertEqual([(p["Refused"], p["Errno"], p["CommStr"]) for p in uring], [(True, 1, "routes")])

    def test_baitReadThroughIoUring(self) -> Deferred:
        return Deferred.fromCoroutine(self._baitIoUring())

    async def _baitIoUring(self) -> None:
        """
        Without the sandbox's profile, libuv reads the bait with io_uring
        (no openat at all): the fanotify mark still reports it, as a
        cred-tagged access of the run's node process; the setup is recorded.
        """
        script = "node -e \"require('fs').readFile('/root/.npmrc', (e, d) => console.log('read', e ? e.code : d.length))\""
        runID, events, logs = await self.install(script, seccomp=False, env=["UV_USE_IO_URING=1"])
        self.assertIn("read ", logs)
        bait = self.fileEvents(events, "fanotify")
        self.assertTrue([p for p in bait if p["PathName"] == "/root/.npmrc" and p["CommStr"] == "node"], bait)
        self.assertTrue(all(p["Header"]["Tags"] == 3 and p["Header"]["RunID"] == list(runID.raw) for p in bait))
        uring = [p for t, p in events if t == 8]
        self.assertTrue(uring)
        self.assertFalse(any(p["Refused"] for p in uring))
