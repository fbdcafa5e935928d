"""
Tests for L{fangs.orchestrator.differ}: plain functions, no reactor.
"""

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator import differ, fingerprints
from fangs.orchestrator.allowlist import AllowEntry, Allowlist, canonicalPath
from fangs.orchestrator.differ import (
    FLAGS,
    FS_READ,
    FS_WRITE,
    NET_DESTINATION,
    NET_DNS,
    NET_HTTPS_HOST,
    PROC_EXEC,
    SEVERITY_RULES,
    FingerprintRow,
    FingerprintSet,
    Severity,
    classify,
    diff,
    extract,
    normalizeExec,
    normalizePath,
    planAnalysis,
    severityRank,
    verdict,
)

# ---------------------------------------------------------------------------
# Event builders (payload shapes of ref 1.5; only the keys the differ reads
# plus a little realism)


def header(pid=100, tags=0, type=1):
    return {"TsNs": 1, "CgroupID": 7, "PID": pid, "TID": pid, "PPID": 1, "Tags": tags, "Type": type}


def fileEvent(path, flags=0, tags=0, pid=100):
    return (1, {"Header": header(pid, tags, 1), "DFD": -100, "Flags": flags, "PathName": path, "CommStr": "node"})


def execEvent(binary, pid=100):
    return (2, {"Header": header(pid, 0, 2), "BinaryPathStr": binary, "ArgvStrs": [binary], "CommStr": "sh"})


def connectEvent(ip, port, pid=100):
    family = 10 if ":" in ip else 2
    return (3, {"Header": header(pid, 0, 3), "Family": family, "DestIP": ip, "DestPort": port, "CommStr": "node"})


def dnsEvent(qname, pid=100):
    return (4, {"Header": header(pid, 0, 4), "QName": qname, "DestIP": "127.0.0.11", "DestPort": 53, "ParseErr": None})


def sniEvent(sni, pid=100, ip=None, port=443):
    payload = {"Header": header(pid, 0, 5), "SNI": sni, "SourceName": "tcp_clienthello", "DuplicateOf": ""}
    if ip is not None:
        payload.update(DestIP=ip, DestPort=port)
    return (5, payload)


def numbered(events, start=1):
    return [(start + i, t, p) for i, (t, p) in enumerate(events)]


def fps(*events):
    return extract(numbered(events))


def byKey(fingerprints):
    return {(r.category, r.value): r for r in fingerprints.fingerprints()}


def other(*keys):
    """
    Baseline keys of the actor C{other} (these events come from processes
    the tree knows nothing about).
    """
    return {(c, v, "other") for c, v in keys}


# ---------------------------------------------------------------------------
# Normalisation


