"""
The tenant store contract (L{tests.orchestrator.test_tenants_store}) on
PostgreSQL (L{tests.pg}).
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from fangs.orchestrator import store as S
from tests.pg import PostgresStoreDatabase
from tests.orchestrator.test_tenants_store import TenantStoreContract


class PostgresTenantStoreTests(PostgresStoreDatabase, TenantStoreContract, TestCase):
    module = S  # one schema, both engines

