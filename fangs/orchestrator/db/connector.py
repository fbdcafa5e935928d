"""
The store's connection, thread and transactions, shared by every component.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from fangs.orchestrator.db.schema import MIGRATIONS


log = Logger()


class SQLiteConnector:
    """
    The SQLite connection and the thread it lives on: WAL, foreign keys,
    versioned migrations, one connection on one dedicated thread.

    @param runInThread: how C{_thd_*} functions run; defaults to the store's
        own one-thread pool.  Tests pass a synchronous function.
    """

    backend = "sqlite"
    #: The versioned migrations applied at start (a test may open a store at
    #: an older version by giving a prefix of them).
    migrations = MIGRATIONS

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
        for version, name, sql in sorted(self.migrations):
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