class NormalizePathTests(SynchronousTestCase):
    def test_referenceVectors(self) -> None:
        """
        The ten vectors of ref 3.3.
        """
        vectors = [
            ("/proc/12345/status", "/proc/<PID>/status"),
            ("/proc/self/maps", "/proc/self/maps"),
            ("/tmp/npm-2156-abc/foo", "/tmp/<RAND>/foo"),
            (
                "/root/.npm/_logs/2026-05-22T17_02_24_700Z-debug-0.log",
                "/root/.npm/_logs/<TIMESTAMP>-debug-<N>.log",
            ),
            ("/var/log/2026-05-22.log", "/var/log/<DATE>.log"),
            (
                "/root/.npm/_cacache/content-v2/sha256/ab/cd/abc123def",
                "/root/.npm/_cacache/content-v2/sha256/<SHA256>",
            ),
            (
                "/root/.npm/_cacache/index-v5/46/33/b2ab8c3e9f0d1a2b3c4d5e6f7a8b9c0d1e2f37ed",
                "/root/.npm/_cacache/index-v5/<HASH>",
            ),
            ("/sys/fs/cgroup/abcdef123456789abc/cgroup.procs", "/sys/fs/cgroup/<HEX>/cgroup.procs"),
            (
                "/usr/local/lib/node_modules/npm/package.json",
                "/usr/local/lib/node_modules/npm/package.json",
            ),
            ("/etc/passwd", "/etc/passwd"),
        ]
        for given, expected in vectors:
            self.assertEqual(normalizePath(given), expected, given)

    def test_canonicalisation(self) -> None:
        vectors = [
            ("/tmp/../root/.ssh/id_rsa", "/root/.ssh/id_rsa"),
            ("/etc//shadow", "/etc/shadow"),
            ("/etc/./passwd", "/etc/passwd"),
            ("/proc/123/../self/environ", "/proc/self/environ"),
            ("/tmp/npm-2156-abc/../npm-9999-x/y", "/tmp/<RAND>/y"),
            ("/usr/lib/", "/usr/lib"),
            ("/proc/42", "/proc/<PID>"),
        ]
        for given, expected in vectors:
            self.assertEqual(normalizePath(given), expected, given)

    def test_consecutiveHexBothCollapse(self) -> None:
        """
        The reference collapses only the first of two consecutive long-hex
        components; we collapse both.
        """
        self.assertEqual(normalizePath("/aaaaaaaaaaaa/bbbbbbbbbbbb/x"), "/<HEX>/<HEX>/x")
        self.assertEqual(normalizePath("/x/aaaaaaaaaaaa/bbbbbbbbbbbb"), "/x/<HEX>/<HEX>")
        self.assertEqual(normalizePath("/x/aaaaaaaaaaa/y"), "/x/aaaaaaaaaaa/y")  # 11 chars
        self.assertEqual(normalizePath("/x/AAAAAAAAAAAA/y"), "/x/AAAAAAAAAAAA/y")  # upper case

    def test_trailingNewlineIsNotEnd(self) -> None:
        """
        C{\\Z} not C{$}: a trailing newline is part of the name.
        """
        self.assertEqual(normalizePath("/var/log/2026-05-22.log\n"), "/var/log/2026-05-22.log\n")

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    "proc", "tmp", "123", "4567", "self", "npm-2156-abc", "x-999", ".npm",
                    "_cacache", "content-v2", "index-v5", "sha256", "ab", "cd", "0f", "abc123def",
                    "aaaaaaaaaaaa", "deadbeefdeadbeef", "2026-05-22.log", "2026-05-22",
                    "2026-05-22T17_02_24_700Z-debug-0.log", "..", ".", "", "tmp", "etc", "passwd",
                    "2026-05-22.tar", "x.log",
                ]
            ),
            max_size=8,
        )
    )
    def test_gatesAreInvisible(self, segments) -> None:
        """
        The cheap gates in front of the rules never change a result: the
        gated chain equals the eight rules applied unconditionally.
        """
        path = canonicalPath("/" + "/".join(segments))
        self.assertEqual(differ._applyRules(path), _ungated(path))

    def test_execNormalisation(self) -> None:
        self.assertEqual(normalizeExec(" /usr/bin/node\x00\x00 "), "/usr/bin/node")
        self.assertEqual(normalizeExec("/tmp/npm-1234-ab/run.sh"), "/tmp/<RAND>/run.sh")
        self.assertEqual(normalizeExec("sh"), "sh")
        self.assertEqual(normalizeExec("\x00"), "")


def _ungated(path):
    rules = [
        (r"^/proc/[0-9]+(/|\Z)", r"/proc/<PID>\1"),
        (r"^/tmp/[a-zA-Z0-9._-]*-[0-9]{3,}([a-zA-Z0-9._-]*)", "/tmp/<RAND>"),
        (r"/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9_]+Z-debug-[0-9]+\.log\Z", "/<TIMESTAMP>-debug-<N>.log"),
        (r"/[0-9]{4}-[0-9]{2}-[0-9]{2}(\.[a-zA-Z]+)\Z", r"/<DATE>\1"),
        (r"(/\.npm/_cacache/[^/]+/[a-zA-Z0-9]+)/[a-f0-9]{2}/[a-f0-9]{2}/[a-f0-9]+", r"\1/<SHA256>"),
        (r"(/\.npm/_cacache/index-[^/]+)/[a-f0-9]{2}/[a-f0-9]{2}/[a-f0-9]+", r"\1/<HASH>"),
        (r"(/\.npm/_cacache/tmp)/[a-f0-9]+", r"\1/<HEX>"),
        (r"/[a-f0-9]{12,}(?=/|\Z)", "/<HEX>"),
    ]
    for pattern, replacement in rules:
        path = re.sub(pattern, replacement, path)
    return path


# ---------------------------------------------------------------------------
# Extraction


