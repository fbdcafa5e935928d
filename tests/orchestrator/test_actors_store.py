"""
The differ's store migration (baselines keyed by actor, migrated in place)
and actor-aware analysis, on SQLite (on PostgreSQL:
L{tests.integration.orchestrator.test_actors_store}).
"""

from __future__ import annotations

from typing import Any, List

from twisted.trial.unittest import TestCase

from fangs.orchestrator import store as S
from tests.orchestrator.helpers import SQLiteStoreFile
from tests.orchestrator.test_store_contract import SEC, T0, coro, rows

PKG = "left-pad"


def header(pid: int, ppid: int, ts: int, tags: int = 0) -> dict:
    return {"TsNs": ts, "PID": pid, "TID": pid, "PPID": ppid, "Tags": tags}


def events() -> List[dict]:
    """
    npm reads ~/.npmrc (baselined), its postinstall reads it too (new).
    """
    return [
        {"type": 2, "payload": {"Header": header(100, 50, 1), "BinaryPathStr": "/usr/bin/node",
                                "ArgvStrs": ["node", "/usr/bin/npm", "install", PKG]}},
        {"type": 1, "payload": {"Header": header(100, 50, 2, tags=3), "PathName": "/root/.npmrc", "Flags": 0}},
        {"type": 2, "payload": {"Header": header(200, 100, 3), "BinaryPathStr": "/tmp/t/node_modules/left-pad/node_modules/.bin/sh",
                                "ArgvStrs": ["sh", "-c", "node x.js"]}},
        {"type": 2, "payload": {"Header": header(200, 100, 4), "BinaryPathStr": "/usr/bin/sh", "ArgvStrs": ["sh", "-c", "node x.js"]}},
        {"type": 1, "payload": {"Header": header(200, 100, 5, tags=3), "PathName": "/root/.npmrc", "Flags": 0}},
    ]


class MigrationContract:
    module: Any

    async def open(self, migrations: Any = None) -> Any:
        raise NotImplementedError

    @coro
    async def test_baselineMigratedInPlace(self) -> None:
        old = [m for m in self.module.MIGRATIONS if m[0] < S.ACTORS_MIGRATION]
        st = await self.open(old)

        def seed(conn: Any) -> None:
            for i, (runID, decision) in enumerate((("a" * 32, None), ("b" * 32, "promoted"))):
                conn.execute(
                    "INSERT INTO runs (id, package_name, version, kind, state, job, queue_seq, created_ns, result_status,"
                    " verdict, decision, events_received) VALUES (?, ?, '1.0.0', 'sandbox_scan', 'done', '{}', ?, ?, 'ok',"
                    " 'baseline', ?, 3)",
                    (runID, PKG, i + 1, T0 + i, decision),
                )
            for category, value, runID in (
                ("fs_new_path_read", "/root/.npmrc", "a" * 32),
                ("proc_new_exec", "/usr/bin/node", "a" * 32),
                ("fs_new_path_read", "/root/.ssh/known_hosts", "b" * 32),
                ("net_new_dns", "registry.npmjs.org", "b" * 32),
            ):
                conn.execute(
                    "INSERT INTO baseline (package_name, category, value, run_id, count, added_ns) VALUES (?, ?, ?, ?, 2, ?)",
                    (PKG, category, value, runID, T0),
                )
            conn.execute("INSERT INTO audit (at_ns, actor, action, target) VALUES (?, 'alice', 'promote', ?)",
                         (T0, "run:" + "b" * 32))

        await st._call(seed)
        await self.close(st)
        st = await self.open()
        base = {(f["category"], f["value"], f["actor"]): f for f in await st.baselineFor(PKG)}
        self.assertEqual(
            sorted(base),
            sorted([
                ("fs_new_path_read", "/root/.npmrc", "npm"),
                ("fs_new_path_read", "/root/.ssh/known_hosts", "npm"),
                ("proc_new_exec", "/usr/bin/node", "npm"),
                ("proc_new_exec", "/usr/bin/node", "script"),
                ("proc_new_exec", "/usr/bin/node", "other"),
                ("net_new_dns", "registry.npmjs.org", "npm"),
                ("net_new_dns", "registry.npmjs.org", "script"),
                ("net_new_dns", "registry.npmjs.org", "other"),
            ]),
        )
        self.assertEqual(base[("net_new_dns", "registry.npmjs.org", "script")]["first_seen_run_id"], "b" * 32)
        promoted = await st.getRun("b" * 32)
        self.assertEqual((promoted.decision, promoted.verdict), ("promoted", "baseline"))
        self.assertEqual([a["action"] for a in await st.auditFor("run:" + "b" * 32)], ["promote"])

        # A new run: npm's read of ~/.npmrc is baselined, the postinstall's is new.
        runID = "c" * 32
        await st.createRun(S.NewRun(runID, PKG, "1.0.1", "sandbox_scan", None, '{"duration": 1}', T0 + 10, None))
        await st.claimJob("w")
        await st.confirmDispatch(runID, T0 + 10, T0 + 100 * SEC)
        batch = events()
        await st.ingestBatch(runID, 1, rows(runID, 1, batch), T0 + 11, T0 + 100 * SEC)
        await st.recordResult(runID, "ok", "", len(batch), 0, SEC, T0 + 12)
        outcome = await st.analyzeRun(runID, T0 + 13)
        self.assertEqual(outcome.verdict, "deviations")
        found = {(d.category, d.value, d.actor): d for d in await st.deviationsForRun(runID) if d.severity_rank >= 2}
        self.assertEqual(sorted(found), [("fs_new_path_read", "/root/.npmrc", "script"), ("proc_new_exec", "/usr/bin/sh", "script")])
        dev = found[("fs_new_path_read", "/root/.npmrc", "script")]
        self.assertEqual(dev.severity, "high")
        self.assertEqual(dev.actorDetail["label"], "script:left-pad@1.0.1:?")
        self.assertEqual(dev.actorDetail["pid"], 200)
        # Idempotent: the same analysis again changes nothing.
        again = await st.analyzeRun(runID, T0 + 14)
        self.assertFalse(again.changed)


class SQLiteMigrationTests(SQLiteStoreFile, MigrationContract, TestCase):
    module = S

