"""
Databases made by earlier releases keep working, on both engines.

C{recorded/store-v50.*.sql} are dumps of a database the store at migration
50 (before the schema was written once and rendered per engine) created and
filled through its public methods: runs with events, an analysis, a package,
an allowlist entry, a token, a runner, a stream line, a session.  Each test
restores the dump into a new database and opens it with today's store: no
migration it applied runs again (their C{applied_ns} are the recorded ones),
its rows read back, new work lands, and its schema is exactly the schema
today's store gives a new database.

C{recorded/store-v60.*.sql} are the same databases after the store at
migration 60 (tenants, before that migration was written in the rendered
schema) migrated them: they open the same way, and their schema too is
exactly a new database's.  The PostgreSQL cases are in
L{tests.integration.orchestrator.test_store_compat}.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from typing import Any, List, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from fangs.orchestrator import store as S

RECORDED = os.path.join(os.path.dirname(__file__), "recorded")
SEC = 1_000_000_000
T0 = 1_800_000_000 * SEC
#: Migrations the recorded databases had applied, and when.
APPLIED = [1, 2, 3, 4, 5, 6, 7, 9, 20, 21, 50]


def coro(f: Any) -> Any:
    def wrapper(self: Any) -> Deferred:
        return Deferred.fromCoroutine(f(self))

    wrapper.__name__ = f.__name__
    return wrapper


def recorded(name: str) -> str:
    with open(os.path.join(RECORDED, name), encoding="utf-8") as f:
        return f.read()


def _sqliteCatalog(conn: Any) -> List[Tuple[Any, ...]]:
    out: List[Tuple[Any, ...]] = []
    for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall():
        flat = " ".join(sql.split()).upper()
        out.append(("table", name, "WITHOUT ROWID" in flat, "AUTOINCREMENT" in flat))
        out.extend(("column", name) + tuple(r[1:]) for r in conn.execute("PRAGMA table_xinfo(%s)" % (name,)))
        out.extend(("fk", name) + tuple(r[2:]) for r in conn.execute("PRAGMA foreign_key_list(%s)" % (name,)))
        for index in conn.execute("PRAGMA index_list(%s)" % (name,)).fetchall():
            cols = tuple(r[2] for r in conn.execute("PRAGMA index_info(%s)" % (index[1],)))
            row = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (index[1],)).fetchone()
            text = " ".join((row[0] if row and row[0] else "").split())
            where = text.split(" WHERE ", 1)[1] if " WHERE " in text else ""
            label = "auto" if index[1].startswith("sqlite_autoindex") else index[1]
            out.append(("index", name, label, index[2], index[3], cols, where))
    return out


def _postgresCatalog(conn: Any) -> List[Tuple[Any, ...]]:
    queries = [
        "SELECT 'column', table_name, column_name, data_type, collation_name, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
        "SELECT 'index', tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 2, 3",
        "SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = current_schema()::regnamespace ORDER BY 2, 3",
        "SELECT 'sequence', sequence_name, data_type FROM information_schema.sequences"
        " WHERE sequence_schema = current_schema() ORDER BY 2",
    ]
    return [tuple(r) for q in queries for r in conn.execute(q).fetchall()]


class CompatContract:
    engine = ""
    #: The recorded dump's version (its file name's C{v50} or C{v60}).
    version = 50

    async def restored(self) -> Any:
        """
        A started store on the recorded database.
        """
        raise NotImplementedError

    async def fresh(self) -> Any:
        raise NotImplementedError

    def catalog(self, conn: Any) -> List[Tuple[Any, ...]]:
        raise NotImplementedError

    @coro
    async def test_opensWithoutRerunningMigrations(self) -> None:
        startNs = time.time_ns()
        st = await self.restored()
        rows = await st.tableRows("schema_migrations")
        versions = sorted((r["version"], r["applied_ns"]) for r in rows)
        applied = APPLIED + ([60] if self.version >= 60 else [])
        self.assertEqual([v for v, _ in versions if v in applied], applied)
        recordedAt = {at for v, at in versions if v in APPLIED}
        self.assertEqual(len(recordedAt), 1, versions)  # all from the recorded day, none applied again now
        self.assertLess(recordedAt.pop(), T0)
        self.assertTrue(all(at < startNs for v, at in versions if v in applied), versions)
        self.assertEqual(await st.schemaVersion(), max(m.version for m in S.MIGRATIONS))

    @coro
    async def test_rowsReadAndNewWork(self) -> None:
        st = await self.restored()
        run = await st.getRun("old1")
        self.assertEqual((run.state, run.events_received, run.verdict is not None), (S.DONE, 3, True))
        self.assertEqual((await st.createRun(S.NewRun("x", "left-pad", "1", "sandbox_scan", None, "{}", T0, "oldk")))[0], "old1")
        self.assertEqual(len(await st.eventPage("old1", (0, -1), 10)), 3)
        self.assertIsNotNone(await st.getPackage("oldpkg"))
        self.assertIn("/etc/old", [a["value"] for a in await st.listAllow()])
        self.assertIsNotNone(await st.lookupToken("oldtok"))
        self.assertIsNotNone(await st.getRunner("oldw"))
        self.assertIsNotNone(await st.lookupSession("oldsess"))
        self.assertEqual((await st.streamBounds())[1], 1)
        # New rows continue the recorded sequences.
        self.assertEqual(await st.appendStream(T0, "default", "old1", "run.updated", "{}"), 2)
        self.assertEqual(await st.createRun(S.NewRun("new1", "left-pad", "2", "sandbox_scan", None, "{}", T0)), ("new1", True))
        await st.claimJob("w")  # the recorded run is done: the new one is the head
        self.assertEqual((await st.getRun("new1")).state, S.LEASED)

    @coro
    async def test_schemaAsANewDatabase(self) -> None:
        old = await self.restored()
        new = await self.fresh()
        self.assertEqual(await old._call(self.catalog), await new._call(self.catalog))


class SQLiteCompatTests(CompatContract, TestCase):
    def path(self) -> str:
        return os.path.join(tempfile.mkdtemp(prefix="fangs-compat-"), "fangs.db")

    async def open(self, path: str) -> Any:
        st = S.SQLiteStore(path, reactor)
        await st.start()
        self.addCleanup(st.stop)
        return st

    async def restored(self) -> Any:
        path = self.path()
        conn = sqlite3.connect(path)
        conn.executescript(recorded("store-v%d.sqlite.sql" % (self.version,)))
        conn.close()
        return await self.open(path)

    async def fresh(self) -> Any:
        return await self.open(self.path())

    def catalog(self, conn: Any) -> List[Tuple[Any, ...]]:
        return _sqliteCatalog(conn)


class SQLiteV60CompatTests(SQLiteCompatTests):
    """
    A database main's store made at migration 60 (the tenants migration as
    the store applied it before the schema was written once).
    """

    version = 60
