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
import hashlib
import hmac
import json
import sqlite3
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from fangs.orchestrator import artifactdb, differ, streamdb
from fangs.orchestrator.allowlist import AllowEntry, Allowlist, ConfigSync, planConfigSync

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


class IdempotencyMismatch(StoreError):
    """
    An idempotency key the same caller used before with a different body.
    """


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
    #: SHA-256 of the request body the key was first used with.
    idempotency_digest: str = ""


@attrs.frozen
class ResultLifecycle:
    """
    The optional lifecycle part of a runner's result (migration 7).
    """

    install_exit_code: Optional[int] = None
    install_finished_ns: Optional[int] = None
    observation_ended_ns: Optional[int] = None
    events_unresolved: int = 0


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
    decision: Optional[str] = None
    analyzed_ns: Optional[int] = None
    deviation_count: int = 0
    max_severity: Optional[str] = None
    #: From the runner's result (migration 7): the install's own exit status,
    #: when it finished, when observation of its processes ended, and how
    #: many file accesses the sensor could not resolve.
    install_exit_code: Optional[int] = None
    install_finished_ns: Optional[int] = None
    observation_ended_ns: Optional[int] = None
    events_unresolved: int = 0
    #: Why the differ held a first run or called a run incomplete.
    analysis_reason: str = ""


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
    #: The decoded payload, for fingerprint extraction (not stored as such).
    payload: Any = attrs.field(default=None, eq=False, repr=False)


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


@attrs.frozen
class AnalysisOutcome:
    run_id: str
    package_name: str
    verdict: str
    deviations: int
    max_severity: Optional[str]
    #: Whether the verdict, deviation count or severity changed (a repeated
    #: analysis of the same data changes nothing and notifies nobody).
    changed: bool


@attrs.frozen
class DeviationRow:
    id: str
    run_id: str
    package_name: str
    category: str
    value: str
    severity: str
    severity_rank: int
    reason: str
    evidence_event_id: int
    count: int
    detected_ns: int
    #: The actor class (C{npm}, C{script}, C{other}, or C{registry} for a
    #: manifest delta) and, as JSON, the actor: label, package, version,
    #: phase, pid, argv.
    actor: str = ""
    detail: str = "{}"

    @property
    def actorDetail(self) -> Dict[str, Any]:
        try:
            found = json.loads(self.detail or "{}")
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}


_DEVIATION_SELECT = (
    "SELECT id, run_id, package_name, category, value, severity, severity_rank, reason,"
    " evidence_event_id, count, detected_ns, actor, detail FROM deviations"
)


@attrs.frozen
class DeviationFilter:
    package: Optional[str] = None
    min_severity_rank: int = 0
    run_id: Optional[str] = None
    since_ns: Optional[int] = None


def _jsonList(text: Any) -> List[Any]:
    try:
        found = json.loads(text or "[]")
    except ValueError:
        return []
    return found if isinstance(found, list) else []


def _actorLabel(actor: str, detail: str) -> str:
    """
    The actor label of a stored deviation (C{script:pkg@1.0.0:postinstall},
    C{npm}, C{other}, C{registry}); C{""} for rows from before actors.
    """
    try:
        found = json.loads(detail or "{}")
    except ValueError:
        found = {}
    label = found.get("label") if isinstance(found, dict) else None
    return label if isinstance(label, str) and label else actor


def deviationID(runID: str, category: str, value: str, actor: str = "") -> str:
    """
    Deterministic, so a re-analysis yields the same ids.
    """
    key = "%s|%s|%s" % (runID, category, value) + ("|" + actor if actor else "")
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


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
        if isinstance(v, int) and not -(2**63) <= v < 2**63:
            raise BadPageToken("page_token is not a token this server issued")
        if isinstance(v, str) and (len(v) > 256 or not _encodable(v)):
            raise BadPageToken("page_token is not a token this server issued")
    return values


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checkIdempotency(stored: str, given: str) -> None:
    """
    A repeated idempotency key must come with the body it was first used
    with (an empty digest is a row from before digests were kept, or the
    watcher, which never sends a body).

    @raise IdempotencyMismatch: the bodies differ.
    """
    if stored and given and not hmac.compare_digest(stored, given):
        raise IdempotencyMismatch("Idempotency-Key was used before with a different request body")


# ---------------------------------------------------------------------------
# Schema

#: The differ's migration (baselines keyed by actor class, deviations naming
#: their actor, release manifests and their deltas).  Existing baseline rows
#: are kept, run by run (history and promoted decisions stay): each becomes
#: an C{npm} row, and a C{script} and an C{other} row too unless it is a
#: credential path (so "an install script read /root/.npmrc" is new even
#: where the old baseline had npm's own read of it).
ACTORS_MIGRATION = 9


def _credCondition() -> str:
    parts = []
    for p in differ.DEFAULT_CRED_PATHS:
        if p.endswith("/"):
            parts.append("value LIKE '%s%%'" % (p.replace("'", "''"),))
        else:
            parts.append("value = '%s'" % (p.replace("'", "''"),))
    return "(category IN ('fs_new_path_read', 'fs_new_path_write') AND (%s))" % (" OR ".join(parts),)


