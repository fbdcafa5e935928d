"""
Durable storage of the orchestrator: runs (which are also the job queue),
event batches and events.

L{SQLiteStore} is the default backend.  Every method is C{async} and does its
work in a C{_thd_*} function on the store's own single thread (SQLite
connections belong to one thread), so nothing blocks the reactor.  Tests pass
a synchronous C{runInThread} and use the same code on an in-memory database.

Timestamps are integer nanoseconds since the epoch, so ordering is exact.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()

# Run states.  A run is also its job: while C{pending} it waits in the queue.
PENDING = "pending"  # queued, not yet handed to a runner
LEASED = "leased"  # handed to a long-poll whose response is being written
DISPATCHED = "dispatched"  # the runner has it
RUNNING = "running"  # events are arriving
DONE = "done"  # result ok
FAILED = "failed"  # result failed, or the runner was lost
TIMEOUT = "timeout"  # result timeout
CANCELLED = "cancelled"  # withdrawn or stopped by an operator

QUEUED_STATES = (PENDING, LEASED)
ACTIVE_STATES = (LEASED, DISPATCHED, RUNNING)
TERMINAL_STATES = (DONE, FAILED, TIMEOUT, CANCELLED)
ALL_STATES = (PENDING, LEASED, DISPATCHED, RUNNING, DONE, FAILED, TIMEOUT, CANCELLED)

RESULT_STATES = {"ok": DONE, "failed": FAILED, "timeout": TIMEOUT}


class StoreError(Exception):
    """
    A storage operation failed for a reason a caller can act on.
    """


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


@attrs.frozen
class NewRun:
    id: str
    package_name: str
    version: str
    kind: str
    target_runner: Optional[str]
    job: str  # the Job as wire JSON
    created_ns: int
    idempotency_key: Optional[str] = None


@attrs.frozen
class RunRow:
    id: str
    package_name: str
    version: str
    kind: str
    state: str
    target_runner: Optional[str]
    runner_id: Optional[str]
    job: str
    created_ns: int
    dispatched_ns: Optional[int]
    last_activity_ns: Optional[int]
    deadline_ns: Optional[int]
    finished_ns: Optional[int]
    cancel_requested: bool
    result_status: Optional[str]
    failure_reason: str
    events_emitted: int
    events_dropped: int
    duration_ns: int
    events_received: int
    batches_received: int
    verdict: Optional[str]


_RUN_COLUMNS = [f.name for f in attrs.fields(RunRow)]
_RUN_SELECT = "SELECT " + ", ".join(_RUN_COLUMNS) + " FROM runs"


def _runRow(row: Sequence[Any]) -> RunRow:
    values = dict(zip(_RUN_COLUMNS, row))
    values["cancel_requested"] = bool(values["cancel_requested"])
    return RunRow(**values)


@attrs.frozen
class EventRow:
    """
    One event as stored: C{data} is the payload's JSON text exactly as it
    will be exported.
    """

    seq: int
    idx: int
    type: int
    ts_ns: int
    pid: int
    data: str


@attrs.frozen
class StoredEvent:
    id: int
    run_id: str
    seq: int
    idx: int
    type: int
    ts_ns: int
    received_ns: int
    pid: int
    data: str


@attrs.frozen
class IngestOutcome:
    inserted: bool  # False when the batch was a duplicate
    events: int


@attrs.frozen
class RunFilter:
    package: Optional[str] = None
    state: Optional[str] = None
    since_ns: Optional[int] = None
    until_ns: Optional[int] = None


@attrs.frozen
class Page:
    items: List[Any]
    next_token: Optional[str]


class BadPageToken(StoreError):
    pass


def encodeToken(values: Sequence[Any]) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decodeToken(token: str, shape: Sequence[type]) -> List[Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError):
        raise BadPageToken("page_token is not a token this server issued") from None
    if not isinstance(values, list) or len(values) != len(shape):
        raise BadPageToken("page_token is not a token this server issued")
    for v, t in zip(values, shape):
        if not isinstance(v, t) or isinstance(v, bool):
            raise BadPageToken("page_token is not a token this server issued")
    return values


# ---------------------------------------------------------------------------
# Schema

MIGRATIONS: List[Tuple[int, str, str]] = [
    (
        1,
        "core",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            package_name TEXT NOT NULL DEFAULT '',
            version TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            target_runner TEXT,
            runner_id TEXT,
            job TEXT NOT NULL,
            queue_seq INTEGER NOT NULL,
            idempotency_key TEXT UNIQUE,
            created_ns INTEGER NOT NULL,
            dispatched_ns INTEGER,
            last_activity_ns INTEGER,
            deadline_ns INTEGER,
            finished_ns INTEGER,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            result_status TEXT,
            failure_reason TEXT NOT NULL DEFAULT '',
            events_emitted INTEGER NOT NULL DEFAULT 0,
            events_dropped INTEGER NOT NULL DEFAULT 0,
            duration_ns INTEGER NOT NULL DEFAULT 0,
            events_received INTEGER NOT NULL DEFAULT 0,
            batches_received INTEGER NOT NULL DEFAULT 0,
            verdict TEXT
        );
        CREATE INDEX runs_queue ON runs(queue_seq) WHERE state IN ('pending', 'leased');
        CREATE INDEX runs_by_created ON runs(created_ns, id);
        CREATE INDEX runs_by_package ON runs(package_name, created_ns);
        CREATE INDEX runs_active ON runs(state, deadline_ns)
            WHERE state IN ('leased', 'dispatched', 'running');
        CREATE TABLE batches (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            events INTEGER NOT NULL,
            received_ns INTEGER NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            type INTEGER NOT NULL,
            ts_ns INTEGER NOT NULL,
            received_ns INTEGER NOT NULL,
            pid INTEGER NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX events_by_run ON events(run_id, seq, idx);
        """,
    ),
]


