"""
Runs, which are also the job queue: create, claim and lease, dispatch,
cancel, results, listing and the sweeps that fail lost runs.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

from fangs.orchestrator.db.model import (
    PENDING,
    CANCELLED,
    ACTIVE_STATES,
    RESULT_STATES,
    NotFound,
    Conflict,
    NewRun,
    ResultLifecycle,
    RunRow,
    _RUN_SELECT,
    _TENANT_RUN_SELECT,
    _runRow,
    RunFilter,
    Page,
    encodeToken,
    decodeToken,
    checkIdempotency,
)
from fangs.orchestrator.db.connector import _transaction
from fangs.orchestrator.db.engines import JOBS_CHANNEL, READ_COMMITTED, SHARED_QUEUE


class RunsComponent:
    """
    Runs, which are also the job queue: create, claim and lease, dispatch,
    cancel, results, listing and the sweeps that fail lost runs.
    """

    # -- runs and the queue -------------------------------------------------

    def createRun(self, run: NewRun) -> "Deferred[Tuple[str, bool]]":
        """
        Insert a C{pending} run at the tail of the queue.

        @return: C{(run_id, created)}; with an idempotency key seen before, the
            earlier run's id and C{False}.
        @raise Conflict: the run id exists already.
        """
        return self._call(self._thd_createRun, run)

    def _thd_createRun(self, conn: Any, run: NewRun) -> Tuple[str, bool]:
        engine = conn.engine
        with _transaction(conn, READ_COMMITTED):
            try:
                row = conn.execute(
                    "INSERT INTO runs (id, package_name, version, kind, state, target_runner, job,"
                    " queue_seq, idempotency_key, idempotency_digest, created_ns, tenant)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?, %s, ?, ?, ?, ?)"
                    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id" % (engine.nextQueueSeq,),
                    (
                        run.id,
                        run.package_name,
                        run.version,
                        run.kind,
                        run.target_runner,
                        run.job,
                        run.idempotency_key,
                        run.idempotency_digest,
                        run.created_ns,
                        run.tenant,
                    ),
                ).fetchone()
            except engine.IntegrityError:
                raise Conflict("run %s exists already" % (run.id,)) from None
            if row is None:  # the idempotency key was used before
                found = conn.execute(
                    "SELECT id, idempotency_digest FROM runs WHERE idempotency_key = ?", (run.idempotency_key,)
                ).fetchone()
                checkIdempotency(found[1], run.idempotency_digest)
                return found[0], False
            conn.execute("INSERT INTO run_tenants (run_id, tenant, linked_ns) VALUES (?, ?, ?)", (run.id, run.tenant, run.created_ns))
            engine.notify(conn, JOBS_CHANNEL, run.target_runner or SHARED_QUEUE)
            return run.id, True

    def getRun(self, runID: str, tenant: Optional[str] = None) -> "Deferred[Optional[RunRow]]":
        """
        A run; with C{tenant}, as that tenant sees it (its own verdict,
        decision and counts), or None when the run is not linked to it.
        """
        return self._call(self._thd_getRun, runID, tenant)

    def _thd_getRun(self, conn: Any, runID: str, tenant: Optional[str] = None) -> Optional[RunRow]:
        if tenant is None:
            row = conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone()
        else:
            row = conn.execute(_TENANT_RUN_SELECT + " WHERE runs.id = ?", (tenant, runID)).fetchone()
        return None if row is None else _runRow(row)

    # -- tenants of a run (migration 60) --

    def linkRunTenant(self, runID: str, tenant: str, nowNs: int) -> "Deferred[bool]":
        """
        Link a run to one more tenant (a release it watches too was scanned
        already): the run's evidence becomes visible to it, to be judged
        against its own baseline.  False when it was linked already.
        """

        def thd(conn: Any) -> bool:
            with _transaction(conn):
                if conn.execute("SELECT 1 FROM run_tenants WHERE run_id = ? AND tenant = ?", (runID, tenant)).fetchone():
                    return False
                conn.execute("INSERT INTO run_tenants (run_id, tenant, linked_ns) VALUES (?, ?, ?)", (runID, tenant, nowNs))
                return True

        return self._call(thd)

    def runTenants(self, runID: str) -> "Deferred[List[str]]":
        """
        The tenants a run is linked to, its owner first.
        """
        return self._call(
            lambda conn: [
                r[0]
                for r in conn.execute(
                    "SELECT rt.tenant FROM run_tenants rt JOIN runs ON runs.id = rt.run_id WHERE rt.run_id = ?"
                    " ORDER BY CASE WHEN rt.tenant = runs.tenant THEN 0 ELSE 1 END, rt.tenant",
                    (runID,),
                )
            ]
        )

    def artifactVisible(self, sha512: str, tenant: str) -> "Deferred[bool]":
        """
        Whether one of C{tenant}'s runs references the artifact (a tarball is
        served only to a tenant that scanned it).
        """
        return self._call(
            lambda conn: conn.execute(
                "SELECT 1 FROM run_artifacts ra JOIN run_tenants rt ON rt.run_id = ra.run_id AND rt.tenant = ?"
                " WHERE ra.sha512 = ? LIMIT 1",
                (tenant, sha512),
            ).fetchone()
            is not None
        )

    def sharedScanCandidates(self, package: str, version: str, kind: str, tenant: str) -> "Deferred[List[Tuple[str, str]]]":
        """
        C{(run_id, job)} of the runs of C{package@version} another tenant
        queued that are queued, running or finished well and not linked to
        C{tenant} yet, newest first: a scan C{tenant} asks for may be one of
        them (the caller compares the jobs).
        """
        return self._call(
            lambda conn: [
                (r[0], r[1])
                for r in conn.execute(
                    "SELECT id, job FROM runs WHERE package_name = ? AND version = ? AND kind = ? AND tenant != ?"
                    " AND state NOT IN ('failed', 'cancelled') AND cancel_requested = 0"
                    " AND (result_status IS NULL OR result_status = 'ok')"
                    " AND NOT EXISTS (SELECT 1 FROM run_tenants rt WHERE rt.run_id = runs.id AND rt.tenant = ?)"
                    " ORDER BY created_ns DESC LIMIT 20",
                    (package, version, kind, tenant, tenant),
                )
            ]
        )

    def queueDepthByTenant(self) -> "Deferred[Dict[str, int]]":
        """
        Jobs waiting for a runner, by tenant (a shared one counts for each).
        """
        return self._call(
            lambda conn: dict(
                conn.execute(
                    "SELECT rt.tenant, COUNT(*) FROM runs JOIN run_tenants rt ON rt.run_id = runs.id"
                    " WHERE runs.state = 'pending' GROUP BY rt.tenant"
                ).fetchall()
            )
        )

    def claimJob(self, runnerID: str) -> "Deferred[Optional[Tuple[str, str]]]":
        """
        Lease the oldest pending job this runner may take (its own or one from
        the shared queue).  The lease becomes a dispatch with L{confirmDispatch}
        once the job reached the runner, or goes back with L{releaseLease}.

        @return: C{(run_id, job_json)} or None.
        """
        return self._call(self._thd_claimJob, runnerID)

    def _thd_claimJob(self, conn: Any, runnerID: str) -> Optional[Tuple[str, str]]:
        with _transaction(conn):
            row = conn.execute(
                "SELECT id, job FROM runs WHERE state = 'pending'"
                " AND (target_runner = ? OR target_runner IS NULL)"
                " ORDER BY queue_seq LIMIT 1",
                (runnerID,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE runs SET state = 'leased', runner_id = ? WHERE id = ?", (runnerID, row[0]))
            return row[0], row[1]

    def confirmDispatch(self, runID: str, nowNs: int, deadlineNs: int) -> "Deferred[bool]":
        return self._call(self._thd_confirmDispatch, runID, nowNs, deadlineNs)

    def _thd_confirmDispatch(self, conn: Any, runID: str, nowNs: int, deadlineNs: int) -> bool:
        # One conditional statement: atomic without a transaction of its own.
        cur = conn.execute(
            "UPDATE runs SET state = 'dispatched', dispatched_ns = ?, last_activity_ns = ?,"
            " deadline_ns = ? WHERE id = ? AND state = 'leased'",
            (nowNs, nowNs, deadlineNs, runID),
        )
        return cur.rowcount == 1

    def releaseLease(self, runID: str) -> "Deferred[bool]":
        """
        Put a leased job back where it was in the queue (its position is kept,
        so it is at the head again).
        """
        return self._call(self._thd_releaseLease, runID)

    def _thd_releaseLease(self, conn: Any, runID: str) -> bool:
        with _transaction(conn):
            cur = conn.execute(
                "UPDATE runs SET state = 'pending', runner_id = NULL WHERE id = ? AND state = 'leased'",
                (runID,),
            )
            return cur.rowcount == 1

    def requeueLeased(self) -> "Deferred[int]":
        """
        At start-up: leases of a previous process were never confirmed, so
        their jobs go back to the queue.
        """
        return self._call(self._thd_requeueLeased)

    def _thd_requeueLeased(self, conn: Any) -> int:
        with _transaction(conn):
            return conn.execute(
                "UPDATE runs SET state = 'pending', runner_id = NULL WHERE state = 'leased'"
            ).rowcount

    def queueDepth(self) -> "Deferred[int]":
        return self._call(
            lambda conn: conn.execute("SELECT COUNT(*) FROM runs WHERE state = 'pending'").fetchone()[0]
        )

    def pendingTargets(self) -> "Deferred[List[Optional[str]]]":
        """
        The distinct targets of pending jobs (None for the shared queue).
        """
        return self._call(
            lambda conn: [
                r[0] for r in conn.execute("SELECT DISTINCT target_runner FROM runs WHERE state = 'pending'")
            ]
        )

    def cancelRun(self, runID: str, nowNs: int) -> "Deferred[RunRow]":
        """
        Withdraw a queued run, or ask the runner of an active one to stop.
        Idempotent: a terminal run is returned unchanged.

        @raise NotFound: no such run.
        """
        return self._call(self._thd_cancelRun, runID, nowNs)

    def _thd_cancelRun(self, conn: Any, runID: str, nowNs: int) -> RunRow:
        with _transaction(conn):
            row = conn.execute("SELECT state FROM runs WHERE id = ?", (runID,)).fetchone()
            if row is None:
                raise NotFound("run %s not found" % (runID,))
            if row[0] == PENDING:
                conn.execute(
                    "UPDATE runs SET state = 'cancelled', finished_ns = ?, cancel_requested = 1,"
                    " failure_reason = 'cancelled by operator before dispatch' WHERE id = ?",
                    (nowNs, runID),
                )
            elif row[0] in ACTIVE_STATES:
                conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (runID,))
            return _runRow(conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone())

    def runsToCancel(self, runnerID: str) -> "Deferred[List[str]]":
        return self._call(
            lambda conn: [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM runs WHERE runner_id = ? AND cancel_requested = 1"
                    " AND state IN ('leased', 'dispatched', 'running') ORDER BY id",
                    (runnerID,),
                )
            ]
        )

    def sweepLost(self, nowNs: int) -> "Deferred[List[str]]":
        """
        Fail every dispatched run whose runner went quiet past its deadline.
        """
        return self._call(self._thd_sweepLost, nowNs)

    def _thd_sweepLost(self, conn: Any, nowNs: int) -> List[str]:
        # One UPDATE: of two orchestrators sweeping at once (PostgreSQL),
        # each run is failed (and so analysed) by exactly one of them.
        with _transaction(conn, READ_COMMITTED):
            self._thd_requeueStaleLeases(conn)
            return sorted(
                r[0]
                for r in conn.execute(
                    "UPDATE runs SET state = 'failed', failure_reason = 'runner lost', finished_ns = ?"
                    " WHERE state IN ('dispatched', 'running') AND deadline_ns < ? RETURNING id",
                    (nowNs, nowNs),
                ).fetchall()
            )

    def _thd_requeueStaleLeases(self, conn: Any) -> int:
        """
        Put back leases whose orchestrator died before confirming them.  One
        SQLite orchestrator's leases are its own and alive (a restart puts
        them back, L{requeueLeased}); PostgreSQL's stores override this.
        """
        return 0

    # -- results ---------------------------------------------------------------

    def recordResult(
        self,
        runID: str,
        status: str,
        reason: str,
        eventsEmitted: int,
        eventsDropped: int,
        durationNs: int,
        nowNs: int,
        lifecycle: Optional["ResultLifecycle"] = None,
    ) -> "Deferred[Tuple[RunRow, bool]]":
        """
        Record the runner's final result.  The first result wins; a repeated
        one changes nothing.  A real result replaces the sweeper's guess
        (C{runner lost}).

        @return: C{(run, changed)}.
        @raise NotFound: no such run.
        """
        return self._call(
            self._thd_recordResult, runID, status, reason, eventsEmitted, eventsDropped, durationNs, nowNs,
            lifecycle or ResultLifecycle(),
        )

    def _thd_recordResult(
        self,
        conn: Any,
        runID: str,
        status: str,
        reason: str,
        eventsEmitted: int,
        eventsDropped: int,
        durationNs: int,
        nowNs: int,
        lifecycle: Optional["ResultLifecycle"] = None,
    ) -> Tuple[RunRow, bool]:
        life = lifecycle or ResultLifecycle()
        # One statement, no explicit transaction: the first result wins by
        # the UPDATE's own condition (atomic on either engine, and on
        # PostgreSQL no SERIALIZABLE transaction for analyses of the same
        # package to conflict with).
        cur = conn.execute(
            "UPDATE runs SET state = CASE WHEN cancel_requested = 1 THEN ? ELSE ? END, result_status = ?,"
            " failure_reason = ?, events_emitted = ?, events_dropped = ?, duration_ns = ?, finished_ns = ?,"
            " install_exit_code = ?, install_finished_ns = ?, observation_ended_ns = ?, events_unresolved = ?"
            " WHERE id = ? AND result_status IS NULL AND state != ?",
            (CANCELLED, RESULT_STATES[status], status, reason, eventsEmitted, eventsDropped, durationNs, nowNs,
             life.install_exit_code, life.install_finished_ns, life.observation_ended_ns, life.events_unresolved,
             runID, CANCELLED),
        )
        changed = cur.rowcount == 1
        row = conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone()
        if row is None:
            raise NotFound("run %s not found" % (runID,))
        return _runRow(row), changed

    # -- listing ---------------------------------------------------------------

    def listRuns(self, filter: RunFilter, pageSize: int, pageToken: Optional[str]) -> "Deferred[Page]":
        """
        Runs newest first (creation time, then id, both descending).

        @raise BadPageToken: C{pageToken} was not issued by this server.
        """
        after = decodeToken(pageToken, (int, str)) if pageToken else None
        return self._call(self._thd_listRuns, filter, pageSize, after)

    def _thd_listRuns(
        self, conn: Any, filter: RunFilter, pageSize: int, after: Optional[List[Any]]
    ) -> Page:
        where: List[str] = []
        args: List[Any] = []
        if filter.package is not None:
            where.append("package_name = ?")
            args.append(filter.package)
        if filter.state is not None:
            where.append("state = ?")
            args.append(filter.state)
        if filter.since_ns is not None:
            where.append("created_ns >= ?")
            args.append(filter.since_ns)
        if filter.until_ns is not None:
            where.append("created_ns < ?")
            args.append(filter.until_ns)
        if after is not None:
            where.append("(created_ns < ? OR (created_ns = ? AND id < ?))")
            args.extend([after[0], after[0], after[1]])
        sql = _RUN_SELECT
        if filter.tenant is not None:
            sql = _TENANT_RUN_SELECT
            args.insert(0, filter.tenant)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_ns DESC, id DESC LIMIT ?"
        args.append(pageSize + 1)
        rows = [_runRow(r) for r in conn.execute(sql, args)]
        token = None
        if len(rows) > pageSize:
            rows = rows[:pageSize]
            token = encodeToken([rows[-1].created_ns, rows[-1].id])
        return Page(rows, token)

    # -- runner lost via heartbeat --
    # A runner's heartbeat lists the runs it has; a run dispatched to it a
    # while ago and missing from the list was lost (the runner restarted),
    # so it fails now instead of at its deadline.

    def failRunsMissingFromHeartbeat(
        self, runnerID: str, activeRunIDs: Sequence[str], dispatchedBeforeNs: int, nowNs: int
    ) -> "Deferred[List[str]]":
        """
        Fail (C{runner lost}) every run in C{dispatched} or C{running} state on
        C{runnerID}, dispatched before C{dispatchedBeforeNs}, whose id is not
        in C{activeRunIDs}; returns their ids.
        """
        return self._call(self._thd_failRunsMissingFromHeartbeat, runnerID, list(activeRunIDs), dispatchedBeforeNs, nowNs)

    def _thd_failRunsMissingFromHeartbeat(
        self, conn: Any, runnerID: str, activeRunIDs: List[str], dispatchedBeforeNs: int, nowNs: int
    ) -> List[str]:
        active = set(activeRunIDs)
        with _transaction(conn):
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM runs WHERE runner_id = ? AND state IN ('dispatched', 'running')"
                    " AND dispatched_ns < ? ORDER BY id",
                    (runnerID, dispatchedBeforeNs),
                )
                if r[0] not in active
            ]
            for runID in ids:
                conn.execute(
                    "UPDATE runs SET state = 'failed', failure_reason = 'runner lost', finished_ns = ?"
                    " WHERE id = ? AND state IN ('dispatched', 'running')",
                    (nowNs, runID),
                )
            return ids