def actorsMigration(text: str = "TEXT", withoutRowID: str = " WITHOUT ROWID") -> str:
    cred = _credCondition()
    return """
        CREATE TABLE baseline_actors (
            package_name {T} NOT NULL,
            category {T} NOT NULL,
            value {T} NOT NULL,
            actor {T} NOT NULL,
            run_id {T} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            count INTEGER NOT NULL,
            added_ns BIGINT NOT NULL,
            PRIMARY KEY (package_name, category, value, actor, run_id)
        ){W};
        INSERT INTO baseline_actors SELECT package_name, category, value, 'npm', run_id, count, added_ns FROM baseline;
        INSERT INTO baseline_actors SELECT package_name, category, value, 'script', run_id, count, added_ns FROM baseline WHERE NOT {C};
        INSERT INTO baseline_actors SELECT package_name, category, value, 'other', run_id, count, added_ns FROM baseline WHERE NOT {C};
        DROP TABLE baseline;
        ALTER TABLE baseline_actors RENAME TO baseline;
        CREATE INDEX baseline_by_run ON baseline(run_id);
        ALTER TABLE deviations ADD COLUMN actor {T} NOT NULL DEFAULT '';
        ALTER TABLE deviations ADD COLUMN detail {T} NOT NULL DEFAULT '{{}}';
        ALTER TABLE runs ADD COLUMN analysis_reason {T} NOT NULL DEFAULT '';
        ALTER TABLE releases ADD COLUMN manifest {T} NOT NULL DEFAULT '';
        ALTER TABLE releases ADD COLUMN deltas {T} NOT NULL DEFAULT '[]'
    """.format(T=text, W=withoutRowID, C=cred)

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
    (
        2,
        "differ",
        """
        ALTER TABLE runs ADD COLUMN decision TEXT;
        ALTER TABLE runs ADD COLUMN analyzed_ns INTEGER;
        ALTER TABLE runs ADD COLUMN deviation_count INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN max_severity TEXT;
        ALTER TABLE runs ADD COLUMN severity_rank INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX runs_pending ON runs(severity_rank, finished_ns) WHERE verdict = 'deviations' AND decision IS NULL;
        CREATE TABLE run_fingerprints (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            count INTEGER NOT NULL,
            first_event_id INTEGER NOT NULL,
            cred INTEGER NOT NULL DEFAULT 0,
            raw_ip INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, category, value)
        ) WITHOUT ROWID;
        CREATE TABLE baseline (
            package_name TEXT NOT NULL,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            count INTEGER NOT NULL,
            added_ns INTEGER NOT NULL,
            PRIMARY KEY (package_name, category, value, run_id)
        ) WITHOUT ROWID;
        CREATE INDEX baseline_by_run ON baseline(run_id);
        CREATE TABLE deviations (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            package_name TEXT NOT NULL,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            severity TEXT NOT NULL,
            severity_rank INTEGER NOT NULL,
            reason TEXT NOT NULL,
            evidence_event_id INTEGER NOT NULL,
            count INTEGER NOT NULL,
            detected_ns INTEGER NOT NULL
        );
        CREATE INDEX deviations_by_run ON deviations(run_id);
        CREATE INDEX deviations_by_detected ON deviations(detected_ns, id);
        CREATE INDEX deviations_by_package ON deviations(package_name, detected_ns);
        CREATE TABLE packages (
            name TEXT PRIMARY KEY,
            added_ns INTEGER NOT NULL,
            added_by TEXT NOT NULL DEFAULT '',
            last_checked_ns INTEGER,
            last_seen_version TEXT,
            etag TEXT
        );
        CREATE TABLE allowlist (
            id TEXT PRIMARY KEY,
            scope TEXT NOT NULL CHECK (scope IN ('global', 'package')),
            package_name TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT 'operator',
            created_ns INTEGER NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            UNIQUE (scope, package_name, kind, value)
        );
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at_ns INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX audit_by_target ON audit(target, at_ns);
        """,
    ),
    (
        3,
        "watcher",
        """
        CREATE TABLE releases (
            package_name TEXT NOT NULL REFERENCES packages(name) ON DELETE CASCADE,
            version TEXT NOT NULL,
            integrity TEXT NOT NULL DEFAULT '',
            shasum TEXT NOT NULL DEFAULT '',
            tarball TEXT NOT NULL DEFAULT '',
            published_ns INTEGER,
            dist_tags TEXT NOT NULL DEFAULT '',
            discovered_ns INTEGER NOT NULL,
            seeded INTEGER NOT NULL DEFAULT 0,
            queued INTEGER NOT NULL DEFAULT 0,
            queued_ns INTEGER,
            run_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (package_name, version)
        ) WITHOUT ROWID;
        CREATE INDEX releases_waiting ON releases(package_name) WHERE queued = 0 AND seeded = 0;
        ALTER TABLE packages ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
        ALTER TABLE packages ADD COLUMN next_check_ns INTEGER
        """,
    ),
    (
        4,
        "notifier",
        """
        CREATE TABLE notifiers (
            name TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            template TEXT NOT NULL,
            secret_env TEXT,
            headers TEXT NOT NULL DEFAULT '{}',
            min_severity TEXT,
            packages TEXT NOT NULL DEFAULT '[]',
            enabled INTEGER NOT NULL DEFAULT 1,
            created_ns INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL
        );
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            notifier_name TEXT NOT NULL,
            template TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ns INTEGER NOT NULL,
            created_ns INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            body BLOB NOT NULL,
            content_type TEXT NOT NULL,
            UNIQUE (run_id, notifier_name)
        );
        CREATE INDEX outbox_due ON outbox(next_attempt_ns) WHERE state = 'pending';
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            notifier_name TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            at_ns INTEGER NOT NULL,
            status TEXT NOT NULL,
            http_status INTEGER,
            error TEXT NOT NULL DEFAULT '',
            response_excerpt TEXT NOT NULL DEFAULT '',
            UNIQUE (outbox_id, attempt)
        );
        CREATE INDEX deliveries_by_notifier ON deliveries(notifier_name, at_ns)
        """,
    ),
    (
        5,
        "auth",
        """
        CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            scopes TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            revoked_ns INTEGER
        );
        """,
    ),
    (
        6,
        "runners and retention",
        """
        CREATE TABLE runners (
            runner_id TEXT PRIMARY KEY,
            registration TEXT NOT NULL,
            registered_ns INTEGER NOT NULL,
            last_seen_ns INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT '',
            active_run_ids TEXT NOT NULL DEFAULT '[]',
            events_queued INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE INDEX events_by_received ON events(received_ns);
        CREATE INDEX deviations_by_evidence ON deviations(evidence_event_id)
        """,
    ),
    (
        7,
        "install lifecycle",
        """
        ALTER TABLE runs ADD COLUMN install_exit_code INTEGER;
        ALTER TABLE runs ADD COLUMN install_finished_ns INTEGER;
        ALTER TABLE runs ADD COLUMN observation_ended_ns INTEGER;
        ALTER TABLE runs ADD COLUMN events_unresolved INTEGER NOT NULL DEFAULT 0
        """,
    ),
    (20, "run stream", streamdb.SQLITE_SCHEMA),
    (21, "artifacts", artifactdb.SQLITE_SCHEMA),
    (
        50,
        "harden: server-side sessions, idempotency digests, runner drop counters",
        """
        CREATE TABLE dashboard_sessions (
            id_hash TEXT PRIMARY KEY,
            token_id TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            expires_ns INTEGER NOT NULL
        );
        CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions(token_id);
        ALTER TABLE runs ADD COLUMN idempotency_digest TEXT NOT NULL DEFAULT '';
        CREATE TABLE runner_drop_counters (
            runner_id TEXT PRIMARY KEY,
            events_dropped INTEGER NOT NULL
        )
        """,
    ),
    (ACTORS_MIGRATION, "actors and manifest deltas", actorsMigration()),
]


