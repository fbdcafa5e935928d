"""
Tenants in the store, on SQLite and on PostgreSQL: migration 60 gives every
existing row to tenant C{default} (admin and runner tokens and
configuration allowlist entries to all tenants), and the tenant methods
(links of runs to tenants, per-tenant analysis, queue depth, artifacts,
packages, tokens) behave the same on both engines.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from fangs.orchestrator import store as S
from fangs.orchestrator.allowlist import makeEntry
from fangs.orchestrator.db.artifacts import RunArtifact
from fangs.orchestrator.db.tenants import TENANTS_MIGRATION
from tests.orchestrator.helpers import SQLiteStoreFile, dnsEvent, execEvent
from tests.orchestrator.test_store_contract import SEC, T0, coro, rows

PKG = "left-pad"
OLD = "a" * 32


class TenantStoreContract:
    module: Any

    async def open(self, migrations: Any = None) -> Any:
        raise NotImplementedError

    async def finished(self, st: Any, runID: str, events: Any, tenant: str = "default", key: Any = None, at: int = T0) -> None:
        await st.createRun(S.NewRun(runID, PKG, "1.0.%d" % (at - T0,), "sandbox_scan", None, '{"duration": 1}', at, key,
                                    tenant=tenant))
        self.assertEqual((await st.claimJob("w"))[0], runID)
        await st.confirmDispatch(runID, at, at + 100 * SEC)
        await st.ingestBatch(runID, 1, rows(runID, 1, events), at + 1, at + 100 * SEC)
        await st.recordResult(runID, "ok", "", len(events), 0, SEC, at + 2)

    @coro
    async def test_existingRowsGoToDefault(self) -> None:
        st = await self.open([m for m in self.module.MIGRATIONS if m[0] < TENANTS_MIGRATION])

        def seed(conn: Any) -> None:
            conn.execute(
                "INSERT INTO runs (id, package_name, version, kind, state, job, queue_seq, created_ns, result_status,"
                " verdict, decision, events_received, deviation_count, max_severity, severity_rank)"
                " VALUES (?, ?, '1.0.0', 'sandbox_scan', 'done', '{}', 1, ?, 'ok', 'deviations', NULL, 3, 1, 'high', 3)",
                (OLD, PKG, T0),
            )
            conn.execute("INSERT INTO packages (name, added_ns) VALUES (?, ?)", (PKG, T0))
            conn.execute("INSERT INTO releases (package_name, version, discovered_ns, queued, run_id) VALUES (?, '1.0.0', ?, 1, ?)",
                         (PKG, T0, OLD))
            conn.execute("INSERT INTO baseline (package_name, category, value, actor, run_id, count, added_ns)"
                         " VALUES (?, 'net_new_dns', 'registry.npmjs.org', 'npm', ?, 1, ?)", (PKG, OLD, T0))
            conn.execute("INSERT INTO deviations (id, run_id, package_name, category, value, severity, severity_rank, reason,"
                         " evidence_event_id, count, detected_ns) VALUES (?, ?, ?, 'net_new_dns', 'x.example', 'high', 3, 'new',"
                         " 0, 1, ?)", ("d" * 32, OLD, PKG, T0))
            conn.execute("INSERT INTO allowlist (id, scope, package_name, kind, value, source, created_ns)"
                         " VALUES ('al1', 'global', '', 'dns', 'op.example', 'operator', ?)", (T0,))
            conn.execute("INSERT INTO allowlist (id, scope, package_name, kind, value, source, created_ns)"
                         " VALUES ('cfg1', 'global', '', 'dns', 'cfg.example', 'config', ?)", (T0,))
            conn.execute("INSERT INTO notifiers (name, url, template, created_ns, updated_ns) VALUES ('hook', 'http://127.0.0.1:9/', 'generic', ?, ?)",
                         (T0, T0))
            conn.execute("INSERT INTO outbox (run_id, notifier_name, template, next_attempt_ns, created_ns, updated_ns, body, content_type)"
                         " VALUES (?, 'hook', 'generic', ?, ?, ?, ?, 'application/json')", (OLD, T0, T0, T0, b"{}"))
            conn.execute("INSERT INTO deliveries (outbox_id, notifier_name, attempt, at_ns, status)"
                         " SELECT id, 'hook', 1, ?, 'failed' FROM outbox", (T0,))
            for tokenID, scopes in (("1" * 16, "orchestrator:admin"), ("2" * 16, "orchestrator:read"), ("3" * 16, "runner")):
                conn.execute("INSERT INTO api_tokens (id, name, scopes, secret_hash, created_ns) VALUES (?, ?, ?, 'h', ?)",
                             (tokenID, "t" + tokenID[0], scopes, T0))
            conn.execute("INSERT INTO audit (at_ns, actor, action, target) VALUES (?, 'alice', 'promote', ?)", (T0, "run:" + OLD))

        await st._call(seed)
        await self.close(st)
        st = await self.open()
        run = await st.getRun(OLD, tenant="default")
        self.assertEqual((run.verdict, run.deviation_count, run.max_severity, run.tenant), ("deviations", 1, "high", "default"))
        self.assertIsNone(await st.getRun(OLD, tenant="team-a"))
        self.assertEqual(await st.runTenants(OLD), ["default"])
        self.assertEqual([r.id for r in (await st.pendingRuns(10, None)).items], [OLD])
        self.assertEqual([p["name"] for p in await st.listPackages()], [PKG])
        self.assertEqual(await st.listPackages(tenant="team-a"), [])
        self.assertEqual([r["run_id"] for r in await st.listReleases(PKG)], [OLD])
        self.assertEqual([b["value"] for b in await st.baselineFor(PKG)], ["registry.npmjs.org"])
        self.assertEqual([d.id for d in await st.deviationsForRun(OLD)], ["d" * 32])
        self.assertEqual(await st.deviationsForRun(OLD, tenant="team-a"), [])
        self.assertEqual(sorted(e["id"] for e in await st.listAllow()), ["al1", "cfg1"])
        self.assertEqual([e["id"] for e in await st.listAllow(tenant="team-a")], ["cfg1"])  # the config's are everybody's
        self.assertEqual([n["name"] for n in await st.listNotifiers()], ["hook"])
        self.assertEqual(len(await st.deliveries("hook")), 1)
        self.assertEqual(await st.deliveries("hook", tenant="team-a"), [])
        self.assertEqual([o["notifier_name"] for o in await st.outboxFor(OLD)], ["hook"])
        self.assertEqual({t["name"]: t["tenant"] for t in await st.listTokens()}, {"t1": "*", "t2": "default", "t3": "*"})
        self.assertEqual([a["action"] for a in await st.auditFor("run:" + OLD)], ["promote"])
        self.assertEqual(await st.auditFor("run:" + OLD, tenant="team-a"), [])

    @coro
    async def test_tenantMethods(self) -> None:
        st = await self.open()
        # One package name, two tenants: two watches.
        self.assertTrue(await st.addPackage(PKG, "a", T0, tenant="team-a"))
        self.assertTrue(await st.addPackage(PKG, "b", T0, tenant="team-b"))
        self.assertFalse(await st.addPackage(PKG, "b", T0, tenant="team-b"))
        self.assertEqual({p["tenant"] for p in await st.watchList(T0)}, {"team-a", "team-b"})
        for tenant in ("team-a", "team-b"):
            waiting = await st.recordPackument(PKG, [{"version": "1.0.1", "seeded": False}], "1.0.1", None, T0, tenant=tenant)
            self.assertEqual([w["version"] for w in waiting], ["1.0.1"])
        await st.markReleaseQueued(PKG, "1.0.1", "r" * 32, T0, tenant="team-a")
        self.assertEqual(await st.waitingReleases(PKG, tenant="team-a"), [])
        self.assertEqual([w["version"] for w in await st.waitingReleases(PKG, tenant="team-b")], ["1.0.1"])
        await st.finishChecks([(PKG, "boom", None, "team-b")], T0)
        self.assertEqual((await st.watchStatus(PKG, tenant="team-b"))["last_error"], "boom")
        self.assertEqual((await st.watchStatus(PKG, tenant="team-a"))["last_error"], "")

        # A's baseline, then a run shared with B: each judges it.
        await self.finished(st, "b" * 32, [dnsEvent("registry.npmjs.org")], tenant="team-a")
        self.assertEqual((await st.analyzeRun("b" * 32, T0 + 3)).verdict, "baseline")
        shared = "c" * 32
        newEvents = [dnsEvent("registry.npmjs.org"), dnsEvent("new.example"), execEvent("/usr/bin/curl")]
        await st.createRun(S.NewRun(shared, PKG, "1.0.2", "sandbox_scan", None, '{"duration": 1}', T0 + 10, "watch:x",
                                    tenant="team-a"))
        self.assertEqual(await st.createRun(S.NewRun("e" * 32, PKG, "1.0.2", "sandbox_scan", None, "{}", T0 + 11, "watch:x",
                                                     tenant="team-b")), (shared, False))
        self.assertTrue(await st.linkRunTenant(shared, "team-b", T0 + 11))
        self.assertFalse(await st.linkRunTenant(shared, "team-b", T0 + 12))
        self.assertEqual(await st.runTenants(shared), ["team-a", "team-b"])
        self.assertEqual(await st.queueDepthByTenant(), {"team-a": 1, "team-b": 1})
        self.assertEqual((await st.claimJob("w"))[0], shared)
        await st.confirmDispatch(shared, T0 + 10, T0 + 100 * SEC)
        await st.ingestBatch(shared, 1, rows(shared, 1, newEvents), T0 + 11, T0 + 100 * SEC)
        await st.recordResult(shared, "ok", "", len(newEvents), 0, SEC, T0 + 12)
        self.assertEqual([c[0] for c in await st.sharedScanCandidates(PKG, "1.0.2", "sandbox_scan", "team-c")], [shared])
        self.assertEqual(await st.sharedScanCandidates(PKG, "1.0.2", "sandbox_scan", "team-b"), [])  # linked already
        self.assertEqual(await st.sharedScanCandidates(PKG, "1.0.3", "sandbox_scan", "team-c"), [])
        outcomes = await st.analyzeRunTenants(shared, T0 + 13)
        self.assertEqual([(o.tenant, o.verdict) for o in outcomes], [("team-a", "deviations"), ("team-b", "baseline")])
        self.assertEqual((await st.getRun(shared)).verdict, "deviations")  # the owner's, unscoped
        self.assertEqual((await st.getRun(shared, tenant="team-b")).verdict, "baseline")
        self.assertTrue(await st.deviationsForRun(shared, tenant="team-a"))
        self.assertEqual(await st.deviationsForRun(shared, tenant="team-b"), [])
        self.assertEqual(await st.metricCounts(tenant="team-b"), {"runs": {"done": 1}, "deviations": {}, "outbox": {}})
        again = await st.analyzeRunTenants(shared, T0 + 14)
        self.assertEqual([o.changed for o in again], [False, False])
        # B promotes nothing of A's: its decision is its own.
        outcome = await st.decide(shared, "rejected", "bob", T0 + 15, tenant="team-b")
        self.assertEqual(outcome.tenant, "team-b")
        self.assertEqual((await st.getRun(shared, tenant="team-b")).decision, "rejected")
        self.assertIsNone((await st.getRun(shared, tenant="team-a")).decision)
        self.assertEqual([a["actor"] for a in await st.auditFor("run:" + shared, tenant="team-b")], ["bob"])
        self.assertEqual(await st.auditFor("run:" + shared, tenant="team-a"), [])
        self.assertEqual([(a["action"], a["target"]) for a in await st.auditLog("team-b", 10)],
                         [("reject", "run:" + shared), ("package.add", "package:" + PKG)])
        self.assertEqual(len(await st.auditLog("team-b", 1)), 1)
        self.assertEqual(await st.auditLog("team-a", 10, "run:" + shared), [])

        # Artifacts: visible to a tenant with a run that references it.
        await st.putArtifact("ab" * 64, b"x", T0)
        await st.linkArtifact(RunArtifact(shared, "ab" * 64, "verified", "", "sha512-x", "https://r/x.tgz", 1, T0))
        self.assertTrue(await st.artifactVisible("ab" * 64, "team-b"))
        self.assertFalse(await st.artifactVisible("ab" * 64, "team-c"))

        # Allowlist, notifiers, tokens: each tenant's own.
        await st.addAllow(makeEntry("al" + "1" * 14, "dns", "new.example"), "a", T0, tenant="team-a")
        await st.addAllow(makeEntry("al" + "2" * 14, "dns", "new.example"), "b", T0, tenant="team-b")  # same entry, other tenant
        self.assertFalse(await st.removeAllow("al" + "1" * 14, "b", T0, tenant="team-b"))
        self.assertEqual([e["id"] for e in await st.listAllow(tenant="team-a")], ["al" + "1" * 14])
        for tenant in ("team-a", "team-b"):
            self.assertTrue(await st.upsertNotifier({"name": "hook", "url": "http://127.0.0.1:9/" + tenant, "template": "generic",
                                                     "secret_env": None, "headers": {}, "min_severity": None, "packages": [],
                                                     "enabled": True}, "x", T0, tenant=tenant))
        self.assertEqual((await st.getNotifier("hook", tenant="team-b"))["url"], "http://127.0.0.1:9/team-b")
        self.assertTrue(await st.deleteNotifier("hook", "x", T0, tenant="team-a"))
        self.assertIsNotNone(await st.getNotifier("hook", tenant="team-b"))
        await st.createToken("4" * 16, "ta", "orchestrator:read", "h", "x", T0, tenant="team-a")
        await st.createToken("5" * 16, "tb", "orchestrator:read", "h", "x", T0, tenant="team-b")
        self.assertEqual([t["name"] for t in await st.listTokens(tenant="team-a")], ["ta"])
        self.assertEqual((await st.lookupToken("5" * 16))["tenant"], "team-b")
        self.assertFalse(await st.revokeToken("5" * 16, "x", T0, tenant="team-a"))
        self.assertTrue(await st.revokeToken("5" * 16, "x", T0, tenant="team-b"))
        self.assertTrue(await st.removePackage(PKG, "a", T0, tenant="team-a"))
        self.assertEqual([p["name"] for p in await st.listPackages(tenant="team-b")], [PKG])


class SQLiteTenantStoreTests(SQLiteStoreFile, TenantStoreContract, TestCase):
    module = S

