"""
A real orchestrator whose database disk fills up (a tmpfs mounted as root):
a 507 in the envelope, earlier batches intact, health answered, ingest
working again once space is freed; and the database locked and its disk full
on PostgreSQL (L{tests.pg}): the same fault is the same answer on both
engines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from tests.orchestrator.helpers import batchLine, fileEvent
from tests.test_orchestrator_faults import LiveOrchestrator, LockedScenario, PostgresLocker, assertEnvelope, call


class DiskFullScenario:
    """
    The full-disk scenario: C{database()} is a database whose events live on
    a 3 MiB tmpfs at C{self.dir} (after C{prepare}), with 1 MiB of ballast.
    """

    options = "size=3m"
    dir: str

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("mounting a tmpfs needs root")
        self.dir = tempfile.mkdtemp(prefix="fangs-full-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", self.options, "tmpfs", self.dir], capture_output=True)
        if mounted.returncode != 0:
            raise SkipTest("cannot mount a tmpfs: %s" % (mounted.stderr.decode(errors="replace"),))
        self.addCleanup(subprocess.run, ["umount", "-l", self.dir], capture_output=True)

    def database(self) -> str:
        raise NotImplementedError

    def prepare(self, o: "LiveOrchestrator") -> None:
        """
        After the orchestrator migrated its database.
        """

    def test_diskFull(self) -> Deferred:
        return Deferred.fromCoroutine(self._full())

    async def _full(self) -> None:
        """
        Ingest until the database's disk is full: a 507 C{insufficient_storage}
        in the envelope, every acknowledged batch intact and nothing of the
        failed one, health answered; once space is freed (a ballast file
        removed) ingest works again and resends store once.
        """
        ballast = os.path.join(self.dir, "ballast")
        with open(ballast, "wb") as f:
            f.write(b"\0" * (1024 * 1024))
        o = LiveOrchestrator(self, self.database())
        await o.start()
        runID = await o.dispatchedRun()  # the migrations are done
        self.prepare(o)
        acked, seq, code, body = 0, 0, 200, None
        while code == 200 and seq < 2000:
            seq += 1
            events = [fileEvent("/usr/lib/%d/%d/%s" % (seq, i, "p" * 200)) for i in range(20)]
            code, body = await o.post(runID, batchLine(seq, events))
            if code == 200:
                acked += body["persisted"]
        self.assertEqual(code, 507, body)
        assertEnvelope(self, body, "insufficient_storage")
        self.assertIn("disk is full", body["error"]["message"])
        self.assertEqual(await o.health(), 200)
        self.assertEqual(o.stored(runID), (acked, acked, seq - 1))
        code, run = await call(o.client, "GET", o.url + "/v1/runs/" + runID)
        self.assertEqual((code, run["events_received"]), (200, acked))

        os.remove(ballast)
        events = [fileEvent("/usr/lib/%d/%d/%s" % (seq, i, "p" * 200)) for i in range(20)]
        code, body = await o.post(runID, batchLine(seq - 1, events) + batchLine(seq, events))
        self.assertEqual((code, body["persisted"]), (200, 20), body)  # seq - 1 was stored already
        self.assertEqual(o.stored(runID), (acked + 20, acked + 20, seq))


class DiskFullTests(DiskFullScenario, TestCase):
    timeout = 60

    def database(self) -> str:
        return os.path.join(self.dir, "fangs.db")


class PostgresLockedTests(LockedScenario, TestCase):
    """
    The same lock on PostgreSQL: the same 503 C{database_busy} (the engine
    classifies the lock timeout as the SQLite engine classifies
    C{SQLITE_BUSY}), the same whole-or-absent batches.
    """

    timeout = 60

    def database(self) -> str:
        from tests import pg

        return pg.freshDatabase(self, "locked")

    def lock(self, db: str) -> Any:
        return PostgresLocker(self, db)


class PostgresDiskFullTests(DiskFullScenario, TestCase):
    """
    The same full disk on PostgreSQL: the events table and its indexes in a
    tablespace on the small tmpfs, so extending them fails with
    C{disk_full} (53100), answered 507 like SQLite's C{SQLITE_FULL}.
    """

    timeout = 60

    def setUp(self) -> None:
        import pwd

        from tests import pg

        super().setUp()
        cluster = pg.cluster()
        pw = pwd.getpwnam("postgres")
        self.tablespace = os.path.join(self.dir, "ts")
        os.mkdir(self.tablespace, 0o700)
        os.chown(self.tablespace, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)
        self.name = "full_%d" % (os.getpid(),)
        self.admin(cluster.dsn(), "CREATE TABLESPACE %s LOCATION '%s'" % (self.name, self.tablespace))
        self.addCleanup(self.admin, cluster.dsn(), "DROP TABLESPACE IF EXISTS %s" % (self.name,))
        self.dsn = pg.freshDatabase(self, "full")

    @staticmethod
    def admin(dsn: str, sql: str) -> None:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)

    def database(self) -> str:
        return self.dsn

    def prepare(self, o: "LiveOrchestrator") -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE events SET TABLESPACE %s" % (self.name,))
            for (index,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'events'").fetchall():
                conn.execute('ALTER INDEX "%s" SET TABLESPACE %s' % (index, self.name))
