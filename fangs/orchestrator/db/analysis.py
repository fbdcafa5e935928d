"""
Analysis and review: the units of work of L{fangs.orchestrator.judgement}
run in one transaction over an L{AnalysisTransaction} (the reads and writes
they make; the decisions are theirs), deviations and the pending queue.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.logger import Logger
from twisted.internet.defer import Deferred

from fangs.orchestrator import differ, judgement
from fangs.orchestrator.allowlist import Allowlist
from fangs.orchestrator.db.model import (
    NotFound,
    RunRow,
    _RUN_SELECT,
    _TENANT_RUN_SELECT,
    _runRow,
    StoredEvent,
    Page,
    AnalysisOutcome,
    DeviationRow,
    _DEVIATION_SELECT,
    DeviationFilter,
    deviationID,
    encodeToken,
    decodeToken,
)
from fangs.orchestrator.db.connector import _transaction


log = Logger()


class AnalysisComponent:
    """
    Analysis and review: the differ's plan run in one transaction, review
    decisions, deviations and the pending queue.
    """

    # -- analysis: judgement's units of work, run in one transaction ----------

    def runInTransaction(self, unit: Callable[["AnalysisTransaction"], Any]) -> Deferred:
        """
        Run a unit of work (L{fangs.orchestrator.judgement}) in one
        transaction: it reads and writes through an L{AnalysisTransaction}
        and everything it wrote commits together, or nothing does.
        """
        return self._call(self._thd_runInTransaction, unit)

    def _thd_runInTransaction(self, conn: Any, unit: Callable[["AnalysisTransaction"], Any]) -> Any:
        with _transaction(conn):
            return unit(AnalysisTransaction(self, conn))

    def analyzeRun(self, runID: str, nowNs: int, credPaths: Sequence[str] = (), tenant: Optional[str] = None) -> "Deferred[AnalysisOutcome]":
        """
        L{judgement.AnalyseRun}: compare the run's fingerprints with its
        package's baseline and store the verdict, deviations and baseline
        rows, all in one transaction.  A run is judged for each tenant it is
        linked to, against that tenant's baseline and allowlist: C{tenant}
        names one (default: the run's owner).  The owner's verdict is also
        the run's own columns.
        """
        return self._call(self._thd_analyzeRun, runID, nowNs, credPaths, tenant)

    def analyzeRunTenants(self, runID: str, nowNs: int, credPaths: Sequence[str] = ()) -> "Deferred[List[AnalysisOutcome]]":
        """
        L{judgement.AnalyseRunTenants}: L{analyzeRun} for every tenant the
        run is linked to (owner first), in one transaction.
        """
        return self._call(self._thd_analyzeRunTenants, runID, nowNs, credPaths)

    def decide(self, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str] = (),
               tenant: str = "default") -> "Deferred[AnalysisOutcome]":
        """
        L{judgement.Decide}: an operator's decision on a finished run
        (C{promoted}, C{rejected}, C{reanalyze}), re-judged, with its audit
        row, in one transaction.

        @raise NotFound: no such run.
        @raise Conflict: the run is not finished, or cannot be promoted.
        """
        return self._call(self._thd_decide, runID, decision, actor, nowNs, credPaths, tenant)

    # The engines' hooks around one unit (PostgreSQL queues the analyses of
    # a package around these).

    def _thd_analyzeRun(self, conn: Any, runID: str, nowNs: int, credPaths: Sequence[str],
                        tenant: Optional[str] = None) -> AnalysisOutcome:
        return self._thd_runInTransaction(conn, judgement.AnalyseRun(runID, nowNs, tuple(credPaths), tenant))

    def _thd_analyzeRunTenants(self, conn: Any, runID: str, nowNs: int, credPaths: Sequence[str]) -> List[AnalysisOutcome]:
        return self._thd_runInTransaction(conn, judgement.AnalyseRunTenants(runID, nowNs, tuple(credPaths)))

    def _thd_decide(self, conn: Any, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str],
                    tenant: str = "default") -> AnalysisOutcome:
        return self._thd_runInTransaction(conn, judgement.Decide(runID, decision, actor, nowNs, tuple(credPaths), tenant))

    # -- review reads -------------------------------------------------------------

    def deviationsForRun(self, runID: str, tenant: str = "default") -> "Deferred[List[DeviationRow]]":
        """
        C{tenant}'s deviations of a run (each tenant judges a shared run).
        """
        return self._call(
            lambda conn: [
                DeviationRow(*r)
                for r in conn.execute(
                    _DEVIATION_SELECT + " WHERE run_id = ? AND tenant = ? ORDER BY severity_rank DESC, category, value",
                    (runID, tenant),
                )
            ]
        )

    def getDeviation(self, deviationID: str, tenant: str = "default") -> "Deferred[Optional[Tuple[DeviationRow, Optional[StoredEvent]]]]":
        return self._call(self._thd_getDeviation, deviationID, tenant)

    def _thd_getDeviation(self, conn: Any, deviationID: str,
                          tenant: str = "default") -> Optional[Tuple["DeviationRow", Optional[StoredEvent]]]:
        r = conn.execute(_DEVIATION_SELECT + " WHERE id = ? AND tenant = ?", (deviationID, tenant)).fetchone()
        if r is None:
            return None
        dev = DeviationRow(*r)
        e = conn.execute(
            "SELECT id, run_id, seq, idx, type, ts_ns, received_ns, pid, data FROM events WHERE id = ?",
            (dev.evidence_event_id,),
        ).fetchone()
        return dev, (StoredEvent(*e) if e else None)

    def listDeviations(self, filter: "DeviationFilter", pageSize: int, pageToken: Optional[str]) -> "Deferred[Page]":
        after = decodeToken(pageToken, (int, str)) if pageToken else None
        return self._call(self._thd_listDeviations, filter, pageSize, after)

    def _thd_listDeviations(self, conn: Any, filter: "DeviationFilter", pageSize: int, after: Optional[List[Any]]) -> Page:
        where: List[str] = ["tenant = ?"]
        args: List[Any] = [filter.tenant]
        if filter.package is not None:
            where.append("package_name = ?")
            args.append(filter.package)
        if filter.min_severity_rank:
            where.append("severity_rank >= ?")
            args.append(filter.min_severity_rank)
        if filter.run_id is not None:
            where.append("run_id = ?")
            args.append(filter.run_id)
        if filter.since_ns is not None:
            where.append("detected_ns >= ?")
            args.append(filter.since_ns)
        if after is not None:
            where.append("(detected_ns < ? OR (detected_ns = ? AND id < ?))")
            args.extend([after[0], after[0], after[1]])
        sql = _DEVIATION_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY detected_ns DESC, id DESC LIMIT ?"
        args.append(pageSize + 1)
        rows = [DeviationRow(*r) for r in conn.execute(sql, args)]
        token = None
        if len(rows) > pageSize:
            rows = rows[:pageSize]
            token = encodeToken([rows[-1].detected_ns, rows[-1].id])
        return Page(rows, token)

    def pendingRuns(self, pageSize: int, pageToken: Optional[str], tenant: str = "default") -> "Deferred[Page]":
        """
        C{tenant}'s runs waiting for its decision, highest severity first,
        then newest.
        """
        after = decodeToken(pageToken, (int, int, str)) if pageToken else None
        return self._call(self._thd_pendingRuns, pageSize, after, tenant)

    def _thd_pendingRuns(self, conn: Any, pageSize: int, after: Optional[List[Any]], tenant: str = "default") -> Page:
        sql = _TENANT_RUN_SELECT + " WHERE rt.verdict = 'deviations' AND rt.decision IS NULL"
        args: List[Any] = [tenant]
        if after is not None:
            sql += (
                " AND (rt.severity_rank < ? OR (rt.severity_rank = ? AND (COALESCE(runs.finished_ns, 0) < ?"
                " OR (COALESCE(runs.finished_ns, 0) = ? AND runs.id < ?))))"
            )
            args += [after[0], after[0], after[1], after[1], after[2]]
        sql += " ORDER BY rt.severity_rank DESC, COALESCE(runs.finished_ns, 0) DESC, runs.id DESC LIMIT ?"
        args.append(pageSize + 1)
        rows = [_runRow(r) for r in conn.execute(sql, args)]
        token = None
        if len(rows) > pageSize:
            rows = rows[:pageSize]
            last = rows[-1]
            token = encodeToken([differ.severityRank(last.max_severity or ""), last.finished_ns or 0, last.id])
        return Page(rows, token)


class AnalysisTransaction:
    """
    The reads and writes a unit of work of L{fangs.orchestrator.judgement}
    makes, over one open transaction; no rules of its own.
    """

    def __init__(self, store: Any, conn: Any) -> None:
        self._store = store
        self._conn = conn

    def run(self, runID: str, tenant: Optional[str] = None) -> RunRow:
        """
        The run; with C{tenant}, as that tenant sees it (its own verdict and
        decision).  @raise NotFound: no such run (for that tenant).
        """
        if tenant is None:
            row = self._conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone()
        else:
            row = self._conn.execute(_TENANT_RUN_SELECT + " WHERE runs.id = ?", (tenant, runID)).fetchone()
        if row is None:
            raise NotFound("run %s not found" % (runID,))
        return _runRow(row)

    def tenantsOf(self, runID: str) -> List[str]:
        """
        The tenants the run is linked to, the one that queued it first.
        """
        return [r[0] for r in self._conn.execute(
            "SELECT rt.tenant FROM run_tenants rt JOIN runs ON runs.id = rt.run_id WHERE rt.run_id = ?"
            " ORDER BY CASE WHEN rt.tenant = runs.tenant THEN 0 ELSE 1 END, rt.tenant", (runID,))]

    def fingerprints(self, runID: str, credPaths: Sequence[str]) -> differ.FingerprintSet:
        return differ.FingerprintSet.fromTuples(
            self._conn.execute(
                "SELECT category, value, count, first_event_id, cred, raw_ip FROM run_fingerprints WHERE run_id = ?",
                (runID,),
            ),
            credPaths,
        )

    def allowlist(self, tenant: str, package: str) -> Allowlist:
        return Allowlist(self._store._thd_allowEntries(self._conn, tenant), package)

    def baselineKeys(self, tenant: str, package: str, exceptRun: str) -> Set[Tuple[str, str, str]]:
        return {
            (c, v, a)
            for c, v, a in self._conn.execute(
                "SELECT DISTINCT category, value, actor FROM baseline WHERE tenant = ? AND package_name = ? AND run_id != ?",
                (tenant, package, exceptRun),
            )
        }

    def hasBaseline(self, tenant: str, package: str, exceptRun: str) -> bool:
        return (
            self._conn.execute(
                "SELECT 1 FROM runs JOIN run_tenants rt ON rt.run_id = runs.id AND rt.tenant = ?"
                " WHERE runs.package_name = ? AND runs.id != ? AND rt.verdict IN ('baseline', 'clean') LIMIT 1",
                (tenant, package, exceptRun),
            ).fetchone()
            is not None
        )

    def runContext(self, run: RunRow) -> Tuple[Any, List[differ.ManifestDelta]]:
        """
        The differ's context of a run (package, version, the release's
        manifest scripts) and the manifest deltas the watcher recorded for
        the release.
        """
        from fangs.orchestrator.actors import RunContext

        scripts: Dict[str, str] = {}
        deltas: List[differ.ManifestDelta] = []
        # What the registry published of the release, as the run's tenant's
        # watch recorded it, else as another tenant's did.
        row = self._conn.execute(
            "SELECT manifest, deltas FROM releases WHERE package_name = ? AND version = ?"
            " ORDER BY CASE WHEN tenant = ? THEN 0 ELSE 1 END LIMIT 1",
            (run.package_name, run.version, run.tenant),
        ).fetchone()
        if row is not None:
            try:
                manifest = json.loads(row[0]) if row[0] else {}
                found = manifest.get("scripts") if isinstance(manifest, dict) else None
                if isinstance(found, dict):
                    scripts = {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}
                for d in json.loads(row[1] or "[]"):
                    deltas.append(differ.ManifestDelta(d["category"], d["value"], differ.Severity.parse(d["severity"]), d["reason"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warn("release {package}@{version}: unreadable manifest or deltas", package=run.package_name, version=run.version)
        # The tarball the registry serves does not match the integrity it
        # publishes: what was installed is not what the registry vouches for.
        mismatch = self._conn.execute(
            "SELECT tarball_url, detail FROM run_artifacts WHERE run_id = ? AND status = 'integrity_mismatch'", (run.id,)
        ).fetchone()
        if mismatch is not None:
            deltas.append(differ.ManifestDelta("pkg_integrity_mismatch", mismatch[0], differ.Severity.CRITICAL,
                                               "the tarball does not match the registry's integrity: " + mismatch[1]))
        return RunContext(run.package_name, run.version, scripts), deltas

    def recordAnalysis(self, run: RunRow, tenant: str, plan: differ.AnalysisPlan, blocking: int,
                       maxSeverity: Optional[str], nowNs: int, owner: bool) -> None:
        """
        The tenant's deviations, baseline rows and verdict of the run, as
        the plan says; the run's own columns too when C{owner}.
        """
        self._conn.execute("DELETE FROM deviations WHERE run_id = ? AND tenant = ?", (run.id, tenant))
        self._conn.executemany(
            "INSERT INTO deviations (id, run_id, package_name, category, value, severity, severity_rank, reason,"
            " evidence_event_id, count, detected_ns, actor, detail, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [
                (
                    deviationID(run.id, d.category, d.value, d.actor, tenant),
                    run.id,
                    run.package_name,
                    d.category,
                    d.value,
                    d.severity.label,
                    int(d.severity),
                    d.reason,
                    d.evidence_event_id,
                    d.count,
                    run.analyzed_ns or nowNs,
                    d.actor,
                    json.dumps(dict(d.detail), sort_keys=True),
                    tenant,
                )
                for d in plan.deviations
            ],
        )
        self._conn.execute("DELETE FROM baseline WHERE run_id = ? AND tenant = ?", (run.id, tenant))
        if run.package_name:
            self._conn.executemany(
                "INSERT INTO baseline (tenant, package_name, category, value, actor, run_id, count, added_ns)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(tenant, run.package_name, f.category, f.value, f.actor_class, run.id, f.count, nowNs) for f in plan.baseline_add],
            )
        self._conn.execute(
            "UPDATE run_tenants SET verdict = ?, analyzed_ns = COALESCE(analyzed_ns, ?), deviation_count = ?,"
            " max_severity = ?, severity_rank = ?, analysis_reason = ? WHERE run_id = ? AND tenant = ?",
            (plan.verdict, nowNs, blocking, maxSeverity, int(plan.max_severity or 0), plan.reason, run.id, tenant),
        )
        if owner:
            self._conn.execute("UPDATE runs SET analysis_reason = ? WHERE id = ?", (plan.reason, run.id))
            self._conn.execute(
                "UPDATE runs SET verdict = ?, analyzed_ns = COALESCE(analyzed_ns, ?), deviation_count = ?,"
                " max_severity = ?, severity_rank = ? WHERE id = ?",
                (plan.verdict, nowNs, blocking, maxSeverity, int(plan.max_severity or 0), run.id),
            )

    def setDecision(self, runID: str, tenant: str, decision: str) -> None:
        self._conn.execute("UPDATE run_tenants SET decision = ? WHERE run_id = ? AND tenant = ?", (decision, runID, tenant))
        self._conn.execute("UPDATE runs SET decision = ? WHERE id = ? AND tenant = ?", (decision, runID, tenant))

    def audit(self, tenant: str, atNs: int, actor: str, action: str, target: str, detail: str) -> None:
        self._conn.execute(
            "INSERT INTO audit (tenant, at_ns, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (tenant, atNs, actor, action, target, detail),
        )

    def notifiers(self, tenant: str) -> List[Dict[str, Any]]:
        return self._store._thd_enabledNotifiers(self._conn, tenant)

    def deviationsToNotify(self, runID: str, tenant: str) -> List[Dict[str, Any]]:
        return self._store._thd_deviationsToNotify(self._conn, runID, tenant)

    def enqueue(self, tenant: str, runID: str, message: Any, nowNs: int) -> int:
        return self._store._thd_enqueue(self._conn, tenant, runID, message, nowNs)
