"""
The tenant store contract (L{tests.orchestrator.test_tenants_store}) on
PostgreSQL (L{tests.pg}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from fangs.orchestrator import pgstore, store as S
from tests.orchestrator.test_tenants_store import TenantStoreContract


class PostgresTenantStoreTests(TenantStoreContract, TestCase):
    module = S  # one schema, both engines

    def setUp(self) -> None:
        from tests import pg

        self.dsn = pg.freshDatabase(self)

    async def open(self, migrations: Any = None) -> Any:
        st = pgstore.PostgresStore(self.dsn, reactor, listen=False)
        if migrations is not None:
            st.migrations = migrations
        await st.start()
        self.addCleanup(st.stop)
        return st

    async def close(self, st: Any) -> None:
        st.stop()
