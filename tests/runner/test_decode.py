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


def header(rtype: int, tags: int = 0, slot: int = 7) -> bytes:
    return struct.pack(
        "<QQ16sIIIIII16sBBHI",
        123,
        456,
        bytes(range(16)),
        10,
        11,
        9,
        1000,
        1001,
        slot,
        b"cat".ljust(16, b"\0"),
        rtype,
        tags,
        0,
        0,
    )


class RecordTests(SynchronousTestCase):
    def test_header(self) -> None:
        rec = header(decode.T_FILE, 3) + struct.pack("<iiHBB", -100, 0o101, 11, 0, 0) + bytes(8) + b"/etc/passwd\0"
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
        self.assertEqual(payload["_slot"], 7)

    def test_net(self) -> None:
        addr = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
        rec = header(decode.T_NET) + struct.pack("<HHI16s", 10, 443, 5, addr)
        _t, payload = decode.decodeRecord(rec)
        self.assertEqual((payload["Family"], payload["DestPort"], payload["DestIP"]), (10, 443, "10.0.0.1"))
        rec = header(decode.T_NET) + struct.pack("<HHI16s", 10, 80, 5, bytes(15) + b"\x01")
        self.assertEqual(decode.decodeRecord(rec)[1]["DestIP"], "::1")
        rec = header(decode.T_NET) + struct.pack("<HHI16s", 2, 80, 5, bytes([127, 0, 0, 1]) + bytes(12))
        self.assertEqual(decode.decodeRecord(rec)[1]["DestIP"], "127.0.0.1")

    def test_dns(self) -> None:
        q = dnsQuery(b"exfil.test", 28)
        rec = header(decode.T_DNS) + struct.pack("<HHI16sHBBI", 2, 53, 3, bytes([127, 0, 0, 1]) + bytes(12), len(q), 3, 3, len(q)) + q
        _t, payload = decode.decodeRecord(rec)
        self.assertEqual((payload["QName"], payload["QType"], payload["QueryLen"], payload["ParseErr"]), ("exfil.test", 28, len(q), None))

    def test_tls(self) -> None:
        h = clientHello(b"c2.example")
        rec = header(decode.T_TLS) + struct.pack("<HHI16sHBBI", 0, 0, 3, bytes(16), len(h), 3, 1, len(h)) + h
        _t, payload = decode.decodeRecord(rec)
        self.assertEqual((payload["SNI"], payload["SniLen"], payload["Source"], payload["SourceName"]), ("c2.example", 10, 3, "tcp_clienthello"))

    def test_short(self) -> None:
        self.assertRaises(decode.DecodeError, decode.decodeRecord, b"\0" * 50)
        self.assertRaises(decode.DecodeError, decode.decodeRecord, header(decode.T_NET))
        self.assertRaises(decode.DecodeError, decode.decodeRecord, header(77))