class SQLiteStore:
    """
    SQLite backend: WAL, foreign keys, versioned migrations, one connection on
    one dedicated thread.

    @param runInThread: how C{_thd_*} functions run; defaults to the store's
        own one-thread pool.  Tests pass a synchronous function.
    """

    backend = "sqlite"

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        runInThread: Optional[Callable[..., Deferred]] = None,
    ) -> None:
        self._path = path
        self._reactor = reactor
        self._conn: Optional[sqlite3.Connection] = None
        self._pool: Optional[ThreadPool] = None
        if runInThread is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="fangs-sqlite")
            runInThread = self._deferToPool
        self._runInThread = runInThread

    # -- lifecycle ---------------------------------------------------------

    def _deferToPool(self, f: Callable[..., Any], *args: Any) -> Deferred:
        assert self._pool is not None
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _call(self, f: Callable[..., Any], *args: Any) -> Deferred:
        def inThread() -> Any:
            if self._conn is None:
                self._conn = self._connect()
            return f(self._conn, *args)

        return self._runInThread(inThread)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def start(self) -> None:
        """
        Start the store's thread, open the database and apply migrations.
        """
        if self._pool is not None and not self._pool.started:
            self._pool.start()
        await self._call(self._thd_migrate)

    def stop(self) -> None:
        if self._pool is not None and self._pool.started:
            self._runInThread(self._thd_close)
            self._pool.stop()
        elif self._conn is not None:
            self._conn.close()
            self._conn = None

    def _thd_close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _thd_migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns INTEGER NOT NULL)"
        )
        applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in MIGRATIONS:
            if version in applied:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, CAST(strftime('%s','now') AS INTEGER) * 1000000000)",
                    (version, name),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            log.info("applied migration {version} {name}", version=version, name=name)

    # -- runs and the queue -------------------------------------------------

    def createRun(self, run: NewRun) -> "Deferred[Tuple[str, bool]]":
        """
        Insert a C{pending} run at the tail of the queue.

        @return: C{(run_id, created)}; with an idempotency key seen before, the
            earlier run's id and C{False}.
        @raise Conflict: the run id exists already.
        """
        return self._call(self._thd_createRun, run)

    def _thd_createRun(self, conn: sqlite3.Connection, run: NewRun) -> Tuple[str, bool]:
        with _transaction(conn):
            if run.idempotency_key is not None:
                row = conn.execute(
                    "SELECT id FROM runs WHERE idempotency_key = ?", (run.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return row[0], False
            try:
                conn.execute(
                    "INSERT INTO runs (id, package_name, version, kind, state, target_runner, job,"
                    " queue_seq, idempotency_key, created_ns)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?,"
                    " (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs), ?, ?)",
                    (
                        run.id,
                        run.package_name,
                        run.version,
                        run.kind,
                        run.target_runner,
                        run.job,
                        run.idempotency_key,
                        run.created_ns,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict("run %s exists already" % (run.id,)) from None
            return run.id, True

    def getRun(self, runID: str) -> "Deferred[Optional[RunRow]]":
        return self._call(self._thd_getRun, runID)

    def _thd_getRun(self, conn: sqlite3.Connection, runID: str) -> Optional[RunRow]:
        row = conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone()
        return None if row is None else _runRow(row)

    def claimJob(self, runnerID: str) -> "Deferred[Optional[Tuple[str, str]]]":
        """
        Lease the oldest pending job this runner may take (its own or one from
        the shared queue).  The lease becomes a dispatch with L{confirmDispatch}
        once the job reached the runner, or goes back with L{releaseLease}.

        @return: C{(run_id, job_json)} or None.
        """
        return self._call(self._thd_claimJob, runnerID)

    def _thd_claimJob(self, conn: sqlite3.Connection, runnerID: str) -> Optional[Tuple[str, str]]:
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

    def _thd_confirmDispatch(self, conn: sqlite3.Connection, runID: str, nowNs: int, deadlineNs: int) -> bool:
        with _transaction(conn):
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

    def _thd_releaseLease(self, conn: sqlite3.Connection, runID: str) -> bool:
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

    def _thd_requeueLeased(self, conn: sqlite3.Connection) -> int:
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

    def _thd_cancelRun(self, conn: sqlite3.Connection, runID: str, nowNs: int) -> RunRow:
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

    def _thd_sweepLost(self, conn: sqlite3.Connection, nowNs: int) -> List[str]:
        with _transaction(conn):
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM runs WHERE state IN ('dispatched', 'running') AND deadline_ns < ?",
                    (nowNs,),
                )
            ]
            for runID in ids:
                conn.execute(
                    "UPDATE runs SET state = 'failed', failure_reason = 'runner lost',"
                    " finished_ns = ? WHERE id = ?",
                    (nowNs, runID),
                )
            return ids

    # -- events --------------------------------------------------------------

    def ingestBatch(
        self, runID: str, seq: int, rows: Sequence[EventRow], nowNs: int, deadlineNs: int
    ) -> "Deferred[IngestOutcome]":
        """
        Store one batch in one transaction.  A batch already stored (same run
        and C{seq}) is ignored, so a runner may resend safely.
        """
        return self._call(self._thd_ingestBatch, runID, seq, rows, nowNs, deadlineNs)

    def _thd_ingestBatch(
        self,
        conn: sqlite3.Connection,
        runID: str,
        seq: int,
        rows: Sequence[EventRow],
        nowNs: int,
        deadlineNs: int,
    ) -> IngestOutcome:
        with _transaction(conn):
            cur = conn.execute(
                "INSERT OR IGNORE INTO batches (run_id, seq, events, received_ns) VALUES (?, ?, ?, ?)",
                (runID, seq, len(rows), nowNs),
            )
            if cur.rowcount == 0:
                return IngestOutcome(False, 0)
            conn.executemany(
                "INSERT INTO events (run_id, seq, idx, type, ts_ns, received_ns, pid, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(runID, r.seq, r.idx, r.type, r.ts_ns, nowNs, r.pid, r.data) for r in rows],
            )
            conn.execute(
                "UPDATE runs SET events_received = events_received + ?,"
                " batches_received = batches_received + 1, last_activity_ns = ?,"
                " deadline_ns = MAX(COALESCE(deadline_ns, 0), ?),"
                " state = CASE WHEN state = 'dispatched' THEN 'running' ELSE state END"
                " WHERE id = ?",
                (len(rows), nowNs, deadlineNs, runID),
            )
            return IngestOutcome(True, len(rows))

    def eventPage(
        self, runID: str, after: Tuple[int, int], limit: int, eventType: Optional[int] = None
    ) -> "Deferred[List[StoredEvent]]":
        """
        Events of a run in stable order (C{seq}, C{idx}) after the position
        C{after}.
        """
        return self._call(self._thd_eventPage, runID, after, limit, eventType)

    def _thd_eventPage(
        self,
        conn: sqlite3.Connection,
        runID: str,
        after: Tuple[int, int],
        limit: int,
        eventType: Optional[int],
    ) -> List[StoredEvent]:
        sql = (
            "SELECT id, run_id, seq, idx, type, ts_ns, received_ns, pid, data FROM events"
            " WHERE run_id = ? AND (seq > ? OR (seq = ? AND idx > ?))"
        )
        args: List[Any] = [runID, after[0], after[0], after[1]]
        if eventType is not None:
            sql += " AND type = ?"
            args.append(eventType)
        sql += " ORDER BY seq, idx LIMIT ?"
        args.append(limit)
        return [StoredEvent(*r) for r in conn.execute(sql, args)]

    def eventCounts(self, runID: str) -> "Deferred[Dict[int, int]]":
        return self._call(
            lambda conn: {
                t: n
                for t, n in conn.execute(
                    "SELECT type, COUNT(*) FROM events WHERE run_id = ? GROUP BY type", (runID,)
                )
            }
        )

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
    ) -> "Deferred[Tuple[RunRow, bool]]":
        """
        Record the runner's final result.  The first result wins; a repeated
        one changes nothing.  A real result replaces the sweeper's guess
        (C{runner lost}).

        @return: C{(run, changed)}.
        @raise NotFound: no such run.
        """
        return self._call(
            self._thd_recordResult, runID, status, reason, eventsEmitted, eventsDropped, durationNs, nowNs
        )

    def _thd_recordResult(
        self,
        conn: sqlite3.Connection,
        runID: str,
        status: str,
        reason: str,
        eventsEmitted: int,
        eventsDropped: int,
        durationNs: int,
        nowNs: int,
    ) -> Tuple[RunRow, bool]:
        with _transaction(conn):
            row = conn.execute(
                "SELECT result_status, cancel_requested, state FROM runs WHERE id = ?", (runID,)
            ).fetchone()
            if row is None:
                raise NotFound("run %s not found" % (runID,))
            changed = row[0] is None and row[2] != CANCELLED
            if changed:
                state = CANCELLED if row[1] else RESULT_STATES[status]
                conn.execute(
                    "UPDATE runs SET state = ?, result_status = ?, failure_reason = ?,"
                    " events_emitted = ?, events_dropped = ?, duration_ns = ?, finished_ns = ?"
                    " WHERE id = ?",
                    (state, status, reason, eventsEmitted, eventsDropped, durationNs, nowNs, runID),
                )
            return _runRow(conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone()), changed

    # -- listing ---------------------------------------------------------------

    def listRuns(self, filter: RunFilter, pageSize: int, pageToken: Optional[str]) -> "Deferred[Page]":
        """
        Runs newest first (creation time, then id, both descending).

        @raise BadPageToken: C{pageToken} was not issued by this server.
        """
        after = decodeToken(pageToken, (int, str)) if pageToken else None
        return self._call(self._thd_listRuns, filter, pageSize, after)

    def _thd_listRuns(
        self, conn: sqlite3.Connection, filter: RunFilter, pageSize: int, after: Optional[List[Any]]
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


def _statements(sql: str) -> Iterable[str]:
    for part in sql.split(";"):
        if part.strip():
            yield part


class _transaction:
    """
    C{BEGIN IMMEDIATE} ... C{COMMIT}, rolled back on any exception.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, excType: Any, exc: Any, tb: Any) -> None:
        if excType is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")


def synchronousRunner(f: Callable[..., Any], *args: Any) -> Deferred:
    """
    Run a C{_thd_*} function at once on the calling thread: for tests.
    """
    return maybeDeferred(f, *args)
