"""
Tests for L{fangs.orchestrator.stream}: the hub on an in-memory store and a
fake clock, and the real SQLite storage under it.
"""

import json
from typing import Any, List, Optional, Tuple

from twisted.internet.defer import gatherResults, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fangs.orchestrator.db import stream as streamdb
from fangs.orchestrator.store import SQLiteStore
from fangs.orchestrator.stream import RunStream, StreamError, StreamFilter, parseCursor
from fangs.orchestrator.db.stream import StreamRow


class MemoryStreamStore:
    """
    The three stream methods of a store, in memory, answering at once (or,
    with C{hold}, when the test releases them).
    """

    def __init__(self, history: int = streamdb.HISTORY) -> None:
        self.rows: List[StreamRow] = []
        self.head = 0
        self.history = history
        self.streamListeners: List[Any] = []

    def appendStream(self, tsNs, tenant, runID, type, body):
        self.head += 1
        self.rows.append(StreamRow(self.head, tsNs, tenant, runID, type, body))
        self.rows = [r for r in self.rows if r.cursor > self.head - self.history]
        return succeed(self.head)

    def appendStreamLines(self, lines):
        return gatherResults([self.appendStream(*line) for line in lines])

    def streamSince(self, cursor, limit=1000):
        return succeed([r for r in self.rows if r.cursor > cursor][:limit])

    def streamBounds(self):
        return succeed((self.rows[0].cursor if self.rows else None, self.head))


