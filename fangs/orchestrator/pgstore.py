"""
PostgreSQL backend of the orchestrator's store: C{--db postgresql://...}.

L{PostgresStore} is composed of the same components as
L{fangs.orchestrator.store.SQLiteStore} (L{fangs.orchestrator.store.COMPONENTS}),
running the same SQL: what PostgreSQL spells differently is asked of its
engine object (L{fangs.orchestrator.db.engines.PostgresEngine}: placeholders,
column types, C{GREATEST}, C{SKIP LOCKED}, isolation, error classes, the
C{COPY} of a batch of events, C{NOTIFY}), and the schema is the one list of
L{fangs.orchestrator.db.schema}, rendered for PostgreSQL.

What stays here is what only several orchestrators on one database need:

  - The queue is the C{runs} table.  L{PostgresStore.claimJob} leases with
    C{SELECT ... FOR UPDATE SKIP LOCKED} and stamps the lease, so each job
    goes to exactly one poll, whichever orchestrator holds it; a lease no
    orchestrator confirmed within L{LEASE_TIMEOUT_NS} (its orchestrator died
    mid-response) goes back.
  - Queuing or releasing a job sends C{NOTIFY fangs_jobs, '<runner>'}; every
    store C{LISTEN}s on a connection of its own thread and calls its
    C{jobListeners} (the dispatcher's C{wake}) on the reactor thread, so a
    long-poll on orchestrator A wakes when orchestrator B queues its job.
  - Transactions that read then write run C{SERIALIZABLE} and are retried
    on a serialization failure, so their logic (first result wins, one
    analysis plan per run, the sweeper's "runner lost") holds across
    replicas exactly as it does under SQLite's single writer.  The hot paths
    (claim, ingest, create) run C{READ COMMITTED}.

Blocking work happens on the store's own thread pool, one connection per
thread; nothing blocks the reactor.  Which public methods were checked on
PostgreSQL is listed in L{CHECKED}: a public method added to the components
and not listed fails the contract suite until someone checks it here.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from fangs.orchestrator import store as S
from fangs.orchestrator.db.analysis import AnalysisComponent
from fangs.orchestrator.db.connector import Connector
from fangs.orchestrator.db.engines import JOBS_CHANNEL, RUNNERS_CHANNEL, SHARED_QUEUE, PostgresEngine
from fangs.orchestrator.db.schema import MIGRATIONS  # noqa: F401 (the one schema, as on SQLite)
from fangs.orchestrator.db.stream import STREAM_CHANNEL, PostgresStreamStorage

log = Logger()

POOL_SIZE = 8
SERIALIZATION_RETRIES = 20
#: A lease lasts while one HTTP response is written; one older than this
#: belongs to an orchestrator that died mid-response and goes back.
LEASE_TIMEOUT_NS = 30 * 1_000_000_000
#: How long a statement waits for a lock before the store answers "busy"
#: (the PostgreSQL twin of SQLite's C{busy_timeout}).
LOCK_TIMEOUT_MS = 5000

_engine: Optional[PostgresEngine] = None


def engine() -> PostgresEngine:
    """
    The PostgreSQL engine (made on first use: it imports psycopg).
    """
    global _engine
    if _engine is None:
        _engine = PostgresEngine()
    return _engine


class PostgresConnection:
    """
    What a C{_thd_*} function gets: C{execute}/C{executemany} over a psycopg
    connection in autocommit mode, with the engine's placeholder style
    (L{PostgresEngine.sql}, the one conversion), and C{engine}.  C{raw} is the
    psycopg connection, for what only psycopg has (C{COPY}).
    """

    def __init__(self, raw: Any, engine: PostgresEngine) -> None:
        self.raw = raw
        self.engine = engine

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(self.raw.info.transaction_status != TransactionStatus.IDLE)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.raw.execute(self.engine.sql(sql), tuple(args))

    def executemany(self, sql: str, rows: Any) -> Any:
        cur = self.raw.cursor()
        rows = list(rows)
        if rows:
            cur.executemany(self.engine.sql(sql), rows)
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

    def __init__(self, conn: PostgresConnection, runID: str) -> None:
        self._raw = conn.raw
        self._runID = runID
        self._package: Optional[str] = None

    def __enter__(self) -> None:
        row = self._raw.execute("SELECT package_name FROM runs WHERE id = %s", (self._runID,)).fetchone()
        if row is not None:
            self._package = row[0] or ""
            # Another orchestrator's analysis of the package may take longer
            # than a request's lock timeout: wait for it however long, then
            # go back to the connection's timeout (set when it connected).
            self._raw.execute("SET lock_timeout = 0")
            try:
                self._raw.execute("SELECT pg_advisory_lock(%s::int, hashtext(%s))", (ANALYSIS_LOCK_CLASS, self._package))
            finally:
                self._raw.execute("RESET lock_timeout")

    def __exit__(self, excType: Any, exc: Any, tb: Any) -> None:
        if self._package is None or self._raw.closed:
            return  # a closed connection released its locks
        try:
            self._raw.execute("SELECT pg_advisory_unlock(%s::int, hashtext(%s))", (ANALYSIS_LOCK_CLASS, self._package))
        except Exception:
            if excType is None:
                raise
            log.failure("releasing the analysis lock of package {package} failed", package=self._package)


# Public methods of the store whose SQL was checked on PostgreSQL.  The
# contract suite fails on any public method of SQLiteStore missing here.
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
    createSession lookupSession deleteSession revokeTokenSessions dropIncrease batchStored schemaVersion runInTransaction
    analyzeRunTenants artifactVisible linkRunTenant queueDepthByTenant runTenants sharedScanCandidates auditLog
    """.split()
)


