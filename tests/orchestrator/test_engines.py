"""
The engine objects (L{fangs.orchestrator.db.engines}): the schema rendered
per engine, driver errors classified into the store's error classes, and
the HTTP edge answering those classes the same whatever the engine.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile

from typing import Any

from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator import store as S
from fangs.orchestrator.db import schema
from fangs.orchestrator.db.connector import SQLITE
from fangs.orchestrator.pgstore import engine as postgresEngine
from tests.orchestrator.helpers import InMemoryOrchestrator


class SchemaTests(SynchronousTestCase):
    def test_versionsUniqueAndOrdered(self) -> None:
        versions = [m.version for m in schema.MIGRATIONS]
        self.assertEqual(len(set(versions)), len(versions))
        self.assertEqual(sorted(schema.MIGRATIONS)[0].version, 1)

    def test_renderedPerEngine(self) -> None:
        """
        Types come from the engine; a part marked for one engine is run on
        that engine only.
        """
        pg = postgresEngine()
        core = next(m for m in schema.MIGRATIONS if m.version == 1)
        lite, post = schema.render(core, SQLITE), schema.render(core, pg)
        self.assertEqual(len(post), len(lite) + 1)
        self.assertEqual(post[0], "CREATE SEQUENCE runs_queue_seq")
        self.assertIn("id INTEGER PRIMARY KEY", lite[-2])
        self.assertIn("id BIGSERIAL PRIMARY KEY", post[-2])
        self.assertIn('data TEXT COLLATE "C" NOT NULL', post[-2])
        self.assertIn("WITHOUT ROWID", " ".join(lite))
        for m in schema.MIGRATIONS:
            for statement in schema.render(m, SQLITE):
                self.assertNotIn("COLLATE", statement)
                self.assertNotIn("BIGSERIAL", statement)
            for statement in schema.render(m, pg):
                self.assertNotIn("WITHOUT ROWID", statement)
                self.assertNotIn("BLOB", statement)

    def test_newMigration(self) -> None:
        """
        How a migration is written: one text for both engines, types named.
        """
        m = schema.migration(
            999, "example", "ALTER TABLE runs ADD COLUMN tenant {text} NOT NULL DEFAULT 'default'; ALTER TABLE runs ADD COLUMN n {i64}",
            schema.only("postgresql", "CREATE INDEX runs_by_tenant ON runs(tenant)"),
        )
        self.assertEqual(
            schema.render(m, SQLITE),
            ["ALTER TABLE runs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'", "ALTER TABLE runs ADD COLUMN n INTEGER"],
        )
        self.assertEqual(
            schema.render(m, postgresEngine()),
            [
                "ALTER TABLE runs ADD COLUMN tenant TEXT COLLATE \"C\" NOT NULL DEFAULT 'default'",
                "ALTER TABLE runs ADD COLUMN n BIGINT",
                "CREATE INDEX runs_by_tenant ON runs(tenant)",
            ],
        )


class SQLiteClassifyTests(SynchronousTestCase):
    def test_locked(self) -> None:
        path = os.path.join(tempfile.mkdtemp(prefix="fangs-engine-"), "x.db")
        a = sqlite3.connect(path, isolation_level=None)
        b = sqlite3.connect(path, isolation_level=None, timeout=0)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.execute("CREATE TABLE t (x)")
        a.execute("BEGIN EXCLUSIVE")
        with self.assertRaises(sqlite3.OperationalError) as caught:
            b.execute("BEGIN IMMEDIATE")
        fault = SQLITE.classify(caught.exception)
        self.assertIsInstance(fault, S.StorageBusy)
        self.assertEqual((fault.status, fault.code), (503, "database_busy"))
        self.assertIn("database is locked", fault.detail)

    def test_fullAndConstraintAndOthers(self) -> None:
        full = SQLITE.classify(sqlite3.OperationalError("database or disk is full"))
        self.assertIsInstance(full, S.StorageFull)
        self.assertEqual((full.status, full.code), (507, "insufficient_storage"))
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (x PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        with self.assertRaises(sqlite3.IntegrityError) as caught:
            conn.execute("INSERT INTO t VALUES (1)")
        self.assertIsInstance(SQLITE.classify(caught.exception), S.ConstraintViolation)
        self.assertIsInstance(SQLITE.classify(caught.exception), S.Conflict)
        self.assertIsNone(SQLITE.classify(sqlite3.OperationalError("no such table: x")))  # a bug stays a bug
        self.assertIsNone(SQLITE.classify(ValueError("x")))


class PostgresClassifyTests(SynchronousTestCase):
    def test_classes(self) -> None:
        import psycopg

        pg = postgresEngine()
        E = psycopg.errors
        self.assertIsInstance(pg.classify(E.DiskFull("could not extend file")), S.StorageFull)
        for busy in (E.LockNotAvailable("lock timeout"), E.QueryCanceled("statement timeout"), E.TooManyConnections("x"),
                     E.SerializationFailure("x"), E.AdminShutdown("x"), psycopg.OperationalError("connection failed")):
            self.assertIsInstance(pg.classify(busy), S.StorageBusy, busy)
        for constraint in (E.UniqueViolation("x"), E.ForeignKeyViolation("x"), E.CheckViolation("x")):
            self.assertIsInstance(pg.classify(constraint), S.ConstraintViolation)
        self.assertIsNone(pg.classify(E.UndefinedTable("x")))
        self.assertIsNone(pg.classify(E.SyntaxError("x")))


class EdgeMappingTests(SynchronousTestCase):
    """
    The API answers the store's error classes, so a fault classified by
    either engine gets one answer.
    """

    def answer(self, error: Exception) -> Any:
        o = InMemoryOrchestrator(self)
        o.store.getRun = lambda runID, tenant=None: fail(error)
        response = o.request("GET", "/v1/runs/" + "ab" * 16)
        return response.code, response.headers.getRawHeaders(b"retry-after"), json.loads(self.successResultOf(response.content()))

    def test_busy(self) -> None:
        code, retry, body = self.answer(S.StorageBusy("the database is locked by another writer", "driver text"))
        self.assertEqual((code, retry, body["error"]["code"]), (503, [b"1"], "database_busy"))
        self.assertNotIn("driver text", json.dumps(body))

    def test_full(self) -> None:
        code, retry, body = self.answer(S.StorageFull("the database disk is full", "driver text"))
        self.assertEqual((code, retry, body["error"]["code"]), (507, [b"1"], "insufficient_storage"))

    def test_constraint(self) -> None:
        code, retry, body = self.answer(S.ConstraintViolation('duplicate key value violates unique constraint "runs_pkey"'))
        self.assertEqual((code, body["error"]["code"]), (409, "conflict"))
        self.assertNotIn("runs_pkey", body["error"]["message"])
