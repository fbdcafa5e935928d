"""
Egress containment end to end: a real C{twistd fangs-orchestrator} and
C{twistd fangs-runner}, the real eBPF sensor, Docker, the host's packet rules
and real npm.

  - a package that steals the bait npm token and tries DNS, HTTPS, plain HTTP,
    raw TCP and UDP is contained by default: every attempt is sinkholed and
    recorded as an C{egress_attempt} event of the run, the token in the POST
    body is a C{canary_exfiltrated} event, and C{fangs run show} says so;
  - C{registry-only} refuses the same attempts;
  - a package flooding the gateway is cut and counted while a real registry
    install runs next to it on the same runner, and both end.

The fixtures use only names the gateway answers (C{*.exfil.invalid}) and the
address of their own run network; npm reaches the npm registry through the
gateway.  Under C{CI=true} a missing prerequisite fails these tests.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from fangs import npm, wire
from tests.procs import REPO
from tests.integration.runner.test_egress import requireEgress
from tests.integration.test_e2e_scan import Scanner, byType, ensureFixtures, fixtureJob, requireAll

BIN = os.path.join(os.path.dirname(sys.executable), "fangs")


def egressJob(name: str, **sandbox: Any) -> Dict[str, Any]:
    job = fixtureJob(name, duration=120)
    job["sandbox"].update(sandbox)
    return job


class EgressEndToEndTests(TestCase):
    timeout = 500

    def setUp(self) -> None:
        requireAll()
        requireEgress()

    async def fangs(self, s: Scanner, *args: str) -> str:
        env = dict(os.environ, PYTHONPATH=REPO, FANGS_ORCHESTRATOR=s.orch.url)
        exe, argv = (BIN, list(args)) if os.path.exists(BIN) else (sys.executable, ["-m", "fangs.cli"] + list(args))
        out, err, code = await getProcessOutputAndValue(exe, argv, env=env, path=REPO)
        self.assertEqual(code, 0, (out, err))
        return out.decode()

    def test_containedByDefault(self):
        return Deferred.fromCoroutine(self._contained())

    async def _contained(self) -> None:
        await ensureFixtures()
        s = Scanner(self)
        await s.start()
        runID = await s.submit(fixtureJob("egress-exfil"))
        run = await s.waitVerdict(runID)
        self.assertEqual(run["result_status"], "ok", run)
        events = await s.events(runID)
        attempts = byType(events, "egress_attempt")
        self.assertTrue(attempts, [e["type_name"] for e in events][:40])
        self.assertEqual([a for a in attempts if a["Action"] == "forwarded"], [])
        for a in attempts:
            self.assertEqual(bytes(a["Header"]["RunID"]).hex(), runID)
        kinds = {(a["Protocol"], a.get("DestName", "")) for a in attempts}
        for kind in [("dns", "beacon.exfil.invalid"), ("dns", "cmd.exfil.invalid"), ("http", "hooks.exfil.invalid"),
                     ("tls", "secure.exfil.invalid")]:
            self.assertIn(kind, kinds)
        self.assertTrue(any(a["Protocol"] == "tcp" and a["DestPort"] == 4444 for a in attempts))
        [post] = [a for a in attempts if a["Protocol"] == "http"]
        self.assertEqual((post["Action"], post["Method"], post["Path"], post["Canaries"]),
                         ("sinkholed", "POST", "/collect?id=1", ["npm_token"]))
        self.assertIn("BodyB64", post)
        canaries = [c for c in byType(events, "canary_exfiltrated") if c.get("Channel") == "egress"]
        self.assertEqual([(c["Bait"], c["DestName"]) for c in canaries], [(["npm_token"], "hooks.exfil.invalid")])
        # What the fixture saw: the sinkhole's answers (its report files are
        # file_access events).
        paths = {p["PathName"] for p in byType(events, "file_access")}
        for report in ("http--200", "https--ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE", "raw--connected", "done--yes"):
            self.assertIn("/tmp/fangs-report/egress-exfil--" + report, paths)
        out = await self.fangs(s, "run", "show", runID)
        self.assertIn("tried POST http://hooks.exfil.invalid/collect?id=1 with", out)
        self.assertIn("containing the bait npm token (sinkholed)", out)
        self.assertIn("looked up beacon.exfil.invalid (A) (sinkholed)", out)

    def test_registryOnly(self):
        return Deferred.fromCoroutine(self._registryOnly())

    async def _registryOnly(self) -> None:
        await ensureFixtures()
        s = Scanner(self)
        await s.start()
        runID = await s.submit(egressJob("egress-exfil", egress_policy="registry-only"))
        run = await s.waitVerdict(runID)
        self.assertEqual(run["result_status"], "ok", run)
        attempts = byType(await s.events(runID), "egress_attempt")
        self.assertTrue(attempts)
        self.assertEqual({a["Action"] for a in attempts}, {"refused"})

    def test_floodNextToARealInstall(self):
        return Deferred.fromCoroutine(self._flood())

    async def _flood(self) -> None:
        await ensureFixtures()
        s = Scanner(self, maxConcurrent=2)
        await s.start()
        flood = await s.submit(fixtureJob("egress-flood", duration=120))
        install = await s.submit({
            "kind": "sandbox_scan", "package_name": "is-number", "version": "7.0.0",
            "duration": 120 * wire.SECOND,
            "sandbox": {"command": npm.installCommand("is-number", "7.0.0"), "user": "0:0", "pull_policy": "never",
                        "grace_period": wire.SECOND},
        })
        irun = await s.waitVerdict(install)
        self.assertEqual((irun["state"], irun["result_status"]), ("done", "ok"), irun)
        ievents = await s.events(install)
        self.assertTrue(any("is-number" in p.get("PathName", "") for p in byType(ievents, "file_access")))
        iattempts = byType(ievents, "egress_attempt")
        self.assertTrue(any(a["Action"] == "forwarded" and a.get("SNI") == "registry.npmjs.org" for a in iattempts))
        self.assertEqual([a for a in iattempts if a["Action"] != "forwarded"], [])
        frun = await s.waitVerdict(flood)
        self.assertEqual(frun["result_status"], "ok", frun)
        fattempts = byType(await s.events(flood), "egress_attempt")
        [summary] = [a for a in fattempts if "Stats" in a]
        self.assertEqual(summary["Action"], "cut")
        self.assertGreater(sum(summary["Cut"].values()), 100, summary)
        self.assertLessEqual(summary["Stats"]["Connections"], 512)
        out = await self.fangs(s, "run", "show", flood)
        self.assertIn("egress limits cut this run's traffic:", out)
        # The runner is still fine: it runs the next job to ok.
        again = await s.submit(fixtureJob("benign-fixture"))
        self.assertEqual((await s.waitVerdict(again))["result_status"], "ok")
