"""
Pure tests of the sensor's decoders: DNS question, TLS ClientHello SNI, path
canonicalisation, per-run prefix matching, record decoding.
"""

import struct

from twisted.trial.unittest import SynchronousTestCase

from fangs.runner import decode


def dnsQuery(name: bytes, qtype: int = 1, qdcount: int = 1, txid: int = 0x1234) -> bytes:
    header = struct.pack(">HHHHHH", txid, 0x0100, qdcount, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label for label in name.split(b".") if label) + b"\0"
    return header + qname + struct.pack(">HH", qtype, 1)


def clientHello(sni: bytes = b"exfil.example", extra: bytes = b"", after: bytes = b"") -> bytes:
    """
    A minimal but well-formed TLS 1.2 record with a ClientHello whose
    extensions are C{extra} then server_name.
    """
    name = struct.pack(">BH", 0, len(sni)) + sni
    sniExt = struct.pack(">HH", 0, len(name) + 2) + struct.pack(">H", len(name)) + name
    exts = extra + sniExt + after
    body = (
        b"\x03\x03"
        + bytes(32)  # random
        + b"\x20" + bytes(range(32))  # session id
        + struct.pack(">H", 4) + b"\x13\x01\x13\x02"  # cipher suites
        + b"\x01\x00"  # compression methods
        + struct.pack(">H", len(exts)) + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


class DNSTests(SynchronousTestCase):
    def test_a(self) -> None:
        self.assertEqual(decode.parseDNSQuestion(dnsQuery(b"registry.npmjs.org", 1)), ("registry.npmjs.org", 1))

    def test_aaaa(self) -> None:
        self.assertEqual(decode.parseDNSQuestion(dnsQuery(b"exfil.test", 28)), ("exfil.test", 28))

    def test_rootName(self) -> None:
        self.assertEqual(decode.parseDNSQuestion(dnsQuery(b"", 2)), ("", 2))

    def test_shortHeader(self) -> None:
        self.assertRaises(ValueError, decode.parseDNSQuestion, b"\x12\x34\x01\x00")

    def test_truncatedName(self) -> None:
        q = dnsQuery(b"registry.npmjs.org")
        self.assertRaises(ValueError, decode.parseDNSQuestion, q[:20])

    def test_truncatedType(self) -> None:
        q = dnsQuery(b"a.b")
        self.assertRaises(ValueError, decode.parseDNSQuestion, q[:-3])

    def test_noQuestion(self) -> None:
        self.assertRaises(ValueError, decode.parseDNSQuestion, dnsQuery(b"a.b", qdcount=0))

    def test_compressionPointer(self) -> None:
        msg = struct.pack(">HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack(">HH", 1, 1)
        self.assertRaises(ValueError, decode.parseDNSQuestion, msg)

    def test_longLabel(self) -> None:
        msg = struct.pack(">HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\0" + struct.pack(">HH", 1, 1)
        self.assertRaises(ValueError, decode.parseDNSQuestion, msg)

    def test_label63(self) -> None:
        label = b"a" * 63
        self.assertEqual(decode.parseDNSQuestion(dnsQuery(label + b".x", 16)), ((label + b".x").decode(), 16))


class ClientHelloTests(SynchronousTestCase):
    def test_happy(self) -> None:
        self.assertEqual(decode.parseClientHelloSNI(clientHello(b"exfil.example")), "exfil.example")

    def test_sniAfterOtherExtensions(self) -> None:
        other = struct.pack(">HH", 0x000A, 4) + b"\x00\x02\x00\x1d"
        self.assertEqual(decode.parseClientHelloSNI(clientHello(b"c2.example", other)), "c2.example")

    def test_cutAfterSNI(self) -> None:
        """
        A capture cut short after the extension (the kernel takes at most
        DATA_CAP bytes) still yields the name.
        """
        other = struct.pack(">HH", 0x0015, 3000) + bytes(3000)  # padding after SNI
        hello = clientHello(b"x.example", after=other)
        self.assertEqual(decode.parseClientHelloSNI(hello[:200]), "x.example")

    def test_short(self) -> None:
        self.assertRaises(ValueError, decode.parseClientHelloSNI, clientHello()[:42])

    def test_truncatedName(self) -> None:
        hello = clientHello(b"a-long-name.example")
        self.assertRaises(ValueError, decode.parseClientHelloSNI, hello[:-5])

    def test_wrongContentType(self) -> None:
        hello = bytearray(clientHello())
        hello[0] = 0x17
        self.assertRaises(ValueError, decode.parseClientHelloSNI, bytes(hello))

    def test_wrongHandshakeType(self) -> None:
        hello = bytearray(clientHello())
        hello[5] = 0x02
        self.assertRaises(ValueError, decode.parseClientHelloSNI, bytes(hello))

    def test_noSNI(self) -> None:
        hello = clientHello(b"")
        # Replace the server_name type with another extension type.
        i = hello.rfind(b"\x00\x00\x00")
        broken = hello[:i] + b"\x00\x2b" + hello[i + 2 :]
        self.assertRaises(ValueError, decode.parseClientHelloSNI, broken)

    def test_isClientHello(self) -> None:
        self.assertTrue(decode.isClientHello(clientHello()))
        self.assertFalse(decode.isClientHello(b"\x16\x03\x01\x00\x10\x02"))
        self.assertFalse(decode.isClientHello(b"\x16\x03"))


class CanonicalTests(SynchronousTestCase):
    vectors = [
        (b"/tmp/../root/.ssh/id_rsa", None, b"/root/.ssh/id_rsa"),
        (b"//etc///passwd", None, b"/etc/passwd"),
        (b"/etc/./passwd", None, b"/etc/passwd"),
        (b"/../../etc/passwd", None, b"/etc/passwd"),
        (b"/root/.ssh/", None, b"/root/.ssh"),
        (b"/root/.ssh/.", None, b"/root/.ssh"),
        (b"/root/.ssh/..", None, b"/root"),
        (b"/", None, b"/"),
        (b"id_rsa", b"/root/.ssh", b"/root/.ssh/id_rsa"),
        (b"./id_rsa", b"/root/.ssh", b"/root/.ssh/id_rsa"),
        (b"../.ssh/id_rsa", b"/root/x", b"/root/.ssh/id_rsa"),
        (b".ssh//id_rsa", b"/root/", b"/root/.ssh/id_rsa"),
        (b"../../../../etc/shadow", b"/a", b"/etc/shadow"),
        (b".bashrc", b"/root", b"/root/.bashrc"),
        (b"...", b"/root", b"/root/..."),
    ]

    def test_vectors(self) -> None:
        for path, base, want in self.vectors:
            self.assertEqual(decode.canonicalPath(path, base), want, (path, base))

    def test_relativeWithoutBase(self) -> None:
        self.assertRaises(ValueError, decode.canonicalPath, b"id_rsa")


class MatcherTests(SynchronousTestCase):
    watched = [
        ("/etc/", False),
        ("/etc/passwd", True),
        ("/etc/shadow", True),
        ("/root/.ssh", True),
        ("/home/", False),
        ("/home/u/.npmrc", True),
    ]

    def setUp(self) -> None:
        self.m = decode.PrefixMatcher(self.watched)

    def test_file(self) -> None:
        self.assertEqual(self.m.match(b"/etc/passwd"), 3)
        self.assertEqual(self.m.match(b"/etc/shadow"), 3)

    def test_segmentBoundary(self) -> None:
        """
        A prefix without a trailing slash matches itself and what is under
        it, never a sibling that merely starts with the same bytes.
        """
        self.assertEqual(self.m.match(b"/etc/passwd-"), 0)  # only /etc/
        self.assertEqual(self.m.match(b"/root/.ssh"), 3)
        self.assertEqual(self.m.match(b"/root/.ssh/id_rsa"), 3)
        self.assertIsNone(self.m.match(b"/root/.sshd"))
        self.assertIsNone(self.m.match(b"/root/.bashrc"))

    def test_directory(self) -> None:
        self.assertEqual(self.m.match(b"/etc/hosts"), 0)
        self.assertEqual(self.m.match(b"/etc"), 0)
        self.assertIsNone(self.m.match(b"/etcetera"))

    def test_longestWins(self) -> None:
        self.assertEqual(self.m.match(b"/home/u/.npmrc"), 3)
        self.assertEqual(self.m.match(b"/home/u/.npmrc2"), 0)
        self.assertEqual(self.m.match(b"/home/u/x"), 0)

    def test_root(self) -> None:
        m = decode.PrefixMatcher([("/", False)])
        self.assertEqual(m.match(b"/anything"), 0)

    def test_kernelEntries(self) -> None:
        entries = decode.kernelEntries([("/etc/", False), ("/etc/passwd", True), ("/etc", True)])
        self.assertEqual(
            entries,
            {b"/etc/": 3, b"/etc\0": 3, b"/etc/passwd\0": 3, b"/etc/passwd/": 3},
        )

    def test_kernelEntriesLong(self) -> None:
        long = "/" + "a" * 300
        entries = decode.kernelEntries([(long, False)])
        self.assertEqual({len(k) for k in entries}, {decode.LPM_CAP})


def header(rtype: int, tags: int = 0, slot: int = 7, pid: int = 10, tid: int = 0, run: bytes = bytes(range(16)),
           cgid: int = 456, comm: bytes = b"cat") -> bytes:
    return struct.pack(
        "<QQ16sIIIIII16sBBHI",
        123,
        cgid,
        run,
        pid,
        tid or pid + 1 if pid == 10 else tid or pid,
        9,
        1000,
        1001,
        slot,
        comm.ljust(16, b"\0"),
        rtype,
        tags,
        0,
        0,
    )


def fileRecord(path: bytes, rtype: int = decode.T_FILE, dfd: int = -100, flags: int = 0, ret: int = 3,
               resolve: int = 0, tags: int = 0, truncated: int = 0, **hdr: int) -> bytes:
    return (header(rtype, tags, **hdr) + struct.pack("<iiiHBB", dfd, flags, ret, len(path), truncated, resolve)
            + bytes(8) + path + b"\0")


def linkRecord(kind: int, old: bytes, new: bytes, olddfd: int = -100, newdfd: int = -100, **hdr: int) -> bytes:
    return (header(decode.T_LINK, **hdr) + struct.pack("<iiiHHBBHI", olddfd, newdfd, 0, len(old), len(new), kind, 0, 0, 0)
            + old.ljust(decode.LINK_CAP, b"\0") + new.ljust(decode.LINK_CAP, b"\0"))


def smallRecord(rtype: int, a: int = 0, b: int = 0, c: int = 0, **hdr: int) -> bytes:
    return header(rtype, **hdr) + struct.pack("<iiii", a, b, c, 0)


def netRecord(family: int, port: int, addr: bytes, fd: int = 5, fastopen: int = 0, stype: int = 1,
              path: bytes = b"", **hdr: int) -> bytes:
    return header(decode.T_NET, **hdr) + struct.pack("<HHI16sBBH108s", family, port, fd, addr.ljust(16, b"\0"),
                                                      fastopen, stype, 108 if family == 1 else 0, path)


def dataRecord(rtype: int, data: bytes, family: int = 2, port: int = 53, addr: bytes = bytes([127, 0, 0, 1]),
               fd: int = 5, stype: int = 2, **hdr: int) -> bytes:
    return header(rtype, **hdr) + struct.pack("<HHI16sHBBI", family, port, fd, addr.ljust(16, b"\0"), len(data),
                                               stype, 3, len(data)) + data


class RecordTests(SynchronousTestCase):
    def test_header(self) -> None:
        rec = fileRecord(b"/etc/passwd", tags=3, flags=0o101)
        rtype, payload = decode.decodeRecord(rec)
        self.assertEqual(rtype, 1)
        self.assertEqual(
            payload["Header"],
            {
                "TsNs": 123,
                "CgroupID": 456,
                "RunID": list(range(16)),
                "PID": 10,
                "TID": 11,
                "PPID": 9,
                "UID": 1000,
                "GID": 1001,
                "Type": 1,
                "Tags": 3,
            },
        )
        self.assertEqual(payload["CommStr"], "cat")
        self.assertEqual(payload["_path"], b"/etc/passwd")
        self.assertEqual(payload["DFD"], -100)
        self.assertEqual(payload["Ret"], 3)
        self.assertEqual(payload["_slot"], 7)

    def test_longPath(self) -> None:
        path = b"/" + b"d/" * 1500 + b"f"
        _t, payload = decode.decodeRecord(fileRecord(path, resolve=decode.RESOLVE_NEEDED))
        self.assertEqual(payload["_path"], path)
        self.assertEqual(payload["_resolve"], decode.RESOLVE_NEEDED)

    def test_link(self) -> None:
        _t, payload = decode.decodeRecord(linkRecord(decode.L_SYMLINK, b"/home/n/.npmrc", b"x", newdfd=4))
        self.assertEqual((payload["_kind"], payload["_old"], payload["_new"], payload["_newdfd"]), (1, b"/home/n/.npmrc", b"x", 4))
        self.assertFalse(payload["_truncated"])

    def test_small(self) -> None:
        self.assertEqual(decode.decodeRecord(smallRecord(decode.T_FORK, 77))[1]["ChildPID"], 77)
        self.assertEqual(decode.decodeRecord(smallRecord(decode.T_EXIT, 3, 1))[1]["ExitCode"], 3)
        self.assertIsNone(decode.decodeRecord(smallRecord(decode.T_EXIT, 0, 0))[1]["ExitCode"])
        io = decode.decodeRecord(smallRecord(decode.T_IOURING, -1))[1]
        self.assertEqual((io["Refused"], io["Errno"]), (True, 1))

    def test_net(self) -> None:
        addr = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
        _t, payload = decode.decodeRecord(netRecord(10, 443, addr))
        self.assertEqual((payload["Family"], payload["DestPort"], payload["DestIP"]), (10, 443, "10.0.0.1"))
        self.assertEqual(decode.decodeRecord(netRecord(10, 80, bytes(15) + b"\x01"))[1]["DestIP"], "::1")
        p = decode.decodeRecord(netRecord(2, 80, bytes([127, 0, 0, 1]), fastopen=1))[1]
        self.assertEqual((p["DestIP"], p["FastOpen"], p["SockType"]), ("127.0.0.1", True, "stream"))

    def test_unix(self) -> None:
        p = decode.decodeRecord(netRecord(1, 0, b"", path=b"/var/run/docker.sock"))[1]
        self.assertEqual(p["UnixPath"], "/var/run/docker.sock")
        p = decode.decodeRecord(netRecord(1, 0, b"", path=b"\0abstract"))[1]
        self.assertEqual(p["UnixPath"], "@abstract")

    def test_data(self) -> None:
        q = dnsQuery(b"exfil.test", 28)
        _t, payload = decode.decodeRecord(dataRecord(decode.T_DGRAM, q, port=5353))
        self.assertEqual((payload["_data"], payload["DestPort"], payload["DestIP"]), (q, 5353, "127.0.0.1"))

    def test_short(self) -> None:
        self.assertRaises(decode.DecodeError, decode.decodeRecord, b"\0" * 50)
        self.assertRaises(decode.DecodeError, decode.decodeRecord, header(decode.T_NET))
        self.assertRaises(decode.DecodeError, decode.decodeRecord, header(decode.T_LINK))
        self.assertRaises(decode.DecodeError, decode.decodeRecord, header(77))


class PayloadTests(SynchronousTestCase):
    def test_dnsAnyPort(self) -> None:
        p = decode.dnsPayload({"Type": 109}, 2, 9999, "127.0.0.1", dnsQuery(b"a.exfil.test", 16), "udp")
        self.assertEqual((p["QName"], p["QType"], p["DestPort"], p["Transport"], p["Header"]["Type"]), ("a.exfil.test", 16, 9999, "udp", 4))

    def test_notDNS(self) -> None:
        self.assertIsNone(decode.dnsPayload({}, 2, 53, "127.0.0.1", b"hello world, not dns", "udp"))
        response = bytearray(dnsQuery(b"a.b"))
        response[2] |= 0x80
        self.assertIsNone(decode.dnsPayload({}, 2, 53, "127.0.0.1", bytes(response), "udp"))

    def test_tcpDNS(self) -> None:
        q = dnsQuery(b"tcp.exfil.test")
        stream = len(q).to_bytes(2, "big") + q
        self.assertEqual(decode.tcpDNSMessage(stream), q)
        self.assertIsNone(decode.tcpDNSMessage(stream[:10]))
        self.assertIsNone(decode.tcpDNSMessage(stream[:-2]))
        self.assertIsNone(decode.tcpDNSMessage(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))

    def test_http(self) -> None:
        req = b"POST /collect?a=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 4\r\n\r\nbody"
        method, path, host, headers, end = decode.parseHTTPRequest(req)
        self.assertEqual((method, path, host, headers["content-length"], req[end:]), ("POST", "/collect?a=1", "127.0.0.1:8080", "4", b"body"))
        self.assertEqual(decode.parseHTTPRequest(req[:30])[4], -1)
        self.assertIsNone(decode.parseHTTPRequest(b"\x16\x03\x01 hello"))
        self.assertIsNone(decode.parseHTTPRequest(b"GETX / HTTP/1.1\r\n"))
