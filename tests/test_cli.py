"""
The real C{fangs} console script against a real C{twistd fangs-orchestrator}
on loopback, whose watcher polls a fake registry served by this test's
reactor.  This test also plays the runner over HTTP so runs get verdicts.
"""

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from tests.orchestrator.fakeregistry import FakeRegistry
from tests.orchestrator.helpers import batchLine
from tests.orchestrator.test_review import BENIGN, MALICIOUS
from tests.procs import REPO, OrchestratorProcess, freePort, httpClient, jsonCall, sleep

BIN = os.path.join(os.path.dirname(sys.executable), "fangs")



class CLITests(TestCase):
    timeout = 120

    def setUp(self):
        self.fake = FakeRegistry()
        for v in ("6.0.0", "7.0.0"):
            self.fake.publish("is-number", v)
        self.fake.publish("@acme/widget", "0.1.0")
        port = reactor.listenTCP(0, Site(self.fake), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.registry = "http://127.0.0.1:%d" % (port.getHost().port,)
        self.http = httpClient(self)
        config = os.path.abspath(self.mktemp() + ".yaml")
        with open(os.path.join(REPO, "conf", "orchestrator.yaml")) as f:
            shipped = f.read()
        with open(config, "w") as f:  # the shipped config, with loopback notifier targets allowed
            f.write(shipped.replace("  allow_private: []", "  allow_private: [127.0.0.0/8]"))
        self.orch = OrchestratorProcess(self, extra=["--watch-interval", "3600", "--registry-url", self.registry, "--config", config])
        return Deferred.fromCoroutine(self.orch.startAndWait(self.http))

    async def fangs(self, *args, orchestrator=None):
        env = dict(os.environ, PYTHONPATH=REPO, FANGS_ORCHESTRATOR=orchestrator or self.orch.url,
                   FANGS_REGISTRY_URL=self.registry)
        exe, argv = (BIN, list(args)) if os.path.exists(BIN) else (sys.executable, ["-m", "fangs.cli"] + list(args))
        out, err, code = await getProcessOutputAndValue(exe, argv, env=env, path=REPO)
        return code, out.decode(), err.decode()

    async def ok(self, *args):
        code, out, err = await self.fangs(*args)
        self.assertEqual(code, 0, "fangs %s -> %d\n%s\n%s" % (" ".join(args), code, out, err))
        return out

    async def fails(self, expected, *args, inErr=None):
        code, out, err = await self.fangs(*args)
        self.assertEqual(code, expected, "fangs %s -> %d\n%s\n%s" % (" ".join(args), code, out, err))
        self.assertNotIn("Traceback", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertTrue(err.startswith("fangs: "), err)
        if inErr:
            self.assertIn(inErr, err)
        return err

    async def act(self, runnerID, events, status="ok"):
        """
        Be the runner for one job: take it, send events, report.
        """
        code, job = await jsonCall(self.http, "GET", self.orch.url + "/v1/runners/%s/jobs" % (runnerID,))
        self.assertEqual(code, 200, job)
        runID = bytes(job["run_id"]).hex()
        code, ack = await jsonCall(self.http, "POST", self.orch.url + "/v1/runs/%s/events" % (runID,), raw=batchLine(1, events))
        self.assertEqual(code, 200, ack)
        code, ack = await jsonCall(self.http, "POST", self.orch.url + "/v1/runs/%s/result" % (runID,),
                                   {"status": status, "events_emitted": len(events)})
        self.assertEqual(code, 200, ack)
        return runID, job

    async def register(self, runnerID="cli-runner"):
        code, _ = await jsonCall(self.http, "POST", self.orch.url + "/v1/runners/register", {"runner_id": runnerID, "proto_version": 1})
        self.assertEqual(code, 200)

    # -- the whole operator flow -----------------------------------------------------

    def test_operatorFlow(self):
        return Deferred.fromCoroutine(self._operatorFlow())

    async def _operatorFlow(self):
        out = await self.ok("status")
        self.assertIn("no runners registered", out)
        self.assertIn("queue depth   0", out)

        out = await self.ok("package", "add", "is-number")
        self.assertIn('added "is-number" to watched packages (latest: 7.0.0)', out)
        self.assertIn("kickoff scan of is-number@7.0.0 queued: run ", out)
        out = await self.ok("--json", "package", "add", "is-number")
        added = json.loads(out)
        self.assertEqual((added["added"], added["version"]), (False, "7.0.0"))
        kickoff = added["kickoff_run_id"]  # the same run: idempotent
        self.assertEqual(json.loads(await self.ok("status", "--json"))["queue_depth"], 1)

        out = await self.ok("package", "list")
        self.assertIn("is-number", out.splitlines()[1])

        # The runner takes the kickoff scan from the shared queue; its run
        # becomes the baseline.
        await self.register()
        runID, job = await self.act("cli-runner", BENIGN)
        self.assertEqual(runID, kickoff)
        self.assertEqual((job["package_name"], job["version"], job["duration"]), ("is-number", "7.0.0", 120 * 10**9))
        self.assertIn("--ignore-scripts=false", job["sandbox"]["command"][2])
        self.assertIn("-- is-number@7.0.0", job["sandbox"]["command"][2])
        out = await self.ok("run", "show", kickoff[:8])
        self.assertIn("verdict     baseline", out)
        self.assertIn("file_access", out)
        out = await self.ok("baseline", "show", "is-number")
        self.assertIn("net_new_https_host", out)

        # scan submit --wait follows a run while the runner works on it.
        waiting = Deferred.fromCoroutine(self.fangs("scan", "submit", "is-number@6.0.0", "--wait"))
        await sleep(1.5)
        bad, _ = await self.act("cli-runner", MALICIOUS)
        code, out, err = await waiting
        self.assertEqual(code, 4, out + err)
        self.assertIn("queued scan of is-number@6.0.0: run %s" % (bad[:12],), out)
        self.assertIn("verdict     deviations", out)
        self.assertIn("fangs baseline promote %s" % (bad[:12],), out)
        self.assertIn("run %s" % (bad[:12],), err)  # progress

        out = await self.ok("run", "list")
        self.assertEqual(len(out.strip().splitlines()), 3)
        runs = json.loads(await self.ok("run", "list", "--json", "--package", "is-number"))
        self.assertEqual({r["run_id"] for r in runs}, {kickoff, bad})

        out = await self.ok("pending")
        self.assertIn(bad[:12], out)
        self.assertIn("1 run(s) awaiting review.", out)
        devs = json.loads(await self.ok("deviation", "list", "--json", "--run", bad[:10]))
        self.assertTrue(devs)
        self.assertIn("c2.fangs-test.invalid", await self.ok("deviation", "list"))
        dev = [d for d in devs if d["value"] == "c2.fangs-test.invalid"][0]
        out = await self.ok("deviation", "show", dev["id"][:9])
        self.assertIn("value       c2.fangs-test.invalid", out)
        self.assertIn("evidence    event #", out)

        out = await self.ok("run", "events", bad[:12])
        self.assertIn("/root/.ssh/id_rsa", out)
        lines = (await self.ok("run", "events", bad[:12], "--json", "--type", "dns_query")).splitlines()
        self.assertEqual({json.loads(l)["type_name"] for l in lines}, {"dns_query"})

        out = await self.ok("baseline", "promote", bad[:12])
        self.assertIn("promoted run %s" % (bad[:12],), out)
        self.assertIn("no runs awaiting review.", await self.ok("pending"))

        third = json.loads(await self.ok("--json", "scan", "submit", "--package", "is-number", "--version", "7.0.0"))["run_id"]
        await self.act("cli-runner", MALICIOUS + [{"type": 4, "payload": {"Header": {"TsNs": 9, "PID": 400, "Type": 4}, "QName": "new.fangs-test.invalid", "QType": 1, "DestIP": "127.0.0.1", "DestPort": 53}}])
        out = await self.ok("run", "reject", third[:12])
        self.assertIn("rejected run", out)

        fourth = json.loads(await self.ok("--json", "scan", "submit", "is-number@7.0.0"))["run_id"]
        out = await self.ok("run", "cancel", fourth[:12])
        self.assertIn("cancelled", out)

        # Allowlist.
        entry = json.loads(await self.ok("--json", "allow", "add", "--kind", "sni", "--value", "cdn.example.com", "--note", "cdn"))
        self.assertIn("cdn.example.com", await self.ok("allow", "list"))
        out = await self.ok("allow", "remove", entry["id"][:8])
        self.assertIn("removed allowlist entry %s" % (entry["id"],), out)
        await self.fails(3, "allow", "remove", entry["id"])

        # Releases: the orchestrator's watcher seeded nothing yet (it polled
        # at start, before the package was added); release list says so.
        out = await self.ok("release", "list", "is-number")
        self.assertIn("no releases recorded yet", out)

        out = await self.ok("package", "remove", "is-number")
        self.assertIn('removed "is-number"', out)
        await self.fails(3, "package", "remove", "is-number")

        # Notifiers: add, list, remove; bad input is one clear line.
        out = await self.ok("notifier", "add", "--name", "soc", "--url", "http://127.0.0.1:9/hook", "--min-severity", "high")
        self.assertIn('notifier "soc" saved', out)
        out = await self.ok("notifier", "list")
        self.assertIn("soc", out)
        await self.fails(1, "notifier", "add", "--name", "bad", "--url", "ftp://example.invalid/")
        await self.ok("notifier", "remove", "soc")

    # -- the watcher inside the real daemon ------------------------------------------

    def test_watcherInDaemonRecordsReleases(self):
        return Deferred.fromCoroutine(self._watcherInDaemon())

    async def _watcherInDaemon(self):
        # Restart with a short interval so the daemon's TimerService polls.
        self.orch.stop()
        self.orch = OrchestratorProcess(self, db=self.orch.db, extra=["--watch-interval", "0.5", "--registry-url", self.registry])
        await self.orch.startAndWait(self.http)
        await self.ok("package", "add", "@acme/widget", "--skip-initial-scan")
        for _ in range(50):
            out = await self.ok("release", "list", "@acme/widget")
            if "queued" in out:
                break
            await sleep(0.2)
        self.assertIn("0.1.0", out)
        self.assertIn("latest", out)
        self.fake.publish("@acme/widget", "0.2.0")
        self.fake.publish("@acme/widget", "0.3.0-rc.1", tag="next")
        for _ in range(50):
            body = json.loads(await self.ok("--json", "release", "list", "@acme/widget"))
            if sum(r["queued"] for r in body["releases"]) == 3:
                break
            await sleep(0.2)
        self.assertEqual([r["version"] for r in body["releases"] if r["queued"]], ["0.3.0-rc.1", "0.2.0", "0.1.0"])
        runs = json.loads(await self.ok("--json", "run", "list", "--package", "@acme/widget"))
        self.assertEqual(sorted(r["version"] for r in runs), ["0.1.0", "0.2.0", "0.3.0-rc.1"])
        self.assertTrue(all(r["target_runner"] is None for r in runs))

    # -- bad input ----------------------------------------------------------------------------

    def test_badInput(self):
        return Deferred.fromCoroutine(self._badInput())

    async def _badInput(self):
        await self.fails(3, "scan", "submit", "no-such-pkg@1.0.0", inErr="not on the registry")
        await self.fails(3, "scan", "submit", "is-number@9.9.9", inErr="is-number@9.9.9 is not published")
        await self.fails(2, "scan", "submit", "is-number@^7.0.0", inErr="range or tag; give one exact version")
        await self.fails(2, "package", "add", "Not_Valid Name", inErr="must be lower-case")
        await self.fails(2, "package", "add", "../etc", inErr="not a valid npm package name")
        await self.fails(3, "package", "add", "no-such-pkg", inErr="not on the registry")
        await self.fails(2, "run", "show", "xyz", inErr="must be hex")
        await self.fails(3, "run", "show", "abcdef12", inErr="no run id starts with abcdef12")
        await self.fails(3, "run", "show", "ab" * 16, inErr="not found")
        await self.fails(3, "deviation", "show", "ab" * 16)
        await self.fails(3, "baseline", "show", "never-seen")
        await self.fails(2, "run")
        await self.fails(2, "frobnicate")
        await self.fails(2, "--tls-ca", "/nonexistent/ca.pem", "status", inErr="--tls-ca")

        dead = "http://127.0.0.1:%d" % (freePort(),)
        code, out, err = await self.fangs("status", orchestrator=dead)
        self.assertEqual(code, 1)
        self.assertEqual(err.strip(), "fangs: cannot reach the orchestrator at %s: connection refused"
                         " (is `twistd fangs-orchestrator` running? set --orchestrator)" % (dead,))
        # A TLS server whose certificate nobody vouches for: one line naming --tls-ca.
        import twisted.test
        from twisted.internet.ssl import DefaultOpenSSLContextFactory

        pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
        tls = reactor.listenSSL(0, Site(self.fake), DefaultOpenSSLContextFactory(pem, pem), interface="127.0.0.1")
        self.addCleanup(tls.stopListening)
        await self.fails(1, "--orchestrator", "https://127.0.0.1:%d" % (tls.getHost().port,), "status",
                         inErr="pass the CA that signed it with --tls-ca FILE")
        # An ambiguous prefix: two runs share the first 4 hex digits (time-ordered ids).
        await self.register()
        for v in ("6.0.0", "7.0.0"):
            await self.ok("scan", "submit", "is-number@" + v, "--skip-registry-validate")
        runs = json.loads(await self.ok("--json", "run", "list"))
        common = os.path.commonprefix([r["run_id"] for r in runs])
        self.assertGreaterEqual(len(common), 4)
        await self.fails(1, "run", "show", common[:max(4, len(common))], inErr="ambiguous")

    def test_packageImport(self):
        return Deferred.fromCoroutine(self._packageImport())

    async def _packageImport(self):
        """
        C{fangs package import} watches every registry package of a real
        lockfile, skips those already watched and says what it added.
        """
        lockfiles = os.path.join(REPO, "tests", "fixtures", "lockfiles")
        await self.ok("package", "add", "is-number", "--skip-initial-scan")
        out = await self.ok("package", "import", os.path.join(lockfiles, "package.json"))
        self.assertIn("5 registry packages (direct only); now watching 4 new, 1 already watched", out)
        for name in ("@babel/code-frame", "express", "left-pad", "string-width"):
            self.assertIn("  + " + name + "\n", out)
        code, out, err = await self.fangs("--json", "package", "import", os.path.join(lockfiles, "v3-package-lock.json"))
        self.assertEqual(code, 0, err)
        report = json.loads(out)
        self.assertEqual(report["packages"], 81)
        self.assertEqual(len(report["already_watched"]), 5)
        self.assertEqual(len(report["added"]), 76)
        watched = {p["name"] for p in json.loads(await self.ok("--json", "package", "list"))}
        self.assertEqual(len(watched), 81)
        self.assertIn("body-parser", watched)
        # The progress bar goes to stderr and ends complete.
        code, out, err = await self.fangs("package", "import", os.path.join(lockfiles, "workspace-package-lock.json"))
        self.assertEqual(code, 0, err)
        self.assertIn("skipped local-lib: a link to vendor/local-lib", out)
        self.assertIn("now watching 1 new, 3 already watched", out)
        self.assertIn("  + is-odd\n", out)
        self.assertIn("] 1/1 packages watched", err)
        # A broken lockfile: one line naming the file and the place.
        bad = os.path.abspath(self.mktemp())
        with open(bad, "w") as f:
            f.write('{"lockfileVersion": 3,\n "packages": {"node_modules/a": []}}')
        await self.fails(2, "package", "import", bad, inErr='packages["node_modules/a"] must be a JSON object')
        await self.fails(2, "package", "import", bad + ".missing", inErr="cannot read it")
