"""
The eBPF sensor against the real kernel: a child process moves itself into a
run's (grand-child) cgroup and opens files, execs, connects, sends DNS
queries and TLS ClientHellos on loopback; the sensor must report exactly what
the run watches, attributed to the right run.

Needs root and BCC (L{tests.prereq.requireBPF}): skipped locally without
them, a failure under CI=true.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import sys
import tempfile
from typing import Any, Dict, List, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.procs import freePort
from fangs.runner.sensor import Sensor
from fangs.wire import RunID, WatchedPath
from tests import prereq
from tests.runner.test_decode import clientHello, dnsQuery

CGROUP_ROOT = "/sys/fs/cgroup/unified"

# The sandboxed program.  argv: cgroup dir, temp dir, closed port.
CHILD = r"""
import os, socket, ssl, subprocess, sys
cg, tmp, closed = sys.argv[1], sys.argv[2], int(sys.argv[3])
hello = bytes.fromhex(sys.argv[4])
q1, q2, q3, q4, q5 = (bytes.fromhex(a) for a in sys.argv[5:10])
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))

# Files.
open(tmp + "/pub/a.txt").close()
open(tmp + "/pub/w.txt", "w").close()
open(tmp + "/passwd").close()
open(tmp + "/passwd-").close()            # sibling of a watched file: not reported
open(tmp + "/unwatched.txt").close()      # not reported
open(tmp + "//pub/./a.txt").close()       # reported as tmp/pub/a.txt
open(tmp + "/pub/../secret/id_rsa").close()  # reported as the cred path
os.chdir(tmp + "/secret")
open("id_rsa").close()                    # relative: cred path
os.chdir("..")
open("secret/id_rsa").close()
fd = os.open(tmp + "/secret", os.O_RDONLY | os.O_DIRECTORY)
os.close(os.open("id_rsa", os.O_RDONLY, dir_fd=fd))  # dfd-relative
os.close(fd)
os.chdir("/")
# A short-lived shell: cd, then cat a relative path (dash execs cat in place).
subprocess.run(["/bin/sh", "-c", "cd '%s/secret' && cat id_rsa >/dev/null" % tmp], check=True)

# exec
subprocess.run(["/bin/true", "first-arg", "x" * 300] + ["a%d" % i for i in range(20)], check=True)

# connect: closed TCP ports on v4, v6 and v4-mapped v6; AF_UNIX.
for fam, addr in ((socket.AF_INET, ("127.0.0.1", closed)), (socket.AF_INET6, ("::1", closed)),
                  (socket.AF_INET6, ("::ffff:127.0.0.1", closed + 1))):
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.connect(addr)
    except OSError:
        pass
    s.close()
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    u.connect("/nonexistent-fangs-socket")  # AF_UNIX: reported with its path
except OSError:
    pass

# DNS: sendto, sendmsg with msg_name (what libuv does), connected UDP send(),
# sendmmsg is exercised by glibc only; IPv6 sendto.
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.sendto(q1, ("127.0.0.1", 53))
d.sendmsg([q2], [], 0, ("127.0.0.1", 53))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(("127.0.0.1", 53))
c.send(q3)
try:
    d6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    d6.sendto(q4, ("::1", 53))
except OSError:
    pass
d.sendto(q5, ("127.0.0.1", 5353))         # not port 53: still DNS

# TLS ClientHellos to a local listener: hand-built via send(), writev(),
# sendmsg(), and Python's ssl module (OpenSSL writes with write()).
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(8)
port = lst.getsockname()[1]
def conn():
    s = socket.create_connection(("127.0.0.1", port))
    return s
s = conn(); s.send(hello); s.close()
s = conn(); os.writev(s.fileno(), [hello[:3], hello[3:]]); s.close()
s = conn(); s.sendmsg([hello]); s.close()
s = conn()
ctx = ssl.create_default_context()
t = ctx.wrap_socket(s, server_hostname="openssl.example", do_handshake_on_connect=False)
t.setblocking(False)
try:
    t.do_handshake()
except ssl.SSLWantReadError:
    pass
