"""
PostgreSQL backend of the orchestrator's store: C{--db postgresql://...}.

L{PostgresStore} has every public method of L{SQLiteStore} with the same
semantics, so several orchestrators can share one database:

  - The queue is the C{runs} table.  L{PostgresStore.claimJob} leases with
    C{SELECT ... FOR UPDATE SKIP LOCKED}, so each job goes to exactly one
    poll, whichever orchestrator holds it.
  - Queuing or releasing a job sends C{NOTIFY fangs_jobs, '<runner>'}; every
    store C{LISTEN}s on a connection of its own thread and calls its
    C{jobListeners} (the dispatcher's C{wake}) on the reactor thread, so a
    long-poll on orchestrator A wakes when orchestrator B queues its job.
  - Transactions the two backends share (C{BEGIN IMMEDIATE} in
    L{fangs.orchestrator.store}) run C{SERIALIZABLE} here and are retried
    on a serialization failure, so their read-then-write logic (first result
    wins, one analysis plan per run, the sweeper's "runner lost") holds
    across replicas exactly as it does under SQLite's single writer.  The hot
    paths (claim, ingest, create) are written for PostgreSQL and run
    C{READ COMMITTED}.

How the shared code runs: a C{_thd_*} function of L{SQLiteStore} gets a
L{_Conn}, an adapter with C{sqlite3.Connection}'s C{execute}/C{executemany}
that rewrites the few SQLite spellings the shared SQL uses (C{?},
C{INSERT OR IGNORE}, two-argument C{MIN}/C{MAX}) and raises
C{sqlite3.IntegrityError} for a constraint violation, as the shared code
expects.  Any SQLite-only construct it cannot rewrite raises
L{Untranslatable}; the methods that use one are overridden below.  Which
methods were checked on PostgreSQL is listed in L{CHECKED}: a public method
added to L{SQLiteStore} and not listed fails the contract suite until
someone checks it here.

Blocking work happens on the store's own thread pool, one connection per
thread; nothing blocks the reactor.  Schema: the same tables and columns as
SQLite, integers as BIGINT nanoseconds and 0/1 flags, event data as TEXT (so
export is byte for byte), text columns in the C{"C"} collation so listings
sort as SQLite's do.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attrs
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from fangs.orchestrator import differ
from fangs.orchestrator.db import artifacts as artifactdb, stream as streamdb, tenants as tenantdb
from fangs.orchestrator.db.events import _perRun
from fangs.orchestrator import store as S
from fangs.orchestrator.allowlist import AllowEntry, ConfigSync, planConfigSync

log = Logger()

JOBS_CHANNEL = "fangs_jobs"
RUNNERS_CHANNEL = "fangs_runners"
SHARED_QUEUE = "*"  # NOTIFY payload of a job any runner may take
POOL_SIZE = 8
SERIALIZATION_RETRIES = 20
#: A lease lasts while one HTTP response is written; one older than this
#: belongs to an orchestrator that died mid-response and goes back.
LEASE_TIMEOUT_NS = 30 * 1_000_000_000

# ---------------------------------------------------------------------------
# Schema: the versions and meanings of store.MIGRATIONS, in PostgreSQL.  Every
# TEXT column is created COLLATE "C" (see _ddl), so ORDER BY on text sorts
# bytewise as in SQLite whatever the database's locale.

MIGRATIONS: List[Tuple[int, str, str]] = [
    (
        1,
        "core",
        """
        CREATE SEQUENCE runs_queue_seq;
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            package_name TEXT NOT NULL DEFAULT '',
            version TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            target_runner TEXT,
            runner_id TEXT,
            job TEXT NOT NULL,
            queue_seq BIGINT NOT NULL DEFAULT nextval('runs_queue_seq'),
            idempotency_key TEXT UNIQUE,
            created_ns BIGINT NOT NULL,
            dispatched_ns BIGINT,
            last_activity_ns BIGINT,
            deadline_ns BIGINT,
            finished_ns BIGINT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            result_status TEXT,
            failure_reason TEXT NOT NULL DEFAULT '',
            events_emitted BIGINT NOT NULL DEFAULT 0,
            events_dropped BIGINT NOT NULL DEFAULT 0,
            duration_ns BIGINT NOT NULL DEFAULT 0,
            events_received BIGINT NOT NULL DEFAULT 0,
            batches_received BIGINT NOT NULL DEFAULT 0,
            verdict TEXT
        );
        CREATE INDEX runs_queue ON runs(queue_seq) WHERE state IN ('pending', 'leased');
        CREATE INDEX runs_by_created ON runs(created_ns, id);
        CREATE INDEX runs_by_package ON runs(package_name, created_ns);
        CREATE INDEX runs_active ON runs(state, deadline_ns)
            WHERE state IN ('leased', 'dispatched', 'running');
        CREATE TABLE batches (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq BIGINT NOT NULL,
            events BIGINT NOT NULL,
            received_ns BIGINT NOT NULL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE TABLE events (
            id BIGSERIAL PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq BIGINT NOT NULL,
            idx INTEGER NOT NULL,
            type INTEGER NOT NULL,
            ts_ns BIGINT NOT NULL,
            received_ns BIGINT NOT NULL,
            pid BIGINT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX events_by_run ON events(run_id, seq, idx)
        """,
    ),
    (
        2,
        "differ",
        """
        ALTER TABLE runs ADD COLUMN decision TEXT;
        ALTER TABLE runs ADD COLUMN analyzed_ns BIGINT;
        ALTER TABLE runs ADD COLUMN deviation_count BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN max_severity TEXT;
        ALTER TABLE runs ADD COLUMN severity_rank INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX runs_pending ON runs(severity_rank, finished_ns) WHERE verdict = 'deviations' AND decision IS NULL;
        CREATE TABLE run_fingerprints (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            count BIGINT NOT NULL,
            first_event_id BIGINT NOT NULL,
            cred INTEGER NOT NULL DEFAULT 0,
            raw_ip INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, category, value)
        );
        CREATE TABLE baseline (
            package_name TEXT NOT NULL,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            count BIGINT NOT NULL,
            added_ns BIGINT NOT NULL,
            PRIMARY KEY (package_name, category, value, run_id)
        );
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
            evidence_event_id BIGINT NOT NULL,
            count BIGINT NOT NULL,
            detected_ns BIGINT NOT NULL
        );
        CREATE INDEX deviations_by_run ON deviations(run_id);
        CREATE INDEX deviations_by_detected ON deviations(detected_ns, id);
        CREATE INDEX deviations_by_package ON deviations(package_name, detected_ns);
        CREATE TABLE packages (
            name TEXT PRIMARY KEY,
            added_ns BIGINT NOT NULL,
            added_by TEXT NOT NULL DEFAULT '',
            last_checked_ns BIGINT,
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
            created_ns BIGINT NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            UNIQUE (scope, package_name, kind, value)
        );
        CREATE TABLE audit (
            id BIGSERIAL PRIMARY KEY,
            at_ns BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX audit_by_target ON audit(target, at_ns)
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
            published_ns BIGINT,
            dist_tags TEXT NOT NULL DEFAULT '',
            discovered_ns BIGINT NOT NULL,
            seeded INTEGER NOT NULL DEFAULT 0,
            queued INTEGER NOT NULL DEFAULT 0,
            queued_ns BIGINT,
            run_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (package_name, version)
        );
        CREATE INDEX releases_waiting ON releases(package_name) WHERE queued = 0 AND seeded = 0;
        ALTER TABLE packages ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
        ALTER TABLE packages ADD COLUMN next_check_ns BIGINT
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
            created_ns BIGINT NOT NULL,
            updated_ns BIGINT NOT NULL
        );
        CREATE TABLE outbox (
            id BIGSERIAL PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            notifier_name TEXT NOT NULL,
            template TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ns BIGINT NOT NULL,
            created_ns BIGINT NOT NULL,
            updated_ns BIGINT NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            body BYTEA NOT NULL,
            content_type TEXT NOT NULL,
            UNIQUE (run_id, notifier_name)
        );
        CREATE INDEX outbox_due ON outbox(next_attempt_ns) WHERE state = 'pending';
        CREATE TABLE deliveries (
            id BIGSERIAL PRIMARY KEY,
            outbox_id BIGINT NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            notifier_name TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            at_ns BIGINT NOT NULL,
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
            created_ns BIGINT NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            revoked_ns BIGINT
        )
        """,
    ),
    (
        6,
        "runners and retention",
        """
        CREATE TABLE runners (
            runner_id TEXT PRIMARY KEY,
            registration TEXT NOT NULL,
            registered_ns BIGINT NOT NULL,
            last_seen_ns BIGINT NOT NULL,
            status TEXT NOT NULL DEFAULT '',
            active_run_ids TEXT NOT NULL DEFAULT '[]',
            events_queued BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX events_by_received ON events(received_ns);
        CREATE INDEX deviations_by_evidence ON deviations(evidence_event_id);
        ALTER TABLE runs ADD COLUMN leased_ns BIGINT;
        CREATE INDEX runs_by_state ON runs(state, created_ns, id);
        CREATE INDEX runs_by_verdict ON runs(verdict, created_ns, id);
        CREATE INDEX deviations_by_rank ON deviations(severity_rank, detected_ns, id)
        """,
    ),
    (
        7,
        "install lifecycle",
        """
        ALTER TABLE runs ADD COLUMN install_exit_code INTEGER;
        ALTER TABLE runs ADD COLUMN install_finished_ns BIGINT;
        ALTER TABLE runs ADD COLUMN observation_ended_ns BIGINT;
        ALTER TABLE runs ADD COLUMN events_unresolved BIGINT NOT NULL DEFAULT 0
        """,
    ),
    (20, "run stream", streamdb.POSTGRES_SCHEMA),
    (21, "artifacts", artifactdb.POSTGRES_SCHEMA),
    (
        50,
        "harden: server-side sessions, idempotency digests, runner drop counters",
        """
        CREATE TABLE dashboard_sessions (
            id_hash TEXT PRIMARY KEY,
            token_id TEXT NOT NULL,
            created_ns BIGINT NOT NULL,
            expires_ns BIGINT NOT NULL
        );
        CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions(token_id);
        ALTER TABLE runs ADD COLUMN idempotency_digest TEXT NOT NULL DEFAULT '';
        CREATE TABLE runner_drop_counters (
            runner_id TEXT PRIMARY KEY,
            events_dropped BIGINT NOT NULL
        )
        """,
    ),
    (S.ACTORS_MIGRATION, "actors and manifest deltas", S.actorsMigration("TEXT", "")),
    (tenantdb.TENANTS_MIGRATION, "tenants", tenantdb.POSTGRES_SCHEMA),
]


def _ddl(sql: str) -> str:
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)


# ---------------------------------------------------------------------------
# The shared SQL's few SQLite spellings


class Untranslatable(S.StoreError):
    """
    SQL the adapter cannot run on PostgreSQL: the method using it needs a
    PostgreSQL override in L{PostgresStore}.
    """


_UNSUPPORTED = ("INSERT OR REPLACE", "last_insert_rowid", "sqlite_master", "rowid", "strftime", "PRAGMA")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """
    Rewrite one statement of the shared (SQLite) SQL for psycopg:
    placeholders, C{INSERT OR IGNORE}, scalar C{MIN}/C{MAX}, C{char(0)},
    C{BEGIN IMMEDIATE}.
    """
    stripped = sql.strip()
    if stripped.upper() == "BEGIN IMMEDIATE":
        return "BEGIN ISOLATION LEVEL SERIALIZABLE"
    for bad in _UNSUPPORTED:
        if re.search(r"\b%s\b" % (re.escape(bad),), sql, re.IGNORECASE):
            raise Untranslatable("SQLite-only SQL (%s): %s" % (bad, stripped[:120]))
    out = sql.replace("%", "%%")
    out = _placeholders(out)
    if re.match(r"\s*INSERT\s+OR\s+IGNORE\s+INTO\b", out, re.IGNORECASE):
        out = re.sub(r"INSERT\s+OR\s+IGNORE\s+INTO", "INSERT INTO", out, count=1, flags=re.IGNORECASE)
        out = out.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    out = _scalarMinMax(out)
    out = _qualifyUpsert(out)
    out = out.replace("char(0)", "chr(1)")  # PostgreSQL text cannot hold NUL
    return out


def _placeholders(sql: str) -> str:
    """
    C{?} outside quoted literals becomes C{%s}.
    """
    out = []
    quote: Optional[str] = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append(ch)
    return "".join(out)


def _qualifyUpsert(sql: str) -> str:
    """
    In C{ON CONFLICT ... DO UPDATE}, SQLite reads a bare column beside
    C{excluded.column} as the existing row's; PostgreSQL calls it ambiguous.
    Qualify it with the table (C{WHERE x != excluded.x}, C{x = x + excluded.x}).
    """
    m = re.match(r"\s*INSERT\s+INTO\s+(\w+)", sql, re.IGNORECASE)
    at = sql.upper().find("DO UPDATE")
    if m is None or at < 0:
        return sql
    table, head, tail = m.group(1), sql[:at], sql[at:]
    tail = re.sub(r"\b(WHERE|AND|OR)(\s+)(\w+)(\s*(?:!=|<>|=|<=|>=|<|>)\s*excluded\.)", r"\1\2%s.\3\4" % (table,), tail, flags=re.IGNORECASE)
    tail = re.sub(r"(=\s*)(\w+)(\s*[-+]\s*excluded\.)", r"\1%s.\2\3" % (table,), tail)
    return head + tail


def _scalarMinMax(sql: str) -> str:
    """
    SQLite's two-argument C{MIN(a, b)}/C{MAX(a, b)} are C{LEAST}/C{GREATEST};
    one-argument ones are aggregates and stay.
    """
    result = sql
    for m in reversed(list(re.finditer(r"\b(MIN|MAX)\(", sql, re.IGNORECASE))):
        depth, commas, i = 0, 0, m.end() - 1
        while i < len(sql):
            c = sql[i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
            elif c == "," and depth == 1:
                commas += 1
            i += 1
        if commas:
            name = "LEAST" if m.group(1).upper() == "MIN" else "GREATEST"
            result = result[: m.start()] + name + result[m.start() + 3 :]
    return result


class _Conn:
    """
    The part of C{sqlite3.Connection} the shared C{_thd_*} functions use,
    over a psycopg connection in autocommit mode.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(self.raw.info.transaction_status != TransactionStatus.IDLE)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        import psycopg

        try:
            return self.raw.execute(translate(sql), tuple(args))
        except psycopg.errors.IntegrityError as e:
            raise sqlite3.IntegrityError(str(e)) from e

    def executemany(self, sql: str, rows: Any) -> Any:
        import psycopg

        rows = list(rows)
        cur = self.raw.cursor()
        if rows:
            try:
                cur.executemany(translate(sql), rows)
            except psycopg.errors.IntegrityError as e:
                raise sqlite3.IntegrityError(str(e)) from e
        return cur


def _numericAsNumber(conn: Any) -> None:
    """
    C{SUM()} of integers is C{numeric} in PostgreSQL; SQLite gives an int.
    """
    from psycopg.types.numeric import NumericLoader

    class Loader(NumericLoader):
        def load(self, data: Any) -> Any:
            v = super().load(data)
            return int(v) if v == v.to_integral_value() else float(v)

    conn.adapters.register_loader("numeric", Loader)


#: The first key of the advisory locks serialising analyses of a package.
ANALYSIS_LOCK_CLASS = 424202


class _packageLock:
    """
    A session advisory lock on the run's package, held around (never inside)
    the analysis transaction: taken before C{BEGIN}, so the transaction's
    snapshot already sees the previous analysis of the package committed.
    """

    def __init__(self, conn: _Conn, runID: str) -> None:
        self._raw = conn.raw
        self._runID = runID
        self._package: Optional[str] = None

    def __enter__(self) -> None:
        row = self._raw.execute("SELECT package_name FROM runs WHERE id = %s", (self._runID,)).fetchone()
        if row is not None:
            self._package = row[0] or ""
            self._raw.execute("SELECT pg_advisory_lock(%s::int, hashtext(%s))", (ANALYSIS_LOCK_CLASS, self._package))

    def __exit__(self, excType: Any, exc: Any, tb: Any) -> None:
        if self._package is None or self._raw.closed:
            return  # a closed connection released its locks
        try:
            self._raw.execute("SELECT pg_advisory_unlock(%s::int, hashtext(%s))", (ANALYSIS_LOCK_CLASS, self._package))
        except Exception:
            if excType is None:
                raise
            log.failure("releasing the analysis lock of package {package} failed", package=self._package)


class _begin:
    """
    C{BEGIN} (READ COMMITTED) ... C{COMMIT}, rolled back on any exception:
    for the statements written for PostgreSQL.
    """

    def __init__(self, conn: _Conn) -> None:
        self._raw = conn.raw

    def __enter__(self) -> Any:
        self._raw.execute("BEGIN")
        return self._raw

    def __exit__(self, excType: Any, exc: Any, tb: Any) -> None:
        self._raw.execute("COMMIT" if excType is None else "ROLLBACK")


# Public methods of SQLiteStore whose SQL (inherited or overridden) was checked
# on PostgreSQL.  The contract suite fails on any public method of
# SQLiteStore missing here.
CHECKED = frozenset(
    """
    start stop createRun getRun claimJob confirmDispatch releaseLease requeueLeased queueDepth
    pendingTargets cancelRun runsToCancel sweepLost ingestBatch ingestBatches eventPage eventCounts recordResult
    listRuns analyzeRun decide deviationsForRun getDeviation listDeviations pendingRuns addPackage
    removePackage listPackages getPackage baselineFor packageHasRuns listAllow addAllow removeAllow
    syncConfigAllow auditFor watchList knownVersions recordPackument waitingReleases
    markReleaseQueued markReleaseFailed finishChecks watchStatus listReleases dashboardSummary
    dashboardRuns dashboardPackages eventsByID tableRows tableNames createToken lookupToken
    listTokens revokeToken hasAdminToken upsertNotifier listNotifiers getNotifier deleteNotifier
    dueNotifications nextNotificationDue recordDelivery deliveries outboxFor metricCounts
    pruneEvents upsertRunner touchRunner getRunner listRunners backend failRunsMissingFromHeartbeat
    appendStream appendStreamLines streamSince streamBounds putArtifact linkArtifact artifactFor getArtifact pruneArtifacts
    createSession lookupSession deleteSession revokeTokenSessions dropIncrease batchStored
    analyzeRunTenants artifactVisible linkRunTenant queueDepthByTenant runTenants sharedScanCandidates auditLog
    """.split()
)


class PostgresStore(streamdb.PostgresStreamStorage, artifactdb.PostgresArtifactStorage, S.SQLiteStore):
    """
    PostgreSQL backend.  C{jobListeners} are called on the reactor thread
    with a runner id (or None for the shared queue) whenever any store on the
    same database queues or releases a job.
    """

    backend = "postgresql"

    def __init__(self, dsn: str, reactor: Any = None, poolSize: int = POOL_SIZE, listen: bool = True) -> None:
        self._dsn = dsn
        self._reactor = reactor
        self._poolSize = poolSize
        self._pool: Optional[ThreadPool] = ThreadPool(minthreads=1, maxthreads=poolSize, name="fangs-postgres")
        self._runInThread = self._deferToPool
        self._local = threading.local()
        self._conns: List[Any] = []
        self._connsLock = threading.Lock()
        self._ownPIDs: set = set()
        self._listen = listen
        self._listener: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self.jobListeners: List[Callable[[Optional[str]], Any]] = []
        self.runnerListeners: List[Callable[[str], Any]] = []
        #: Called on the reactor thread when any orchestrator appended a run stream line.
        self.streamListeners: List[Callable[[], Any]] = []
        self._analysisLocks: Dict[str, DeferredLock] = {}
        #: Transactions thrown away and run again (serialization failures, deadlocks).
        self.serializationRetries = 0
        #: Calls made before the migrations are done wait here.
        self._gate: Optional[List[Tuple[Deferred, Callable[..., Any], Tuple[Any, ...]]]] = []

    # -- connections -------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        raw = psycopg.connect(self._dsn, autocommit=True, application_name="fangs-orchestrator")
        _numericAsNumber(raw)
        return raw

    def _conn(self) -> _Conn:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed:
            conn = _Conn(self._connect())
            self._local.conn = conn
            with self._connsLock:
                self._conns.append(conn.raw)
                self._ownPIDs.add(conn.raw.info.backend_pid)
        return conn

    def _call(self, f: Callable[..., Any], *args: Any) -> Deferred:
        if self._gate is not None and f != self._thd_migrate:
            # The pool runs calls side by side: none may overtake the
            # migrations (SQLite's single thread keeps them in order).
            waiting: Deferred = Deferred()
            self._gate.append((waiting, f, args))
            return waiting
        return self._runInThread(self._retrying(f, args))

    def _openGate(self, result: Any) -> Any:
        gate, self._gate = self._gate or [], None
        for waiting, f, args in gate:
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                self._call(f, *args).chainDeferred(waiting)
        return result

    def _retrying(self, f: Callable[..., Any], args: Tuple[Any, ...]) -> Callable[[], Any]:
        def inThread() -> Any:
            import psycopg

            for attempt in range(SERIALIZATION_RETRIES):
                conn = self._conn()
                try:
                    return f(conn, *args)
                except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
                    self.serializationRetries += 1
                    self._rollback(conn)
                    time.sleep(0.001 * (attempt + 1))
                except psycopg.OperationalError:
                    # A broken connection: drop it; the caller sees the error.
                    self._local.conn = None
                    raise
                except BaseException:
                    self._rollback(conn)
                    raise
            raise S.StoreError("gave up after %d serialization failures" % (SERIALIZATION_RETRIES,))

        return inThread

    @staticmethod
    def _rollback(conn: _Conn) -> None:
        from psycopg.pq import TransactionStatus

        if conn.raw.info.transaction_status != TransactionStatus.IDLE:
            conn.raw.execute("ROLLBACK")

    async def start(self) -> None:
        """
        Start the pool, apply migrations, then listen for jobs queued by
        other orchestrators.
        """
        assert self._pool is not None
        if not self._pool.started:
            self._pool.start()
        if self._gate is None:
            self._gate = []
        await self._call(self._thd_migrate).addBoth(self._openGate)
        if self._listen and self._listener is None:
            self._stopping.clear()
            self._listener = threading.Thread(target=self._listenLoop, name="fangs-postgres-listen", daemon=True)
            self._listener.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._pool is not None and self._pool.started:
            self._pool.stop()
        with self._connsLock:
            conns, self._conns = self._conns, []
        for raw in conns:
            try:
                raw.close()
            except Exception:
                log.failure("closing a PostgreSQL connection failed")
        if self._listener is not None:
            self._listener.join(5)
            self._listener = None

    def _thd_migrate(self, conn: _Conn) -> None:
        raw = conn.raw
        with raw.transaction():
            # One orchestrator migrates at a time; the others wait here.
            raw.execute("SELECT pg_advisory_xact_lock(4242000001)")
            raw.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)"
            )
            applied = {r[0] for r in raw.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in sorted(MIGRATIONS):
                if version in applied:
                    continue
                for statement in S._statements(_ddl(sql)):
                    raw.execute(statement.replace("%", "%%"), ())
                raw.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s, (extract(epoch FROM now()) * 1e9)::bigint)",
                    (version, name),
                )
                log.info("applied migration {version} {name}", version=version, name=name)

    def schemaVersion(self) -> "Deferred[int]":
        return self._call(lambda conn: conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0])

    # -- LISTEN/NOTIFY -------------------------------------------------------

    def _listenLoop(self) -> None:
        import psycopg

        backoff = 0.5
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, application_name="fangs-listen") as raw:
                    raw.execute("LISTEN %s" % (JOBS_CHANNEL,))
                    raw.execute("LISTEN %s" % (RUNNERS_CHANNEL,))
                    raw.execute("LISTEN %s" % (streamdb.STREAM_CHANNEL,))
                    backoff = 0.5
                    # Jobs may have been queued while not listening.
                    self._deliver(JOBS_CHANNEL, SHARED_QUEUE)
                    while not self._stopping.is_set():
                        for n in raw.notifies(timeout=0.5):
                            if n.pid not in self._ownPIDs:
                                self._deliver(n.channel, n.payload)
            except Exception as e:
                if self._stopping.is_set():
                    return
                log.warn("PostgreSQL LISTEN connection failed ({error}); retrying", error=str(e))
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _deliver(self, channel: str, payload: str) -> None:
        if self._reactor is None:
            return
        self._reactor.callFromThread(self._notified, channel, payload)

    def _notified(self, channel: str, payload: str) -> None:
        listeners: List[Callable[..., Any]]
        if channel == streamdb.STREAM_CHANNEL:
            for listener in list(self.streamListeners):
                try:
                    listener()
                except Exception:
                    log.failure("a run stream listener failed")
            return
        if channel == JOBS_CHANNEL:
            listeners, arg = list(self.jobListeners), (None if payload == SHARED_QUEUE else payload)
        else:
            listeners, arg = list(self.runnerListeners), payload
        for listener in listeners:
            try:
                listener(arg)
            except Exception:
                log.failure("a {channel} listener failed", channel=channel)

    # -- runs and the queue ------------------------------------------------------

    def _thd_createRun(self, conn: _Conn, run: S.NewRun) -> Tuple[str, bool]:
        import psycopg

        with _begin(conn) as raw:
            try:
                row = raw.execute(
                    "INSERT INTO runs (id, package_name, version, kind, state, target_runner, job, idempotency_key,"
                    " idempotency_digest, created_ns, tenant)"
                    " VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                    (run.id, run.package_name, run.version, run.kind, run.target_runner, run.job, run.idempotency_key,
                     run.idempotency_digest, run.created_ns, run.tenant),
                ).fetchone()
            except psycopg.errors.UniqueViolation:
                raise S.Conflict("run %s exists already" % (run.id,)) from None
            if row is None:
                found = raw.execute(
                    "SELECT id, idempotency_digest FROM runs WHERE idempotency_key = %s", (run.idempotency_key,)
                ).fetchone()
                S.checkIdempotency(found[1], run.idempotency_digest)
                return found[0], False
            raw.execute("INSERT INTO run_tenants (run_id, tenant, linked_ns) VALUES (%s, %s, %s)",
                        (run.id, run.tenant, run.created_ns))
            raw.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, run.target_runner or SHARED_QUEUE))
            return run.id, True

    def _thd_claimJob(self, conn: _Conn, runnerID: str) -> Optional[Tuple[str, str]]:
        return conn.raw.execute(
            "UPDATE runs SET state = 'leased', runner_id = %s, leased_ns = (extract(epoch FROM clock_timestamp()) * 1e9)::bigint"
            " WHERE id = (SELECT id FROM runs WHERE state = 'pending' AND (target_runner = %s OR target_runner IS NULL)"
            " ORDER BY queue_seq LIMIT 1 FOR UPDATE SKIP LOCKED) AND state = 'pending'"
            " RETURNING id, job",
            (runnerID, runnerID),
        ).fetchone()

    def _thd_releaseLease(self, conn: _Conn, runID: str) -> bool:
        return (
            conn.raw.execute(
                "WITH r AS (UPDATE runs SET state = 'pending', runner_id = NULL, leased_ns = NULL"
                " WHERE id = %s AND state = 'leased' RETURNING target_runner)"
                " SELECT pg_notify(%s, COALESCE(target_runner, %s)) FROM r",
                (runID, JOBS_CHANNEL, SHARED_QUEUE),
            ).fetchone()
            is not None
        )

    def _thd_requeueLeased(self, conn: _Conn) -> int:
        # Other orchestrators may be writing responses for their leases right
        # now: only leases nobody can still be confirming go back.
        return self._thd_requeueStaleLeases(conn, LEASE_TIMEOUT_NS)

    def _thd_requeueStaleLeases(self, conn: _Conn, olderThanNs: int) -> int:
        rows = conn.raw.execute(
            "WITH r AS (UPDATE runs SET state = 'pending', runner_id = NULL, leased_ns = NULL"
            " WHERE state = 'leased' AND COALESCE(leased_ns, 0)"
            " < (extract(epoch FROM clock_timestamp()) * 1e9)::bigint - %s RETURNING target_runner)"
            " SELECT pg_notify(%s, COALESCE(target_runner, %s)) FROM r",
            (olderThanNs, JOBS_CHANNEL, SHARED_QUEUE),
        ).fetchall()
        return len(rows)

    def _thd_sweepLost(self, conn: _Conn, nowNs: int) -> List[str]:
        # One UPDATE: of two orchestrators sweeping at once, each run is
        # failed (and so analysed) by exactly one of them.
        requeued = self._thd_requeueStaleLeases(conn, LEASE_TIMEOUT_NS)
        if requeued:
            log.warn("{n} stale leases went back to the queue", n=requeued)
        return sorted(
            r[0]
            for r in conn.raw.execute(
                "UPDATE runs SET state = 'failed', failure_reason = 'runner lost', finished_ns = %s"
                " WHERE state IN ('dispatched', 'running') AND deadline_ns < %s RETURNING id",
                (nowNs, nowNs),
            )
        )

    # -- events ---------------------------------------------------------------------

    #: Groups of batches the group committer may have in flight at once.
    ingestConcurrency = 2
    #: Ids come from a sequence in concurrent transactions: count whole runs.
    _incrementalCounts = False

    def _thd_ingestBatches(self, conn: _Conn, writes: Sequence[S.BatchWrite]) -> List[S.IngestOutcome]:
        import psycopg

        try:
            with _begin(conn) as raw:
                outcomes = []
                fresh = []
                for w in writes:
                    if raw.execute(
                        "INSERT INTO batches (run_id, seq, events, received_ns) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING RETURNING 1",
                        (w.run_id, w.seq, len(w.rows), w.now_ns),
                    ).fetchone() is None:
                        outcomes.append(S.IngestOutcome(False, 0))
                        continue
                    outcomes.append(S.IngestOutcome(True, len(w.rows)))
                    fresh.append(w)
                total = sum(len(w.rows) for w in fresh)
                if total:
                    ids = [r[0] for r in raw.execute("SELECT nextval('events_id_seq') FROM generate_series(1, %s)", (total,))]
                    with raw.cursor().copy(
                        "COPY events (id, run_id, seq, idx, type, ts_ns, received_ns, pid, data) FROM STDIN"
                    ) as copy:
                        at = 0
                        for w in fresh:
                            for r in w.rows:
                                copy.write_row((ids[at], w.run_id, r.seq, r.idx, r.type, r.ts_ns, w.now_ns, r.pid, r.data))
                                at += 1
                    sets: Dict[Tuple[str, Tuple[str, ...]], differ.FingerprintSet] = {}
                    at = 0
                    for w in fresh:
                        key = (w.run_id, tuple(w.cred_paths))
                        fps = sets.get(key)
                        if fps is None:
                            fps = sets[key] = differ.FingerprintSet(w.cred_paths or differ.DEFAULT_CRED_PATHS)
                        for r in w.rows:
                            if r.payload is not None:
                                fps.add(ids[at], r.type, r.payload)
                            at += 1
                    found = sorted(  # one lock order
                        (runID,) + f for (runID, _), fps in sets.items() for f in fps.tuples())
                    if found:
                        raw.cursor().executemany(
                            "INSERT INTO run_fingerprints AS f (run_id, category, value, count, first_event_id, cred, raw_ip)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                            " ON CONFLICT (run_id, category, value) DO UPDATE SET"
                            " count = f.count + excluded.count,"
                            " first_event_id = LEAST(f.first_event_id, excluded.first_event_id),"
                            " cred = GREATEST(f.cred, excluded.cred), raw_ip = GREATEST(f.raw_ip, excluded.raw_ip)",
                            found,
                        )
                for runID, (events, batches, nowNs, deadlineNs) in sorted(_perRun(fresh).items()):
                    raw.execute(
                        "UPDATE runs SET events_received = events_received + %s,"
                        " batches_received = batches_received + %s, last_activity_ns = %s,"
                        " deadline_ns = GREATEST(COALESCE(deadline_ns, 0), %s),"
                        " state = CASE WHEN state = 'dispatched' THEN 'running' ELSE state END"
                        " WHERE id = %s",
                        (events, batches, nowNs, deadlineNs, runID),
                    )
                return outcomes
        except psycopg.errors.IntegrityError as e:
            raise sqlite3.IntegrityError(str(e)) from e

    # -- analysis --------------------------------------------------------------------
    # Analyses of one package read each other's rows (its baseline, whether
    # it has a clean run) and each writes its own: under SERIALIZABLE two at
    # once conflict and one is thrown away and retried, so with many runs
    # finishing together most attempts were wasted, and a second
    # orchestrator only added conflicts.  They queue instead: one per
    # package at a time in this process (a DeferredLock, so no pool thread
    # waits for it), and across orchestrators a session advisory lock held
    # around the transaction.

    def analyzeRun(self, runID: str, nowNs: int, credPaths: Sequence[str] = (), tenant: Optional[str] = None) -> Deferred:
        return self._oneAnalysisPerPackage(
            runID, lambda: S.SQLiteStore.analyzeRun(self, runID, nowNs, credPaths, tenant=tenant))

    def analyzeRunTenants(self, runID: str, nowNs: int, credPaths: Sequence[str] = ()) -> Deferred:
        return self._oneAnalysisPerPackage(
            runID, lambda: S.SQLiteStore.analyzeRunTenants(self, runID, nowNs, credPaths))

    def decide(self, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str] = (),
               tenant: str = "default") -> Deferred:
        return self._oneAnalysisPerPackage(
            runID, lambda: S.SQLiteStore.decide(self, runID, decision, actor, nowNs, credPaths, tenant=tenant))

    def _oneAnalysisPerPackage(self, runID: str, work: Callable[[], Deferred]) -> Deferred:
        async def serialised() -> Any:
            run = await self.getRun(runID)
            key = run.package_name if run is not None else ""
            lock = self._analysisLocks.get(key)
            if lock is None:
                lock = self._analysisLocks[key] = DeferredLock()
            await lock.acquire()
            try:
                return await work()
            finally:
                lock.release()
                if not lock.locked and not lock.waiting:
                    self._analysisLocks.pop(key, None)

        return Deferred.fromCoroutine(serialised())

    def _thd_analyzeRun(self, conn: _Conn, runID: str, nowNs: int, credPaths: Sequence[str],
                        tenant: Optional[str] = None) -> Any:
        with _packageLock(conn, runID):
            return super()._thd_analyzeRun(conn, runID, nowNs, credPaths, tenant)

    def _thd_analyzeRunTenants(self, conn: _Conn, runID: str, nowNs: int, credPaths: Sequence[str]) -> Any:
        with _packageLock(conn, runID):
            return super()._thd_analyzeRunTenants(conn, runID, nowNs, credPaths)

    def _thd_decide(self, conn: _Conn, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str],
                    tenant: str = "default") -> Any:
        with _packageLock(conn, runID):
            return super()._thd_decide(conn, runID, decision, actor, nowNs, credPaths, tenant)

    # -- allowlist, releases ------------------------------------------------------------

    def _thd_syncConfigAllow(self, conn: _Conn, wanted: Sequence[AllowEntry], nowNs: int) -> ConfigSync:
        with S._transaction(conn):
            existing = [
                AllowEntry(id=r[0], kind=r[1], value=r[2], scope=r[3], package_name=r[4], note=r[5])
                for r in conn.execute("SELECT id, kind, value, scope, package_name, note FROM allowlist WHERE source = 'config'")
            ]
            plan = planConfigSync(existing, wanted)
            for e in plan.insert:
                # SQLite's INSERT OR REPLACE: the new line replaces any row
                # with its id or its (scope, package, kind, value).
                conn.execute(
                    "DELETE FROM allowlist WHERE id = ? OR (tenant = '*' AND scope = 'global' AND package_name = ''"
                    " AND kind = ? AND value = ?)",
                    (e.id, e.kind, e.value),
                )
                conn.execute(
                    "INSERT INTO allowlist (id, tenant, scope, package_name, kind, value, note, source, created_ns, created_by)"
                    " VALUES (?, '*', 'global', '', ?, ?, ?, 'config', ?, 'config')",
                    (e.id, e.kind, e.value, e.note, nowNs),
                )
            for e in plan.update:
                conn.execute("UPDATE allowlist SET note = ? WHERE id = ?", (e.note, e.id))
            for entryID in plan.delete:
                conn.execute("DELETE FROM allowlist WHERE id = ?", (entryID,))
            return plan

    def knownVersions(self, name: str, tenant: str = "default") -> "Deferred[Dict[str, bool]]":
        return self._call(
            lambda conn: {
                r[0]: bool(r[1])
                for r in conn.execute("SELECT version, queued <> 0 OR seeded <> 0 FROM releases WHERE tenant = ? AND package_name = ?",
                                      (tenant, name))
            }
        )

    # -- dashboard introspection --------------------------------------------------------

    def tableRows(self, table: str, limit: int = 100, tenant: Optional[str] = None) -> "Deferred[Optional[List[Dict[str, Any]]]]":
        """
        Up to C{limit} rows of C{table}, newest first where the table has an
        C{id} column (SQLite's rowid order), as dicts; None for no such table.
        With C{tenant}, only that tenant's rows of a table with a C{tenant}
        column.
        """

        def thd(conn: _Conn) -> Optional[List[Dict[str, Any]]]:
            raw = conn.raw
            known = raw.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = %s",
                (table,),
            ).fetchone()
            if known is None:
                return None
            hasID = raw.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = %s AND column_name = 'id' AND data_type = 'bigint'",
                (table,),
            ).fetchone()
            order = " ORDER BY id DESC" if hasID else ""
            hasTenant = raw.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = %s AND column_name = 'tenant'",
                (table,),
            ).fetchone()
            if tenant is not None and hasTenant:
                cur = raw.execute('SELECT * FROM "%s" WHERE tenant = %%s%s LIMIT %%s' % (known[0], order), (tenant, limit))
            else:
                cur = raw.execute('SELECT * FROM "%s"%s LIMIT %%s' % (known[0], order), (limit,))
            names = [d.name for d in cur.description]
            return [dict(zip(names, r)) for r in cur]

        return self._call(thd)

    def tableNames(self) -> "Deferred[List[str]]":
        return self._call(
            lambda conn: [
                r[0]
                for r in conn.raw.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                    " AND table_type = 'BASE TABLE' ORDER BY table_name"
                )
            ]
        )

    # -- retention ---------------------------------------------------------------------

    def _thd_pruneEvents(self, conn: _Conn, cutoffNs: int, batch: int) -> int:
        # SKIP LOCKED: two orchestrators pruning at once take different rows.
        return conn.raw.execute(
            "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.received_ns < %s"
            " AND NOT EXISTS (SELECT 1 FROM deviations d WHERE d.evidence_event_id = e.id)"
            " LIMIT %s FOR UPDATE SKIP LOCKED)",
            (cutoffNs, batch),
        ).rowcount

    # -- shared runner registry ---------------------------------------------------------

    def _thd_upsertRunner(self, conn: _Conn, runnerID: str, registration: str, nowNs: int) -> bool:
        row = conn.raw.execute(
            "WITH u AS (INSERT INTO runners AS r (runner_id, registration, registered_ns, last_seen_ns)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (runner_id) DO UPDATE SET registration = excluded.registration,"
            " registered_ns = excluded.registered_ns, last_seen_ns = excluded.last_seen_ns, status = '',"
            " active_run_ids = '[]', events_queued = 0 RETURNING (xmax <> 0) AS replaced)"
            " SELECT replaced, pg_notify(%s, %s) FROM u",
            (runnerID, registration, nowNs, nowNs, RUNNERS_CHANNEL, runnerID),
        ).fetchone()
        return bool(row[0])
