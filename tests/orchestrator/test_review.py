"""
The differ wired to storage and the review API: baselines seeded, extended
and held; incomplete runs; promote, reject, reanalyze; allowlists; packages.
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from fangs import wire
from fangs.orchestrator.allowlist import configEntries
from fangs.orchestrator.config import OrchestratorConfig
from tests.orchestrator.helpers import (
    InMemoryOrchestrator, connectEvent, dnsEvent, execEvent, fileEvent, runScan, sniEvent,
)
from tests.orchestrator.test_api import assertError

BENIGN = [
    fileEvent("/etc/hostname"),
    fileEvent("/root/.npm/_cacache/index-v5/46/33/b2ab0000000000000000000000000000000000000000000000000000000007ed"),
    fileEvent("/tmp/t/node_modules/left-pad/package.json", flags=577),
    execEvent("/usr/bin/node"),
    dnsEvent("registry.npmjs.org"),
    sniEvent("registry.npmjs.org"),
    connectEvent("104.16.3.35", 443),
]

MALICIOUS = BENIGN + [
    fileEvent("/root/.ssh/id_rsa", tags=3, pid=300),
    fileEvent("/etc/passwd", tags=3, pid=300),
    execEvent("/bin/sh", pid=300),
    connectEvent("1.2.3.4", 31337, pid=300),
    dnsEvent("exfil.fangs-test.invalid", pid=300),
    sniEvent("c2.fangs-test.invalid", pid=300),
]


class VerdictTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)
        self.o.register()

    def run_(self, runID):
        code, run = self.o.call("GET", "/v1/runs/" + runID)
        self.assertEqual(code, 200)
        return run

    def test_seedThenCleanThenDeviations(self):
        first = runScan(self.o, BENIGN)
        self.assertEqual(self.run_(first)["verdict"], "baseline")
        code, base = self.o.call("GET", "/v1/packages/left-pad/baseline")
        self.assertEqual(code, 200)
        values = {(f["category"], f["value"]) for f in base["fingerprints"]}
        self.assertIn(("net_new_https_host", "registry.npmjs.org"), values)
        self.assertIn(("fs_new_path_read", "/root/.npm/_cacache/index-v5/<HASH>"), values)

        second = runScan(self.o, BENIGN)
        run = self.run_(second)
        self.assertEqual((run["verdict"], run["deviation_count"], run["deviations"]), ("clean", 0, []))

        bad = runScan(self.o, MALICIOUS)
        run = self.run_(bad)
        self.assertEqual(run["verdict"], "deviations")
        devs = {(d["category"], d["value"]): d["severity"] for d in run["deviations"]}
        self.assertEqual(devs[("fs_new_path_read", "/root/.ssh/id_rsa")], "critical")
        self.assertEqual(devs[("fs_new_path_read", "/etc/passwd")], "critical")
        # One process tree read credentials and reached out: every new
        # outbound destination of that tree is critical (a chain).
        self.assertEqual(devs[("net_new_destination", "1.2.3.4:31337")], "critical")
        self.assertEqual(devs[("proc_new_exec", "/bin/sh")], "medium")
        self.assertEqual(devs[("net_new_dns", "exfil.fangs-test.invalid")], "critical")
        self.assertEqual(devs[("net_new_https_host", "c2.fangs-test.invalid")], "critical")
        self.assertEqual(run["max_severity"], "critical")
        self.assertEqual(run["deviations"][0]["severity"], "critical")

        code, pending = self.o.call("GET", "/v1/pending")
        self.assertEqual([r["run_id"] for r in pending["runs"]], [bad])

        code, listed = self.o.call("GET", "/v1/deviations?severity=high&package=left-pad")
        self.assertEqual({d["severity"] for d in listed["deviations"]}, {"critical"})
        self.assertEqual(len(listed["deviations"]), 5)

        dev = [d for d in run["deviations"] if d["value"] == "/root/.ssh/id_rsa"][0]
        code, detail = self.o.call("GET", "/v1/deviations/" + dev["id"])
        self.assertEqual(detail["evidence_event"]["payload"]["PathName"], "/root/.ssh/id_rsa")
        self.assertIn("outbound", detail["reason"])

    def test_incompleteRunsNeverSeedOrClean(self):
        for status, dropped in [("failed", 0), ("timeout", 0), ("ok", 5)]:
            o = InMemoryOrchestrator(self)
            o.register()
            runID = runScan(o, BENIGN, status=status, dropped=dropped)
            code, run = o.call("GET", "/v1/runs/" + runID)
            self.assertEqual(run["verdict"], "incomplete")
            code, base = o.call("GET", "/v1/packages/left-pad/baseline")
            self.assertEqual(base["fingerprints"], [])
            code, err = o.call("POST", "/v1/runs/%s/promote" % (runID,))
            assertError(self, code, err, 409, inMessage="incomplete")
            # The next complete run seeds.
            self.assertEqual(o.call("GET", "/v1/runs/" + runScan(o, BENIGN))[1]["verdict"], "baseline")

    def test_noEventsIsIncomplete(self):
        runID = runScan(self.o, [])
        self.assertEqual(self.run_(runID)["verdict"], "incomplete")

    def test_incompleteAfterBaselineKeepsFindings(self):
        runScan(self.o, BENIGN)
        runID = runScan(self.o, MALICIOUS, status="timeout")
        run = self.run_(runID)
        self.assertEqual(run["verdict"], "incomplete")
        self.assertTrue(run["deviations"])

    def test_promoteRunning409(self):
        runID = self.o.submit()
        code, err = self.o.call("POST", "/v1/runs/%s/promote" % (runID,))
        assertError(self, code, err, 409, inMessage="still pending")

    def test_promoteExtendsBaselineIdempotently(self):
        runScan(self.o, BENIGN)
        bad = runScan(self.o, MALICIOUS)
        for _ in range(2):
            code, run = self.o.call("POST", "/v1/runs/%s/promote" % (bad,))
            self.assertEqual((code, run["verdict"], run["decision"]), (200, "baseline", "promoted"))
        code, base = self.o.call("GET", "/v1/packages/left-pad/baseline")
        ssh = [f for f in base["fingerprints"] if f["value"] == "/root/.ssh/id_rsa"]
        self.assertEqual(ssh[0]["occurrences"], 1)
        # The same behaviour is now clean.
        self.assertEqual(self.run_(runScan(self.o, MALICIOUS))["verdict"], "clean")
        code, pending = self.o.call("GET", "/v1/pending")
        self.assertEqual(pending["runs"], [])
        audit = self.successResultOf(self.o.store.auditFor("run:" + bad))
        self.assertEqual([a["action"] for a in audit], ["promote", "promote"])
        self.assertTrue(audit[0]["actor"])

    def test_rejectKeepsFindingsNeverBaselines(self):
        runScan(self.o, BENIGN)
        bad = runScan(self.o, MALICIOUS)
        code, run = self.o.call("POST", "/v1/runs/%s/reject" % (bad,))
        self.assertEqual((code, run["verdict"], run["deviation_count"]), (200, "rejected", 6))
        self.assertEqual(self.run_(runScan(self.o, MALICIOUS))["verdict"], "deviations")

    def test_reanalyzeIdempotentAndAfterAllowlist(self):
        runScan(self.o, BENIGN)
        bad = runScan(self.o, MALICIOUS)
        before = self.run_(bad)
        code, again = self.o.call("POST", "/v1/runs/%s/reanalyze" % (bad,))
        after = self.run_(bad)
        self.assertEqual([d["id"] for d in before["deviations"]], [d["id"] for d in after["deviations"]])
        self.assertEqual(before["deviations"], after["deviations"])
        code, entry = self.o.call("POST", "/v1/allow", {"kind": "exec", "value": "/bin/sh", "package_name": "left-pad", "note": "its build uses sh"})
        self.assertEqual((code, entry["scope"], entry["kind"]), (201, "package", "exec"))
        code, run = self.o.call("POST", "/v1/runs/%s/reanalyze" % (bad,))
        self.assertEqual(run["deviation_count"], 5)
        # Notified once per verdict change only.
        seen = []
        self.o.analyzer.listeners.append(seen.append)
        self.o.call("POST", "/v1/runs/%s/reanalyze" % (bad,))
        self.assertEqual(seen, [])

    def test_unknownRuns(self):
        for action in ("promote", "reject", "reanalyze"):
            code, err = self.o.call("POST", "/v1/runs/%s/%s" % ("1" * 32, action))
            assertError(self, code, err, 404)


class AllowTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)

    def test_badEntries(self):
        for body, text in [
            ({"kind": "cidr", "value": "10.0.0.0/33"}, "cidr"),
            ({"kind": "path", "value": "relative/path"}, "absolute"),
            ({"kind": "sni", "value": ""}, ""),
            ({"kind": "bogus", "value": "x"}, "kind"),
            ({"value": "x"}, "missing kind"),
            ({"kind": "path", "value": "/x", "scope": "package"}, "package"),
            ({"kind": "path", "value": "/x", "package_name": "Bad Name"}, "lower-case"),
        ]:
            code, err = self.o.call("POST", "/v1/allow", body)
            assertError(self, code, err, 400, inMessage=text)
        self.assertEqual(self.o.call("GET", "/v1/allow")[1]["entries"], [])

    def test_addListRemove(self):
        code, e = self.o.call("POST", "/v1/allow", {"kind": "cidr", "value": "10.1.0.0/16", "note": "lab"})
        self.assertEqual((code, e["scope"]), (201, "global"))
        code, err = self.o.call("POST", "/v1/allow", {"kind": "cidr", "value": "10.1.0.0/16"})
        assertError(self, code, err, 409)
        code, listed = self.o.call("GET", "/v1/allow")
        self.assertEqual([x["id"] for x in listed["entries"]], [e["id"]])
        code, gone = self.o.call("DELETE", "/v1/allow/" + e["id"])
        self.assertEqual(code, 200)
        code, err = self.o.call("DELETE", "/v1/allow/" + e["id"])
        assertError(self, code, err, 404)

    def test_configSync(self):
        store = self.o.store
        first = configEntries({"paths": [{"value": "/usr/lib/", "note": "libs"}, {"value": "/opt/"}], "snis": ["a.example"]})
        self.successResultOf(store.syncConfigAllow(first, 1))
        second = configEntries({"paths": [{"value": "/usr/lib/", "note": "shared libraries"}], "snis": ["a.example"]})
        plan = self.successResultOf(store.syncConfigAllow(second, 2))
        self.assertEqual((len(plan.insert), len(plan.update), len(plan.delete)), (0, 1, 1))
        entries = self.successResultOf(store.listAllow())
        self.assertEqual(sorted((e["value"], e["note"]) for e in entries), [("/usr/lib/", "shared libraries"), ("a.example", "")])
        code, err = self.o.call("DELETE", "/v1/allow/" + entries[0]["id"])
        assertError(self, code, err, 409, inMessage="configuration")


class PackageTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)

    def test_crudScoped(self):
        code, p = self.o.call("POST", "/v1/packages", {"name": "@scope/pkg"})
        self.assertEqual((code, p["name"], p["added"]), (201, "@scope/pkg", True))
        code, p = self.o.call("POST", "/v1/packages", {"name": "@scope/pkg"})
        self.assertEqual((code, p["added"]), (200, False))
        code, listed = self.o.call("GET", "/v1/packages")
        self.assertEqual([x["name"] for x in listed["packages"]], ["@scope/pkg"])
        code, p = self.o.call("GET", "/v1/packages/@scope/pkg")
        self.assertEqual((code, p["name"]), (200, "@scope/pkg"))
        code, base = self.o.call("GET", "/v1/packages/@scope/pkg/baseline")
        self.assertEqual((code, base["fingerprints"]), (200, []))
        code, gone = self.o.call("DELETE", "/v1/packages/@scope/pkg")
        self.assertEqual(code, 200)
        code, err = self.o.call("GET", "/v1/packages/@scope/pkg")
        assertError(self, code, err, 404)
        code, err = self.o.call("DELETE", "/v1/packages/@scope/pkg")
        assertError(self, code, err, 404)

    def test_badNames(self):
        for name in ["", "UPPER", "a b", "../x", "@/x", "x" * 215]:
            code, err = self.o.call("POST", "/v1/packages", {"name": name})
            assertError(self, code, err, 400)
        code, err = self.o.call("POST", "/v1/packages", {"nom": "x"})
        assertError(self, code, err, 400, inMessage="missing name")
        code, err = self.o.call("GET", "/v1/packages/nope/baseline")
        assertError(self, code, err, 404)