class ExtractionTests(SynchronousTestCase):
    def test_everyCategory(self) -> None:
        fingerprints = fps(
            fileEvent("/etc/hosts", flags=0),
            fileEvent("/tmp/out", flags=0o101),  # O_WRONLY|O_CREAT
            execEvent("/usr/bin/git"),
            connectEvent("140.82.114.6", 443),
            dnsEvent("Registry.NPMJS.org."),
            sniEvent(" Registry.npmjs.org "),
        )
        self.assertEqual(
            sorted(byKey(fingerprints)),
            sorted(
                [
                    (FS_READ, "/etc/hosts"),
                    (FS_WRITE, "/tmp/out"),
                    (PROC_EXEC, "/usr/bin/git"),
                    (NET_DESTINATION, "140.82.114.6:443"),
                    (NET_DNS, "registry.npmjs.org"),
                    (NET_HTTPS_HOST, "registry.npmjs.org"),
                ]
            ),
        )

    def test_writeIntent(self) -> None:
        cases = {
            0: FS_READ,  # O_RDONLY
            0o1: FS_WRITE,  # O_WRONLY
            0o2: FS_WRITE,  # O_RDWR
            0o100: FS_WRITE,  # O_CREAT
            0o1000: FS_WRITE,  # O_TRUNC alone
            0o2000: FS_WRITE,  # O_APPEND alone
            0o2000000: FS_READ,  # O_CLOEXEC
            0o200000: FS_READ,  # O_DIRECTORY
        }
        for flags, category in cases.items():
            [row] = fps(fileEvent("/x", flags=flags)).fingerprints()
            self.assertEqual(row.category, category, oct(flags))

    def test_ipv6Bracketed(self) -> None:
        [row] = fps(connectEvent("2606:4700::1", 443)).fingerprints()
        self.assertEqual(row.value, "[2606:4700::1]:443")
        self.assertTrue(row.raw_ip)
        [row] = fps(connectEvent("::ffff:10.0.0.1", 80)).fingerprints()
        self.assertEqual(row.value, "10.0.0.1:80")

    def test_emptyValuesGiveNoFingerprint(self) -> None:
        fingerprints = fps(
            fileEvent(""),
            execEvent(""),
            execEvent("\x00 "),
            connectEvent("", 443),
            dnsEvent(""),
            dnsEvent("."),
            sniEvent("   "),
        )
        self.assertEqual(fingerprints.fingerprints(), [])
        # ... but the network events still reached the network.
        self.assertTrue(fingerprints.view().reached_network)

    def test_malformedPayloadsNeverRaise(self) -> None:
        events = [
            (1, 1, {}),
            (2, 1, {"PathName": 7}),
            (3, 1, {"PathName": "/x", "Flags": "rw", "Header": "nope"}),
            (4, 2, {"BinaryPathStr": ["x"]}),
            (5, 3, {"DestIP": 1234, "DestPort": 1}),
            (6, 3, {"DestIP": "1.2.3.4", "DestPort": "443", "Header": None}),
            (7, 4, {"QName": None}),
            (8, 5, {"SNI": {}}),
            (9, 99, {"PathName": "/y"}),
            (12, 13, {"ChildPID": "x"}),
            (13, 9, {"Bait": 7}),
            (14, 12, {"DestPort": "x", "Canaries": "npm_token"}),
            (10, 1, None),
            (11, 1, {"PathName": "/z", "Header": {"Tags": "2"}}),
        ]
        fingerprints = extract(events)
        self.assertEqual(
            sorted(byKey(fingerprints)),
            # A malformed canary event is still evidence of a canary.
            [(differ.CANARY, "? via ? to ?"), (FS_READ, "/x"), (FS_READ, "/z"), (NET_DESTINATION, "1.2.3.4:0")],
        )
        self.assertFalse(byKey(fingerprints)[(FS_READ, "/z")].cred)

    def test_countsAndEvidence(self) -> None:
        events = [
            (50, *fileEvent("/etc/hosts")),
            (10, *fileEvent("/etc//hosts")),
            (30, *fileEvent("/etc/hosts")),
        ]
        [row] = extract(events).fingerprints()
        self.assertEqual((row.count, row.first_event_id), (3, 10))

    def test_credTag(self) -> None:
        fingerprints = fps(
            fileEvent("/root/.npmrc", tags=3),
            fileEvent("/root/.npmrc", tags=0),
            fileEvent("/etc/hosts", tags=0),
        )
        rows = byKey(fingerprints)
        self.assertTrue(rows[(FS_READ, "/root/.npmrc")].cred)
        self.assertFalse(rows[(FS_READ, "/etc/hosts")].cred)

    def test_credFromCanonicalPath(self) -> None:
        """
        The sensor tags on raw strings, so C{/tmp/../root/.ssh/id_rsa} arrives
        untagged; the differ re-derives the tag from the canonical path.
        """
        rows = byKey(
            fps(
                fileEvent("/tmp/../root/.ssh/id_rsa", tags=0),
                fileEvent("/proc/1234/environ", tags=0),
                fileEvent("/proc/thread-self/environ", tags=0),
                fileEvent("/etc/passwd-", tags=0),
                fileEvent("/root/.sshx/config", tags=0),
            )
        )
        self.assertTrue(rows[(FS_READ, "/root/.ssh/id_rsa")].cred)
        self.assertTrue(rows[(FS_READ, "/proc/<PID>/environ")].cred)
        self.assertTrue(rows[(FS_READ, "/proc/thread-self/environ")].cred)
        self.assertFalse(rows[(FS_READ, "/etc/passwd-")].cred)
        self.assertFalse(rows[(FS_READ, "/root/.sshx/config")].cred)

    def test_credPathsConfigurable(self) -> None:
        events = numbered([fileEvent("/srv/secret/key"), fileEvent("/root/.ssh/id_rsa")])
        rows = byKey(extract(events, credPaths=["/srv/secret/"]))
        self.assertTrue(rows[(FS_READ, "/srv/secret/key")].cred)
        self.assertFalse(rows[(FS_READ, "/root/.ssh/id_rsa")].cred)

    def test_facts(self) -> None:
        fingerprints = fps(
            fileEvent("/x"),
            dnsEvent("registry.npmjs.org", pid=100),
            connectEvent("104.16.8.34", 443, pid=100),
            sniEvent("registry.npmjs.org", pid=100, ip="104.16.8.34"),
            connectEvent("104.16.8.35", 443, pid=200),
            sniEvent("", pid=300),
        )
        view = fingerprints.view()
        self.assertTrue(view.reached_network)
        self.assertEqual(view.network_event_id, 2)
        # Names are tied to the socket (pid, destination) that carried them.
        self.assertEqual(view.socketNamed({100}, "104.16.8.34:443"), {"registry.npmjs.org"})
        self.assertEqual(view.socketNamed({200}, "104.16.8.35:443"), set())
        self.assertEqual(view.socketNamed({100}, "127.0.0.11:53"), {"registry.npmjs.org"})

    def test_noNetwork(self) -> None:
        view = fps(fileEvent("/x"), execEvent("/bin/sh")).view()
        self.assertFalse(view.reached_network)
        self.assertIsNone(view.network_event_id)

    def test_rowsRoundTrip(self) -> None:
        fingerprints = fps(*_sampleRun())
        rows = fingerprints.rows()
        self.assertEqual(FingerprintSet.fromRows(rows), fingerprints)
        self.assertTrue(any(r.internal for r in rows))
        self.assertFalse(any(f.category.startswith("_") for f in fingerprints.fingerprints()))

    def test_rowMerge(self) -> None:
        a = FingerprintRow(FS_READ, "/x", 2, 9, cred=False)
        b = FingerprintRow(FS_READ, "/x", 3, 4, cred=True)
        self.assertEqual(a.merge(b), FingerprintRow(FS_READ, "/x", 5, 4, cred=True))
        self.assertRaises(ValueError, a.merge, FingerprintRow(FS_WRITE, "/x", 1, 1))

    def test_incrementalEqualsOneShot(self) -> None:
        """
        Batches folded with L{FingerprintSet.merge}, or stored as rows and
        merged row-by-row as the database upsert would, equal one pass over
        every event, whatever the batching and order.
        """
        events = numbered(_sampleRun() * 7)
        whole = extract(events)
        rng = random.Random(4)
        for _ in range(20):
            shuffled = events[:]
            rng.shuffle(shuffled)
            cuts = sorted(rng.sample(range(1, len(shuffled)), 5))
            batches = [shuffled[i:j] for i, j in zip([0] + cuts, cuts + [len(shuffled)])]
            merged = FingerprintSet()
            table = {}
            for batch in batches:
                part = extract(batch)
                merged.merge(part)
                for row in part.rows():
                    table[row.key] = table[row.key].merge(row) if row.key in table else row
            self.assertEqual(merged, whole)
            self.assertEqual(FingerprintSet.fromRows(table.values()), whole)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(0, 30), min_size=1, max_size=60), st.integers(1, 5), st.randoms())
    def test_incrementalProperty(self, picks, nBatches, rng) -> None:
        pool = numbered(_sampleRun())
        events = [(i + 1, pool[p % len(pool)][1], pool[p % len(pool)][2]) for i, p in enumerate(picks)]
        whole = extract(events)
        rng.shuffle(events)
        size = max(1, len(events) // nBatches)
        merged = FingerprintSet()
        for start in range(0, len(events), size):
            merged.merge(extract(events[start : start + size]))
        self.assertEqual(merged.rows(), whole.rows())


def _sampleRun():
    return [
        fileEvent("/root/.npm/_cacache/content-v2/sha512/ab/cd/0123456789abcdef"),
        fileEvent("/root/.npm/_cacache/index-v5/12/34/fedcba9876543210fedcba"),
        fileEvent("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        fileEvent("/root/.npmrc", tags=3),
        fileEvent("/tmp/npm-123-abc/pkg/package.json", flags=0o1101),
        fileEvent("/proc/4242/status"),
        execEvent("/usr/local/bin/node"),
        execEvent("/bin/sh", pid=101),
        dnsEvent("registry.npmjs.org"),
        connectEvent("104.16.8.34", 443),
        connectEvent("2606:4700::6810:1", 443, pid=101),
        sniEvent("registry.npmjs.org"),
        connectEvent("127.0.0.11", 53),
    ]


# ---------------------------------------------------------------------------
# Severity and diff


def entries(*specs):
    return [AllowEntry(id=str(i), kind=k, value=v) for i, (k, v) in enumerate(specs)]


def one(deviations, category, value):
    [found] = [d for d in deviations if d.category == category and d.value == value]
    return found


class SeverityScaleTests(SynchronousTestCase):
    def test_order(self) -> None:
        self.assertTrue(Severity.LOW < Severity.MEDIUM < Severity.HIGH < Severity.CRITICAL)
        self.assertEqual([s.label for s in Severity], ["low", "medium", "high", "critical"])
        self.assertEqual(Severity.parse(" High "), Severity.HIGH)
        self.assertRaises(ValueError, Severity.parse, "warn")
        self.assertLess(severityRank("medium"), severityRank("critical"))
        self.assertEqual((severityRank(None), severityRank("")), (0, 0))
        self.assertRaises(ValueError, severityRank, "warn")

    def test_ruleTableIsWellFormed(self) -> None:
        """
        Every rule names a real category and real flags; every category has
        an unconditional fallback row.
        """
        for rule in SEVERITY_RULES:
            self.assertIn(rule.category, differ.CATEGORIES + ("*outbound",))
            self.assertTrue(rule.requires <= FLAGS, rule)
            self.assertTrue(rule.unless <= FLAGS, rule)
            self.assertNotIn("\n", rule.reason)
        for category in differ.CATEGORIES:
            severity, reason = classify(category, frozenset())
            self.assertTrue(reason)


class DiffTests(SynchronousTestCase):
    def test_fileSeverities(self) -> None:
        quiet = fps(fileEvent("/etc/hosts"), fileEvent("/tmp/x", flags=1), fileEvent("/root/.ssh/id_rsa", tags=3),
                    fileEvent("/root/.ssh/authorized_keys", flags=0o2001, tags=3))
        found = diff(quiet, set())
        self.assertEqual(one(found, FS_READ, "/etc/hosts").severity, Severity.LOW)
        self.assertEqual(one(found, FS_WRITE, "/tmp/x").severity, Severity.LOW)
        cred = one(found, FS_READ, "/root/.ssh/id_rsa")
        self.assertEqual(cred.severity, Severity.HIGH)
        self.assertTrue(cred.reason.startswith("read of cred-tagged path; by other"), cred.reason)
        self.assertEqual(one(found, FS_WRITE, "/root/.ssh/authorized_keys").severity, Severity.HIGH)

    def test_credPlusNetworkIsCritical(self) -> None:
        for network in (dnsEvent("evil.example"), connectEvent("127.0.0.1", 3128), sniEvent("x.y")):
            found = diff(fps(fileEvent("/root/.aws/credentials", tags=3), network), set())
            cred = one(found, FS_READ, "/root/.aws/credentials")
            self.assertEqual(cred.severity, Severity.CRITICAL, network)
            self.assertTrue(cred.reason.startswith("credential read and a new outbound destination in the same process tree"))
        found = diff(fps(fileEvent("/root/.ssh/id_rsa", flags=1, tags=3), dnsEvent("a.b")), set())
        self.assertEqual(one(found, FS_WRITE, "/root/.ssh/id_rsa").severity, Severity.CRITICAL)
        # A network event that names nothing new is no chain.
        found = diff(fps(fileEvent("/root/.aws/credentials", tags=3), dnsEvent("")), set())
        self.assertEqual(one(found, FS_READ, "/root/.aws/credentials").severity, Severity.HIGH)
        # Nor is an outbound destination already in the baseline.
        found = diff(fps(fileEvent("/root/.aws/credentials", tags=3), dnsEvent("a.b")), other((NET_DNS, "a.b")))
        self.assertEqual(one(found, FS_READ, "/root/.aws/credentials").severity, Severity.HIGH)

    def test_networkSeverities(self) -> None:
        found = diff(fps(dnsEvent("evil.example"), sniEvent("evil.example"), execEvent("/usr/bin/curl")), set())
        self.assertEqual(one(found, NET_DNS, "evil.example").severity, Severity.MEDIUM)
        self.assertEqual(one(found, NET_HTTPS_HOST, "evil.example").severity, Severity.MEDIUM)
        self.assertEqual(one(found, PROC_EXEC, "/usr/bin/curl").severity, Severity.MEDIUM)

    def test_rawIPOutsideAllowlistsIsHigh(self) -> None:
        found = diff(fps(connectEvent("203.0.113.9", 4444), dnsEvent("x.example")), set())
        dest = one(found, NET_DESTINATION, "203.0.113.9:4444")
        self.assertEqual(dest.severity, Severity.HIGH)
        self.assertTrue(dest.reason.startswith("connection to a raw IP outside every allowlist"))
        found = diff(fps(connectEvent("2001:db8::9", 443)), set())
        self.assertEqual(one(found, NET_DESTINATION, "[2001:db8::9]:443").severity, Severity.HIGH)

    def test_providerCIDRsNeedANamedSocket(self) -> None:
        """
        A CDN destination is hidden only when the same socket carried an
        allowlisted or baselined name (TLS SNI, HTTP Host); otherwise it is
        a deviation, high when the process also read a credential.
        """
        # SNI on that very socket, name baselined: hidden
        self.assertEqual(diff(fps(connectEvent("104.16.8.34", 443), sniEvent("registry.npmjs.org", ip="104.16.8.34")),
                              other((NET_HTTPS_HOST, "registry.npmjs.org"))), [])
        # order does not matter, IPv6 too, and an SNI allowlist entry works as well
        allow = Allowlist(entries(("sni", "*.example")))
        self.assertEqual(diff(fps(sniEvent("a.example", ip="2606:4700::1"), connectEvent("2606:4700::1", 443)),
                              set(), allow), [])
        # the process resolved a baselined name, but the socket into the CDN
        # carried none (a DNS lookup names no socket): flagged
        found = diff(fps(dnsEvent("registry.npmjs.org"), connectEvent("104.16.8.34", 443)),
                     other((NET_DNS, "registry.npmjs.org")))
        self.assertEqual([(d.value, d.severity) for d in found], [("104.16.8.34:443", Severity.MEDIUM)])
        self.assertIn("Cloudflare", found[0].reason)
        # the socket carried a name, but a new one: not hidden
        found = diff(fps(connectEvent("54.230.1.1", 443), sniEvent("c2.example", ip="54.230.1.1")),
                     other((NET_HTTPS_HOST, "registry.npmjs.org")))
        self.assertIn(("54.230.1.1:443", Severity.MEDIUM), [(d.value, d.severity) for d in found])
        # a name on another process's socket (npm's registry connection)
        # hides nothing for the postinstall's raw CloudFront connect
        found = diff(
            fps(sniEvent("registry.npmjs.org", pid=100, ip="54.230.1.1"), connectEvent("54.230.1.1", 443, pid=100),
                connectEvent("54.230.1.1", 443, pid=200)),
            other((NET_HTTPS_HOST, "registry.npmjs.org")),
        )
        self.assertEqual([(d.value, d.severity) for d in found], [("54.230.1.1:443", Severity.MEDIUM)])
        self.assertEqual(found[0].detail["actors"], ["other"])
        # no name anywhere, and the process read a (baselined) credential: high
        found = diff(fps(fileEvent("/root/.npmrc", tags=3, pid=200), connectEvent("54.230.1.1", 443, pid=200)),
                     other((FS_READ, "/root/.npmrc")))
        self.assertEqual([(d.value, d.severity) for d in found], [("54.230.1.1:443", Severity.HIGH)])

    def test_operatorAllowlists(self) -> None:
        allow = Allowlist(
            entries(
                ("cidr", "10.0.0.0/8"),
                ("cidr", "2001:db8::/32"),
                ("path", "/usr/lib/"),
                ("path", "/root/"),
                ("sni", "*.npmjs.org"),
                ("dns", "registry.npmjs.org"),
                ("exec", "/usr/bin/"),
            )
        )
        fingerprints = fps(
            connectEvent("10.1.2.3", 80),
            connectEvent("2001:db8::1", 443),
            connectEvent("11.1.2.3", 80),
            fileEvent("/usr/lib/libc.so"),
            fileEvent("/usr/lib64/libc.so"),
            fileEvent("/root/.cache/x"),
            fileEvent("/root/.ssh/id_rsa", tags=3),
            sniEvent("registry.npmjs.org"),
            dnsEvent("registry.npmjs.org"),
            dnsEvent("other.npmjs.org"),
            execEvent("/usr/bin/git"),
            execEvent("/bin/sh"),
        )
        found = diff(fingerprints, set(), allow)
        self.assertEqual(
            sorted((d.category, d.value) for d in found),
            sorted(
                [
                    (NET_DESTINATION, "11.1.2.3:80"),
                    (FS_READ, "/usr/lib64/libc.so"),
                    (FS_READ, "/root/.ssh/id_rsa"),  # a directory entry never hides cred
                    (NET_DNS, "other.npmjs.org"),  # dns and sni entries are separate
                    (PROC_EXEC, "/bin/sh"),
                ]
            ),
        )
        exact = Allowlist(entries(("path", "/root/.ssh/id_rsa")))
        self.assertEqual(diff(fps(fileEvent("/root/.ssh/id_rsa", tags=3)), set(), exact), [])

    def test_baselineSuppresses(self) -> None:
        fingerprints = fps(fileEvent("/a"), fileEvent("/b"), fileEvent("/b"))
        [d] = diff(fingerprints, other((FS_READ, "/a")))
        self.assertEqual((d.value, d.count, d.evidence_event_id), ("/b", 2, 2))

    def test_order(self) -> None:
        found = diff(fps(fileEvent("/z"), fileEvent("/a"), dnsEvent("x"), fileEvent("/root/.npmrc", tags=3)), set())
        self.assertEqual(
            [(d.severity, d.value) for d in found],
            [(Severity.CRITICAL, "/root/.npmrc"), (Severity.CRITICAL, "x"), (Severity.LOW, "/a"), (Severity.LOW, "/z")],
        )

    def test_internalRowsNeverDeviate(self) -> None:
        found = diff(fps(connectEvent("1.2.3.4", 1), dnsEvent("a")), set())
        self.assertFalse(any(d.category.startswith("_") for d in found))


# ---------------------------------------------------------------------------
# Verdict and plan


class VerdictTests(SynchronousTestCase):
    def test_table(self) -> None:
        # (state, dropped, hasBaseline, deviations, rejected, promoted) -> verdict
        table = [
            (("ok", 0, False, 0, False, False), "baseline"),
            (("ok", 0, False, 3, False, False), "baseline"),
            (("ok", 0, True, 0, False, False), "clean"),
            (("ok", 0, True, 2, False, False), "deviations"),
            (("ok", 0, True, 2, False, True), "baseline"),
            (("ok", 0, True, 2, True, False), "rejected"),
            (("ok", 0, True, 2, True, True), "rejected"),
            (("ok", 1, False, 0, False, False), "incomplete"),
            (("ok", 5, True, 0, False, False), "incomplete"),
            (("failed", 0, True, 0, False, False), "incomplete"),
            (("failed", 0, False, 0, False, False), "incomplete"),
            (("timeout", 0, True, 0, False, False), "incomplete"),
            (("timeout", 0, True, 0, False, True), "incomplete"),
            (("running", 0, True, 0, False, False), "incomplete"),
            (("failed", 0, True, 1, True, False), "rejected"),
        ]
        for args, expected in table:
            self.assertEqual(verdict(*args), expected, args)
        self.assertEqual(verdict("ok", 0, True, [object()]), "deviations")


class PlanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.allow = Allowlist(entries(("path", "/usr/lib/")))
        self.run = fps(fileEvent("/usr/lib/libc.so"), fileEvent("/etc/hosts"), dnsEvent("registry.npmjs.org"),
                       fileEvent("/root/.npmrc", tags=3, pid=200))

    def plan(self, baselineKeys=frozenset(), **kw):
        args = dict(runState="ok", eventsDropped=0, hasBaseline=bool(baselineKeys))
        args.update(kw)
        return planAnalysis(self.run, baselineKeys, self.allow, **args)

    def test_seed(self) -> None:
        # A credential read by a process of unknown lineage, nothing
        # outbound in its tree: high, so even a first run is held...
        plan = self.plan()
        self.assertEqual(plan.verdict, "deviations")
        self.assertEqual([d.value for d in plan.deviations], ["/root/.npmrc"])
        self.assertIn("first run", plan.reason)
        # ... until a person promotes it.
        plan = self.plan(promoted=True)
        self.assertEqual(plan.verdict, "baseline")
        self.assertTrue(plan.in_baseline)
        self.assertEqual(plan.deviations, ())
        self.assertEqual(
            sorted(r.key for r in plan.baseline_add),
            sorted(other((FS_READ, "/etc/hosts"), (FS_READ, "/root/.npmrc"), (NET_DNS, "registry.npmjs.org"))),
        )
        self.assertIsNone(plan.max_severity)

    def test_clean(self) -> None:
        keys = self.run.keys()
        plan = self.plan(keys)
        self.assertEqual(plan.verdict, "clean")
        self.assertTrue(plan.in_baseline)
        self.assertEqual(len(plan.baseline_add), 3)

    def test_deviations(self) -> None:
        plan = self.plan(other((FS_READ, "/etc/hosts")))
        self.assertEqual(plan.verdict, "deviations")
        self.assertFalse(plan.in_baseline)
        self.assertEqual(plan.baseline_add, ())
        self.assertEqual([d.value for d in plan.deviations], ["/root/.npmrc", "registry.npmjs.org"])
        self.assertEqual(plan.max_severity, Severity.HIGH)

    def test_incompleteNeverTouchesBaseline(self) -> None:
        for kw in ({"runState": "failed"}, {"runState": "timeout"}, {"eventsDropped": 3}):
            plan = self.plan(**kw)
            self.assertEqual((plan.verdict, plan.in_baseline, plan.baseline_add, plan.deviations),
                             ("incomplete", False, (), ()), kw)
            self.assertFalse(plan.complete)
            # With a baseline, its deviations are still reported as evidence.
            plan = self.plan(other((FS_READ, "/etc/hosts")), **kw)
            self.assertEqual(plan.verdict, "incomplete")
            self.assertEqual(plan.baseline_add, ())
            self.assertEqual(len(plan.deviations), 2)

    def test_promotedAndRejected(self) -> None:
        plan = self.plan(other((FS_READ, "/etc/hosts")), promoted=True)
        self.assertEqual((plan.verdict, plan.deviations), ("baseline", ()))
        self.assertEqual(len(plan.baseline_add), 3)
        plan = self.plan(other((FS_READ, "/etc/hosts")), rejected=True)
        self.assertEqual(plan.verdict, "rejected")
        self.assertEqual(len(plan.deviations), 2)
        self.assertEqual(plan.baseline_add, ())

    def test_idempotent(self) -> None:
        """
        Same inputs, same plan (rows or set, any number of times).
        """
        keys = other((FS_READ, "/etc/hosts"))
        first = self.plan(keys)
        self.assertEqual(self.plan(keys), first)
        self.assertEqual(
            planAnalysis(self.run.rows(), keys, self.allow, runState="ok", eventsDropped=0, hasBaseline=True),
            first,
        )


class HotPathTests(SynchronousTestCase):
    def test_memoResetChangesNothing(self) -> None:
        """
        The bounded path memo is an optimisation only.
        """
        events = numbered(_sampleRun() * 3 + [fileEvent("/tmp/../root/.ssh/id_rsa")])
        expected = extract(events).rows()
        self.patch(fingerprints, "_MEMO_LIMIT", 2)
        self.assertEqual(extract(events).rows(), expected)

    def test_eventTypeEnumAccepted(self) -> None:
        from fangs.wire import EventType

        fingerprints = FingerprintSet()
        fingerprints.add(1, EventType.FILE_ACCESS, fileEvent("/x")[1])
        fingerprints.add(2, EventType.TLS_SNI, sniEvent("a.b")[1])
        self.assertEqual(sorted(fingerprints.keys()), sorted(other((FS_READ, "/x"), (NET_HTTPS_HOST, "a.b"))))

    def test_syntheticInstallRun(self) -> None:
        """
        What the differ benchmark (C{python -m benchmarks.differ}) relies on,
        on a tiny synthetic install: extraction batch by batch, rows merged
        as the store merges them, equals one-shot extraction, and the diff
        against another run's baseline finds the planted key read.
        """
        from tests.orchestrator.synthetic import syntheticEvents

        events = syntheticEvents(2000)
        whole = extract(events)
        table = {}
        for i in range(0, len(events), 100):
            for row in extract(events[i : i + 100]).rows():
                old = table.get(row.key)
                table[row.key] = row if old is None else old.merge(row)
        self.assertEqual(FingerprintSet.fromRows(table.values()), whole)
        baseline = extract(syntheticEvents(2000, seed=2)).keys()
        allow = Allowlist()
        found = {(d.severity.label, d.value) for d in diff(whole, baseline, allow)}
        self.assertIn(("critical", "/root/.ssh/id_rsa"), found)
        self.assertEqual(syntheticEvents(50), syntheticEvents(50))


class NpmNoiseTests(SynchronousTestCase):
    """
    Names npm makes up at random on every install, seen in real runs.
    """

    def test_cacacheTmpAnyName(self):
        from fangs.orchestrator.differ import normalizePath

        self.assertEqual(normalizePath("/root/.npm/_cacache/tmp/jlNkTC/package.json"), "/root/.npm/_cacache/tmp/<HEX>/package.json")
        self.assertEqual(normalizePath("/root/.npm/_cacache/tmp/q4uhJz"), "/root/.npm/_cacache/tmp/<HEX>")

    def test_uuid(self):
        from fangs.orchestrator.differ import normalizePath

        self.assertEqual(
            normalizePath("/root/.npm/_cacache/tmp/3f2a1b7c-8c12-4c38-83c0-e6aff0c5df0a"),
            "/root/.npm/_cacache/tmp/<HEX>",
        )
        self.assertEqual(normalizePath("/var/run/3F2A1B7C-8C12-4C38-83C0-E6AFF0C5DF0A.lock"), "/var/run/<UUID>.lock")
