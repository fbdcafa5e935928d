"""
The compatibility contract (L{tests.orchestrator.test_store_compat}) on
PostgreSQL (L{tests.pg}): databases recorded at migrations 50 and 60 by the
earlier store open with today's, read back, take new work and have exactly a
new database's schema.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from fangs.orchestrator.pgstore import PostgresStore
from tests.orchestrator.test_store_compat import CompatContract, _postgresCatalog, recorded


class PostgresCompatTests(CompatContract, TestCase):
    async def open(self, dsn: str) -> Any:
        st = PostgresStore(dsn, reactor, listen=False)
        await st.start()
        self.addCleanup(st.stop)
        return st

    async def restored(self) -> Any:
        import psycopg

        from tests import pg

        dsn = pg.freshDatabase(self, "compat")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(recorded("store-v%d.postgresql.sql" % (self.version,)))
        return await self.open(dsn)

    async def fresh(self) -> Any:
        from tests import pg

        return await self.open(pg.freshDatabase(self, "compat"))

    def catalog(self, conn: Any) -> List[Tuple[Any, ...]]:
        return _postgresCatalog(conn)


class PostgresV60CompatTests(PostgresCompatTests):
    """
    A database main's store made at migration 60 on PostgreSQL (its ALTERs
    through the old rewriter, which made every text column COLLATE "C").
    """

    version = 60