class SQLiteStore(streamdb.SQLiteStreamStorage, artifactdb.SQLiteArtifactStorage):
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
        # Ingest commits a transaction per batch: a bigger page cache and
        # fewer, larger WAL checkpoints keep each commit cheap.
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA wal_autocheckpoint=20000")
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
        for version, name, sql in sorted(MIGRATIONS):
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
                    "SELECT id, idempotency_digest FROM runs WHERE idempotency_key = ?", (run.idempotency_key,)
                ).fetchone()
                if row is not None:
                    checkIdempotency(row[1], run.idempotency_digest)
                    return row[0], False
            try:
                conn.execute(
                    "INSERT INTO runs (id, package_name, version, kind, state, target_runner, job,"
                    " queue_seq, idempotency_key, idempotency_digest, created_ns)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?,"
                    " (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs), ?, ?, ?)",
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
        self,
        runID: str,
        seq: int,
        rows: Sequence[EventRow],
        nowNs: int,
        deadlineNs: int,
        credPaths: Sequence[str] = (),
    ) -> "Deferred[IngestOutcome]":
        """
        Store one batch and its fingerprints in one transaction.  A batch
        already stored (same run and C{seq}) is ignored, so a runner may
        resend safely.  Fingerprints are extracted here, batch by batch, so
        the verdict is ready as soon as the run ends.
        """
        return self._call(self._thd_ingestBatch, runID, seq, rows, nowNs, deadlineNs, credPaths)

    def _thd_ingestBatch(
        self,
        conn: sqlite3.Connection,
        runID: str,
        seq: int,
        rows: Sequence[EventRow],
        nowNs: int,
        deadlineNs: int,
        credPaths: Sequence[str] = (),
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
            if rows:
                # One writer, one transaction: the ids just assigned are
                # consecutive and end at last_insert_rowid().
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                fps = differ.FingerprintSet(credPaths or differ.DEFAULT_CRED_PATHS)
                first = last - len(rows) + 1
                for offset, r in enumerate(rows):
                    if r.payload is not None:
                        fps.add(first + offset, r.type, r.payload)
                conn.executemany(
                    "INSERT INTO run_fingerprints (run_id, category, value, count, first_event_id, cred, raw_ip)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (run_id, category, value) DO UPDATE SET"
                    " count = count + excluded.count,"
                    " first_event_id = MIN(first_event_id, excluded.first_event_id),"
                    " cred = MAX(cred, excluded.cred), raw_ip = MAX(raw_ip, excluded.raw_ip)",
                    [
                        (runID, f.category, f.value, f.count, f.first_event_id, int(f.cred), int(f.raw_ip))
                        for f in fps.rows()
                    ],
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
        conn: sqlite3.Connection,
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
                conn.execute(
                    "UPDATE runs SET install_exit_code = ?, install_finished_ns = ?, observation_ended_ns = ?,"
                    " events_unresolved = ? WHERE id = ?",
                    (life.install_exit_code, life.install_finished_ns, life.observation_ended_ns,
                     life.events_unresolved, runID),
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

    # -- analysis (the differ's plan, executed in one transaction) -------------

    def analyzeRun(self, runID: str, nowNs: int, credPaths: Sequence[str] = ()) -> "Deferred[AnalysisOutcome]":
        """
        Compare the run's fingerprints with its package's baseline and store
        the verdict, deviations and baseline rows, all in one transaction.
        Idempotent: the plan depends only on the run's events, the other
        runs' baseline rows, the allowlist and the operator's decision.
        """
        return self._call(self._thd_analyzeRun, runID, nowNs, credPaths)

    def _thd_analyzeRun(self, conn: sqlite3.Connection, runID: str, nowNs: int, credPaths: Sequence[str]) -> "AnalysisOutcome":
        with _transaction(conn):
            return self._thd_analyzeInTransaction(conn, runID, nowNs, credPaths)

    def _thd_analyzeInTransaction(
        self, conn: sqlite3.Connection, runID: str, nowNs: int, credPaths: Sequence[str]
    ) -> "AnalysisOutcome":
        row = conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone()
        if row is None:
            raise NotFound("run %s not found" % (runID,))
        run = _runRow(row)
        before = (run.verdict, run.deviation_count, run.max_severity)
        fps = differ.FingerprintSet.fromTuples(
            conn.execute(
                "SELECT category, value, count, first_event_id, cred, raw_ip FROM run_fingerprints WHERE run_id = ?",
                (runID,),
            ),
            credPaths or differ.DEFAULT_CRED_PATHS,
        )
        allow = Allowlist(self._thd_allowEntries(conn), run.package_name)
        baselineKeys = {
            (c, v, a)
            for c, v, a in conn.execute(
                "SELECT DISTINCT category, value, actor FROM baseline WHERE package_name = ? AND run_id != ?",
                (run.package_name, runID),
            )
        }
        hasBaseline = (
            conn.execute(
                "SELECT 1 FROM runs WHERE package_name = ? AND id != ? AND verdict IN ('baseline', 'clean') LIMIT 1",
                (run.package_name, runID),
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
        conn.execute("DELETE FROM deviations WHERE run_id = ?", (runID,))
        conn.executemany(
            "INSERT OR IGNORE INTO deviations (id, run_id, package_name, category, value, severity, severity_rank, reason,"
            " evidence_event_id, count, detected_ns, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    deviationID(runID, d.category, d.value, d.actor),
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
                )
                for d in plan.deviations
            ],
        )
        conn.execute("DELETE FROM baseline WHERE run_id = ?", (runID,))
        if run.package_name:
            conn.executemany(
                "INSERT OR IGNORE INTO baseline (package_name, category, value, actor, run_id, count, added_ns)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run.package_name, f.category, f.value, f.actor_class, runID, f.count, nowNs) for f in plan.baseline_add],
            )
        conn.execute("UPDATE runs SET analysis_reason = ? WHERE id = ?", (plan.reason, runID))
        blocking = len(plan.blocking) if plan.verdict != differ.VERDICT_CLEAN else 0
        maxSeverity = plan.max_severity.label if plan.max_severity is not None else None
        conn.execute(
            "UPDATE runs SET verdict = ?, analyzed_ns = COALESCE(analyzed_ns, ?), deviation_count = ?,"
            " max_severity = ?, severity_rank = ? WHERE id = ?",
            (plan.verdict, nowNs, blocking, maxSeverity, int(plan.max_severity or 0), runID),
        )
        after = (plan.verdict, blocking, maxSeverity)
        outcome = AnalysisOutcome(runID, run.package_name, plan.verdict, blocking, maxSeverity, after != before)
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
        row = conn.execute(
            "SELECT manifest, deltas FROM releases WHERE package_name = ? AND version = ?",
            (run.package_name, run.version),
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

    def decide(self, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str] = ()) -> "Deferred[AnalysisOutcome]":
        """
        An operator's decision on a finished run: C{promoted} (accept its
        behaviour into the baseline) or C{rejected} (keep the findings, mark
        it malicious, never baseline it); C{reanalyze} runs the analysis
        again (after an allowlist change).  One transaction with its audit
        row.

        @raise NotFound: no such run.
        @raise Conflict: the run is not finished, or cannot be promoted.
        """
        return self._call(self._thd_decide, runID, decision, actor, nowNs, credPaths)

    def _thd_decide(
        self, conn: sqlite3.Connection, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str]
    ) -> "AnalysisOutcome":
        with _transaction(conn):
            row = conn.execute(_RUN_SELECT + " WHERE id = ?", (runID,)).fetchone()
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
                conn.execute("UPDATE runs SET decision = ? WHERE id = ?", (decision, runID))
            outcome = self._thd_analyzeInTransaction(conn, runID, nowNs, credPaths)
            conn.execute(
                "INSERT INTO audit (at_ns, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                (
                    nowNs,
                    actor,
                    {"promoted": "promote", "rejected": "reject"}.get(decision, decision),
                    "run:" + runID,
                    json.dumps({"verdict": outcome.verdict, "deviations": outcome.deviations, "previous_decision": run.decision}),
                ),
            )
            return outcome

    # -- review reads -------------------------------------------------------------

    def deviationsForRun(self, runID: str) -> "Deferred[List[DeviationRow]]":
        return self._call(
            lambda conn: [
                DeviationRow(*r)
                for r in conn.execute(
                    _DEVIATION_SELECT + " WHERE run_id = ? ORDER BY severity_rank DESC, category, value", (runID,)
                )
            ]
        )

    def getDeviation(self, deviationID: str) -> "Deferred[Optional[Tuple[DeviationRow, Optional[StoredEvent]]]]":
        return self._call(self._thd_getDeviation, deviationID)

    def _thd_getDeviation(self, conn: sqlite3.Connection, deviationID: str) -> Optional[Tuple["DeviationRow", Optional[StoredEvent]]]:
        r = conn.execute(_DEVIATION_SELECT + " WHERE id = ?", (deviationID,)).fetchone()
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

    def _thd_listDeviations(self, conn: sqlite3.Connection, filter: "DeviationFilter", pageSize: int, after: Optional[List[Any]]) -> Page:
        where: List[str] = []
        args: List[Any] = []
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

    def pendingRuns(self, pageSize: int, pageToken: Optional[str]) -> "Deferred[Page]":
        """
        Runs waiting for a decision, highest severity first, then newest.
        """
        after = decodeToken(pageToken, (int, int, str)) if pageToken else None
        return self._call(self._thd_pendingRuns, pageSize, after)

    def _thd_pendingRuns(self, conn: sqlite3.Connection, pageSize: int, after: Optional[List[Any]]) -> Page:
        sql = _RUN_SELECT + " WHERE verdict = 'deviations' AND decision IS NULL"
        args: List[Any] = []
        if after is not None:
            sql += (
                " AND (severity_rank < ? OR (severity_rank = ? AND (COALESCE(finished_ns, 0) < ?"
                " OR (COALESCE(finished_ns, 0) = ? AND id < ?))))"
            )
            args = [after[0], after[0], after[1], after[1], after[2]]
        sql += " ORDER BY severity_rank DESC, COALESCE(finished_ns, 0) DESC, id DESC LIMIT ?"
        args.append(pageSize + 1)
        rows = [_runRow(r) for r in conn.execute(sql, args)]
        token = None
        if len(rows) > pageSize:
            rows = rows[:pageSize]
            last = rows[-1]
            token = encodeToken([differ.severityRank(last.max_severity or ""), last.finished_ns or 0, last.id])
        return Page(rows, token)

    # -- packages and baselines -------------------------------------------------

    def addPackage(self, name: str, actor: str, nowNs: int) -> "Deferred[bool]":
        return self._call(self._thd_addPackage, name, actor, nowNs)

    def _thd_addPackage(self, conn: sqlite3.Connection, name: str, actor: str, nowNs: int) -> bool:
        with _transaction(conn):
            cur = conn.execute(
                "INSERT OR IGNORE INTO packages (name, added_ns, added_by) VALUES (?, ?, ?)", (name, nowNs, actor)
            )
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO audit (at_ns, actor, action, target) VALUES (?, ?, 'package.add', ?)",
                    (nowNs, actor, "package:" + name),
                )
            return cur.rowcount == 1

    def removePackage(self, name: str, actor: str, nowNs: int) -> "Deferred[bool]":
        return self._call(self._thd_removePackage, name, actor, nowNs)

    def _thd_removePackage(self, conn: sqlite3.Connection, name: str, actor: str, nowNs: int) -> bool:
        with _transaction(conn):
            cur = conn.execute("DELETE FROM packages WHERE name = ?", (name,))
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO audit (at_ns, actor, action, target) VALUES (?, ?, 'package.remove', ?)",
                    (nowNs, actor, "package:" + name),
                )
            return cur.rowcount == 1

    def listPackages(self) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(self._thd_listPackages)

    def _thd_listPackages(self, conn: sqlite3.Connection, name: Optional[str] = None) -> List[Dict[str, Any]]:
        sql = (
            "SELECT p.name, p.added_ns, p.last_checked_ns, p.last_seen_version,"
            " (SELECT COUNT(*) FROM runs r WHERE r.package_name = p.name),"
            " (SELECT COUNT(*) FROM runs r WHERE r.package_name = p.name AND r.verdict IN ('baseline', 'clean')),"
            " (SELECT COUNT(*) FROM runs r WHERE r.package_name = p.name AND r.verdict = 'deviations' AND r.decision IS NULL),"
            " (SELECT COUNT(DISTINCT category || char(0) || value) FROM baseline b WHERE b.package_name = p.name)"
            " FROM packages p"
        )
        args: Tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE p.name = ?"
            args = (name,)
        sql += " ORDER BY p.name"
        return [
            {
                "name": r[0],
                "added_ns": r[1],
                "last_checked_ns": r[2],
                "last_seen_version": r[3],
                "runs": r[4],
                "baseline_runs": r[5],
                "pending_runs": r[6],
                "baseline_fingerprints": r[7],
            }
            for r in conn.execute(sql, args)
        ]

    def getPackage(self, name: str) -> "Deferred[Optional[Dict[str, Any]]]":
        return self._call(lambda conn: (self._thd_listPackages(conn, name) or [None])[0])

    def baselineFor(self, package: str) -> "Deferred[List[Dict[str, Any]]]":
        """
        The package's baseline: each fingerprint with the number of runs that
        showed it and the first and last of them.
        """
        return self._call(
            lambda conn: [
                {
                    "category": r[0],
                    "value": r[1],
                    "actor": r[6],
                    "occurrences": r[2],
                    "events": r[3],
                    "first_seen_run_id": r[4],
                    "last_seen_run_id": r[5],
                }
                for r in conn.execute(
                    "SELECT category, value, COUNT(*), SUM(count), MIN(run_id), MAX(run_id), actor FROM baseline"
                    " WHERE package_name = ? GROUP BY category, value, actor ORDER BY category, value, actor",
                    (package,),
                )
            ]
        )

    def packageHasRuns(self, package: str) -> "Deferred[bool]":
        return self._call(
            lambda conn: conn.execute("SELECT 1 FROM runs WHERE package_name = ? LIMIT 1", (package,)).fetchone()
            is not None
        )

    # -- allowlist ----------------------------------------------------------------

    def _thd_allowEntries(self, conn: sqlite3.Connection) -> List[AllowEntry]:
        return [
            AllowEntry(id=r[0], kind=r[1], value=r[2], scope=r[3], package_name=r[4], note=r[5])
            for r in conn.execute(
                "SELECT id, kind, value, scope, package_name, note FROM allowlist ORDER BY scope, package_name, kind, value"
            )
        ]

    def listAllow(self) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [
                {
                    "id": r[0],
                    "kind": r[1],
                    "value": r[2],
                    "scope": r[3],
                    "package_name": r[4] or None,
                    "note": r[5],
                    "source": r[6],
                    "created_ns": r[7],
                    "created_by": r[8],
                }
                for r in conn.execute(
                    "SELECT id, kind, value, scope, package_name, note, source, created_ns, created_by FROM allowlist"
                    " ORDER BY scope, package_name, kind, value"
                )
            ]
        )

    def addAllow(self, entry: AllowEntry, actor: str, nowNs: int) -> "Deferred[str]":
        """
        @raise Conflict: the same entry exists already.
        """
        return self._call(self._thd_addAllow, entry, actor, nowNs)

    def _thd_addAllow(self, conn: sqlite3.Connection, entry: AllowEntry, actor: str, nowNs: int) -> str:
        with _transaction(conn):
            try:
                conn.execute(
                    "INSERT INTO allowlist (id, scope, package_name, kind, value, note, source, created_ns, created_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'operator', ?, ?)",
                    (entry.id, entry.scope, entry.package_name, entry.kind, entry.value, entry.note, nowNs, actor),
                )
            except sqlite3.IntegrityError:
                raise Conflict("an identical %s allowlist entry exists already" % (entry.kind,)) from None
            conn.execute(
                "INSERT INTO audit (at_ns, actor, action, target, detail) VALUES (?, ?, 'allow.add', ?, ?)",
                (nowNs, actor, "allow:" + entry.id, json.dumps({"kind": entry.kind, "value": entry.value, "scope": entry.scope, "package": entry.package_name})),
            )
            return entry.id

    def removeAllow(self, entryID: str, actor: str, nowNs: int) -> "Deferred[bool]":
        return self._call(self._thd_removeAllow, entryID, actor, nowNs)

    def _thd_removeAllow(self, conn: sqlite3.Connection, entryID: str, actor: str, nowNs: int) -> bool:
        with _transaction(conn):
            row = conn.execute("SELECT source FROM allowlist WHERE id = ?", (entryID,)).fetchone()
            if row is None:
                return False
            if row[0] == "config":
                raise Conflict("allowlist entry %s comes from the configuration file; remove it there" % (entryID,))
            conn.execute("DELETE FROM allowlist WHERE id = ?", (entryID,))
            conn.execute(
                "INSERT INTO audit (at_ns, actor, action, target) VALUES (?, ?, 'allow.remove', ?)",
                (nowNs, actor, "allow:" + entryID),
            )
            return True

    def syncConfigAllow(self, wanted: Sequence[AllowEntry], nowNs: int) -> "Deferred[ConfigSync]":
        """
        Make the config-managed entries equal the configuration file: new
        lines added, changed notes updated, removed lines deleted.
        """
        return self._call(self._thd_syncConfigAllow, wanted, nowNs)

    def _thd_syncConfigAllow(self, conn: sqlite3.Connection, wanted: Sequence[AllowEntry], nowNs: int) -> ConfigSync:
        with _transaction(conn):
            existing = [
                AllowEntry(id=r[0], kind=r[1], value=r[2], scope=r[3], package_name=r[4], note=r[5])
                for r in conn.execute(
                    "SELECT id, kind, value, scope, package_name, note FROM allowlist WHERE source = 'config'"
                )
            ]
            plan = planConfigSync(existing, wanted)
            for e in plan.insert:
                conn.execute(
                    "INSERT OR REPLACE INTO allowlist (id, scope, package_name, kind, value, note, source, created_ns, created_by)"
                    " VALUES (?, 'global', '', ?, ?, ?, 'config', ?, 'config')",
                    (e.id, e.kind, e.value, e.note, nowNs),
                )
            for e in plan.update:
                conn.execute("UPDATE allowlist SET note = ? WHERE id = ?", (e.note, e.id))
            for entryID in plan.delete:
                conn.execute("DELETE FROM allowlist WHERE id = ?", (entryID,))
            return plan

    def auditFor(self, target: str) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [
                {"at_ns": r[0], "actor": r[1], "action": r[2], "target": r[3], "detail": json.loads(r[4])}
                for r in conn.execute(
                    "SELECT at_ns, actor, action, target, detail FROM audit WHERE target = ? ORDER BY id", (target,)
                )
            ]
        )


    # -- releases (watcher) --

    def watchList(self, nowNs: int) -> "Deferred[List[Dict[str, Any]]]":
        """
        The watched packages due for a check (not held back by a registry
        C{Retry-After}), by name, each with its ETag, whether it has been
        seeded, and how many recorded releases still wait to be queued.
        """
        return self._call(self._thd_watchList, nowNs)

    def _thd_watchList(self, conn: sqlite3.Connection, nowNs: int) -> List[Dict[str, Any]]:
        return [
            {"name": r[0], "etag": r[1], "last_seen_version": r[2], "seeded": bool(r[3]), "waiting": r[4]}
            for r in conn.execute(
                "SELECT p.name, p.etag, p.last_seen_version,"
                " EXISTS (SELECT 1 FROM releases r WHERE r.package_name = p.name),"
                " (SELECT COUNT(*) FROM releases r WHERE r.package_name = p.name AND r.queued = 0 AND r.seeded = 0)"
                " FROM packages p WHERE p.next_check_ns IS NULL OR p.next_check_ns <= ? ORDER BY p.name",
                (nowNs,),
            )
        ]

    def knownVersions(self, name: str) -> "Deferred[Dict[str, bool]]":
        """
        Every recorded version of C{name} and whether it is settled (queued
        for a scan, or seen at seeding time).
        """
        return self._call(
            lambda conn: {
                r[0]: bool(r[1])
                for r in conn.execute(
                    "SELECT version, queued OR seeded FROM releases WHERE package_name = ?", (name,)
                )
            }
        )

    def recordPackument(
        self,
        name: str,
        releases: Sequence[Dict[str, Any]],
        latest: Optional[str],
        etag: Optional[str],
        nowNs: int,
    ) -> "Deferred[List[Dict[str, Any]]]":
        """
        In one transaction: insert the releases not recorded yet (each a dict
        with version, integrity, shasum, tarball, published_ns, dist_tags and
        seeded), refresh every recorded release's dist-tags, and stamp the
        package's check time, latest version and ETag.  A package that was
        removed meanwhile records nothing.

        @return: the releases still waiting to be queued (unsorted).
        """
        return self._call(self._thd_recordPackument, name, releases, latest, etag, nowNs)

    def _thd_recordPackument(
        self,
        conn: sqlite3.Connection,
        name: str,
        releases: Sequence[Dict[str, Any]],
        latest: Optional[str],
        etag: Optional[str],
        nowNs: int,
    ) -> List[Dict[str, Any]]:
        with _transaction(conn):
            cur = conn.execute(
                "UPDATE packages SET last_checked_ns = ?, last_seen_version = COALESCE(?, last_seen_version),"
                " etag = ?, last_error = '', next_check_ns = NULL WHERE name = ?",
                (nowNs, latest, etag, name),
            )
            if not cur.rowcount:
                return []
            conn.executemany(
                "INSERT INTO releases (package_name, version, integrity, shasum, tarball, published_ns, dist_tags,"
                " discovered_ns, seeded, manifest, deltas) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (package_name, version) DO UPDATE SET dist_tags = excluded.dist_tags,"
                " manifest = CASE WHEN releases.manifest = '' THEN excluded.manifest ELSE releases.manifest END"
                " WHERE releases.dist_tags != excluded.dist_tags OR (releases.manifest = '' AND excluded.manifest != '')",
                [
                    (
                        name,
                        r["version"],
                        r.get("integrity") or "",
                        r.get("shasum") or "",
                        r.get("tarball") or "",
                        r.get("published_ns"),
                        json.dumps(sorted(r.get("dist_tags") or ())),
                        nowNs,
                        1 if r.get("seeded") else 0,
                        json.dumps(r.get("manifest") or {}, sort_keys=True) if r.get("manifest") else "",
                        json.dumps(r.get("deltas") or []),
                    )
                    for r in releases
                ],
            )
            return self._thd_waitingReleases(conn, name)

    def waitingReleases(self, name: str) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(self._thd_waitingReleases, name)

    def _thd_waitingReleases(self, conn: sqlite3.Connection, name: str) -> List[Dict[str, Any]]:
        return [
            {"version": r[0], "published_ns": r[1], "attempts": r[2]}
            for r in conn.execute(
                "SELECT version, published_ns, attempts FROM releases"
                " WHERE package_name = ? AND queued = 0 AND seeded = 0",
                (name,),
            )
        ]

    def markReleaseQueued(self, name: str, version: str, runID: str, nowNs: int) -> "Deferred[bool]":
        def thd(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                return bool(
                    conn.execute(
                        "UPDATE releases SET queued = 1, queued_ns = ?, run_id = ?, last_error = ''"
                        " WHERE package_name = ? AND version = ?",
                        (nowNs, runID, name, version),
                    ).rowcount
                )

        return self._call(thd)

    def markReleaseFailed(self, name: str, version: str, error: str) -> "Deferred[None]":
        def thd(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "UPDATE releases SET attempts = attempts + 1, last_error = ? WHERE package_name = ? AND version = ?",
                    (error[:500], name, version),
                )

        return self._call(thd)

    def finishChecks(self, outcomes: Sequence[Tuple[str, str, Optional[int]]], nowNs: int) -> "Deferred[None]":
        """
        Stamp many packages checked in one transaction: each outcome is
        C{(name, error, next_check_ns)} (error C{""} when all went well).
        """

        def thd(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(
                    "UPDATE packages SET last_checked_ns = ?, last_error = ?, next_check_ns = ? WHERE name = ?",
                    [(nowNs, error[:500], nextNs, name) for name, error, nextNs in outcomes],
                )

        return self._call(thd)

    def watchStatus(self, name: str) -> "Deferred[Optional[Dict[str, Any]]]":
        """
        The watcher's view of one package: last check, error, hold-off.
        """

        def thd(conn: sqlite3.Connection) -> Optional[Dict[str, Any]]:
            r = conn.execute(
                "SELECT last_checked_ns, last_seen_version, etag, last_error, next_check_ns FROM packages WHERE name = ?",
                (name,),
            ).fetchone()
            if r is None:
                return None
            return {
                "last_checked_ns": r[0],
                "last_seen_version": r[1],
                "etag": r[2],
                "last_error": r[3],
                "next_check_ns": r[4],
            }

        return self._call(thd)

    def listReleases(self, name: str, limit: int = 50) -> "Deferred[List[Dict[str, Any]]]":
        """
        The package's recorded releases, newest discovered (then published)
        first.
        """
        return self._call(
            lambda conn: [
                {
                    "package_name": name,
                    "version": r[0],
                    "integrity": r[1],
                    "shasum": r[2],
                    "tarball": r[3],
                    "published_ns": r[4],
                    "dist_tags": json.loads(r[5] or "[]"),
                    "discovered_ns": r[6],
                    "seeded": bool(r[7]),
                    "queued": bool(r[8]),
                    "queued_ns": r[9],
                    "run_id": r[10],
                    "attempts": r[11],
                    "last_error": r[12],
                    # What the registry's manifest changed against the previous release.
                    "deltas": _jsonList(r[13]),
                }
                for r in conn.execute(
                    "SELECT version, integrity, shasum, tarball, published_ns, dist_tags, discovered_ns, seeded,"
                    " queued, queued_ns, run_id, attempts, last_error, deltas FROM releases WHERE package_name = ?"
                    " ORDER BY COALESCE(published_ns, discovered_ns) DESC, version DESC LIMIT ?",
                    (name, limit),
                )
            ]
        )

    # -- dashboard queries --
    # Read-only queries of the web dashboard (fangs.orchestrator.ui).

    def dashboardSummary(self, sinceNs: int) -> "Deferred[Dict[str, Any]]":
        """
        Overview figures: runs by verdict since C{sinceNs}, open reviews by
        severity, events dropped (since and ever), runs and packages.
        """
        return self._call(self._thd_dashboardSummary, sinceNs)

    def _thd_dashboardSummary(self, conn: sqlite3.Connection, sinceNs: int) -> Dict[str, Any]:
        byVerdict = {
            (v or "in progress"): n
            for v, n in conn.execute(
                "SELECT verdict, COUNT(*) FROM runs WHERE created_ns >= ? GROUP BY verdict", (sinceNs,)
            )
        }
        pending = {
            (s or "none"): n
            for s, n in conn.execute(
                "SELECT max_severity, COUNT(*) FROM runs WHERE verdict = 'deviations' AND decision IS NULL"
                " GROUP BY max_severity"
            )
        }
        dropped, droppedRecent, total = conn.execute(
            "SELECT COALESCE(SUM(events_dropped), 0),"
            " COALESCE(SUM(CASE WHEN created_ns >= ? THEN events_dropped ELSE 0 END), 0), COUNT(*) FROM runs",
            (sinceNs,),
        ).fetchone()
        return {
            "runs_by_verdict": byVerdict,
            "pending_by_severity": pending,
            "events_dropped": dropped,
            "events_dropped_recent": droppedRecent,
            "runs_total": total,
            "watched": conn.execute("SELECT COUNT(*) FROM packages").fetchone()[0],
            "scanned_packages": conn.execute("SELECT COUNT(DISTINCT package_name) FROM runs").fetchone()[0],
        }

    def dashboardRuns(
        self, package: Optional[str], verdict: Optional[str], state: Optional[str], pageSize: int, pageToken: Optional[str]
    ) -> "Deferred[Page]":
        """
        Runs newest first, filtered by package, verdict (C{"none"} for runs
        not analysed yet) and state.

        @raise BadPageToken: C{pageToken} was not issued by this server.
        """
        after = decodeToken(pageToken, (int, str)) if pageToken else None
        return self._call(self._thd_dashboardRuns, package, verdict, state, pageSize, after)

    def _thd_dashboardRuns(
        self,
        conn: sqlite3.Connection,
        package: Optional[str],
        verdict: Optional[str],
        state: Optional[str],
        pageSize: int,
        after: Optional[List[Any]],
    ) -> Page:
        where: List[str] = []
        args: List[Any] = []
        if package:
            where.append("package_name = ?")
            args.append(package)
        if verdict == "none":
            where.append("verdict IS NULL")
        elif verdict:
            where.append("verdict = ?")
            args.append(verdict)
        if state:
            where.append("state = ?")
            args.append(state)
        if after is not None:
            where.append("(created_ns < ? OR (created_ns = ? AND id < ?))")
            args.extend([after[0], after[0], after[1]])
        sql = _RUN_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_ns DESC, id DESC LIMIT ?"
        args.append(pageSize + 1)
        rows = [_runRow(r) for r in conn.execute(sql, args)]
        token = None
        if len(rows) > pageSize:
            rows = rows[:pageSize]
            token = encodeToken([rows[-1].created_ns, rows[-1].id])
        return Page(rows, token)

    def dashboardPackages(self) -> "Deferred[List[Dict[str, Any]]]":
        """
        Every package that is watched or was scanned, with its run counts
        and its latest run.
        """

        def thd(conn: sqlite3.Connection) -> List[Dict[str, Any]]:
            watched = {r[0]: r[1] for r in conn.execute("SELECT name, added_ns FROM packages")}
            out: Dict[str, Dict[str, Any]] = {}
            for name, runs, pending, latest in conn.execute(
                "SELECT package_name, COUNT(*),"
                " SUM(CASE WHEN verdict = 'deviations' AND decision IS NULL THEN 1 ELSE 0 END), MAX(created_ns)"
                " FROM runs WHERE package_name != '' GROUP BY package_name"
            ):
                last = conn.execute(
                    "SELECT id, version, verdict FROM runs WHERE package_name = ? AND created_ns = ? LIMIT 1",
                    (name, latest),
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

        def thd(conn: sqlite3.Connection) -> List[StoredEvent]:
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

    def tableRows(self, table: str, limit: int = 100) -> "Deferred[Optional[List[Dict[str, Any]]]]":
        """
        Up to C{limit} rows of C{table}, newest (highest rowid) first, as
        dicts; C{None} when there is no such table (yet).
        """

        def thd(conn: sqlite3.Connection) -> Optional[List[Dict[str, Any]]]:
            known = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            if known is None:
                return None
            try:
                cur = conn.execute('SELECT * FROM "%s" ORDER BY rowid DESC LIMIT ?' % (known[0],), (limit,))
            except sqlite3.OperationalError:  # a WITHOUT ROWID table
                cur = conn.execute('SELECT * FROM "%s" LIMIT ?' % (known[0],), (limit,))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur]

        return self._call(thd)

    def tableNames(self) -> "Deferred[List[str]]":
        return self._call(
            lambda conn: [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        )



    # -- api tokens --

    def createToken(self, tokenID: str, name: str, scopes: str, secretHash: str, actor: str, nowNs: int) -> "Deferred[None]":
        return self._call(self._thd_createToken, tokenID, name, scopes, secretHash, actor, nowNs)

    def _thd_createToken(self, conn: sqlite3.Connection, tokenID: str, name: str, scopes: str, secretHash: str, actor: str, nowNs: int) -> None:
        with _transaction(conn):
            conn.execute(
                "INSERT INTO api_tokens (id, name, scopes, secret_hash, created_ns, created_by) VALUES (?, ?, ?, ?, ?, ?)",
                (tokenID, name, scopes, secretHash, nowNs, actor),
            )
            conn.execute(
                "INSERT INTO audit (at_ns, actor, action, target, detail) VALUES (?, ?, 'token.create', ?, ?)",
                (nowNs, actor, "token:" + tokenID, json.dumps({"name": name, "scopes": scopes})),
            )

    def lookupToken(self, tokenID: str) -> "Deferred[Optional[Dict[str, Any]]]":
        return self._call(self._thd_lookupToken, tokenID)

    def _thd_lookupToken(self, conn: sqlite3.Connection, tokenID: str) -> Optional[Dict[str, Any]]:
        r = conn.execute(
            "SELECT id, name, scopes, secret_hash, created_ns, created_by, revoked_ns FROM api_tokens WHERE id = ?",
            (tokenID,),
        ).fetchone()
        if r is None:
            return None
        return dict(zip(("id", "name", "scopes", "secret_hash", "created_ns", "created_by", "revoked_ns"), r))

    def listTokens(self) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [
                dict(zip(("id", "name", "scopes", "created_ns", "created_by", "revoked_ns"), r))
                for r in conn.execute(
                    "SELECT id, name, scopes, created_ns, created_by, revoked_ns FROM api_tokens ORDER BY created_ns, id"
                )
            ]
        )

    def revokeToken(self, tokenID: str, actor: str, nowNs: int) -> "Deferred[bool]":
        return self._call(self._thd_revokeToken, tokenID, actor, nowNs)

    def _thd_revokeToken(self, conn: sqlite3.Connection, tokenID: str, actor: str, nowNs: int) -> bool:
        with _transaction(conn):
            cur = conn.execute(
                "UPDATE api_tokens SET revoked_ns = ? WHERE id = ? AND revoked_ns IS NULL", (nowNs, tokenID)
            )
            if cur.rowcount:
                conn.execute("DELETE FROM dashboard_sessions WHERE token_id = ?", (tokenID,))
                conn.execute(
                    "INSERT INTO audit (at_ns, actor, action, target) VALUES (?, ?, 'token.revoke', ?)",
                    (nowNs, actor, "token:" + tokenID),
                )
            return cur.rowcount == 1

    def hasAdminToken(self) -> "Deferred[bool]":
        return self._call(
            lambda conn: conn.execute(
                "SELECT 1 FROM api_tokens WHERE revoked_ns IS NULL AND (' ' || scopes || ' ') LIKE '% orchestrator:admin %' LIMIT 1"
            ).fetchone()
            is not None
        )

    def revokeTokenSessions(self, tokenID: str) -> "Deferred[int]":
        """
        End every dashboard session of a token (called with its revocation).
        """
        return self._call(
            lambda conn: conn.execute("DELETE FROM dashboard_sessions WHERE token_id = ?", (tokenID,)).rowcount
        )

    # -- dashboard sessions --
    #
    # A session is a random id handed to the browser in a cookie signed with
    # a key kept outside the database; only the id's SHA-256 is stored, so
    # neither a copy of the database nor of the key alone makes a session.
    # Logout deletes the row; revoking the token ends its sessions at once
    # (the lookup joins the token).

    def createSession(self, idHash: str, tokenID: str, nowNs: int, expiresNs: int) -> "Deferred[None]":
        def thd(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM dashboard_sessions WHERE expires_ns < ?", (nowNs,))
                conn.execute(
                    "INSERT INTO dashboard_sessions (id_hash, token_id, created_ns, expires_ns) VALUES (?, ?, ?, ?)",
                    (idHash, tokenID, nowNs, expiresNs),
                )

        return self._call(thd)

    def lookupSession(self, idHash: str) -> "Deferred[Optional[Dict[str, Any]]]":
        """
        The live session with this id hash and its token, or None.
        """

        def thd(conn: sqlite3.Connection) -> Optional[Dict[str, Any]]:
            r = conn.execute(
                "SELECT s.token_id, s.expires_ns, t.name, t.scopes, t.revoked_ns FROM dashboard_sessions s"
                " JOIN api_tokens t ON t.id = s.token_id WHERE s.id_hash = ?",
                (idHash,),
            ).fetchone()
            if r is None:
                return None
            return dict(zip(("token_id", "expires_ns", "name", "scopes", "revoked_ns"), r))

        return self._call(thd)

    def deleteSession(self, idHash: str) -> "Deferred[bool]":
        return self._call(
            lambda conn: conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", (idHash,)).rowcount == 1
        )

    # -- cumulative drop counters of runners that report no per-run drops --

    def dropIncrease(self, runnerID: str, cumulative: int) -> "Deferred[int]":
        """
        Record a runner's cumulative C{events_dropped} and return how much it
        grew since the last report (a smaller value means the runner
        restarted: the whole value is new).
        """

        def thd(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT events_dropped FROM runner_drop_counters WHERE runner_id = ?", (runnerID,)
                ).fetchone()
                previous = row[0] if row is not None else 0
                conn.execute(
                    "INSERT INTO runner_drop_counters (runner_id, events_dropped) VALUES (?, ?)"
                    " ON CONFLICT (runner_id) DO UPDATE SET events_dropped = excluded.events_dropped",
                    (runnerID, cumulative),
                )
                return cumulative - previous if cumulative >= previous else cumulative

        return self._call(thd)

    def batchStored(self, runID: str, seq: int) -> "Deferred[bool]":
        """
        Whether batch C{seq} of the run is stored already (a resend).
        """
        return self._call(
            lambda conn: conn.execute("SELECT 1 FROM batches WHERE run_id = ? AND seq = ?", (runID, seq)).fetchone()
            is not None
        )

    # -- notifier outbox --
    #
    # Targets live in C{notifiers} (secrets are named by environment
    # variable, never stored).  An analysis whose verdict changed writes one
    # C{outbox} row per matching target in its own transaction
    # (L{_thd_enqueueNotifications}); UNIQUE(run_id, notifier_name) keeps a
    # re-analysis from sending twice.  Each attempt adds one C{deliveries}
    # row.  Removing a target keeps its history: its rows stay (pending ones
    # become C{dead}), and they still count against a re-created target of
    # the same name, so old runs are not announced again.

    def _thd_enqueueNotifications(self, conn: sqlite3.Connection, run: RunRow, outcome: "AnalysisOutcome", nowNs: int) -> int:
        from fangs import wire
        from fangs.orchestrator import notifier as N

        if not outcome.changed or not outcome.deviations or outcome.verdict not in N.NOTIFY_VERDICTS:
            return 0
        targets = [
            {"name": r[0], "template": r[1], "min_severity": r[2], "packages": json.loads(r[3] or "[]")}
            for r in conn.execute("SELECT name, template, min_severity, packages FROM notifiers WHERE enabled = 1")
        ]
        targets = [t for t in targets if N.wants(t, outcome.package_name, outcome.max_severity)]
        if not targets:
            return 0
        deviations = [
            {
                "id": r[0],
                "category": r[3],
                "value": r[4],
                "severity": r[5],
                "reason": r[7],
                "evidence_event_id": r[8],
                "detected_at": wire.formatTimestamp(wire.timestampFromNs(r[10])),
                "actor": _actorLabel(r[11], r[12]),
            }
            for r in conn.execute(
                _DEVIATION_SELECT + " WHERE run_id = ? ORDER BY severity_rank DESC, category, value", (run.id,)
            )
        ]
        info = {
            "run_id": run.id,
            "package_name": run.package_name,
            "version": run.version,
            "state": run.state,
            "verdict": outcome.verdict,
            "max_severity": outcome.max_severity,
        }
        added = 0
        for t in targets:
            body, ctype = N.render(t["template"], info, deviations)
            added += conn.execute(
                "INSERT OR IGNORE INTO outbox (run_id, notifier_name, template, state, attempts, next_attempt_ns,"
                " created_ns, updated_ns, body, content_type) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)",
                (run.id, t["name"], t["template"], nowNs, nowNs, nowNs, body, ctype),
            ).rowcount
        return added

    @staticmethod
    def _notifierDict(r: Sequence[Any]) -> Dict[str, Any]:
        return {
            "name": r[0],
            "url": r[1],
            "template": r[2],
            "secret_env": r[3],
            "headers": json.loads(r[4] or "{}"),
            "min_severity": r[5],
            "packages": json.loads(r[6] or "[]"),
            "enabled": bool(r[7]),
            "created_ns": r[8],
            "updated_ns": r[9],
        }

    _NOTIFIER_SELECT = (
        "SELECT name, url, template, secret_env, headers, min_severity, packages, enabled, created_ns, updated_ns"
        " FROM notifiers"
    )

    def upsertNotifier(self, target: Dict[str, Any], actor: str, nowNs: int) -> "Deferred[bool]":
        """
        Create or replace a target (validated by
        L{fangs.orchestrator.notifier.parseNotifier}).  Returns True when
        it was created.
        """

        def thd(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                created = conn.execute("SELECT 1 FROM notifiers WHERE name = ?", (target["name"],)).fetchone() is None
                conn.execute(
                    "INSERT INTO notifiers (name, url, template, secret_env, headers, min_severity, packages, enabled,"
                    " created_ns, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET url = excluded.url, template = excluded.template,"
                    " secret_env = excluded.secret_env, headers = excluded.headers, min_severity = excluded.min_severity,"
                    " packages = excluded.packages, enabled = excluded.enabled, updated_ns = excluded.updated_ns",
                    (
                        target["name"],
                        target["url"],
                        target["template"],
                        target["secret_env"],
                        json.dumps(target["headers"], sort_keys=True),
                        target["min_severity"],
                        json.dumps(target["packages"]),
                        int(target["enabled"]),
                        nowNs,
                        nowNs,
                    ),
                )
                conn.execute(
                    "INSERT INTO audit (at_ns, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                    (
                        nowNs,
                        actor,
                        "notifier.add" if created else "notifier.update",
                        "notifier:" + target["name"],
                        json.dumps({k: target[k] for k in ("url", "template", "min_severity", "enabled")}),
                    ),
                )
                return created

        return self._call(thd)

    def listNotifiers(self) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [self._notifierDict(r) for r in conn.execute(self._NOTIFIER_SELECT + " ORDER BY name")]
        )

    def getNotifier(self, name: str) -> "Deferred[Optional[Dict[str, Any]]]":
        def thd(conn: sqlite3.Connection) -> Optional[Dict[str, Any]]:
            r = conn.execute(self._NOTIFIER_SELECT + " WHERE name = ?", (name,)).fetchone()
            return None if r is None else self._notifierDict(r)

        return self._call(thd)

    def deleteNotifier(self, name: str, actor: str, nowNs: int) -> "Deferred[bool]":
        """
        Remove a target; its pending messages become C{dead}, its history
        stays.
        """

        def thd(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                if not conn.execute("DELETE FROM notifiers WHERE name = ?", (name,)).rowcount:
                    return False
                conn.execute(
                    "UPDATE outbox SET state = 'dead', last_error = 'notifier removed', updated_ns = ?"
                    " WHERE notifier_name = ? AND state = 'pending'",
                    (nowNs, name),
                )
                conn.execute(
                    "INSERT INTO audit (at_ns, actor, action, target) VALUES (?, ?, 'notifier.remove', ?)",
                    (nowNs, actor, "notifier:" + name),
                )
                return True

        return self._call(thd)

    def dueNotifications(self, nowNs: int, limit: int) -> "Deferred[List[Dict[str, Any]]]":
        """
        Pending messages due by C{nowNs} of enabled targets, oldest due
        first, each with its target's current settings.
        """
        return self._call(
            lambda conn: [
                {
                    "id": r[0],
                    "run_id": r[1],
                    "notifier_name": r[2],
                    "name": r[2],
                    "template": r[3],
                    "attempts": r[4],
                    "body": bytes(r[5]),
                    "content_type": r[6],
                    "url": r[7],
                    "secret_env": r[8],
                    "headers": json.loads(r[9] or "{}"),
                }
                for r in conn.execute(
                    "SELECT o.id, o.run_id, o.notifier_name, o.template, o.attempts, o.body, o.content_type,"
                    " n.url, n.secret_env, n.headers FROM outbox o JOIN notifiers n ON n.name = o.notifier_name"
                    " WHERE o.state = 'pending' AND o.next_attempt_ns <= ? AND n.enabled = 1"
                    " ORDER BY o.next_attempt_ns, o.id LIMIT ?",
                    (nowNs, limit),
                )
            ]
        )

    def nextNotificationDue(self) -> "Deferred[Optional[int]]":
        return self._call(
            lambda conn: conn.execute(
                "SELECT MIN(o.next_attempt_ns) FROM outbox o JOIN notifiers n ON n.name = o.notifier_name"
                " WHERE o.state = 'pending' AND n.enabled = 1"
            ).fetchone()[0]
        )

    def recordDelivery(
        self,
        outboxID: int,
        attempt: int,
        nowNs: int,
        status: str,
        httpStatus: Optional[int],
        error: str,
        excerpt: str,
        state: str,
        nextAttemptNs: Optional[int],
    ) -> "Deferred[bool]":
        """
        One attempt's row and the message's new state, in one transaction.
        False (nothing written) when the message is no longer pending at
        C{attempt - 1} attempts.
        """

        def thd(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                cur = conn.execute(
                    "UPDATE outbox SET state = ?, attempts = ?, next_attempt_ns = COALESCE(?, next_attempt_ns),"
                    " last_error = ?, updated_ns = ? WHERE id = ? AND state = 'pending' AND attempts = ?",
                    (state, attempt, nextAttemptNs, error[:500], nowNs, outboxID, attempt - 1),
                )
                if not cur.rowcount:
                    return False
                conn.execute(
                    "INSERT INTO deliveries (outbox_id, notifier_name, attempt, at_ns, status, http_status, error,"
                    " response_excerpt) SELECT id, notifier_name, ?, ?, ?, ?, ?, ? FROM outbox WHERE id = ?",
                    (attempt, nowNs, status, httpStatus, error[:500], excerpt[:2048], outboxID),
                )
                return True

        return self._call(thd)

    def deliveries(self, name: str, limit: int = 100) -> "Deferred[List[Dict[str, Any]]]":
        """
        A target's attempts, newest first (also after it was removed).
        """
        return self._call(
            lambda conn: [
                {
                    "outbox_id": r[0],
                    "run_id": r[1],
                    "attempt": r[2],
                    "at_ns": r[3],
                    "status": r[4],
                    "http_status": r[5],
                    "error": r[6],
                    "response_excerpt": r[7],
                    "message_state": r[8],
                    "next_attempt_ns": r[9] if r[8] == "pending" else None,
                }
                for r in conn.execute(
                    "SELECT d.outbox_id, o.run_id, d.attempt, d.at_ns, d.status, d.http_status, d.error,"
                    " d.response_excerpt, o.state, o.next_attempt_ns FROM deliveries d JOIN outbox o ON o.id = d.outbox_id"
                    " WHERE d.notifier_name = ? ORDER BY d.at_ns DESC, d.id DESC LIMIT ?",
                    (name, limit),
                )
            ]
        )

    def outboxFor(self, runID: str) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [
                {"id": r[0], "notifier_name": r[1], "template": r[2], "state": r[3], "attempts": r[4], "last_error": r[5],
                 "created_ns": r[6], "updated_ns": r[7]}
                for r in conn.execute(
                    "SELECT id, notifier_name, template, state, attempts, last_error, created_ns, updated_ns"
                    " FROM outbox WHERE run_id = ?"
                    " ORDER BY notifier_name",
                    (runID,),
                )
            ]
        )

    def metricCounts(self) -> "Deferred[Dict[str, Dict[str, int]]]":
        """
        For a metrics scrape: runs by state, stored deviations by severity,
        outbox messages by state.
        """

        def thd(conn: sqlite3.Connection) -> Dict[str, Dict[str, int]]:
            return {
                "runs": dict(conn.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall()),
                "deviations": dict(conn.execute("SELECT severity, COUNT(*) FROM deviations GROUP BY severity").fetchall()),
                "outbox": dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()),
            }

        return self._call(thd)


    # -- retention --
    # Raw events older than the retention period go, in small batches (one
    # short transaction each), except those a deviation cites as evidence.
    # Runs, verdicts, deviations, baselines and the audit are kept.

    def pruneEvents(self, cutoffNs: int, batch: int = 5000) -> "Deferred[int]":
        """
        Delete up to C{batch} events received before C{cutoffNs} that no
        deviation cites; returns how many went.
        """
        return self._call(self._thd_pruneEvents, cutoffNs, batch)

    def _thd_pruneEvents(self, conn: sqlite3.Connection, cutoffNs: int, batch: int) -> int:
        with _transaction(conn):
            return conn.execute(
                "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.received_ns < ?"
                " AND NOT EXISTS (SELECT 1 FROM deviations d WHERE d.evidence_event_id = e.id) LIMIT ?)",
                (cutoffNs, batch),
            ).rowcount

    # -- shared runner registry --
    # Registrations and heartbeats, so every orchestrator on one database
    # knows every runner (L{fangs.orchestrator.registry} caches them).

    def upsertRunner(self, runnerID: str, registration: str, nowNs: int) -> "Deferred[bool]":
        """
        Record a (re-)registration (C{registration} is the wire JSON).
        Returns True when it replaced one.
        """
        return self._call(self._thd_upsertRunner, runnerID, registration, nowNs)

    def _thd_upsertRunner(self, conn: sqlite3.Connection, runnerID: str, registration: str, nowNs: int) -> bool:
        with _transaction(conn):
            replaced = conn.execute("SELECT 1 FROM runners WHERE runner_id = ?", (runnerID,)).fetchone() is not None
            conn.execute(
                "INSERT INTO runners (runner_id, registration, registered_ns, last_seen_ns) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (runner_id) DO UPDATE SET registration = excluded.registration,"
                " registered_ns = excluded.registered_ns, last_seen_ns = excluded.last_seen_ns, status = '',"
                " active_run_ids = '[]', events_queued = 0",
                (runnerID, registration, nowNs, nowNs),
            )
            return replaced

    def touchRunner(
        self,
        runnerID: str,
        nowNs: int,
        status: Optional[str] = None,
        activeRunIDs: Optional[Sequence[str]] = None,
        eventsQueued: Optional[int] = None,
    ) -> "Deferred[bool]":
        """
        A heartbeat or poll: last seen (never moved back), and what the
        heartbeat says when given.  False for an unknown runner.
        """
        active = None if activeRunIDs is None else json.dumps(list(activeRunIDs))
        return self._call(
            lambda conn: conn.execute(
                "UPDATE runners SET last_seen_ns = MAX(last_seen_ns, ?), status = COALESCE(?, status),"
                " active_run_ids = COALESCE(?, active_run_ids), events_queued = COALESCE(?, events_queued)"
                " WHERE runner_id = ?",
                (nowNs, status, active, eventsQueued, runnerID),
            ).rowcount
            == 1
        )

    _RUNNER_SELECT = (
        "SELECT runner_id, registration, registered_ns, last_seen_ns, status, active_run_ids, events_queued FROM runners"
    )

    @staticmethod
    def _runnerDict(r: Sequence[Any]) -> Dict[str, Any]:
        return {
            "runner_id": r[0],
            "registration": r[1],
            "registered_ns": r[2],
            "last_seen_ns": r[3],
            "status": r[4],
            "active_run_ids": json.loads(r[5] or "[]"),
            "events_queued": r[6],
        }

    def getRunner(self, runnerID: str) -> "Deferred[Optional[Dict[str, Any]]]":
        def thd(conn: sqlite3.Connection) -> Optional[Dict[str, Any]]:
            r = conn.execute(self._RUNNER_SELECT + " WHERE runner_id = ?", (runnerID,)).fetchone()
            return None if r is None else self._runnerDict(r)

        return self._call(thd)

    def listRunners(self, seenSinceNs: int) -> "Deferred[List[Dict[str, Any]]]":
        """
        Runners seen at or after C{seenSinceNs}, by id.
        """
        return self._call(
            lambda conn: [
                self._runnerDict(r)
                for r in conn.execute(self._RUNNER_SELECT + " WHERE last_seen_ns >= ? ORDER BY runner_id", (seenSinceNs,))
            ]
        )

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
        self, conn: sqlite3.Connection, runnerID: str, activeRunIDs: List[str], dispatchedBeforeNs: int, nowNs: int
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
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()  # a failed COMMIT (disk full) leaves it open
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL does): a second
        # ROLLBACK would raise and hide the error that matters.
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def synchronousRunner(f: Callable[..., Any], *args: Any) -> Deferred:
    """
    Run a C{_thd_*} function at once on the calling thread: for tests.
    """
    return maybeDeferred(f, *args)