t.close()
lst.close()
"""

STORM = r"""
import os, sys
cg, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
for i in range(n):
    os.close(os.open(path, os.O_RDONLY))
"""


def closedPort() -> int:
    """
    A loopback port nothing listens on (free a moment ago).
    """
    return freePort()


class SensorTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        prereq.requireBPF()
        self.tmp = tempfile.mkdtemp(prefix="fangs-sensor-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    async def startSensor(self) -> Sensor:
        sensor = Sensor(reactor, cgroupRoot=CGROUP_ROOT, ringbufPages=4096)
        await sensor.start()
        self.addCleanup(sensor.stop)
        return sensor

    def makeCgroup(self) -> Tuple[RunID, str, int, str]:
        """
        A run cgroup under /fangs and a child below it (where the processes
        go, as Docker's containers do): (run id, run dir, run cgroup id, leaf dir).
        """
        runID = RunID(os.urandom(16))
        runDir = os.path.join(CGROUP_ROOT, "fangs", runID.hex())
        leaf = os.path.join(runDir, "leaf")
        os.makedirs(leaf)
        self.addCleanup(os.rmdir, runDir)
        self.addCleanup(os.rmdir, leaf)
        return runID, runDir, os.stat(runDir).st_ino, leaf

    async def runChild(self, script: str, *args: str) -> None:
        path = os.path.join(self.tmp, "child-%d.py" % (len(os.listdir(self.tmp)),))
        with open(path, "w") as f:
            f.write(script)
        out, err, code = await getProcessOutputAndValue(sys.executable, [path, *args], env=dict(os.environ), reactor=reactor)
        self.assertEqual(code, 0, err.decode(errors="replace"))

    def files(self, events: List[Tuple[int, Dict[str, Any]]]) -> List[Dict[str, Any]]:
        return [p for t, p in events if t == 1]

    def test_everyEventType(self) -> Deferred:
        return Deferred.fromCoroutine(self._everyEventType())

    async def _everyEventType(self) -> None:
        sensor = await self.startSensor()
        runID, runDir, cgid, leaf = self.makeCgroup()
        tmp = self.tmp
        for d in ("pub", "secret", "other"):
            os.mkdir(os.path.join(tmp, d))
        for f in ("pub/a.txt", "passwd", "passwd-", "unwatched.txt", "secret/id_rsa"):
            open(os.path.join(tmp, f), "w").close()
        events: List[Tuple[int, Dict[str, Any]]] = []
        watched = [
            WatchedPath(tmp + "/pub/"),
            WatchedPath(tmp + "/passwd"),
            WatchedPath(tmp + "/secret", cred_tagged=True),
        ]
        sensor.addRun(runID, cgid, watched, lambda t, p: events.append((t, p)))
        port = closedPort()
        queries = [
            dnsQuery(b"sendto.exfil.test", 1),
            dnsQuery(b"sendmsg.exfil.test", 28),
            dnsQuery(b"connected.exfil.test", 16),
            dnsQuery(b"v6.exfil.test", 1),
            dnsQuery(b"mdns.exfil.test", 1),
        ]
        await self.runChild(CHILD, leaf, tmp, str(port), clientHello(b"hand.example").hex(), *(q.hex() for q in queries))
        # Negative control: the test process itself is on the host.
        open(os.path.join(tmp, "secret", "id_rsa")).close()
        open(os.path.join(tmp, "pub", "a.txt")).close()
        sensor.removeRun(runID)
        self.assertEqual(sensor.dropsFor(runID), 0)

        for t, p in events:
            h = p["Header"]
            self.assertEqual(h["RunID"], list(runID.raw))
            self.assertEqual(h["CgroupID"], cgid)
            self.assertEqual(h["Type"], t)
            self.assertNotEqual(h["PID"], os.getpid())
            self.assertIn("CommStr", p)

        files = [(p["PathName"], p["Header"]["Tags"], p["Access"], p["CommStr"]) for p in self.files(events)]
        secret = tmp + "/secret/id_rsa"
        pub = tmp + "/pub/a.txt"
        self.assertEqual(
            [f[:3] for f in files],
            [
                (pub, 0, "read"),
                (tmp + "/pub/w.txt", 0, "write"),
                (tmp + "/passwd", 0, "read"),
                (pub, 0, "read"),
                (secret, 3, "read"),  # /pub/../secret
                (secret, 3, "read"),  # relative after chdir
                (secret, 3, "read"),  # secret/id_rsa from tmp
                (tmp + "/secret", 3, "read"),  # the directory itself
                (secret, 3, "read"),  # dfd-relative
                (secret, 3, "read"),  # sh: cd && cat
            ],
            files,
        )
        self.assertEqual(files[-1][3], "cat")
        raw = [p.get("RawPathName") for p in self.files(events)]
        self.assertEqual(raw[5:10], ["id_rsa", "secret/id_rsa", None, "id_rsa", "id_rsa"])

        execs = [p for t, p in events if t == 2]
        true = [p for p in execs if p["BinaryPathStr"] == "/bin/true"]
        self.assertEqual(len(true), 1, [p["BinaryPathStr"] for p in execs])
        e = true[0]
        self.assertEqual(e["Argc"], 16)
        self.assertEqual(e["ArgvTruncated"], 1)
        self.assertEqual(e["ArgvStrs"][:2], ["/bin/true", "first-arg"])
        self.assertEqual(e["ArgvStrs"][2], "x" * 127)
        self.assertNotEqual(e["Header"]["PPID"], 0)
        self.assertEqual(e["Ancestors"][0]["PID"], e["Header"]["PPID"])
        self.assertTrue(e["AncestorComms"] and e["AncestorComms"][0].startswith("python"), e["AncestorComms"])

        nets = [(p["Family"], p["DestIP"], p["DestPort"]) for t, p in events if t == 3]
        self.assertIn((2, "127.0.0.1", port), nets)
        self.assertIn((10, "::1", port), nets)
        self.assertIn((10, "127.0.0.1", port + 1), nets)
        self.assertIn((2, "127.0.0.1", 53), nets)  # the connected UDP socket
        unix = [p.get("UnixPath") for t, p in events if t == 3 and p["Family"] == 1]
        self.assertEqual(unix, ["/nonexistent-fangs-socket"])
        self.assertEqual(len([n for n in nets if n[2] == 0 and n[0] != 1]), 0)

        dns = [(p["QName"], p["QType"], p["DestIP"], p["DestPort"]) for t, p in events if t == 4]
        self.assertEqual(
            dns,
            [
                ("sendto.exfil.test", 1, "127.0.0.1", 53),
                ("sendmsg.exfil.test", 28, "127.0.0.1", 53),
                ("connected.exfil.test", 16, "127.0.0.1", 53),
                ("v6.exfil.test", 1, "::1", 53),
                ("mdns.exfil.test", 1, "127.0.0.1", 5353),  # DNS on any port
            ],
        )

        tls = [(p["SNI"], p["Source"], p["SourceName"]) for t, p in events if t == 5]
        self.assertEqual(
            tls,
            [("hand.example", 3, "tcp_clienthello")] * 3 + [("openssl.example", 3, "tcp_clienthello")],
        )
        dup = [p["DuplicateOf"] for t, p in events if t == 5]
        self.assertEqual(dup, ["", "tcp_clienthello", "tcp_clienthello", ""])

    def test_concurrentRuns(self) -> Deferred:
        return Deferred.fromCoroutine(self._concurrentRuns())

    async def _concurrentRuns(self) -> None:
        """
        Two runs at once, each watching its own directory, each child
        opening both: every event goes to its own run, nothing crosses, and
        removing one run leaves the other's prefixes in place.
        """
        sensor = await self.startSensor()
        dirs = {}
        for name in ("a", "b"):
            d = os.path.join(self.tmp, name)
            os.mkdir(d)
            open(os.path.join(d, "f"), "w").close()
            dirs[name] = d
        runs = {}
        for name in ("a", "b"):
            runID, runDir, cgid, leaf = self.makeCgroup()
            events: List[Tuple[int, Dict[str, Any]]] = []
            sensor.addRun(runID, cgid, [WatchedPath(dirs[name] + "/", cred_tagged=True)], lambda t, p, e=events: e.append((t, p)))
            runs[name] = (runID, cgid, leaf, events)
        opener = "import os,sys\nopen(os.path.join(sys.argv[1],'cgroup.procs'),'w').write(str(os.getpid()))\nfor p in sys.argv[2:]: open(p).close()\n"
        both = [dirs["a"] + "/f", dirs["b"] + "/f"]
        await self.runChild(opener, runs["a"][2], *both)
        await self.runChild(opener, runs["b"][2], *both)
        for name in ("a", "b"):
            open(dirs[name] + "/f").close()  # host: never reported
        sensor.removeRun(runs["a"][0])
        # b still watched after a is gone.
        await self.runChild(opener, runs["b"][2], *both)
        sensor.removeRun(runs["b"][0])
        for name, count in (("a", 1), ("b", 2)):
            runID, cgid, _leaf, events = runs[name]
            files = self.files(events)
            self.assertEqual([p["PathName"] for p in files], [dirs[name] + "/f"] * count)
            for p in files:
                self.assertEqual(p["Header"]["RunID"], list(runID.raw))
                self.assertEqual(p["Header"]["CgroupID"], cgid)
                self.assertEqual(p["Header"]["Tags"], 3)
            self.assertEqual(sensor.dropsFor(runID), 0)

    def test_stormComplete(self) -> Deferred:
        return Deferred.fromCoroutine(self._stormComplete())

    async def _stormComplete(self) -> None:
        """
        20,000 opens of a watched file as fast as Python can: all of them
        arrive, no drops; and the reader delivers while the run is live (not
        only when removeRun drains).
        """
        sensor = await self.startSensor()
        runID, runDir, cgid, leaf = self.makeCgroup()
        target = os.path.join(self.tmp, "hot")
        open(target, "w").close()
        events: List[Tuple[int, Dict[str, Any]]] = []
        sensor.addRun(runID, cgid, [WatchedPath(target)], lambda t, p: events.append((t, p)))
        n = 20000
        await self.runChild(STORM, leaf, target, str(n))
        for _ in range(200):
            if len(self.files(events)) >= n:
                break
            await deferLater(reactor, 0.1, lambda: None)
        live = len(self.files(events))
        sensor.removeRun(runID)
        self.assertEqual(len(self.files(events)), n)
        self.assertEqual(live, n)
        self.assertEqual(sensor.dropsFor(runID), 0)

    def test_cgroupOutsideParent(self) -> Deferred:
        return Deferred.fromCoroutine(self._cgroupOutsideParent())

    async def _cgroupOutsideParent(self) -> None:
        """
        A sensor_only run on a cgroup that is not below /fangs (the kernel's
        ancestor walk): its processes are reported, a /fangs run beside it
        still works, and once it is removed it costs nothing again.
        """
        sensor = await self.startSensor()
        target = os.path.join(self.tmp, "f")
        open(target, "w").close()
        other = os.path.join(CGROUP_ROOT, "fangs-test-" + os.urandom(6).hex())
        leaf = os.path.join(other, "leaf")
        os.makedirs(leaf)
        self.addCleanup(os.rmdir, other)
        self.addCleanup(os.rmdir, leaf)
        outsideID = RunID(os.urandom(16))
        outside: List[Tuple[int, Dict[str, Any]]] = []
        sensor.addRun(outsideID, os.stat(other).st_ino, [WatchedPath(target)], lambda t, p: outside.append((t, p)))
        runID, runDir, cgid, inLeaf = self.makeCgroup()
        inside: List[Tuple[int, Dict[str, Any]]] = []
        sensor.addRun(runID, cgid, [WatchedPath(target)], lambda t, p: inside.append((t, p)))
        opener = "import os,sys\nopen(os.path.join(sys.argv[1],'cgroup.procs'),'w').write(str(os.getpid()))\nopen(sys.argv[2]).close()\n"
        await self.runChild(opener, leaf, target)
        await self.runChild(opener, inLeaf, target)
        sensor.removeRun(outsideID)
        sensor.removeRun(runID)
        self.assertEqual([(p["PathName"], p["Header"]["CgroupID"]) for p in self.files(outside)], [(target, os.stat(other).st_ino)])
        self.assertEqual([(p["PathName"], p["Header"]["CgroupID"]) for p in self.files(inside)], [(target, cgid)])


FLOOD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "%d\n", getpid());
    fclose(f);
    long n = atol(argv[3]);
    long pause = argc > 4 ? atol(argv[4]) : 0;
    for (long i = 0; i < n; i++) {
        close(open(argv[2], O_RDONLY));
        if (pause)
            usleep(pause);
    }
    return 0;
}
"""


FLOOD = 2_000_000


class FloodTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        prereq.requireBPF()
        if shutil.which("gcc") is None:
            prereq.missing("gcc is needed to build the flood program")
        self.tmp = tempfile.mkdtemp(prefix="fangs-flood-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_floodCostsOnlyTheFlooder(self) -> Deferred:
        return Deferred.fromCoroutine(self._flood())

    async def _flood(self) -> None:
        """
        Run A opens a watched file 2,000,000 times as fast as C can, with a
        small ring buffer (4 MiB) that the reactor cannot keep empty; run B,
        while A floods, opens its own file 2,000 times, 100 us apart.  A may
        hold at most half the ring unconsumed: A loses events (counted as
        A's drops), B loses none.  (Without the per-run share B loses events
        to A's flood.)
        """
        src = os.path.join(self.tmp, "flood.c")
        exe = os.path.join(self.tmp, "flood")
        with open(src, "w") as f:
            f.write(FLOOD_C)
        out, err, code = await getProcessOutputAndValue("gcc", ["-O2", "-o", exe, src], env=dict(os.environ), reactor=reactor)
        self.assertEqual(code, 0, err)
        sensor = Sensor(reactor, cgroupRoot=CGROUP_ROOT, ringbufPages=1024)
        await sensor.start()
        self.addCleanup(sensor.stop)
        runs = {}
        for name in ("a", "b"):
            runID = RunID(os.urandom(16))
            runDir = os.path.join(CGROUP_ROOT, "fangs", runID.hex())
            leaf = os.path.join(runDir, "leaf")
            os.makedirs(leaf)
            self.addCleanup(os.rmdir, runDir)
            self.addCleanup(os.rmdir, leaf)
            target = os.path.join(self.tmp, name)
            open(target, "w").close()
            events: List[Tuple[int, Dict[str, Any]]] = []
            sensor.addRun(runID, os.stat(runDir).st_ino, [WatchedPath(target)], lambda t, p, e=events: e.append((t, p)))
            runs[name] = (runID, leaf, target, events)
        a = getProcessOutputAndValue(exe, [os.path.join(runs["a"][1], "cgroup.procs"), runs["a"][2], str(FLOOD)], reactor=reactor)
        await deferLater(reactor, 0.2, lambda: None)
        b = getProcessOutputAndValue(exe, [os.path.join(runs["b"][1], "cgroup.procs"), runs["b"][2], "2000", "100"], reactor=reactor)
        for d in (a, b):
            _out, err, code = await d
            self.assertEqual(code, 0, err)
        for _ in range(100):
            if len([1 for t, _p in runs["b"][3] if t == 1]) >= 2000:
                break
            await deferLater(reactor, 0.1, lambda: None)
        for name in ("a", "b"):
            sensor.removeRun(runs[name][0])
        aFiles = len([1 for t, _p in runs["a"][3] if t == 1])
        bFiles = len([1 for t, _p in runs["b"][3] if t == 1])
        aDrops, bDrops = sensor.dropsFor(runs["a"][0]), sensor.dropsFor(runs["b"][0])
        self.assertEqual((bFiles, bDrops), (2000, 0))
        # Every open of A is delivered or counted (drops count lost records
        # of any kind: the fork and exit records may be among them).
        self.assertLessEqual(aFiles, FLOOD)
        self.assertGreaterEqual(aFiles + aDrops, FLOOD)
        # The flood did overflow A's share (else this proves nothing).
        self.assertGreater(aDrops, 0, "A lost nothing: %d delivered" % (aFiles,))
