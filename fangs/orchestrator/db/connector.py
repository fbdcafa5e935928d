"""
The store's connection, thread and transactions, shared by every component.

L{Connector} is what both engines' connectors share: the migrations (one
list, L{fangs.orchestrator.db.schema}, rendered by the engine), the schema
version, and the one place a driver error becomes the store's own error
(L{Connector._classified}).  L{SQLiteConnector} owns one SQLite connection on
one thread; L{fangs.orchestrator.pgstore.PostgresStore} a pool of
PostgreSQL connections.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from fangs.orchestrator.db.engines import READ_COMMITTED, SERIALIZABLE, SQLiteConnection, SQLiteEngine
from fangs.orchestrator.db.schema import MIGRATIONS, render


log = Logger()

#: The SQLite engine (stateless; one for every store).
SQLITE = SQLiteEngine()


class Connector:
    """
    What the SQLite and PostgreSQL connectors share.  A subclass sets
    C{engine} and provides C{_call(f, *args)}, which runs C{f(conn, *args)}
    on a connection of its own thread and passes any exception through
    L{_classified}.
    """

    engine: Any
    #: The versioned migrations applied at start (a test may open a store at
    #: an older version by giving a prefix of them).
    migrations = MIGRATIONS

    def _classified(self, error: BaseException) -> BaseException:
        """
        C{error}, or the store's error for it when it is a storage fault
        (busy, full, a broken constraint): the same class on both engines.
        """
        fault = self.engine.classify(error)
        if fault is None:
            return error
        fault.__cause__ = error
        return fault

    def _thd_migrate(self, conn: Any) -> None:
        """
        Apply the migrations not applied yet, each in its own transaction,
        under the engine's migration lock (several orchestrators may start
        at once on one PostgreSQL database).  READ COMMITTED: after waiting
        for the lock, the check sees what the other migrator committed.
        """
        engine = conn.engine
        with _transaction(conn, READ_COMMITTED):
            engine.lockMigrations(conn)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns {i64} NOT NULL)".format(**engine.types)
            )
        for m in sorted(self.migrations):
            with _transaction(conn, READ_COMMITTED):
                engine.lockMigrations(conn)
                if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (m.version,)).fetchone():
                    continue
                for statement in render(m, engine):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, %s)" % (engine.nowNs,), (m.version, m.name))
            log.info("applied migration {version} {name}", version=m.version, name=m.name)

    def schemaVersion(self) -> "Deferred[int]":
        """
        The highest migration applied.
        """
        return self._call(lambda conn: conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0])  # type: ignore[attr-defined]


class SQLiteConnector(Connector):
    """
    The SQLite connection and the thread it lives on: WAL, foreign keys,
    versioned migrations, one connection on one dedicated thread.

    @param runInThread: how C{_thd_*} functions run; defaults to the store's
        own one-thread pool.  Tests pass a synchronous function.
    """

    backend = "sqlite"
    engine = SQLITE

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
            try:
                return f(self._conn, *args)
            except Exception as e:
                raise self._classified(e)

        return self._runInThread(inThread)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, factory=SQLiteConnection)
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


class _transaction:
    """
    A transaction at the isolation it needs (the engine's C{BEGIN}: SQLite's
    C{BEGIN IMMEDIATE}, PostgreSQL's C{SERIALIZABLE} or C{READ COMMITTED})
    ... C{COMMIT}, rolled back on any exception.
    """

    def __init__(self, conn: Any, isolation: str = SERIALIZABLE) -> None:
        self._conn = conn
        self._isolation = isolation

    def __enter__(self) -> Any:
        self._conn.execute(self._conn.engine.begin(self._isolation))
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
