"""
A throwaway PostgreSQL cluster for tests, from Debian's server binaries.

One cluster per test process, started on first use (C{initdb} as the
C{postgres} OS user into a temporary directory, then C{pg_ctl start} on a
free loopback port with its socket in that directory) and stopped when the
process exits.  Each test gets its own database, so tests never see each
other's rows.

Without the binaries the test is skipped, or fails under C{CI=true}
(L{tests.prereq.missing}).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Any, List, Optional

from tests import prereq
from tests.procs import freePort

_cluster: Optional["Cluster"] = None
_counter = itertools.count(1)


def binDir() -> Optional[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


class Cluster:
    """
    A running cluster: C{dsn(db)} for a database on it.
    """

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="fangs-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = freePort()
        self._asUser: List[str] = []
        self._env = dict(os.environ, LC_ALL="C")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._asUser = ["runuser", "-u", "postgres", "--"]
        self.user = "postgres"
        self._run(["initdb", "-D", self.data, "-U", self.user, "-A", "trust", "--no-locale", "-E", "UTF8", "--no-sync"])
        opts = " ".join(
            [
                "-k %s" % (self.dir,),
                "-p %d" % (self.port,),
                "-c listen_addresses=127.0.0.1",
                # A test cluster: durability does not matter, speed does.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self._run(["pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start"])
        self.running = True
        atexit.register(self.stop)

    def _run(self, args: List[str]) -> None:
        cmd = self._asUser + [os.path.join(self.bindir, args[0])] + args[1:]
        p = subprocess.run(cmd, capture_output=True, env=self._env, cwd=self.dir)
        if p.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (args[0], p.stdout.decode(), p.stderr.decode()))

    def dsn(self, db: str = "postgres") -> str:
        return "postgresql://%s@127.0.0.1:%d/%s" % (self.user, self.port, db)

    def createDatabase(self, prefix: str = "t") -> str:
        import psycopg

        name = "%s_%d_%d" % (prefix, os.getpid(), next(_counter))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute('CREATE DATABASE "%s" TEMPLATE template0' % (name,))
        return name

    def dropDatabase(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % (name,))

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        try:
            self._run(["pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster() -> Cluster:
    """
    The process's cluster, started on first use.
    """
    global _cluster
    if _cluster is None or not _cluster.running:
        bindir = binDir()
        if bindir is None:
            prereq.missing("PostgreSQL server binaries not installed (apt-get install postgresql; make setup)")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            prereq.missing("psycopg is not installed in the venv (make venv)")
        assert bindir is not None
        _cluster = Cluster(bindir)
    return _cluster


def freshDatabase(testCase: Any, prefix: str = "t") -> str:
    """
    A new empty database for one test, dropped at its end; returns its DSN.
    """
    c = cluster()
    name = c.createDatabase(prefix)
    testCase.addCleanup(c.dropDatabase, name)
    return c.dsn(name)


class PostgresStoreDatabase:
    """
    A test case mixin: C{open(migrations=None)} a store on one fresh
    PostgreSQL database (at an older schema with a prefix of the
    migrations), C{close} it.
    """

    def setUp(self) -> None:
        self.dsn = freshDatabase(self)

    async def open(self, migrations: Any = None) -> Any:
        from twisted.internet import reactor

        from fangs.orchestrator.pgstore import PostgresStore

        st = PostgresStore(self.dsn, reactor, listen=False)
        if migrations is not None:
            st.migrations = migrations
        await st.start()
        self.addCleanup(st.stop)  # type: ignore[attr-defined]
        return st

    async def close(self, st: Any) -> None:
        st.stop()
