"""
End to end, with every real part: C{twistd fangs-orchestrator} and
C{twistd fangs-runner} as processes on loopback, the eBPF sensor in this
machine's kernel, Docker sandboxes, and real C{npm install}s of fixture
packages (and one from the npm registry).

Under C{CI=true} a missing prerequisite fails these tests; elsewhere it skips
them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from fangs import npm, wire
from fangs.runner.image import FIXTURES_IMAGE
from tests import prereq
from tests.procs import Daemon, OrchestratorProcess, httpClient, sleep



def fixtureCommand(name: str) -> List[str]:
    return [
        "sh",
        "-c",
        "cd /tmp && mkdir -p t && cd t && npm init -y >/dev/null 2>&1 && "
        "npm install --no-audit --no-fund --no-update-notifier --ignore-scripts=false --foreground-scripts "
        "/fixtures/%s.tgz 2>&1 | tail -n 40; sleep 1" % (name,),
    ]


def fixtureJob(name: str, package: Optional[str] = None, duration: float = 90) -> Dict[str, Any]:
    return {
        "kind": "sandbox_scan",
        "package_name": package or name,
        "version": "1.0.0",
        "duration": int(duration * wire.SECOND),
        "sandbox": {
            "image": FIXTURES_IMAGE,
            "command": fixtureCommand(name),
            "user": "0:0",
            "pull_policy": "never",
            "grace_period": 1 * wire.SECOND,
        },
    }


async def call(client: Any, method: str, url: str, body: Any = None) -> Any:
    r = await client.request(method, url, data=None if body is None else json.dumps(body).encode(),
                             headers=None if body is None else {"Content-Type": ["application/json"]})
    content = await r.content()
    return r.code, (json.loads(content) if content and content[:1] in b"{[" else content)


class Scanner:
    """
    An orchestrator and a runner, both real processes.
    """

    def __init__(self, test: TestCase, maxConcurrent: int = 1, certs: Any = None) -> None:
        self.test = test
        self.runnerID = "e2e-%d" % (os.getpid(),)
        orchExtra = ["--poll-wait", "5"]
        runnerExtra: List[str] = []
        if certs is None:
            self.client = httpClient(test)
        else:
            from twisted.internet import reactor
            from twisted.web.client import HTTPConnectionPool

            from fangs.runner.client import makeHTTPClient

            certs.client(self.runnerID, "runner")
            pool = HTTPConnectionPool(reactor, persistent=False)
            test.addCleanup(pool.closeCachedConnections)
            self.client = makeHTTPClient(reactor, certs.read("ca.pem"), certs.read("alice.pem"), certs.read("alice-key.pem"), pool=pool)
            orchExtra += ["--tls-cert", certs.path("server.pem"), "--tls-key", certs.path("server-key.pem"),
                          "--tls-client-ca", certs.path("ca.pem"), "--tls-crl", certs.path("crl.pem")]
            runnerExtra = ["--tls-ca", certs.path("ca.pem"), "--tls-cert", certs.path(self.runnerID + ".pem"),
                           "--tls-key", certs.path(self.runnerID + "-key.pem")]
        self.orch = OrchestratorProcess(test, extra=orchExtra)
        if certs is not None:
            self.orch.url = self.orch.url.replace("http://", "https://")
        self.runner = Daemon(
            test,
            ["fangs-runner", "--orchestrator", self.orch.url, "--runner-id", self.runnerID,
             "--max-concurrent", str(maxConcurrent)] + runnerExtra,
            "runner",
        )
        test.addCleanup(self._dumpOnFailure)

    def _dumpOnFailure(self) -> None:
        if os.environ.get("FANGS_E2E_LOGS"):
            print(self.orch.log()[-5000:])
            print(self.runner.log()[-5000:])

    async def start(self) -> None:
        await self.orch.startAndWait(self.client)
        self.runner.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            code, body = await call(self.client, "GET", self.orch.url + "/v1/runners")
            if code == 200 and any(r["runner_id"] == self.runnerID for r in body["runners"]):
                return
            if self.runner.proc.poll() is not None:
                break
            await sleep(0.5)
        raise AssertionError("runner did not register:\n" + self.runner.log()[-4000:])

    async def submit(self, job: Dict[str, Any]) -> str:
        code, body = await call(self.client, "POST", self.orch.url + "/v1/scans", {"target_runner": self.runnerID, "Job": job})
        self.test.assertEqual(code, 202, body)
        return body["run_id"]

    async def waitVerdict(self, runID: str, timeout: float = 240) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                code, run = await call(self.client, "GET", self.orch.url + "/v1/runs/" + runID)
            except Exception:
                code, run = None, None  # the orchestrator may be restarting
            if code == 200 and run["verdict"] is not None:
                return run
            await sleep(0.5)
        raise AssertionError(
            "run %s has no verdict after %ss:\n--- runner\n%s\n--- orchestrator\n%s"
            % (runID, timeout, self.runner.log()[-4000:], self.orch.log()[-3000:])
        )

    async def events(self, runID: str) -> List[Dict[str, Any]]:
        r = await self.client.get(self.orch.url + "/v1/runs/%s/events" % (runID,))
        body = await r.content()
        return [json.loads(line) for line in body.splitlines() if line.strip()]


def requireAll() -> None:
    prereq.requireBPF()
    prereq.requireSandboxImage()


async def ensureFixtures() -> None:
    from fangs.runner import image

    await deferToThread(image.ensureFixturesImage)


def byType(events: List[Dict[str, Any]], name: str) -> List[Dict[str, Any]]:
    return [e["payload"] for e in events if e["type_name"] == name]


class MaliciousFixtureTests(TestCase):
    timeout = 400

    def setUp(self) -> None:
        requireAll()

    def test_everyEventTypeArrives(self):
        return Deferred.fromCoroutine(self._everyEventType())

    def test_everyEventTypeArrivesOverMutualTLS(self):
        from tests.test_tls import Certs

        return Deferred.fromCoroutine(self._everyEventType(Certs(self.mktemp())))

    async def _everyEventType(self, certs: Any = None) -> None:
        await ensureFixtures()
        s = Scanner(self, certs=certs)
        await s.start()
        canary = "/tmp/fangs-host-canary-%d" % (os.getpid(),)
        runID = await s.submit(fixtureJob("malicious-fixture"))
        # Negative control: the host opens a watched path all through the run.
        stop = [False]

        async def hostOpens() -> None:
            while not stop[0]:
                with open(canary, "w") as f:
                    f.write("host")
                await sleep(0.05)

        host = Deferred.fromCoroutine(hostOpens())
        try:
            run = await s.waitVerdict(runID)
        finally:
            stop[0] = True
            await host
            os.unlink(canary)
        self.assertEqual((run["state"], run["result_status"]), ("done", "ok"), run)
        self.assertEqual(run["events_dropped"], 0)
        self.assertEqual(run["events_received"], run["events_emitted"])
        events = await s.events(runID)
        self.assertEqual(len(events), run["events_emitted"])

        files = byType(events, "file_access")
        paths = {p["PathName"] for p in files}
        self.assertNotIn(canary, paths)
        passwd = [p for p in files if p["PathName"] == "/etc/passwd"]
        self.assertTrue(passwd)
        self.assertTrue(any(p["Header"]["Tags"] & wire.TAG_CRED_ACCESS for p in passwd))
        bait = [p for p in files if p["PathName"] == "/root/.ssh/id_rsa"]
        self.assertTrue(bait, sorted(paths)[:50])
        self.assertTrue(all(p["Header"]["Tags"] & wire.TAG_CRED_ACCESS for p in bait))
        # The relative open (chdir /root/.ssh; open id_rsa) resolves too.
        self.assertGreaterEqual(len(bait), 2)
        for p in files:
            self.assertEqual(bytes(p["Header"]["RunID"]).hex(), runID)

        execs = byType(events, "exec")
        self.assertTrue(
            any(e["BinaryPathStr"].endswith("sh") and "id" in " ".join(e.get("ArgvStrs", [])) for e in execs),
            [(e["BinaryPathStr"], e.get("ArgvStrs")) for e in execs],
        )
        conns = byType(events, "net_connect")
        self.assertIn(("127.0.0.1", 31337), {(c["DestIP"], c["DestPort"]) for c in conns})
        dns = byType(events, "dns_query")
        self.assertIn("exfil.fangs-test.invalid", {d["QName"] for d in dns})
        self.assertTrue(all(d["DestPort"] == 53 for d in dns))
        sni = byType(events, "tls_sni")
        self.assertIn("c2.fangs-test.invalid", {t["SNI"] for t in sni})


class RegistryInstallTests(TestCase):
    timeout = 400

    def setUp(self) -> None:
        requireAll()

    def test_isNumber(self):
        return Deferred.fromCoroutine(self._isNumber())

    async def _isNumber(self) -> None:
        s = Scanner(self)
        await s.start()
        runID = await s.submit({
            "kind": "sandbox_scan",
            "package_name": "is-number",
            "version": "7.0.0",
            "duration": 120 * wire.SECOND,
            "sandbox": {"command": npm.installCommand("is-number", "7.0.0"), "user": "0:0", "pull_policy": "never", "grace_period": wire.SECOND},
        })
        run = await s.waitVerdict(runID)
        self.assertEqual((run["state"], run["result_status"]), ("done", "ok"), run)
        self.assertGreater(run["events_received"], 10)
        self.assertEqual(run["events_received"], run["events_emitted"])
        self.assertEqual(run["verdict"], "baseline")
        events = await s.events(runID)
        self.assertTrue(any("is-number" in p.get("PathName", "") for p in byType(events, "file_access")))
        self.assertTrue(byType(events, "net_connect"))


class ConcurrentRunsTests(TestCase):
    timeout = 400

    def setUp(self) -> None:
        requireAll()

    def test_twoRunsAttributed(self):
        return Deferred.fromCoroutine(self._twoRuns())

    async def _twoRuns(self) -> None:
        await ensureFixtures()
        s = Scanner(self, maxConcurrent=2)
        await s.start()
        slow = await s.submit(fixtureJob("slow-fixture"))
        bad = await s.submit(fixtureJob("malicious-fixture"))
        runs = [await s.waitVerdict(slow), await s.waitVerdict(bad)]
        for run in runs:
            self.assertEqual(run["result_status"], "ok", run)
        slowEvents = await s.events(slow)
        badEvents = await s.events(bad)
        # Each run's events carry its own run id, and only its own behaviour.
        for runID, events in ((slow, slowEvents), (bad, badEvents)):
            self.assertTrue(events)
            self.assertEqual({bytes(e["payload"]["Header"]["RunID"]).hex() for e in events}, {runID})
        self.assertFalse([p for p in byType(slowEvents, "file_access") if p["PathName"] == "/root/.ssh/id_rsa"])
        self.assertFalse(byType(slowEvents, "dns_query"))
        self.assertTrue([p for p in byType(badEvents, "file_access") if p["PathName"] == "/root/.ssh/id_rsa"])
        # The two really overlapped.
        self.assertLess(runs[1]["dispatched_at"], runs[0]["finished_at"])


class OrchestratorRestartTests(TestCase):
    timeout = 400

    def setUp(self) -> None:
        requireAll()

    def test_restartMidStreamLosesNothing(self):
        return Deferred.fromCoroutine(self._restart())

    async def _restart(self) -> None:
        await ensureFixtures()
        s = Scanner(self)
        await s.start()
        runID = await s.submit(fixtureJob("slow-fixture"))
        # Wait until events are streaming, then kill the orchestrator hard.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            code, run = await call(s.client, "GET", s.orch.url + "/v1/runs/" + runID)
            if run["events_received"] > 50:
                break
            await sleep(0.2)
        else:
            self.fail("no events streamed:\n" + s.runner.log()[-3000:])
        s.orch.kill(signal.SIGKILL)
        await sleep(3)
        again = OrchestratorProcess(self, db=s.orch.db, port=s.orch.port, extra=["--poll-wait", "5"])
        await again.startAndWait(s.client)
        s.orch = again
        run = await s.waitVerdict(runID)
        self.assertEqual(run["result_status"], "ok", run)
        self.assertGreater(run["events_emitted"], 300)
        self.assertEqual(run["events_received"], run["events_emitted"])
        self.assertEqual(len(await s.events(runID)), run["events_emitted"])


class BaselineTests(TestCase):
    """
    Issue 4's scenario through the real runner: a benign fixture seeds the
    baseline, a second benign run is clean, the malicious one deviates with
    the bait read at high severity or above.
    """

    timeout = 500

    def setUp(self) -> None:
        requireAll()

    def test_benignBenignMalicious(self):
        return Deferred.fromCoroutine(self._scenario())

    async def _scenario(self) -> None:
        await ensureFixtures()
        s = Scanner(self)
        await s.start()
        first = await s.waitVerdict(await s.submit(fixtureJob("benign-fixture", "fixture-pkg")))
        self.assertEqual(first["verdict"], "baseline", first)
        second = await s.waitVerdict(await s.submit(fixtureJob("benign-fixture", "fixture-pkg")))
        self.assertEqual((second["verdict"], second["deviations"]), ("clean", []), second)
        bad = await s.waitVerdict(await s.submit(fixtureJob("malicious-fixture", "fixture-pkg")))
        self.assertEqual(bad["verdict"], "deviations", bad)
        found = {(d["category"], d["value"]): d["severity"] for d in bad["deviations"]}
        self.assertIn(found.get(("fs_new_path_read", "/root/.ssh/id_rsa")), ("high", "critical"), found)
        self.assertIn(("net_new_destination", "127.0.0.1:31337"), found)
        self.assertIn(("net_new_dns", "exfil.fangs-test.invalid"), found)
        self.assertIn(("net_new_https_host", "c2.fangs-test.invalid"), found)
        code, pending = await call(s.client, "GET", s.orch.url + "/v1/pending")
        self.assertEqual([r["run_id"] for r in pending["runs"]], [bad["run_id"]])
