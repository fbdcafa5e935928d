"""
Tests for L{fangs.orchestrator.allowlist}.
"""

from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator.allowlist import (
    AllowEntry,
    Allowlist,
    AllowlistError,
    PROVIDER_CIDRS,
    canonicalPath,
    configEntries,
    configEntryId,
    formatDestination,
    makeEntry,
    parseIP,
    planConfigSync,
    providerFor,
    splitDestination,
    validateEntry,
)


class CanonicalPathTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        vectors = {
            "/tmp/../root/.ssh/id_rsa": "/root/.ssh/id_rsa",
            "/etc//passwd": "/etc/passwd",
            "//etc/passwd": "/etc/passwd",
            "/etc/./passwd": "/etc/passwd",
            "/usr/lib/": "/usr/lib",
            "/a/b/../../../../etc/shadow": "/etc/shadow",
            "/a/b/..": "/a",
            "/a/.": "/a",
            "/": "/",
            "/..": "/",
            "a/../../b": "../b",
            "./x": "x",
            ".": ".",
            "": "",
            "/root/.npm/_cacache/x": "/root/.npm/_cacache/x",
            "/a/..b/c": "/a/..b/c",
            "/a/.b/": "/a/.b",
        }
        for given, expected in vectors.items():
            self.assertEqual(canonicalPath(given), expected, given)


class AddressTests(SynchronousTestCase):
    def test_formatDestination(self) -> None:
        self.assertEqual(formatDestination("1.2.3.4", 443), "1.2.3.4:443")
        self.assertEqual(formatDestination("2606:4700::1", 443), "[2606:4700::1]:443")
        self.assertEqual(
            formatDestination("2606:4700:0000:0000:0000:0000:0000:0001", 443), "[2606:4700::1]:443"
        )
        self.assertEqual(formatDestination("::ffff:1.2.3.4", 80), "1.2.3.4:80")
        self.assertEqual(formatDestination("[::1]", 53), "[::1]:53")
        self.assertEqual(formatDestination("1.2.3.4", None), "1.2.3.4:0")
        self.assertEqual(formatDestination("1.2.3.4", "443"), "1.2.3.4:0")
        self.assertEqual(formatDestination("not-an-ip", 1), "not-an-ip:1")
        self.assertEqual(formatDestination("zz::zz", 1), "[zz::zz]:1")

    def test_splitDestination(self) -> None:
        self.assertEqual(splitDestination("1.2.3.4:443"), ("1.2.3.4", 443))
        self.assertEqual(splitDestination("[2606:4700::1]:443"), ("2606:4700::1", 443))
        self.assertEqual(splitDestination("2606:4700::1"), ("2606:4700::1", -1))
        self.assertEqual(splitDestination("x"), ("x", -1))

    def test_parseIP(self) -> None:
        self.assertEqual(str(parseIP(" 10.0.0.1 ")), "10.0.0.1")
        self.assertEqual(str(parseIP("::ffff:10.0.0.1")), "10.0.0.1")
        self.assertIsNone(parseIP(""))
        self.assertIsNone(parseIP("not-an-ip"))


class ProviderTests(SynchronousTestCase):
    def test_referencePins(self) -> None:
        """
        The reference's pinned addresses (ref 3.5).
        """
        self.assertEqual(providerFor("104.16.8.34"), "Cloudflare")
        self.assertEqual(providerFor("140.82.114.6"), "GitHub")
        self.assertEqual(providerFor("142.250.190.78"), "Google")
        self.assertEqual(providerFor("199.232.45.10"), "Fastly")
        for ip in ("1.2.3.4", "1.1.1.1", "10.255.255.254", "", "not-an-ip"):
            self.assertIsNone(providerFor(ip), ip)

    def test_ipv6(self) -> None:
        self.assertEqual(providerFor("2606:4700::1"), "Cloudflare")
        self.assertEqual(providerFor("2a06:98c7::1"), "Cloudflare")  # inside the /29
        self.assertEqual(providerFor("2a04:4e42::1"), "Fastly")
        self.assertEqual(providerFor("2607:f8b0:4004::1"), "Google")
        self.assertEqual(providerFor("2606:50c0::1"), "GitHub")
        self.assertEqual(providerFor("2600:900f::1"), "CloudFront")
        self.assertIsNone(providerFor("2001:db8::1"))
        self.assertIsNone(providerFor("::1"))

    def test_mappedIPv4(self) -> None:
        self.assertEqual(providerFor("::ffff:104.16.8.34"), "Cloudflare")

    def test_everyProviderHasV4AndV6(self) -> None:
        for provider, cidrs in PROVIDER_CIDRS:
            self.assertTrue(any(":" in c for c in cidrs), provider)
            self.assertTrue(any("." in c for c in cidrs), provider)


class ValidationTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for kind, value in [
            ("cidr", "10.0.0.0/8"),
            ("cidr", "2001:db8::/32"),
            ("cidr", "1.2.3.4"),
            ("path", "/usr/lib/"),
            ("path", "/proc/<PID>/"),
            ("sni", "registry.npmjs.org"),
            ("sni", "*.example.com"),
            ("dns", "_dmarc.Example.COM."),
            ("exec", "/usr/bin/node"),
            ("exec", "/usr/bin/"),
        ]:
            self.assertIsNone(validateEntry(kind, value), (kind, value))

    def test_invalid(self) -> None:
        cases = [
            ("cidr", "10.0.0.0/33", "invalid cidr"),
            ("cidr", "banana", "invalid cidr"),
            ("cidr", "10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("path", "usr/lib", "absolute"),
            ("exec", "node", "absolute"),
            ("path", "", "must not be empty"),
            ("sni", "   ", "must not be empty"),
            ("sni", "a b.com", "not a host name"),
            ("dns", "foo.*.com", "not a host name"),
            ("dns", "*.", "wildcard"),
            ("url", "x", "unknown allowlist kind 'url'"),
            ("path", None, "must be a string"),
        ]
        for kind, value, fragment in cases:
            message = validateEntry(kind, value)
            self.assertIsNotNone(message, (kind, value))
            self.assertIn(fragment, message)
            self.assertNotIn("\n", message)

    def test_scope(self) -> None:
        self.assertIsNone(validateEntry("path", "/x", "package", "left-pad"))
        self.assertIn("package_name", validateEntry("path", "/x", "package", ""))
        self.assertIn("must not name", validateEntry("path", "/x", "global", "left-pad"))
        self.assertIn("unknown scope", validateEntry("path", "/x", "world"))

    def test_makeEntryNormalises(self) -> None:
        self.assertEqual(makeEntry("a", "cidr", " 2001:DB8:0::/32 ").value, "2001:db8::/32")
        self.assertEqual(makeEntry("a", "cidr", "1.2.3.4").value, "1.2.3.4/32")
        self.assertEqual(makeEntry("a", "sni", " Registry.NPMJS.org. ").value, "registry.npmjs.org")
        self.assertEqual(makeEntry("a", "path", "/usr//lib/./x/").value, "/usr/lib/x/")
        self.assertEqual(makeEntry("a", "path", "/etc/../etc/hosts").value, "/etc/hosts")
        self.assertRaises(AllowlistError, makeEntry, "a", "cidr", "nope")


class AllowlistMatchingTests(SynchronousTestCase):
    def entries(self, *specs):
        return [
            AllowEntry(id=str(i), kind=k, value=v, scope=s, package_name=p)
            for i, (k, v, s, p) in enumerate(specs)
        ]

    def test_pathSegments(self) -> None:
        allow = Allowlist(self.entries(("path", "/usr/lib/", "global", ""), ("path", "/opt/x", "global", "")))
        self.assertTrue(allow.coversPath("/usr/lib/x.so"))
        self.assertTrue(allow.coversPath("/usr/lib/a/b"))
        self.assertTrue(allow.coversPath("/usr/lib"))
        self.assertFalse(allow.coversPath("/usr/lib64/x.so"))
        self.assertFalse(allow.coversPath("/usr/li"))
        self.assertTrue(allow.coversPath("/opt/x"))
        self.assertTrue(allow.coversPath("/opt/x/y"))
        self.assertFalse(allow.coversPath("/opt/xy"))

    def test_credNeedsExactEntry(self) -> None:
        allow = Allowlist(self.entries(("path", "/root/", "global", ""), ("path", "/etc/passwd", "global", "")))
        self.assertTrue(allow.coversPath("/root/.ssh/id_rsa"))
        self.assertFalse(allow.coversPath("/root/.ssh/id_rsa", cred=True))
        self.assertTrue(allow.coversPath("/etc/passwd", cred=True))

    def test_rootPath(self) -> None:
        allow = Allowlist(self.entries(("path", "/", "global", "")))
        self.assertTrue(allow.coversPath("/anything/at/all"))
        self.assertFalse(allow.coversPath("relative"))

    def test_names(self) -> None:
        allow = Allowlist(
            self.entries(
                ("sni", "Registry.npmjs.org", "global", ""),
                ("sni", "*.example.com", "global", ""),
                ("dns", "dns.only", "global", ""),
            )
        )
        self.assertTrue(allow.coversName("sni", "registry.npmjs.org"))
        self.assertFalse(allow.coversName("dns", "registry.npmjs.org"))
        self.assertTrue(allow.coversName("sni", "a.example.com"))
        self.assertTrue(allow.coversName("sni", "a.b.example.com"))
        self.assertFalse(allow.coversName("sni", "example.com"))
        self.assertFalse(allow.coversName("sni", "badexample.com"))
        self.assertTrue(allow.coversName("dns", "dns.only"))
        self.assertFalse(allow.coversName("sni", "dns.only"))

    def test_exec(self) -> None:
        allow = Allowlist(self.entries(("exec", "/usr/bin/", "global", ""), ("exec", "/bin/sh", "global", "")))
        self.assertTrue(allow.coversExec("/usr/bin/git"))
        self.assertTrue(allow.coversExec("/usr/bin/x/y"))
        self.assertFalse(allow.coversExec("/usr/bin"))
        self.assertFalse(allow.coversExec("/usr/binx/git"))
        self.assertTrue(allow.coversExec("/bin/sh"))
        self.assertFalse(allow.coversExec("/bin/sh2"))
        self.assertFalse(allow.coversExec("/bin/sh/x"))

    def test_cidr(self) -> None:
        allow = Allowlist(self.entries(("cidr", "10.0.0.0/8", "global", ""), ("cidr", "2001:db8::/32", "global", "")))
        self.assertEqual(allow.cidrFor("10.1.2.3"), "10.0.0.0/8")
        self.assertEqual(allow.cidrFor("2001:db8::5"), "2001:db8::/32")
        self.assertIsNone(allow.cidrFor("11.0.0.1"))
        self.assertIsNone(allow.cidrFor("garbage"))

    def test_scopeFiltering(self) -> None:
        entries = self.entries(
            ("path", "/a/", "global", ""),
            ("path", "/b/", "package", "left-pad"),
            ("path", "/c/", "package", "other"),
        )
        allow = Allowlist(entries, "left-pad")
        self.assertTrue(allow.coversPath("/a/x"))
        self.assertTrue(allow.coversPath("/b/x"))
        self.assertFalse(allow.coversPath("/c/x"))
        self.assertEqual([e.id for e in allow.entries], ["0", "1"])

    def test_invalidStoredEntriesSkipped(self) -> None:
        entries = self.entries(("cidr", "nope", "global", ""), ("path", "/ok/", "global", ""))
        allow = Allowlist(entries)
        self.assertEqual(len(allow.invalid), 1)
        self.assertIn("invalid cidr", allow.invalid[0][1])
        self.assertTrue(allow.coversPath("/ok/x"))


class ConfigTests(SynchronousTestCase):
    def test_ids(self) -> None:
        import hashlib

        expected = "cfg" + hashlib.sha256(b"path|/usr/lib/").hexdigest()[:12]
        self.assertEqual(configEntryId("path", "/usr/lib/"), expected)
        self.assertEqual(len(expected), 15)

    def test_entries(self) -> None:
        entries = configEntries(
            {
                "cidrs": [{"value": "10.0.0.0/8", "note": "lab"}],
                "snis": [],
                "paths": [{"value": "/usr/lib/", "note": "libs"}, "/usr/lib64/"],
                "dns": ["Registry.npmjs.org."],
                "execs": None,
            }
        )
        self.assertEqual(
            [(e.kind, e.value, e.note) for e in entries],
            [
                ("cidr", "10.0.0.0/8", "lab"),
                ("path", "/usr/lib/", "libs"),
                ("path", "/usr/lib64/", ""),
                ("dns", "registry.npmjs.org", ""),
            ],
        )
        for e in entries:
            self.assertEqual(e.id, configEntryId(e.kind, e.value))
            self.assertEqual(e.scope, "global")
        # deterministic
        self.assertEqual(entries, configEntries({"cidrs": [{"value": "10.0.0.0/8", "note": "lab"}],
                                                 "paths": [{"value": "/usr/lib/", "note": "libs"}, "/usr/lib64/"],
                                                 "dns": ["registry.npmjs.org"]}))

    def test_duplicatesKeepFirst(self) -> None:
        entries = configEntries({"snis": [{"value": "a.com", "note": "1"}, {"value": "A.COM", "note": "2"}]})
        self.assertEqual([(e.value, e.note) for e in entries], [("a.com", "1")])

    def test_empty(self) -> None:
        self.assertEqual(configEntries(None), [])
        self.assertEqual(configEntries({}), [])

    def test_errors(self) -> None:
        cases = [
            ({"cidrs": [{"value": "10.0.0.1/8"}]}, "allow.cidrs[0]: invalid cidr"),
            ({"paths": ["relative"]}, "allow.paths[0]: path value 'relative' must be an absolute"),
            ({"paths": [{"value": ""}]}, "allow.paths[0]: path value must not be empty"),
            ({"sni": ["x.com"]}, "allow.sni: unknown section"),
            ({"paths": "/usr/lib/"}, "allow.paths: must be a list"),
            ({"paths": [3]}, "allow.paths[0]: expected"),
            ([], "allow: must be a mapping"),
        ]
        for section, fragment in cases:
            e = self.assertRaises(AllowlistError, configEntries, section)
            self.assertIn(fragment, str(e))

    def test_shippedConfig(self) -> None:
        """
        The shipped conf/orchestrator.yaml C{allow:} section is valid.
        """
        import os

        import yaml

        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "conf", "orchestrator.yaml")
        if not os.path.exists(path):
            self.skipTest("no conf/orchestrator.yaml")
        with open(path) as f:
            config = yaml.safe_load(f)
        entries = configEntries(config.get("allow"))
        self.assertIn("/usr/lib/", [e.value for e in entries])

    def test_sync(self) -> None:
        wanted = configEntries({"paths": [{"value": "/a/", "note": "new note"}, "/b/"]})
        a, b = wanted
        existing = [
            AllowEntry(id=a.id, kind="path", value="/a/", note="old note"),
            AllowEntry(id=configEntryId("path", "/gone/"), kind="path", value="/gone/"),
            AllowEntry(id="operator1", kind="path", value="/mine/"),
        ]
        sync = planConfigSync(existing, wanted)
        self.assertEqual(sync.insert, (b,))
        self.assertEqual(sync.update, (a,))
        self.assertEqual(sync.delete, (configEntryId("path", "/gone/"),))
        # Applying it converges: nothing left to do.
        after = [a, b, existing[2]]
        sync = planConfigSync(after, wanted)
        self.assertEqual((sync.insert, sync.update, sync.delete), ((), (), ()))
