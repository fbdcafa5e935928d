"""
What only a PostgreSQL server shows of the engine (L{tests.pg}): the lock
timeout of requests, and migrations waiting for another orchestrator's.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from fangs.orchestrator import store as S
from fangs.orchestrator.pgstore import PostgresStore, engine as postgresEngine


class PostgresLockTimeoutTests(TestCase):
    """
    PostgreSQL requests wait for a lock at most the lock timeout (then
    L{S.StorageBusy}, as SQLite's busy timeout); a migration waits for
    another orchestrator's migration however long it takes.
    """

    def test_requestsTimeOutMigrationsWait(self) -> Deferred:
        return Deferred.fromCoroutine(self._scenario())

    async def _scenario(self) -> None:
        import psycopg

        from tests import pg
        from tests.procs import sleep

        dsn = pg.freshDatabase(self, "locks")
        other = psycopg.connect(dsn, autocommit=True)
        self.addCleanup(other.close)
        other.execute("SELECT pg_advisory_lock(%s)", (postgresEngine().MIGRATION_LOCK,))  # "migrating"
        st = PostgresStore(dsn, reactor, listen=False, lockTimeoutMs=200)
        self.addCleanup(st.stop)
        started = Deferred.fromCoroutine(st.start())
        await sleep(1.0)  # five lock timeouts
        self.assertFalse(started.called)
        other.execute("SELECT pg_advisory_unlock(%s)", (postgresEngine().MIGRATION_LOCK,))
        await started
        other.execute("BEGIN")
        other.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        with self.assertRaises(S.StorageBusy):
            await st.getRun("x")
        other.execute("ROLLBACK")
        self.assertIsNone(await st.getRun("x"))
