"""
The store contract (L{tests.orchestrator.test_store_contract.StoreContract})
on PostgreSQL (L{tests.pg}), and what only PostgreSQL has: two stores on
one database.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.trial.unittest import TestCase

from fangs.orchestrator import store as S
from fangs.orchestrator.pgstore import CHECKED, PostgresStore, engine as postgresEngine
from tests.orchestrator.test_review import BENIGN
from tests.orchestrator.test_store_contract import SEC, T0, StoreContract, coro, newRun, rows


class PostgresContractTests(StoreContract, TestCase):
    async def makeStore(self) -> Any:
        from tests import pg

        st = PostgresStore(pg.freshDatabase(self), reactor, listen=False)
        await st.start()
        self.addCleanup(st.stop)
        return st

    def test_everyPublicMethodChecked(self) -> None:
        """
        Every public method of SQLiteStore exists on PostgresStore and was
        checked on PostgreSQL (listed in L{CHECKED}): a method added to the
        SQLite store fails here until its SQL is made to work here too.
        """
        public = [m for m in dir(S.SQLiteStore) if not m.startswith("_") and callable(getattr(S.SQLiteStore, m))]
        self.assertEqual([m for m in public if not callable(getattr(PostgresStore, m, None))], [])
        self.assertEqual(sorted(set(public) - CHECKED), [])

    def test_placeholders(self) -> None:
        """
        The one change PostgreSQL's engine makes to the shared SQL: C{?}
        placeholders become C{%s} (not inside quotes), a literal C{%} is
        escaped; every other character stays as written.
        """
        sql = postgresEngine().sql
        self.assertEqual(sql("SELECT a FROM t WHERE b = ? AND c LIKE '%?%'"), "SELECT a FROM t WHERE b = %s AND c LIKE '%%?%%'")
        self.assertEqual(sql("INSERT INTO t (a) VALUES (?) ON CONFLICT DO NOTHING"), "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING")
        self.assertEqual(sql('SELECT "a?", MAX(b, c) FROM t'), 'SELECT "a?", MAX(b, c) FROM t')

    @coro
    async def test_notifyWakesAnotherStore(self) -> None:
        """
        A job queued through one store wakes the listeners of another store
        on the same database (another orchestrator), with the runner id.
        """
        from tests import pg

        dsn = pg.freshDatabase(self)
        a = PostgresStore(dsn, reactor, listen=False)
        b = PostgresStore(dsn, reactor)
        for st in (a, b):
            await st.start()
            self.addCleanup(st.stop)
        woken: List[Any] = []
        got = Deferred()
        b.jobListeners.append(lambda target: (woken.append(target), target == "w9" and not got.called and got.callback(None)))
        from tests.procs import sleep

        await sleep(0.3)  # b is listening
        await a.createRun(newRun("nn1", target="w9"))
        got.addTimeout(10, reactor)
        await got
        self.assertIn("w9", woken)
        self.assertEqual((await b.claimJob("w9"))[0], "nn1")

    @coro
    async def test_twoStoresShareTheQueue(self) -> None:
        """
        Two stores (two orchestrators) claiming at once from one queue: each
        job goes to exactly one claim.
        """
        from tests import pg

        dsn = pg.freshDatabase(self)
        a = PostgresStore(dsn, reactor, listen=False)
        b = PostgresStore(dsn, reactor, listen=False)
        for st in (a, b):
            await st.start()
            self.addCleanup(st.stop)
        for i in range(60):
            await (a if i % 2 else b).createRun(newRun("m%02d" % i))
        claims = [(a if i % 2 else b).claimJob("w%d" % (i % 5)) for i in range(80)]
        got = [lease[0] for ok, lease in await DeferredList(claims, fireOnOneErrback=True) if lease is not None]
        self.assertEqual(sorted(got), ["m%02d" % i for i in range(60)])

    @coro
    async def test_analysesOfOnePackageDoNotConflict(self) -> None:
        """
        Runs of one package finishing together on two stores (two
        orchestrators): their analyses read each other's rows, so under
        SERIALIZABLE they used to conflict and be thrown away and retried;
        they queue per package now, results are single statements, and no
        transaction is thrown away.  Every run gets its verdict.
        """
        from tests import pg

        dsn = pg.freshDatabase(self)
        a = PostgresStore(dsn, reactor, listen=False)
        b = PostgresStore(dsn, reactor, listen=False)
        for st in (a, b):
            await st.start()
            self.addCleanup(st.stop)
        ids = ["c%02d" % i for i in range(16)]
        for i, runID in enumerate(ids):
            st = a if i % 2 else b
            await st.createRun(newRun(runID, package="same-pkg"))
            await st.claimJob("w")
            await st.confirmDispatch(runID, T0, T0 + 100 * SEC)
            await st.ingestBatch(runID, 1, rows(runID, 1, BENIGN), T0 + 1, T0 + 100 * SEC)

        results = [(a if i % 2 else b).recordResult(runID, "ok", "", len(BENIGN), 0, SEC, T0 + 2) for i, runID in enumerate(ids)]
        await gatherResults(results)
        outcomes = await gatherResults([(a if i % 2 else b).analyzeRun(runID, T0 + 3) for i, runID in enumerate(ids)])
        self.assertEqual(sorted(o.run_id for o in outcomes), ids)
        self.assertTrue(all(o.verdict for o in outcomes))
        self.assertEqual(a.serializationRetries + b.serializationRetries, 0)