class PostgresConnector(Connector):
    """
    A pool of PostgreSQL connections, one per thread; calls wait for the
    migrations; serialization failures retried; LISTEN on a thread of its
    own.  C{jobListeners} are called on the reactor thread with a runner id
    (or None for the shared queue) whenever any store on the same database
    queues or releases a job.
    """

    backend = "postgresql"

    def __init__(
        self, dsn: str, reactor: Any = None, poolSize: int = POOL_SIZE, listen: bool = True, lockTimeoutMs: int = LOCK_TIMEOUT_MS
    ) -> None:
        self.engine = engine()
        self._lockTimeoutMs = lockTimeoutMs
        self._dsn = dsn
        self._reactor = reactor
        self._poolSize = poolSize
        self._pool: Optional[ThreadPool] = ThreadPool(minthreads=1, maxthreads=poolSize, name="fangs-postgres")
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

        raw = psycopg.connect(
            self._dsn,
            autocommit=True,
            application_name="fangs-orchestrator",
            options="-c lock_timeout=%d" % (self._lockTimeoutMs,),
        )
        _numericAsNumber(raw)
        return raw

    def _conn(self) -> PostgresConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed:
            conn = PostgresConnection(self._connect(), self.engine)
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
        assert self._pool is not None
        return deferToThreadPool(self._reactor, self._pool, self._retrying(f, args))

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

            last: Optional[BaseException] = None
            for attempt in range(SERIALIZATION_RETRIES):
                try:
                    conn = self._conn()
                except Exception as e:
                    raise self._classified(e)
                try:
                    return f(conn, *args)
                except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as e:
                    self.serializationRetries += 1
                    self._rollback(conn)
                    last = e
                    time.sleep(0.001 * (attempt + 1))
                except psycopg.OperationalError as e:
                    if conn.raw.closed or conn.raw.broken:
                        # A broken connection: drop it; the next call opens another.
                        self._local.conn = None
                    else:
                        self._rollback(conn)
                    raise self._classified(e)
                except Exception as e:
                    self._rollback(conn)
                    raise self._classified(e)
            assert last is not None
            raise self._classified(last)

        return inThread

    @staticmethod
    def _rollback(conn: PostgresConnection) -> None:
        if conn.in_transaction and not conn.raw.closed:
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

    # -- LISTEN/NOTIFY -------------------------------------------------------

    def _listenLoop(self) -> None:
        import psycopg

        backoff = 0.5
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, application_name="fangs-listen") as raw:
                    raw.execute("LISTEN %s" % (JOBS_CHANNEL,))
                    raw.execute("LISTEN %s" % (RUNNERS_CHANNEL,))
                    raw.execute("LISTEN %s" % (STREAM_CHANNEL,))
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
        if channel == STREAM_CHANNEL:
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


