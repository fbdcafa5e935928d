"""
Faults the orchestrator must ride out.

On a real loopback socket (the twistd plugin's service in this process, its
SQLite database on disk): the database locked by another process while
events arrive (a 503 in the envelope, nothing half-written, a resend stores
each batch once, and the runner's streamer delivers every event exactly
once).  The database's disk full (root: a tmpfs), and the lock and the full
disk on PostgreSQL (the same fault, the same answer on both engines), are in
L{tests.integration.test_orchestrator_faults}.

With a L{Clock}: jumps forward (runners pruned and re-registering, lost runs
failed, long polls ending) and state from the future (timestamps ahead of
the clock) handled without a crash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, List, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fangs import wire
from fangs.orchestrator import tap
from fangs.runner.client import OrchestratorClient
from fangs.runner.streamer import EventStreamer
from tests.orchestrator.helpers import InMemoryOrchestrator, batchLine, fileEvent
from tests.procs import freePort, httpClient, sleep


# Holds an exclusive lock on a SQLite database until its stdin closes.
LOCKER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""

BUSY_TIMEOUT = 5.0  # the store's PRAGMA busy_timeout


class Locker:
    """
    Another process holding C{BEGIN EXCLUSIVE} on the database.
    """

    def __init__(self, testCase: TestCase, db: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        testCase.addCleanup(self.release)
        line = self.proc.stdout.readline()  # a moment, before the reactor has work
        assert line.strip() == b"locked", line

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


async def call(client: Any, method: str, url: str, body: Any = None, raw: bytes = None) -> Tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = None
    if data is not None:
        headers = {"Content-Type": ["application/x-ndjson" if url.endswith("/events") else "application/json"]}
    r = await client.request(method, url, data=data, timeout=30, headers=headers)
    content = await r.content()
    return r.code, json.loads(content) if content else None


class LiveOrchestrator:
    """
    The plugin's service on a free loopback port, on a given database.
    """

    def __init__(self, testCase: TestCase, db: str) -> None:
        self.db = db
        port = freePort()
        options = tap.Options()
        options.parseOptions(["--addr", "127.0.0.1:%d" % (port,), "--db", db, "--poll-wait", "1", "--watch-interval", "0"])
        self.service = tap.makeService(options)
        self.service.privilegedStartService()
        self.service.startService()
        testCase.addCleanup(self.service.stopService)
        self.client = httpClient(testCase)
        self.url = "http://127.0.0.1:%d" % (port,)
        self.test = testCase

    async def start(self) -> None:
        for _ in range(100):
            try:
                code, _ = await call(self.client, "GET", self.url + "/v1/health")
                if code == 200:
                    break
            except Exception:
                await sleep(0.05)
        code, _ = await call(self.client, "POST", self.url + "/v1/runners/register", {"runner_id": "w1", "proto_version": 1})
        self.test.assertEqual(code, 200)

    async def dispatchedRun(self) -> str:
        code, body = await call(self.client, "POST", self.url + "/v1/scans", {"target_runner": "w1", "Job": {"kind": "sandbox_scan", "package_name": "left-pad", "sandbox": {}, "duration": 3600 * wire.SECOND}})
        self.test.assertEqual(code, 202, body)
        code, _ = await call(self.client, "GET", self.url + "/v1/runners/w1/jobs")
        self.test.assertEqual(code, 200)
        return body["run_id"]

    async def post(self, runID: str, body: bytes) -> Tuple[int, Any]:
        return await call(self.client, "POST", self.url + "/v1/runs/%s/events" % (runID,), raw=body)

    def query(self, sql: str, args: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
        """
        Rows of C{sql} (C{?} placeholders), read directly from the database.
        """
        if self.db.startswith("postgresql://"):
            import psycopg

            with psycopg.connect(self.db, autocommit=True) as conn:
                return list(conn.execute(sql.replace("?", "%s"), args))
        import sqlite3

        conn = sqlite3.connect(self.db, timeout=30)
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()

    def seqs(self, runID: str) -> List[int]:
        return [r[0] for r in self.query("SELECT seq FROM batches WHERE run_id = ? ORDER BY seq", (runID,))]

    async def health(self) -> int:
        return (await call(self.client, "GET", self.url + "/v1/health"))[0]

    def stored(self, runID: str) -> Tuple[int, int, int]:
        """
        (events, distinct (seq, idx), batches) of a run, read directly.
        """
        ((events, distinct),) = self.query("SELECT count(*), count(DISTINCT seq * 100000 + idx) FROM events WHERE run_id = ?", (runID,))
        ((batches,),) = self.query("SELECT count(*) FROM batches WHERE run_id = ?", (runID,))
        return events, distinct, batches


def assertEnvelope(test: Any, body: Any, code: str) -> None:
    test.assertEqual(set(body), {"error"})
    test.assertEqual(set(body["error"]), {"code", "message", "trace_id"})
    test.assertEqual(body["error"]["code"], code)


class PostgresLocker:
    """
    Another session holding C{ACCESS EXCLUSIVE} on the C{batches} table (a
    migration or a vacuum full would), so ingest waits out the store's
    C{lock_timeout}.
    """

    def __init__(self, testCase: TestCase, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("BEGIN")
        self.conn.execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
        testCase.addCleanup(self.release)

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.execute("ROLLBACK")
            self.conn.close()


class LockedScenario:
    """
    The locked-database scenario, on whichever engine C{database()} and
    C{lock()} give.
    """

    def database(self) -> str:
        raise NotImplementedError

    def lock(self, db: str) -> Any:
        raise NotImplementedError

    def test_lockedAnswers503AndResendStoresOnce(self) -> Deferred:
        return Deferred.fromCoroutine(self._locked())

    async def _locked(self) -> None:
        """
        While another process holds an exclusive lock, an event POST waits
        out the busy timeout and is answered 503 C{database_busy} in the
        envelope; nothing of the locked batch is stored (the batches before
        it in the same stream are, whole); after the lock goes, resending
        the whole stream stores every batch exactly once.
        """
        o = LiveOrchestrator(self, self.database())
        await o.start()
        runID = await o.dispatchedRun()
        first = batchLine(1, [fileEvent("/etc/a%d" % i) for i in range(10)])
        code, ack = await o.post(runID, first)
        self.assertEqual((code, ack["persisted"]), (200, 10))

        locker = self.lock(o.db)
        stream = b"".join(batchLine(seq, [fileEvent("/etc/b%d" % i) for i in range(10)]) for seq in (2, 3))
        code, body = await o.post(runID, stream)
        self.assertEqual(code, 503, body)
        assertEnvelope(self, body, "database_busy")
        self.assertIn("locked", body["error"]["message"])
        self.assertEqual(await o.health(), 200)  # the server answers while the database is locked
        locker.release()

        # Each batch is whole or absent: the one the 503 was about is absent;
        # one already queued behind it may have been stored once the lock went
        # (its own busy wait ends within a few hundred milliseconds of that).
        await sleep(1.0)
        events, distinct, batches = o.stored(runID)
        self.assertEqual((events, distinct), (10 * batches, 10 * batches))
        self.assertNotIn(2, o.seqs(runID))
        self.assertIn(1, o.seqs(runID))
        code, ack = await o.post(runID, first + stream)
        self.assertEqual((code, ack["received_batches"], ack["persisted"]), (200, 3, 30 - events))  # only what was missing
        self.assertEqual(o.stored(runID), (30, 30, 3))
        code, run = await call(o.client, "GET", o.url + "/v1/runs/" + runID)
        self.assertEqual((run["events_received"], run["batches_received"]), (30, 3))


class DatabaseLockedTests(LockedScenario, TestCase):
    timeout = 60

    def database(self) -> str:
        return self.mktemp() + ".db"

    def lock(self, db: str) -> Any:
        return Locker(self, db)

    def test_streamerRetriesThroughLock(self) -> Deferred:
        return Deferred.fromCoroutine(self._streamer())

    async def _streamer(self) -> None:
        """
        The runner's real streamer and client against the real orchestrator
        while the database is locked for longer than the busy timeout:
        every event arrives exactly once (acked == emitted == stored).
        """
        o = LiveOrchestrator(self, self.mktemp() + ".db")
        await o.start()
        runID = await o.dispatchedRun()
        client = OrchestratorClient(o.client, o.url, reactor, requestTimeout=20)
        streamer = EventStreamer(
            reactor, client, wire.RunID(bytes.fromhex(runID)), flushInterval=0.05, batchSize=16, segmentSeconds=0.5, retryPolicy=lambda attempt: 0.3
        )
        emitted = 0
        for i in range(50):
            streamer.add(wire.EventType.FILE_ACCESS, fileEvent("/etc/early%d" % i)["payload"])
            emitted += 1
        await sleep(1.0)
        locker = Locker(self, o.db)
        for i in range(150):
            streamer.add(wire.EventType.FILE_ACCESS, fileEvent("/etc/locked%d" % i)["payload"])
            emitted += 1
            if i % 25 == 0:
                await sleep(0.2)
        await sleep(BUSY_TIMEOUT + 1.0)  # long enough for a POST to fail with 503
        locker.release()
        stats = await streamer.close(reactor.seconds() + 30)
        self.assertGreater(streamer.postsFailed, 0)  # the lock did fail a POST
        self.assertEqual((stats.eventsEmitted, stats.eventsAcked, stats.batchesFailed), (emitted, emitted, 0))
        events, distinct, batches = o.stored(runID)
        self.assertEqual((events, distinct), (emitted, emitted))
        self.assertEqual(batches, stats.batchesSent)


class ClockJumpTests(SynchronousTestCase):
    """
    Time only moves through the clock, so jumps are exact.
    """

    def setUp(self) -> None:
        self.o = InMemoryOrchestrator(self)
        self.o.register()

    def sweep(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.o.core.sweep()))

    def test_jumpPrunesRunnersAndReRegisterWorks(self) -> None:
        self.o.clock.advance(3600)
        self.sweep()
        self.assertNotIn("worker-1", self.o.registry)
        code, ack = self.o.call("POST", "/v1/runners/worker-1/heartbeat", {})
        self.assertEqual((code, ack["unknown_runner"]), (200, True))
        code, body = self.o.call("GET", "/v1/runners/worker-1/jobs")
        self.assertEqual((code, body["error"]["code"]), (404, "unknown_runner"))
        self.o.register()
        code, ack = self.o.call("POST", "/v1/runners/worker-1/heartbeat", {})
        self.assertEqual((code, ack["ok"]), (200, True))
        runID = self.o.submit()
        code, job = self.o.poll()
        self.assertEqual((code, bytes(job["run_id"]).hex()), (200, runID))

    def test_jumpFailsLostRuns(self) -> None:
        runID = self.o.submit(duration=10 * wire.SECOND)
        self.assertEqual(self.o.poll()[0], 200)
        code, _ = self.o.call("POST", "/v1/runs/%s/events" % (runID,), raw=batchLine(1, [fileEvent("/etc/x")]))
        self.assertEqual(code, 200)
        self.o.clock.advance(30)
        self.sweep()
        self.assertEqual(self.o.call("GET", "/v1/runs/" + runID)[1]["state"], "running")  # within its deadline
        self.o.clock.advance(3600)
        self.sweep()
        code, run = self.o.call("GET", "/v1/runs/" + runID)
        self.assertEqual((run["state"], run["failure_reason"]), ("failed", "runner lost"))

    def test_jumpEndsLongPolls(self) -> None:
        pending = [self.o.start("GET", "/v1/runners/worker-1/jobs") for _ in range(3)]
        self.o.treq.flush()
        self.assertEqual(self.o.dispatcher.waiterCount(), 3)
        self.o.clock.advance(3600)
        for d in pending:
            self.assertEqual(self.o.finish(d)[0], 204)
        self.assertEqual(self.o.dispatcher.waiterCount(), 0)
        self.assertEqual(self.o.clock.getDelayedCalls(), [])

    def test_stateFromTheFuture(self) -> None:
        """
        The clock cannot go back, so build the state a backward jump leaves:
        a runner last seen, and a run dispatched, an hour ahead of now.
        Sweeping, listing and finishing still work.
        """
        runID = self.o.submit()
        self.assertEqual(self.o.poll()[0], 200)
        record = self.o.registry.get("worker-1")
        record.last_seen = self.o.clock.seconds() + 3600
        future = self.o.core.nowNs() + 3600 * wire.SECOND
        self.successResultOf(self.o.store.confirmDispatch(runID, future, future + 60 * wire.SECOND))
        self.sweep()
        self.assertIn("worker-1", self.o.registry)
        code, body = self.o.call("GET", "/v1/runners")
        self.assertEqual(code, 200)
        self.assertLess(body["runners"][0]["last_seen_seconds_ago"], 0)
        code, run = self.o.call("GET", "/v1/runs/" + runID)
        self.assertEqual((code, run["state"]), (200, "dispatched"))
        code, _ = self.o.call("POST", "/v1/runs/%s/events" % (runID,), raw=batchLine(1, [fileEvent("/etc/x")]))
        self.assertEqual(code, 200)
        code, _ = self.o.call("POST", "/v1/runs/%s/result" % (runID,), {"status": "ok", "events_emitted": 1})
        self.assertEqual(code, 200)
        code, run = self.o.call("GET", "/v1/runs/" + runID)
        self.assertEqual((run["state"], run["events_received"]), ("done", 1))
        self.assertEqual(self.o.call("GET", "/v1/runs?state=done")[0], 200)
