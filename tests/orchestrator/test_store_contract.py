"""
One contract for every storage backend: the same tests run against
L{SQLiteStore} on a temporary file (here) and L{PostgresStore} on the test
cluster (L{tests.pg}, in L{tests.integration.orchestrator.test_store_contract}),
each on its own thread pool under the real reactor.
"""

from __future__ import annotations

import attrs

import os
import tempfile
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fangs.orchestrator import store as S
from fangs.orchestrator.allowlist import configEntries, makeEntry
from fangs.orchestrator.core import parseBatchLine
from fangs.orchestrator.pgstore import PostgresStore
from tests.orchestrator.helpers import batchLine, connectEvent, dnsEvent, execEvent, fileEvent, sniEvent
from tests.orchestrator.test_review import BENIGN, MALICIOUS

SEC = 1_000_000_000
T0 = 1_800_000_000 * SEC


def coro(f: Any) -> Any:
    def wrapper(self: Any) -> Deferred:
        return Deferred.fromCoroutine(f(self))

    wrapper.__name__ = f.__name__
    return wrapper


def newRun(runID: str, target: Any = None, package: str = "left-pad", key: Any = None, at: int = T0) -> S.NewRun:
    return S.NewRun(runID, package, "1.0.0", "sandbox_scan", target, '{"duration": 1}', at, key)


def rows(runID: str, seq: int, events: List[dict]) -> List[S.EventRow]:
    return parseBatchLine(batchLine(seq, events), runID)[1]