class Client:
    def __init__(self) -> None:
        self.lines: List[dict] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.lines.append(json.loads(data))

    def close(self) -> None:
        self.closed = True

    def types(self) -> List[str]:
        return [line["type"] for line in self.lines]


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStreamStore()
        self.hub = RunStream(self.clock, self.store, maxBuffered=5, keepalive=15)
        self.successResultOf(Deferred.fromCoroutine(self.hub.start()))
        self.addCleanup(self.hub.stop)

    def subscribe(self, flt: StreamFilter = StreamFilter(), since: Optional[int] = None) -> Tuple[Client, Any]:
        c = Client()
        sub = self.successResultOf(Deferred.fromCoroutine(self.hub.subscribe(c.write, c.close, flt, since)))
        return c, sub

    def publish(self, type: str, run: str = "r1", package: str = "pkg", **kw: Any) -> None:
        self.successResultOf(self.hub.publish(type, run, package=package, version="1.0.0", status="x", **kw))

    def test_linesInOrderWithFields(self) -> None:
        c, _ = self.subscribe()
        self.publish("run.queued")
        self.publish("run.started")
        self.publish("run.completed", verdict="clean", deviations=0)
        self.assertEqual(c.types(), ["stream.open", "run.queued", "run.started", "run.completed"])
        done = c.lines[-1]
        for key in ("tenant", "run_id", "package", "version", "status", "timestamp", "trace_id", "cursor"):
            self.assertIn(key, done)
        self.assertEqual(done["tenant"], "default")
        self.assertEqual(done["verdict"], "clean")
        self.assertEqual([int(x["cursor"]) for x in c.lines[1:]], [1, 2, 3])
        self.assertTrue(done["timestamp"].endswith("Z"))

    def test_filter(self) -> None:
        c, _ = self.subscribe(StreamFilter(package="b"))
        d, _ = self.subscribe(StreamFilter(state="run.completed"))
        self.publish("run.queued", package="a")
        self.publish("run.queued", package="b")
        self.publish("run.completed", package="a")
        self.assertEqual([(x["type"], x["package"]) for x in c.lines[1:]], [("run.queued", "b")])
        self.assertEqual([(x["type"], x["package"]) for x in d.lines[1:]], [("run.completed", "a")])

    def test_reconnectMissesNothing(self) -> None:
        """
        A client that reconnects with the cursor of the last line it saw gets
        every line after it, then the live ones, each once.
        """
        c, sub = self.subscribe()
        self.publish("run.queued", run="a")
        last = c.lines[-1]["cursor"]
        sub.stopProducing()
        self.assertNotIn(sub, self.hub.subscribers)
        self.publish("run.started", run="a")
        self.publish("run.queued", run="b")
        again, _ = self.subscribe(since=parseCursor(last))
        self.publish("run.completed", run="a")
        self.assertEqual([(x["type"], x["run_id"]) for x in again.lines[1:]],
                         [("run.started", "a"), ("run.queued", "b"), ("run.completed", "a")])

    def test_gapAndBadCursor(self) -> None:
        self.store.history = 2
        for _ in range(5):
            self.publish("run.queued")
        c, _ = self.subscribe(since=1)
        self.assertEqual(c.types(), ["stream.open", "stream.gap", "run.queued", "run.queued"])
        self.failureResultOf(Deferred.fromCoroutine(self.hub.subscribe(c.write, c.close, StreamFilter(), 99)),
                             StreamError)
        for bad in ("-1", "abc", "1" * 30, "1.5"):
            self.assertRaises(StreamError, parseCursor, bad)
        self.assertIsNone(parseCursor(""))

    def test_slowClientCut(self) -> None:
        """
        A paused client (its socket is full) holds at most C{maxBuffered}
        lines, then is cut with a last line saying why; others go on.
        """
        slow, sub = self.subscribe()
        fast, _ = self.subscribe()
        sub.pauseProducing()
        for _ in range(6):
            self.publish("run.queued")
        self.assertTrue(slow.closed)
        self.assertEqual(slow.types(), ["stream.open", "stream.closed"])
        self.assertIn("too slow", slow.lines[-1]["reason"])
        self.assertNotIn(sub, self.hub.subscribers)
        self.assertEqual(fast.types().count("run.queued"), 6)
        self.assertFalse(fast.closed)

    def test_pauseResume(self) -> None:
        c, sub = self.subscribe()
        sub.pauseProducing()
        self.publish("run.queued")
        self.publish("run.started")
        self.assertEqual(c.types(), ["stream.open"])
        sub.resumeProducing()
        self.assertEqual(c.types(), ["stream.open", "run.queued", "run.started"])

    def test_updatesThrottled(self) -> None:
        c, _ = self.subscribe()
        for _ in range(10):
            self.publish("run.updated", events_received=1)
            self.clock.advance(0.1)
        self.assertEqual(c.types().count("run.updated"), 2)
        self.publish("run.completed")
        self.assertEqual(c.types()[-1], "run.completed")

    def test_keepalive(self) -> None:
        c, _ = self.subscribe()
        self.clock.advance(15)
        self.assertEqual(c.types(), ["stream.open", "stream.keepalive"])

    def test_otherOrchestrator(self) -> None:
        """
        A line another orchestrator appended reaches subscribers when the
        store's listener pokes the hub.
        """
        c, _ = self.subscribe()
        self.successResultOf(self.store.appendStream(1, "default", "z", "run.queued",
                                                     json.dumps({"type": "run.queued", "run_id": "z"})))
        self.assertEqual(c.types(), ["stream.open"])
        for listener in self.store.streamListeners:
            listener()
        self.assertEqual(c.types(), ["stream.open", "run.queued"])

    def test_publishOrderKept(self) -> None:
        """
        Lines are appended in the order they were published, however long
        the store takes: a later line never gets an earlier cursor.  Lines
        published while an append is on its way go together in the next
        one (one transaction), still in order.
        """
        held = []
        append = self.store.appendStreamLines

        def slow(lines):
            d = Deferred()
            held.append((d, lines))
            return d

        self.store.appendStreamLines = slow
        c, _ = self.subscribe()
        first = self.hub.publish("run.queued", "r1", package="p")
        second = self.hub.publish("run.started", "r1", package="p")
        third = self.hub.publish("run.finished", "r1", package="p")
        self.assertEqual(len(held), 1)
        d, lines = held.pop()
        self.assertEqual([line[3] for line in lines], ["run.queued"])
        d.callback(self.successResultOf(append(lines)))
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(len(held), 1)
        d, lines = held.pop()
        self.assertEqual([line[3] for line in lines], ["run.started", "run.finished"])
        d.callback(self.successResultOf(append(lines)))
        self.successResultOf(second)
        self.successResultOf(third)
        self.assertEqual(c.types(), ["stream.open", "run.queued", "run.started", "run.finished"])

    def test_stoppedBeforeStarted(self) -> None:
        """
        A hub stopped while its start still waits for the store starts no
        timer.
        """
        held = Deferred()
        self.store.streamBounds = lambda: held
        clock = Clock()
        hub = RunStream(clock, self.store)
        started = Deferred.fromCoroutine(hub.start())
        hub.stop()
        held.callback((None, 0))
        self.successResultOf(started)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_manySubscribersBounded(self) -> None:
        clients = [self.subscribe()[0] for _ in range(1000)]
        self.publish("run.completed")
        self.assertTrue(all(x.types() == ["stream.open", "run.completed"] for x in clients))
        self.hub.stop()
        self.assertTrue(all(x.closed for x in clients))
        self.assertEqual(self.hub.subscribers, set())


class SQLiteStreamStorageTests(TestCase):
    async def _store(self) -> SQLiteStore:
        store = SQLiteStore(self.mktemp())
        from twisted.internet import reactor

        store._reactor = reactor
        await store.start()
        self.addCleanup(store.stop)
        return store

    def test_roundTrip(self):
        return Deferred.fromCoroutine(self._roundTrip())

    async def _roundTrip(self):
        store = await self._store()
        self.assertEqual(await store.streamBounds(), (None, 0))
        cursors = [await store.appendStream(i, "default", "r", "run.queued", '{"i": %d}' % (i,)) for i in range(3)]
        self.assertEqual(cursors, [1, 2, 3])
        rows = await store.streamSince(1)
        self.assertEqual([r.cursor for r in rows], [2, 3])
        self.assertEqual(rows[0].body, '{"i": 1}')
        self.assertEqual(await store.streamBounds(), (1, 3))