class PostgresStore(*S.COMPONENTS, PostgresStreamStorage, PostgresConnector):  # type: ignore[misc]
    """
    PostgreSQL backend: the shared components, and the queue's leases as
    several orchestrators need them.
    """

    # -- the queue: leases several orchestrators share ------------------------

    def _thd_claimJob(self, conn: PostgresConnection, runnerID: str) -> Optional[Tuple[str, str]]:
        # SKIP LOCKED: concurrent claims (any orchestrator) take different
        # jobs without waiting for each other; the lease is stamped so a
        # lease nobody confirmed goes back (_thd_requeueStaleLeases).
        return conn.execute(
            "UPDATE runs SET state = 'leased', runner_id = ?, leased_ns = %s"
            " WHERE id = (SELECT id FROM runs WHERE state = 'pending' AND (target_runner = ? OR target_runner IS NULL)"
            " ORDER BY queue_seq LIMIT 1%s) AND state = 'pending'"
            " RETURNING id, job" % (conn.engine.nowNs, conn.engine.skipLocked),
            (runnerID, runnerID),
        ).fetchone()

    def _thd_releaseLease(self, conn: PostgresConnection, runID: str) -> bool:
        return (
            conn.execute(
                "WITH r AS (UPDATE runs SET state = 'pending', runner_id = NULL, leased_ns = NULL"
                " WHERE id = ? AND state = 'leased' RETURNING target_runner)"
                " SELECT pg_notify(?, COALESCE(target_runner, ?)) FROM r",
                (runID, JOBS_CHANNEL, SHARED_QUEUE),
            ).fetchone()
            is not None
        )

    def _thd_requeueLeased(self, conn: PostgresConnection) -> int:
        # Other orchestrators may be writing responses for their leases right
        # now: only leases nobody can still be confirming go back.
        return self._thd_requeueStaleLeases(conn)

    def _thd_requeueStaleLeases(self, conn: PostgresConnection, olderThanNs: int = LEASE_TIMEOUT_NS) -> int:
        rows = conn.execute(
            "WITH r AS (UPDATE runs SET state = 'pending', runner_id = NULL, leased_ns = NULL"
            " WHERE state = 'leased' AND COALESCE(leased_ns, 0) < %s - ? RETURNING target_runner)"
            " SELECT pg_notify(?, COALESCE(target_runner, ?)) FROM r" % (conn.engine.nowNs,),
            (olderThanNs, JOBS_CHANNEL, SHARED_QUEUE),
        ).fetchall()
        if rows:
            log.warn("{n} stale leases went back to the queue", n=len(rows))
        return len(rows)

    # -- events ---------------------------------------------------------------------

    #: Groups of batches the group committer may have in flight at once.
    ingestConcurrency = 2
    #: Ids come from a sequence in concurrent transactions: count whole runs.
    _incrementalCounts = False

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
            runID, lambda: AnalysisComponent.analyzeRun(self, runID, nowNs, credPaths, tenant=tenant))

    def analyzeRunTenants(self, runID: str, nowNs: int, credPaths: Sequence[str] = ()) -> Deferred:
        return self._oneAnalysisPerPackage(
            runID, lambda: AnalysisComponent.analyzeRunTenants(self, runID, nowNs, credPaths))

    def decide(self, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str] = (),
               tenant: str = "default") -> Deferred:
        return self._oneAnalysisPerPackage(
            runID, lambda: AnalysisComponent.decide(self, runID, decision, actor, nowNs, credPaths, tenant=tenant))

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

    def _thd_analyzeRun(self, conn: PostgresConnection, runID: str, nowNs: int, credPaths: Sequence[str],
                        tenant: Optional[str] = None) -> Any:
        with _packageLock(conn, runID):
            return super()._thd_analyzeRun(conn, runID, nowNs, credPaths, tenant)

    def _thd_analyzeRunTenants(self, conn: PostgresConnection, runID: str, nowNs: int, credPaths: Sequence[str]) -> Any:
        with _packageLock(conn, runID):
            return super()._thd_analyzeRunTenants(conn, runID, nowNs, credPaths)

    def _thd_decide(self, conn: PostgresConnection, runID: str, decision: str, actor: str, nowNs: int, credPaths: Sequence[str],
                    tenant: str = "default") -> Any:
        with _packageLock(conn, runID):
            return super()._thd_decide(conn, runID, decision, actor, nowNs, credPaths, tenant)