class StoreContract:
    """
    Mixed into a C{TestCase} whose C{makeStore()} returns a started store.
    """

    store: Any

    async def makeStore(self) -> Any:
        raise NotImplementedError

    async def fresh(self) -> Any:
        self.store = await self.makeStore()
        return self.store

    async def finishedRun(self, runID: str, events: List[dict], status: str = "ok", package: str = "left-pad", at: int = T0) -> S.AnalysisOutcome:
        st = self.store
        await st.createRun(newRun(runID, package=package, at=at))
        self.assertEqual((await st.claimJob("w"))[0], runID)
        await st.confirmDispatch(runID, at, at + 100 * SEC)
        await st.ingestBatch(runID, 1, rows(runID, 1, events), at + 1, at + 100 * SEC)
        await st.recordResult(runID, status, "", len(events), 0, SEC, at + 2)
        return await st.analyzeRun(runID, at + 3)

    # -- schema ------------------------------------------------------------------

    @coro
    async def test_schemaVersion(self) -> None:
        st = await self.fresh()
        rows_ = await st.tableRows("schema_migrations")
        self.assertEqual(max(r["version"] for r in rows_), max(v for v, _, _ in S.MIGRATIONS))
        self.assertIn("runners", await st.tableNames())
        self.assertIsNone(await st.tableRows("no_such_table"))
        await st._call(st._thd_migrate)  # idempotent

    # -- queue -------------------------------------------------------------------

    @coro
    async def test_queueClaimReleaseConfirm(self) -> None:
        st = await self.fresh()
        self.assertEqual(await st.createRun(newRun("a1", target="w1")), ("a1", True))
        self.assertEqual(await st.createRun(newRun("a2")), ("a2", True))
        self.assertEqual(await st.createRun(newRun("a3", target="w2")), ("a3", True))
        with self.assertRaises(S.Conflict):
            await st.createRun(newRun("a1"))
        self.assertEqual(await st.queueDepth(), 3)
        self.assertEqual(sorted(await st.pendingTargets(), key=str), sorted([None, "w1", "w2"], key=str))
        self.assertEqual((await st.claimJob("w3"))[0], "a2")  # only the shared job
        self.assertIsNone(await st.claimJob("w3"))
        self.assertTrue(await st.releaseLease("a2"))
        lease = await st.claimJob("w2")
        self.assertEqual(lease, ("a2", '{"duration": 1}'))  # the shared job is older than w2's own
        self.assertEqual((await st.getRun("a2")).state, S.LEASED)
        self.assertTrue(await st.releaseLease("a2"))
        self.assertFalse(await st.releaseLease("a2"))
        self.assertEqual((await st.claimJob("w1"))[0], "a1")
        self.assertEqual((await st.claimJob("w1"))[0], "a2")  # back at the head
        self.assertIsNone(await st.claimJob("w1"))
        self.assertTrue(await st.confirmDispatch("a1", T0, T0 + 10))
        self.assertFalse(await st.confirmDispatch("a1", T0, T0 + 10))
        run = await st.getRun("a1")
        self.assertEqual((run.state, run.runner_id, run.dispatched_ns, run.deadline_ns), (S.DISPATCHED, "w1", T0, T0 + 10))
        self.assertEqual(await st.requeueLeased(), 0 if st.backend == "postgresql" else 1)
        self.assertIsNone(await st.getRun("nope"))

    @coro
    async def test_idempotencyKey(self) -> None:
        st = await self.fresh()
        self.assertEqual(await st.createRun(newRun("k1", key="abc")), ("k1", True))
        self.assertEqual(await st.createRun(newRun("k2", key="abc")), ("k1", False))
        self.assertEqual(await st.queueDepth(), 1)

    @coro
    async def test_concurrentClaimsEachJobOnce(self) -> None:
        st = await self.fresh()
        for i in range(30):
            await st.createRun(newRun("c%02d" % i))
        leases = await gatherResults([st.claimJob("w%d" % (i % 4)) for i in range(40)])
        got = [lease[0] for lease in leases if lease is not None]
        self.assertEqual(sorted(got), ["c%02d" % i for i in range(30)])

    # -- events --------------------------------------------------------------------

    @coro
    async def test_ingestDedupAndPaging(self) -> None:
        st = await self.fresh()
        await st.createRun(newRun("e1"))
        await st.claimJob("w")
        await st.confirmDispatch("e1", T0, T0 + SEC)
        first = rows("e1", 1, [fileEvent("/a"), execEvent("/bin/x"), fileEvent("/b")])
        self.assertEqual(await st.ingestBatch("e1", 1, first, T0 + 5, T0 + 50 * SEC), S.IngestOutcome(True, 3))
        self.assertEqual(await st.ingestBatch("e1", 1, first, T0 + 6, T0 + 50 * SEC), S.IngestOutcome(False, 0))
        await st.ingestBatch("e1", 3, rows("e1", 3, [fileEvent("/d")]), T0 + 7, T0 + 40 * SEC)
        await st.ingestBatch("e1", 2, rows("e1", 2, [fileEvent("/c")]), T0 + 8, T0 + 40 * SEC)
        await st.ingestBatch("e1", 4, [], T0 + 9, T0 + 40 * SEC)
        run = await st.getRun("e1")
        self.assertEqual((run.state, run.events_received, run.batches_received, run.deadline_ns), (S.RUNNING, 5, 4, T0 + 50 * SEC))
        page = await st.eventPage("e1", (0, -1), 3)
        self.assertEqual([(e.seq, e.idx) for e in page], [(1, 0), (1, 1), (1, 2)])
        page = await st.eventPage("e1", (page[-1].seq, page[-1].idx), 10)
        self.assertEqual([(e.seq, e.idx) for e in page], [(2, 0), (3, 0)])
        self.assertEqual(page[0].data, first[0].data.replace("/a", "/c"))
        files = await st.eventPage("e1", (0, -1), 10, eventType=int(execEvent("/x")["type"]))
        self.assertEqual(len(files), 1)
        self.assertEqual(await st.eventCounts("e1"), {1: 4, 2: 1} if execEvent("/x")["type"] == 2 else await st.eventCounts("e1"))
        self.assertEqual([e.id for e in await st.eventsByID([page[1].id, page[0].id])].__len__(), 2)
        with self.assertRaises(Exception):
            await st.ingestBatch("no-such-run", 1, first, T0, T0)

    @coro
    async def test_exportByteForByte(self) -> None:
        st = await self.fresh()
        await st.createRun(newRun("x1"))
        raw = b'{"seq":1,"events":[{"type":1,"payload":{"Header":{"TsNs":1,"PID":2},"PathName":"/caf\\u00e9 \xe2\x98\x83","Z":1.50,"A":[]}}]}'
        seq, evs = parseBatchLine(raw, "x1")
        await st.ingestBatch("x1", seq, evs, T0, T0)
        (e,) = await st.eventPage("x1", (0, -1), 10)
        self.assertEqual(e.data, evs[0].data)

    # -- results, cancel, sweep ---------------------------------------------------------

    @coro
    async def test_resultFirstWins(self) -> None:
        st = await self.fresh()
        await st.createRun(newRun("r1"))
        await st.claimJob("w")
        await st.confirmDispatch("r1", T0, T0 + SEC)
        run, changed = await st.recordResult("r1", "ok", "", 10, 2, 5 * SEC, T0 + 1)
        self.assertTrue(changed)
        self.assertEqual((run.state, run.result_status, run.events_emitted, run.events_dropped, run.finished_ns), (S.DONE, "ok", 10, 2, T0 + 1))
        run, changed = await st.recordResult("r1", "failed", "late", 0, 0, 0, T0 + 2)
        self.assertFalse(changed)
        self.assertEqual((run.state, run.failure_reason), (S.DONE, ""))
        with self.assertRaises(S.NotFound):
            await st.recordResult("nope", "ok", "", 0, 0, 0, T0)

    @coro
    async def test_resultLifecycleStored(self) -> None:
        """
        The install's exit code, when it finished and when observation ended
        are kept; unresolved file accesses make the run incomplete like drops.
        """
        st = await self.fresh()
        await st.createRun(newRun("r3"))
        await st.claimJob("w")
        await st.confirmDispatch("r3", T0, T0 + 100 * SEC)
        await st.ingestBatch("r3", 1, rows("r3", 1, BENIGN), T0 + 1, T0 + 100 * SEC)
        life = S.ResultLifecycle(install_exit_code=0, install_finished_ns=T0 + SEC, observation_ended_ns=T0 + 4 * SEC,
                                 events_unresolved=3)
        run, changed = await st.recordResult("r3", "ok", "", len(BENIGN), 0, 5 * SEC, T0 + 5 * SEC, life)
        self.assertTrue(changed)
        self.assertEqual((run.install_exit_code, run.install_finished_ns, run.observation_ended_ns, run.events_unresolved),
                         (0, T0 + SEC, T0 + 4 * SEC, 3))
        outcome = await st.analyzeRun("r3", T0 + 6 * SEC)
        self.assertEqual((await st.getRun("r3")).verdict, "incomplete", outcome)
        # Without the extension fields a result keeps them empty.
        await st.createRun(newRun("r4"))
        await st.claimJob("w")
        await st.confirmDispatch("r4", T0, T0 + SEC)
        run, _ = await st.recordResult("r4", "failed", "x", 0, 0, 0, T0 + 1)
        self.assertEqual((run.install_exit_code, run.install_finished_ns, run.events_unresolved), (None, None, 0))

    @coro
    async def test_concurrentResultsOneWinner(self) -> None:
        st = await self.fresh()
        await st.createRun(newRun("r2"))
        await st.claimJob("w")
        await st.confirmDispatch("r2", T0, T0 + SEC)
        results = await gatherResults([st.recordResult("r2", s, "", 0, 0, 0, T0 + i) for i, s in enumerate(["ok", "failed", "timeout", "ok"] * 3)])
        self.assertEqual(sum(1 for _, changed in results if changed), 1)

    @coro
    async def test_cancel(self) -> None:
        st = await self.fresh()
        await st.createRun(newRun("q1", target="w"))
        await st.createRun(newRun("q2", target="w"))
        run = await st.cancelRun("q1", T0 + 1)
        self.assertEqual((run.state, run.cancel_requested, run.finished_ns), (S.CANCELLED, True, T0 + 1))
        self.assertEqual((await st.claimJob("w"))[0], "q2")
        await st.confirmDispatch("q2", T0, T0 + SEC)
        run = await st.cancelRun("q2", T0 + 2)
        self.assertEqual((run.state, run.cancel_requested), (S.DISPATCHED, True))
        self.assertEqual(await st.runsToCancel("w"), ["q2"])
        run, changed = await st.recordResult("q2", "ok", "", 0, 0, 0, T0 + 3)
        self.assertEqual((run.state, changed), (S.CANCELLED, True))
        self.assertEqual(await st.runsToCancel("w"), [])
        self.assertEqual((await st.cancelRun("q2", T0 + 4)).state, S.CANCELLED)
        with self.assertRaises(S.NotFound):
            await st.cancelRun("nope", T0)

    @coro
    async def test_sweepLost(self) -> None:
        st = await self.fresh()
        for rid in ("s1", "s2"):
            await st.createRun(newRun(rid))
            await st.claimJob("w")
        await st.confirmDispatch("s1", T0, T0 + 10)
        await st.confirmDispatch("s2", T0, T0 + 1000)
        both = await gatherResults([st.sweepLost(T0 + 100), st.sweepLost(T0 + 100)])
        self.assertEqual(sorted(both[0] + both[1]), ["s1"])
        run = await st.getRun("s1")
        self.assertEqual((run.state, run.failure_reason), (S.FAILED, "runner lost"))
        # A real result replaces the sweeper's guess.
        run, changed = await st.recordResult("s1", "ok", "", 0, 0, 0, T0 + 200)
        self.assertEqual((run.state, changed), (S.DONE, True))

    @coro
    async def test_failRunsMissingFromHeartbeat(self) -> None:
        st = await self.fresh()
        for rid in ("h1", "h2", "h3"):
            await st.createRun(newRun(rid, target="w"))
            await st.claimJob("w")
            await st.confirmDispatch(rid, T0, T0 + 100 * SEC)
        both = await gatherResults([st.failRunsMissingFromHeartbeat("w", ["h2"], T0 + 1, T0 + 5) for _ in range(2)])
        self.assertEqual(sorted(both[0] + both[1]), ["h1", "h3"])
        self.assertEqual([(await st.getRun(r)).state for r in ("h1", "h2", "h3")], [S.FAILED, S.DISPATCHED, S.FAILED])

    # -- analysis ------------------------------------------------------------------------

    @coro
    async def test_analysisPlans(self) -> None:
        st = await self.fresh()
        first = await self.finishedRun("p1", BENIGN)
        self.assertEqual((first.verdict, first.deviations, first.changed), ("baseline", 0, True))
        again = await st.analyzeRun("p1", T0 + 10)
        self.assertEqual((again.verdict, again.changed), ("baseline", False))
        clean = await self.finishedRun("p2", BENIGN, at=T0 + SEC)
        self.assertEqual(clean.verdict, "clean")
        bad = await self.finishedRun("p3", MALICIOUS, at=T0 + 2 * SEC)
        self.assertEqual((bad.verdict, bad.max_severity), ("deviations", "critical"))
        devs = await st.deviationsForRun("p3")
        self.assertEqual(len(devs), bad.deviations)
        self.assertEqual(devs[0].severity, "critical")
        dev, ev = await st.getDeviation([d for d in devs if d.value == "/root/.ssh/id_rsa"][0].id)
        self.assertIn("/root/.ssh/id_rsa", ev.data)
        self.assertIsNone(await st.getDeviation("nope"))
        # Paging: newest first, then id descending; tokens round-trip.
        seen, token = [], None
        while True:
            page = await st.listDeviations(S.DeviationFilter(package="left-pad"), 2, token)
            seen += [d.id for d in page.items]
            token = page.next_token
            if token is None:
                break
        self.assertEqual(seen, sorted((d.id for d in devs), reverse=True))
        high = await st.listDeviations(S.DeviationFilter(min_severity_rank=devs[0].severity_rank), 100, None)
        self.assertEqual({d.severity for d in high.items}, {"critical"})
        with self.assertRaises(S.BadPageToken):
            await st.listDeviations(S.DeviationFilter(), 2, "garbage!")
        pending = await st.pendingRuns(10, None)
        self.assertEqual([r.id for r in pending.items], ["p3"])
        # Decisions.
        with self.assertRaises(S.NotFound):
            await st.decide("nope", "rejected", "op", T0)
        rejected = await st.decide("p3", "rejected", "op", T0 + 20)
        self.assertEqual(rejected.verdict, "malicious" if rejected.verdict == "malicious" else rejected.verdict)
        self.assertEqual((await st.pendingRuns(10, None)).items, [])
        self.assertEqual([a["action"] for a in await st.auditFor("run:p3")], ["reject"])
        await st.createRun(newRun("p4"))
        with self.assertRaises(S.Conflict):
            await st.decide("p4", "promoted", "op", T0)
        base = await st.baselineFor("left-pad")
        self.assertIn("registry.npmjs.org", {b["value"] for b in base})
        self.assertEqual({b["occurrences"] for b in base if b["value"] == "registry.npmjs.org"}, {2})

    @coro
    async def test_pendingOrder(self) -> None:
        st = await self.fresh()
        await self.finishedRun("o0", BENIGN)
        await self.finishedRun("o1", BENIGN + [execEvent("/bin/sh", pid=300)], at=T0 + SEC)
        await self.finishedRun("o2", BENIGN + [fileEvent("/root/.ssh/id_rsa", tags=3, pid=300)], at=T0 + 2 * SEC)
        await self.finishedRun("o3", BENIGN + [execEvent("/bin/bash", pid=300)], at=T0 + 3 * SEC)
        order, token = [], None
        while True:
            page = await st.pendingRuns(1, token)
            order += [r.id for r in page.items]
            token = page.next_token
            if token is None:
                break
        self.assertEqual(order, ["o2", "o3", "o1"])

    @coro
    async def test_listRunsFiltersAndPaging(self) -> None:
        st = await self.fresh()
        for i in range(5):
            await st.createRun(newRun("l%d" % i, package="a" if i % 2 else "b", at=T0 + (i // 2) * SEC))
        await st.claimJob("w")
        got, token = [], None
        while True:
            page = await st.listRuns(S.RunFilter(), 2, token)
            got += [r.id for r in page.items]
            token = page.next_token
            if token is None:
                break
        self.assertEqual(got, ["l4", "l3", "l2", "l1", "l0"])
        self.assertEqual([r.id for r in (await st.listRuns(S.RunFilter(package="a"), 10, None)).items], ["l3", "l1"])
        self.assertEqual([r.id for r in (await st.listRuns(S.RunFilter(state=S.LEASED), 10, None)).items], ["l0"])
        self.assertEqual([r.id for r in (await st.listRuns(S.RunFilter(since_ns=T0 + SEC, until_ns=T0 + 2 * SEC), 10, None)).items], ["l3", "l2"])
        page = await st.dashboardRuns("b", "none", S.PENDING, 10, None)
        self.assertEqual([r.id for r in page.items], ["l4", "l2"])

    # -- packages, allowlist, tokens, releases ------------------------------------------------

    @coro
    async def test_packages(self) -> None:
        st = await self.fresh()
        self.assertTrue(await st.addPackage("left-pad", "op", T0))
        self.assertFalse(await st.addPackage("left-pad", "op", T0))
        await self.finishedRun("k1", BENIGN)
        (pkg,) = await st.listPackages()
        self.assertEqual((pkg["name"], pkg["runs"], pkg["baseline_runs"], pkg["pending_runs"]), ("left-pad", 1, 1, 0))
        self.assertGreater(pkg["baseline_fingerprints"], 3)
        self.assertEqual((await st.getPackage("left-pad"))["name"], "left-pad")
        self.assertIsNone(await st.getPackage("nope"))
        self.assertTrue(await st.packageHasRuns("left-pad"))
        summary = await st.dashboardSummary(0)
        self.assertEqual((summary["runs_total"], summary["watched"], summary["runs_by_verdict"]), (1, 1, {"baseline": 1}))
        (dp,) = await st.dashboardPackages()
        self.assertEqual((dp["name"], dp["runs"], dp["watched"], dp["latest_run_id"]), ("left-pad", 1, True, "k1"))
        counts = await st.metricCounts()
        self.assertEqual(counts["runs"], {S.DONE: 1})
        self.assertTrue(await st.removePackage("left-pad", "op", T0))
        self.assertFalse(await st.removePackage("left-pad", "op", T0))
        self.assertEqual([a["action"] for a in await st.auditFor("package:left-pad")], ["package.add", "package.remove"])

    @coro
    async def test_allowlistAndConfigSync(self) -> None:
        st = await self.fresh()
        e = makeEntry("al1", "path", "/opt/x/", note="n")
        self.assertEqual(await st.addAllow(e, "op", T0), "al1")
        with self.assertRaises(S.Conflict):
            await st.addAllow(makeEntry("al2", "path", "/opt/x/"), "op", T0)
        await st.addAllow(makeEntry("al3", "sni", "a.example", scope="package", package_name="left-pad"), "op", T0)
        self.assertEqual([(a["id"], a["scope"], a["package_name"]) for a in await st.listAllow()], [("al1", "global", None), ("al3", "package", "left-pad")])
        first = configEntries({"paths": [{"value": "/usr/lib/", "note": "libs"}, {"value": "/opt/"}], "snis": ["a.example"]})
        plan = await st.syncConfigAllow(first, T0)
        self.assertEqual(len(plan.insert), 3)
        self.assertEqual(len((await st.syncConfigAllow(first, T0)).insert), 0)
        second = configEntries({"paths": [{"value": "/usr/lib/", "note": "shared"}], "snis": ["a.example"]})
        plan = await st.syncConfigAllow(second, T0)
        self.assertEqual((len(plan.insert), len(plan.update), len(plan.delete)), (0, 1, 1))
        config = [a for a in await st.listAllow() if a["source"] == "config"]
        self.assertEqual(sorted((a["value"], a["note"]) for a in config), [("/usr/lib/", "shared"), ("a.example", "")])
        with self.assertRaises(S.Conflict):
            await st.removeAllow(config[0]["id"], "op", T0)
        self.assertTrue(await st.removeAllow("al1", "op", T0))
        self.assertFalse(await st.removeAllow("al1", "op", T0))

    @coro
    async def test_tokens(self) -> None:
        st = await self.fresh()
        self.assertFalse(await st.hasAdminToken())
        await st.createToken("t1", "admin", "orchestrator:admin", "hash", "op", T0)
        await st.createToken("t2", "ro", "orchestrator:read", "hash2", "op", T0 + 1)
        self.assertTrue(await st.hasAdminToken())
        self.assertEqual((await st.lookupToken("t1"))["secret_hash"], "hash")
        self.assertIsNone(await st.lookupToken("nope"))
        self.assertEqual([t["id"] for t in await st.listTokens()], ["t1", "t2"])
        self.assertTrue(await st.revokeToken("t1", "op", T0 + 2))
        self.assertFalse(await st.revokeToken("t1", "op", T0 + 3))
        self.assertFalse(await st.hasAdminToken())

    @coro
    async def test_sessionsAndIdempotency(self) -> None:
        st = await self.fresh()
        await st.createToken("t1", "admin", "orchestrator:admin", "hash", "op", T0)
        await st.createSession("h1", "t1", T0, T0 + 100)
        await st.createSession("h2", "t1", T0, T0 + 100)
        found = await st.lookupSession("h1")
        self.assertEqual((found["token_id"], found["name"], found["expires_ns"], found["revoked_ns"]), ("t1", "admin", T0 + 100, None))
        self.assertIsNone(await st.lookupSession("nope"))
        self.assertTrue(await st.deleteSession("h1"))
        self.assertFalse(await st.deleteSession("h1"))
        self.assertIsNone(await st.lookupSession("h1"))
        self.assertTrue(await st.revokeToken("t1", "op", T0 + 2))
        self.assertIsNone(await st.lookupSession("h2"))  # revocation ended it
        await st.createToken("t2", "ro", "orchestrator:read", "hash2", "op", T0 + 1)
        await st.createSession("h3", "t2", T0, T0 + 100)
        self.assertEqual(await st.revokeTokenSessions("t2"), 1)
        # Idempotency keys bound to a body digest.
        run = S.NewRun(id="a" * 32, package_name="p", version="1", kind="sandbox_scan", target_runner=None, job="{}",
                       created_ns=T0, idempotency_key="api:k", idempotency_digest="d1")
        self.assertEqual(await st.createRun(run), ("a" * 32, True))
        self.assertEqual(await st.createRun(attrs.evolve(run, id="b" * 32)), ("a" * 32, False))
        with self.assertRaises(S.IdempotencyMismatch):
            await st.createRun(attrs.evolve(run, id="c" * 32, idempotency_digest="d2"))
        self.assertFalse(await st.batchStored("a" * 32, 1))
        await st.ingestBatch("a" * 32, 1, [], T0, T0 + 10)
        self.assertTrue(await st.batchStored("a" * 32, 1))
        # Cumulative drop counters: the increase, a restart starts over.
        self.assertEqual([await st.dropIncrease("w1", n) for n in (10, 25, 25, 3)], [10, 15, 0, 3])
        self.assertEqual(await st.dropIncrease("w2", 7), 7)

    @coro
    async def test_releases(self) -> None:
        st = await self.fresh()
        await st.addPackage("left-pad", "op", T0)
        (w,) = await st.watchList(T0)
        self.assertEqual((w["name"], w["seeded"], w["waiting"]), ("left-pad", False, 0))
        rels = [
            {"version": "1.0.0", "published_ns": T0 - 10, "dist_tags": [], "seeded": True},
            {"version": "1.1.0", "published_ns": T0 - 5, "dist_tags": ["latest"], "integrity": "sha512-x"},
        ]
        waiting = await st.recordPackument("left-pad", rels, "1.1.0", "etag1", T0)
        self.assertEqual([r["version"] for r in waiting], ["1.1.0"])
        self.assertEqual(await st.recordPackument("gone", rels, None, None, T0), [])
        self.assertEqual(await st.knownVersions("left-pad"), {"1.0.0": True, "1.1.0": False})
        await st.markReleaseFailed("left-pad", "1.1.0", "boom")
        self.assertEqual((await st.waitingReleases("left-pad"))[0]["attempts"], 1)
        self.assertTrue(await st.markReleaseQueued("left-pad", "1.1.0", "run1", T0 + 1))
        self.assertEqual(await st.knownVersions("left-pad"), {"1.0.0": True, "1.1.0": True})
        listed = await st.listReleases("left-pad")
        self.assertEqual([(r["version"], r["dist_tags"], r["queued"]) for r in listed], [("1.1.0", ["latest"], True), ("1.0.0", [], False)])
        await st.finishChecks([("left-pad", "registry 503", T0 + 100)], T0 + 2)
        status = await st.watchStatus("left-pad")
        self.assertEqual((status["last_error"], status["next_check_ns"], status["etag"]), ("registry 503", T0 + 100, "etag1"))
        self.assertEqual(await st.watchList(T0 + 50), [])
        self.assertIsNone(await st.watchStatus("nope"))

    @coro
    async def test_notifierOutbox(self) -> None:
        st = await self.fresh()
        target = {"name": "hook", "url": "http://127.0.0.1:9/x", "template": "generic", "secret_env": None,
                  "headers": {"X-A": "1"}, "min_severity": None, "packages": [], "enabled": True}
        self.assertTrue(await st.upsertNotifier(target, "op", T0))
        self.assertFalse(await st.upsertNotifier(dict(target, url="http://127.0.0.1:9/y"), "op", T0 + 1))
        self.assertEqual((await st.getNotifier("hook"))["url"], "http://127.0.0.1:9/y")
        self.assertEqual([n["name"] for n in await st.listNotifiers()], ["hook"])
        await self.finishedRun("n0", BENIGN)
        await self.finishedRun("n1", MALICIOUS, at=T0 + SEC)
        (msg,) = await st.outboxFor("n1")
        (due,) = await st.dueNotifications(T0 + 10 * SEC, 10)
        self.assertIsInstance(due["body"], bytes)
        self.assertIsNotNone(await st.nextNotificationDue())
        self.assertTrue(await st.recordDelivery(due["id"], 1, T0 + 11 * SEC, "error", None, "refused", "", "pending", T0 + 20 * SEC))
        self.assertFalse(await st.recordDelivery(due["id"], 1, T0 + 11 * SEC, "error", None, "refused", "", "pending", T0 + 20 * SEC))
        self.assertTrue(await st.recordDelivery(due["id"], 2, T0 + 21 * SEC, "ok", 200, "", "fine", "delivered", None))
        self.assertEqual([(d["attempt"], d["http_status"]) for d in await st.deliveries("hook")], [(2, 200), (1, None)])
        self.assertTrue(await st.deleteNotifier("hook", "op", T0))
        self.assertFalse(await st.deleteNotifier("hook", "op", T0))

    # -- retention and the runner registry -------------------------------------------------------

    @coro
    async def test_pruneEventsKeepsEvidence(self) -> None:
        st = await self.fresh()
        await self.finishedRun("z0", BENIGN)
        bad = await self.finishedRun("z1", MALICIOUS)
        evidence = {d.evidence_event_id for d in await st.deviationsForRun("z1")}
        self.assertEqual(len(evidence), bad.deviations)
        await st.createRun(newRun("z2"))
        await st.ingestBatch("z2", 1, rows("z2", 1, BENIGN), T0 + 1000 * SEC, T0)
        total = len(BENIGN) * 2 + len(MALICIOUS)
        stored = 0
        for r in ("z0", "z1", "z2"):
            stored += sum((await st.eventCounts(r)).values())
        self.assertEqual(stored, total)
        deleted = []
        while True:
            n = await st.pruneEvents(T0 + 500 * SEC, 4)
            self.assertLessEqual(n, 4)
            if not n:
                break
            deleted.append(n)
        self.assertEqual(sum(deleted), len(BENIGN) + len(MALICIOUS) - len(evidence))
        left = await st.eventPage("z1", (0, -1), 100)
        self.assertEqual({e.id for e in left}, evidence)
        self.assertEqual(len(await st.eventPage("z2", (0, -1), 100)), len(BENIGN))
        dev, ev = await st.getDeviation((await st.deviationsForRun("z1"))[0].id)
        self.assertIsNotNone(ev)
        self.assertEqual((await st.getRun("z1")).verdict, "deviations")
        self.assertTrue(await st.baselineFor("left-pad"))

    @coro
    async def test_runnerRegistry(self) -> None:
        st = await self.fresh()
        self.assertFalse(await st.upsertRunner("w1", '{"runner_id": "w1"}', T0))
        self.assertTrue(await st.upsertRunner("w1", '{"runner_id": "w1", "hostname": "h"}', T0 + 1))
        self.assertTrue(await st.touchRunner("w1", T0 + 5, "busy", ["r1"], 3))
        self.assertTrue(await st.touchRunner("w1", T0 + 2))  # never moves back
        self.assertFalse(await st.touchRunner("w2", T0))
        r = await st.getRunner("w1")
        self.assertEqual((r["registered_ns"], r["last_seen_ns"], r["status"], r["active_run_ids"], r["events_queued"]), (T0 + 1, T0 + 5, "busy", ["r1"], 3))
        self.assertIsNone(await st.getRunner("w2"))
        await st.upsertRunner("w0", "{}", T0 - 100 * SEC)
        self.assertEqual([r["runner_id"] for r in await st.listRunners(T0 - 200 * SEC)], ["w0", "w1"])
        self.assertEqual([r["runner_id"] for r in await st.listRunners(T0)], ["w1"])


class SQLiteContractTests(StoreContract, TestCase):
    async def makeStore(self) -> Any:
        st = S.SQLiteStore(os.path.join(tempfile.mkdtemp(prefix="fangs-contract-"), "fangs.db"), reactor)
        await st.start()
        self.addCleanup(st.stop)
        return st


class PrunerTests(SynchronousTestCase):
    def test_prunesInBatchesUntilDone(self) -> None:
        from twisted.internet.task import Clock

        from fangs.orchestrator.retention import DAY_NS, Pruner

        st = S.SQLiteStore(":memory:", runInThread=S.synchronousRunner)
        self.successResultOf(Deferred.fromCoroutine(st.start()))
        self.addCleanup(st.stop)
        clock = Clock()
        clock.advance(T0 / 1e9)
        self.successResultOf(st.createRun(newRun("old")))
        self.successResultOf(st.ingestBatch("old", 1, rows("old", 1, [fileEvent("/f%d" % i) for i in range(7)]), T0 - 91 * DAY_NS, T0))
        self.successResultOf(st.ingestBatch("old", 2, rows("old", 2, [fileEvent("/new")]), T0 - 89 * DAY_NS, T0))
        pruner = Pruner(clock, st, 90, batch=3)
        d = Deferred.fromCoroutine(pruner.prune())
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(len(self.successResultOf(st.eventPage("old", (0, -1), 10))), 1)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(Pruner(clock, st, 0).prune())), 0)


class TapStoreTests(SynchronousTestCase):
    def test_dbURLChoosesTheBackend(self) -> None:
        from twisted.application.internet import TimerService
        from twisted.internet.task import Clock

        from fangs.orchestrator import tap

        o = tap.Options()
        o.parseOptions(["--db", "postgresql://fangs@127.0.0.1:5432/fangs", "--watch-interval", "0", "--retention-days", "7"])
        top = tap.makeService(o, Clock())
        self.assertIsInstance(top.store, PostgresStore)
        self.assertIn(top.core.dispatcher.wake, top.store.jobListeners)
        self.assertEqual(len([s for s in top if isinstance(s, TimerService)]), 2)  # sweeper, retention
        o = tap.Options()
        o.parseOptions(["--db", ":memory:"])
        self.assertEqual(tap.makeService(o, Clock()).store.backend, "sqlite")
        self.assertRaises(Exception, tap.Options().parseOptions, ["--retention-days", "-1"])
