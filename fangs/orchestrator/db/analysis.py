"""
Analysis and review: the differ's plan run in one transaction, review
decisions, deviations and the pending queue.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.logger import Logger
from twisted.internet.defer import Deferred

from fangs.orchestrator import differ
from fangs.orchestrator.allowlist import Allowlist
from fangs.orchestrator.db.model import (
    FAILED,
    TERMINAL_STATES,
    NotFound,
    Conflict,
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

    # -- analysis (the differ's plan, executed in one transaction) -------------

    def analyzeRun(self, runID: str, nowNs: int, credPaths: Sequence[str] = (), tenant: Optional[str] = None) -> "Deferred[AnalysisOutcome]":
        """
        Compare the run's fingerprints with its package's baseline and store
        the verdict, deviations and baseline rows, all in one transaction.
        Idempotent: the plan depends only on the run's events, the other
        runs' baseline rows, the allowlist and the operator's decision.

        A run is judged for each tenant it is linked to, against that
        tenant's baseline and allowlist: C{tenant} names one (default: the
        run's owner).  The owner's verdict is also the run's own columns.
        """
        return self._call(self._thd_analyzeRun, runID, nowNs, credPaths, tenant)

    def analyzeRunTenants(self, runID: str, nowNs: int, credPaths: Sequence[str] = ()) -> "Deferred[List[AnalysisOutcome]]":
        """
        L{analyzeRun} for every tenant the run is linked to (owner first),
        in one transaction.
        """
        return self._call(self._thd_analyzeRunTenants, runID, nowNs, credPaths)

    def _thd_analyzeRunTenants(self, conn: Any, runID: str, nowNs: int,
                               credPaths: Sequence[str]) -> List[AnalysisOutcome]:
        with _transaction(conn):
            tenants = [r[0] for r in conn.execute(
                "SELECT rt.tenant FROM run_tenants rt JOIN runs ON runs.id = rt.run_id WHERE rt.run_id = ?"
                " ORDER BY CASE WHEN rt.tenant = runs.tenant THEN 0 ELSE 1 END, rt.tenant", (runID,))]
            if not tenants:
                return [self._thd_analyzeInTransaction(conn, runID, nowNs, credPaths)]
            return [self._thd_analyzeInTransaction(conn, runID, nowNs, credPaths, t) for t in tenants]

    def _thd_analyzeRun(self, conn: Any, runID: str, nowNs: int, credPaths: Sequence[str],
                        tenant: Optional[str] = None) -> "AnalysisOutcome":
        with _transaction(conn):
            return self._thd_analyzeInTransaction(conn, runID, nowNs, credPaths, tenant)

    def _thd_analyzeInTransaction(
        self, conn: Any, runID: str, nowNs: int, credPaths: Sequence[str], tenant: Optional[str] = None
    ) -> "AnalysisOutcome":
        row = conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone()
        if row is None:
            raise NotFound("run %s not found" % (runID,))
        owned = _runRow(row)
        tenant = tenant or owned.tenant
        row = conn.execute(_TENANT_RUN_SELECT + " WHERE runs.id = ?", (tenant, runID)).fetchone()
        if row is None:
            raise NotFound("run %s not found" % (runID,))
        run = _runRow(row)  # the run as this tenant judged it so far
        before = (run.verdict, run.deviation_count, run.max_severity)
        fps = differ.FingerprintSet.fromTuples(
            conn.execute(
                "SELECT category, value, count, first_event_id, cred, raw_ip FROM run_fingerprints WHERE run_id = ?",
                (runID,),
            ),
            credPaths or differ.DEFAULT_CRED_PATHS,
        )
        allow = Allowlist(self._thd_allowEntries(conn, tenant), run.package_name)
        baselineKeys = {
            (c, v, a)
            for c, v, a in conn.execute(
                "SELECT DISTINCT category, value, actor FROM baseline WHERE tenant = ? AND package_name = ? AND run_id != ?",
                (tenant, run.package_name, runID),
            )
        }
        hasBaseline = (
            conn.execute(
                "SELECT 1 FROM runs JOIN run_tenants rt ON rt.run_id = runs.id AND rt.tenant = ?"
                " WHERE runs.package_name = ? AND runs.id != ? AND rt.verdict IN ('baseline', 'clean') LIMIT 1",
                (tenant, run.package_name, runID),
            ).fetchone()
            is not None
        )
        context, deltas = self._thd_runContext(conn, run)
        plan = differ.planAnalysis(
            fps,
            baselineKeys,
            allow,
            # A run that finished "ok" without a single event means the
            # sensor saw nothing: never a clean verdict, never a baseline.
            runState=(run.result_status or "") if run.events_received else "no-events",
            # Unresolved file accesses are lost evidence, like drops.
            eventsDropped=run.events_dropped + run.events_unresolved,
            hasBaseline=hasBaseline,
            rejected=run.decision == "rejected",
            promoted=run.decision == "promoted",
            context=context,
            manifestDeltas=deltas,
        )
        conn.execute("DELETE FROM deviations WHERE run_id = ? AND tenant = ?", (runID, tenant))
        conn.executemany(
            "INSERT INTO deviations (id, run_id, package_name, category, value, severity, severity_rank, reason,"
            " evidence_event_id, count, detected_ns, actor, detail, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [
                (
                    deviationID(runID, d.category, d.value, d.actor, tenant),
                    runID,
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
        conn.execute("DELETE FROM baseline WHERE run_id = ? AND tenant = ?", (runID, tenant))
        if run.package_name:
            conn.executemany(
                "INSERT INTO baseline (tenant, package_name, category, value, actor, run_id, count, added_ns)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(tenant, run.package_name, f.category, f.value, f.actor_class, runID, f.count, nowNs) for f in plan.baseline_add],
            )
        blocking = len(plan.blocking) if plan.verdict != differ.VERDICT_CLEAN else 0
        maxSeverity = plan.max_severity.label if plan.max_severity is not None else None
        conn.execute(
            "UPDATE run_tenants SET verdict = ?, analyzed_ns = COALESCE(analyzed_ns, ?), deviation_count = ?,"
            " max_severity = ?, severity_rank = ?, analysis_reason = ? WHERE run_id = ? AND tenant = ?",
            (plan.verdict, nowNs, blocking, maxSeverity, int(plan.max_severity or 0), plan.reason, runID, tenant),
        )
        if tenant == owned.tenant:
            conn.execute("UPDATE runs SET analysis_reason = ? WHERE id = ?", (plan.reason, runID))
            conn.execute(
                "UPDATE runs SET verdict = ?, analyzed_ns = COALESCE(analyzed_ns, ?), deviation_count = ?,"
                " max_severity = ?, severity_rank = ? WHERE id = ?",
                (plan.verdict, nowNs, blocking, maxSeverity, int(plan.max_severity or 0), runID),
            )
        after = (plan.verdict, blocking, maxSeverity)
        outcome = AnalysisOutcome(runID, run.package_name, plan.verdict, blocking, maxSeverity, after != before, tenant)
        self._thd_enqueueNotifications(conn, run, outcome, nowNs)  # the outbox row commits with the verdict
        return outcome

    def _thd_runContext(self, conn: Any, run: RunRow) -> Tuple[Any, List[differ.ManifestDelta]]:
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
        row = conn.execute(
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
        mismatch = conn.execute(
            "SELECT tarball_url, detail FROM run_artifacts WHERE run_id = ? AND status = 'integrity_mismatch'", (run.id,)
        ).fetchone()
        if mismatch is not None:
            deltas.append(differ.ManifestDelta("pkg_integrity_mismatch", mismatch[0], differ.Severity.CRITICAL,
                                               "the tarball does not match the registry's integrity: " + mismatch[1]))
        return RunContext(run.package_name, run.version, scripts), deltas

    def decide(self, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str] = (),
               tenant: str = "default") -> "Deferred[AnalysisOutcome]":
        """
        An operator's decision on a finished run: C{promoted} (accept its
        behaviour into the baseline) or C{rejected} (keep the findings, mark
        it malicious, never baseline it); C{reanalyze} runs the analysis
        again (after an allowlist change).  One transaction with its audit
        row.

        @raise NotFound: no such run.
        @raise Conflict: the run is not finished, or cannot be promoted.
        """
        return self._call(self._thd_decide, runID, decision, actor, nowNs, credPaths, tenant)

    def _thd_decide(
        self, conn: Any, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str],
        tenant: str = "default",
    ) -> "AnalysisOutcome":
        with _transaction(conn):
            row = conn.execute(_TENANT_RUN_SELECT + " WHERE runs.id = ?", (tenant, runID)).fetchone()
            if row is None:
                raise NotFound("run %s not found" % (runID,))
            run = _runRow(row)
            if run.state not in TERMINAL_STATES or run.result_status is None and run.state != FAILED:
                raise Conflict("run %s is still %s; decide once it has finished" % (runID, run.state))
            if decision == "promoted":
                if not differ.isComplete(run.result_status or "", run.events_dropped + run.events_unresolved):
                    raise Conflict(
                        "run %s is incomplete (%s%s); an incomplete run cannot become baseline"
                        % (
                            runID,
                            run.state,
                            ", %d events dropped" % (run.events_dropped,) if run.events_dropped else "",
                        )
                    )
                if not run.package_name:
                    raise Conflict("run %s has no package to baseline" % (runID,))
            if decision in ("promoted", "rejected"):
                conn.execute("UPDATE run_tenants SET decision = ? WHERE run_id = ? AND tenant = ?", (decision, runID, tenant))
                conn.execute("UPDATE runs SET decision = ? WHERE id = ? AND tenant = ?", (decision, runID, tenant))
            outcome = self._thd_analyzeInTransaction(conn, runID, nowNs, credPaths, tenant)
            conn.execute(
                "INSERT INTO audit (tenant, at_ns, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    tenant,
                    nowNs,
                    actor,
                    {"promoted": "promote", "rejected": "reject"}.get(decision, decision),
                    "run:" + runID,
                    json.dumps({"verdict": outcome.verdict, "deviations": outcome.deviations, "previous_decision": run.decision}),
                ),
            )
            return outcome

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
