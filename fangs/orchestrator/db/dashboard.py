"""
Read-side queries of the dashboard: summary, run and package tables,
the database browser.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from twisted.internet.defer import Deferred

from fangs.orchestrator.db.model import _TENANT_RUN_SELECT, _runRow, StoredEvent, Page, encodeToken, decodeToken


#: The runs one tenant sees (the first parameter), with its verdicts.
_TENANT_RUNS = (
    "(SELECT runs.id AS id, runs.package_name AS package_name, runs.version AS version, runs.state AS state,"
    " runs.created_ns AS created_ns, runs.events_dropped AS events_dropped, rt.verdict AS verdict,"
    " rt.decision AS decision, rt.max_severity AS max_severity"
    " FROM runs JOIN run_tenants rt ON rt.run_id = runs.id AND rt.tenant = ?) tr"
)


class DashboardComponent:
    """
    Read-side queries of the dashboard: summary, run and package tables,
    the database browser.
    """

    # -- dashboard queries --
    # Read-only queries of the web dashboard (fangs.orchestrator.ui).

    # Every figure is one tenant's: its linked runs with its verdicts.

    def dashboardSummary(self, sinceNs: int, tenant: str = "default") -> "Deferred[Dict[str, Any]]":
        """
        Overview figures: runs by verdict since C{sinceNs}, open reviews by
        severity, events dropped (since and ever), runs and packages.
        """
        return self._call(self._thd_dashboardSummary, sinceNs, tenant)

    def _thd_dashboardSummary(self, conn: Any, sinceNs: int, tenant: str = "default") -> Dict[str, Any]:
        byVerdict = {
            (v or "in progress"): n
            for v, n in conn.execute(
                "SELECT verdict, COUNT(*) FROM " + _TENANT_RUNS + " WHERE created_ns >= ? GROUP BY verdict", (tenant, sinceNs)
            )
        }
        pending = {
            (s or "none"): n
            for s, n in conn.execute(
                "SELECT max_severity, COUNT(*) FROM " + _TENANT_RUNS + " WHERE verdict = 'deviations' AND decision IS NULL"
                " GROUP BY max_severity",
                (tenant,),
            )
        }
        dropped, droppedRecent, total = conn.execute(
            "SELECT COALESCE(SUM(events_dropped), 0),"
            " COALESCE(SUM(CASE WHEN created_ns >= ? THEN events_dropped ELSE 0 END), 0), COUNT(*) FROM " + _TENANT_RUNS,
            (sinceNs, tenant),
        ).fetchone()
        return {
            "runs_by_verdict": byVerdict,
            "pending_by_severity": pending,
            "events_dropped": dropped,
            "events_dropped_recent": droppedRecent,
            "runs_total": total,
            "watched": conn.execute("SELECT COUNT(*) FROM packages WHERE tenant = ?", (tenant,)).fetchone()[0],
            "scanned_packages": conn.execute("SELECT COUNT(DISTINCT package_name) FROM " + _TENANT_RUNS, (tenant,)).fetchone()[0],
        }

    def dashboardRuns(
        self, package: Optional[str], verdict: Optional[str], state: Optional[str], pageSize: int, pageToken: Optional[str],
        tenant: str = "default",
    ) -> "Deferred[Page]":
        """
        Runs newest first, filtered by package, verdict (C{"none"} for runs
        not analysed yet) and state.

        @raise BadPageToken: C{pageToken} was not issued by this server.
        """
        after = decodeToken(pageToken, (int, str)) if pageToken else None
        return self._call(self._thd_dashboardRuns, package, verdict, state, pageSize, after, tenant)

    def _thd_dashboardRuns(
        self,
        conn: Any,
        package: Optional[str],
        verdict: Optional[str],
        state: Optional[str],
        pageSize: int,
        after: Optional[List[Any]],
        tenant: str = "default",
    ) -> Page:
        where: List[str] = []
        args: List[Any] = [tenant]
        if package:
            where.append("runs.package_name = ?")
            args.append(package)
        if verdict == "none":
            where.append("rt.verdict IS NULL")
        elif verdict:
            where.append("rt.verdict = ?")
            args.append(verdict)
        if state:
            where.append("runs.state = ?")
            args.append(state)
        if after is not None:
            where.append("(runs.created_ns < ? OR (runs.created_ns = ? AND runs.id < ?))")
            args.extend([after[0], after[0], after[1]])
        sql = _TENANT_RUN_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY runs.created_ns DESC, runs.id DESC LIMIT ?"
        args.append(pageSize + 1)
        rows = [_runRow(r) for r in conn.execute(sql, args)]
        token = None
        if len(rows) > pageSize:
            rows = rows[:pageSize]
            token = encodeToken([rows[-1].created_ns, rows[-1].id])
        return Page(rows, token)

    def dashboardPackages(self, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        """
        Every package that is watched or was scanned, with its run counts
        and its latest run.
        """

        def thd(conn: Any) -> List[Dict[str, Any]]:
            watched = {r[0]: r[1] for r in conn.execute("SELECT name, added_ns FROM packages WHERE tenant = ?", (tenant,))}
            out: Dict[str, Dict[str, Any]] = {}
            for name, runs, pending, latest in conn.execute(
                "SELECT package_name, COUNT(*),"
                " SUM(CASE WHEN verdict = 'deviations' AND decision IS NULL THEN 1 ELSE 0 END), MAX(created_ns)"
                " FROM " + _TENANT_RUNS + " WHERE package_name != '' GROUP BY package_name",
                (tenant,),
            ).fetchall():
                last = conn.execute(
                    "SELECT id, version, verdict FROM " + _TENANT_RUNS + " WHERE package_name = ? AND created_ns = ? LIMIT 1",
                    (tenant, name, latest),
                ).fetchone()
                out[name] = {"name": name, "runs": runs, "pending": pending, "latest_ns": latest,
                             "latest_run_id": last[0], "latest_version": last[1], "latest_verdict": last[2]}
            for name in watched:
                out.setdefault(name, {"name": name, "runs": 0, "pending": 0, "latest_ns": None,
                                      "latest_run_id": None, "latest_version": "", "latest_verdict": None})
            for name, p in out.items():
                p["watched"] = name in watched
            return [out[k] for k in sorted(out)]

        return self._call(thd)

    def eventsByID(self, ids: Sequence[int]) -> "Deferred[List[StoredEvent]]":
        ids = list(ids)[:500]

        def thd(conn: Any) -> List[StoredEvent]:
            if not ids:
                return []
            return [
                StoredEvent(*r)
                for r in conn.execute(
                    "SELECT id, run_id, seq, idx, type, ts_ns, received_ns, pid, data FROM events WHERE id IN (%s)"
                    % (",".join("?" * len(ids)),),
                    ids,
                )
            ]

        return self._call(thd)

    def tableRows(self, table: str, limit: int = 100, tenant: Optional[str] = None) -> "Deferred[Optional[List[Dict[str, Any]]]]":
        """
        Up to C{limit} rows of C{table}, newest first (SQLite's rowid order; PostgreSQL's numbered id), as
        dicts; C{None} when there is no such table (yet).  With C{tenant},
        only that tenant's rows of a table with a C{tenant} column.
        """
        return self._call(lambda conn: conn.engine.tableRows(conn, table, limit, tenant))

    def tableNames(self) -> "Deferred[List[str]]":
        return self._call(lambda conn: conn.engine.tableNames(conn))
