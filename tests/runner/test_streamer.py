"""
Tests for L{fangs.runner.streamer}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fangs.runner.client import OrchestratorClient, OrchestratorError, UnknownRun
from fangs.runner.streamer import EventStreamer, SegmentProducer, StreamStats
from tests.runner.fakes import (
    FakeEventsClient,
    FakeEventsConsumer,
    FakeOrchestrator,
    memoryHTTPClient,
    runID,
)


class StreamerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeEventsClient()
        self.run = runID(1)
        self.streamer = EventStreamer(self.clock, self.client, self.run,
                                      retryPolicy=lambda attempt: 2.0 ** attempt)

    def add(self, n: int, eventType: int = 1) -> None:
        for i in range(n):
            self.streamer.add(eventType, {"i": i})

    def test_flushInterval(self) -> None:
        """
        Events are batched every 250 ms into one streaming POST, with seq
        numbers from 1 and the run's id.
        """
        self.add(3)
        self.assertEqual(self.client.posts, [])
        self.clock.advance(0.25)
        [post] = self.client.posts
        [batch] = post.consumer.batches()
        self.assertEqual((batch.run_id, batch.seq, len(batch.events)), (self.run, 1, 3))
        self.assertEqual(batch.events[0].type, 1)
        self.assertEqual(batch.events[2].payload, {"i": 2})
        self.add(2, eventType=3)
        self.clock.advance(0.25)
        self.assertEqual(len(self.client.posts), 1)
        self.assertEqual(post.seqs(), [1, 2])
        self.assertTrue(post.consumer.data.endswith(b"\n"))
        self.assertEqual(self.streamer.unacked, 5)

    def test_batchSize(self) -> None:
        """
        64 waiting events are sent at once, without waiting for the timer.
        """
        self.add(64)
        [post] = self.client.posts
        self.assertEqual([len(b.events) for b in post.consumer.batches()], [64])
        self.add(1)
        self.assertEqual(post.seqs(), [1])
        self.clock.advance(0.25)
        self.assertEqual(post.seqs(), [1, 2])

    def test_segmentRotation(self) -> None:
        """
        A POST ends after segmentSeconds; later batches wait for its answer
        and then go into a new POST.
        """
        self.add(1)
        self.clock.advance(0.25)
        [first] = self.client.posts
        self.clock.advance(4.9)
        self.assertFalse(first.ended)
        self.clock.advance(0.1)  # 5 s after the POST began
        self.assertTrue(first.ended)
        self.add(2)
        self.clock.advance(0.25)
        self.assertEqual(len(self.client.posts), 1)
        self.assertEqual(self.streamer.unacked, 3)
        first.ack()
        self.assertEqual(len(self.client.posts), 2)
        self.assertEqual(self.client.posts[1].seqs(), [2])
        self.assertEqual(self.streamer.unacked, 2)
        self.assertEqual(self.streamer.stats(), StreamStats(3, 1, 1, 0))

    def test_retryResendsUnacked(self) -> None:
        """
        When a POST fails, exactly its batches are sent again, first, in the
        next POST, after the backoff.
        """
        self.add(1)
        self.clock.advance(0.25)
        self.add(1)
        self.clock.advance(0.25)
        [first] = self.client.posts
        first.fail(ConnectionRefusedError())
        self.assertEqual(self.streamer.unacked, 2)
        self.add(1)
        self.clock.advance(0.25)  # seq 3 is made while backing off
        self.assertEqual(len(self.client.posts), 1)
        self.clock.advance(0.75)  # first retry after 2**0 = 1 s
        second = self.client.posts[1]
        self.assertEqual(second.seqs(), [1, 2, 3])
        second.fail(OrchestratorError(503, "", "restarting"))
        self.clock.advance(1.9)
        self.assertEqual(len(self.client.posts), 2)
        self.clock.advance(0.1)  # second retry after 2 s
        third = self.client.posts[2]
        self.assertEqual(third.seqs(), [1, 2, 3])
        third.ack()
        self.assertEqual(self.streamer.stats(), StreamStats(3, 3, 3, 0))
        self.assertEqual(self.streamer.postsFailed, 2)
        self.assertEqual(self.streamer.unacked, 0)

    def test_timeoutIsRetried(self) -> None:
        self.add(1)
        self.clock.advance(0.25)
        self.client.posts[0].fail(TimeoutError())
        self.clock.advance(1)
        self.assertEqual(self.client.posts[1].seqs(), [1])

    def test_permanentErrorGivesUpThoseBatches(self) -> None:
        self.add(1)
        self.clock.advance(0.25)
        self.client.posts[0].fail(OrchestratorError(400, "bad_batch", "no"))
        self.add(1)
        self.clock.advance(0.25)
        self.assertEqual(self.client.posts[1].seqs(), [2])
        self.client.posts[1].ack()
        self.assertEqual(self.streamer.stats(), StreamStats(2, 1, 1, 1))

    def test_unknownRunGivesUpEverything(self) -> None:
        self.add(1)
        self.clock.advance(0.25)
        self.client.posts[0].fail(UnknownRun(404, "", "run not found"))
        self.add(2)
        self.clock.advance(10)
        self.assertEqual(len(self.client.posts), 1)
        stats = self.successResultOf(Deferred.fromCoroutine(self.streamer.close(20)))
        self.assertEqual(stats, StreamStats(3, 0, 0, 2))

    def test_closeDrains(self) -> None:
        """
        close() flushes what is pending, ends the POST at once and returns
        when everything is acknowledged.
        """
        self.add(70)
        d = Deferred.fromCoroutine(self.streamer.close(self.clock.seconds() + 60))
        [post] = self.client.posts
        self.assertTrue(post.ended)
        self.assertEqual([len(b.events) for b in post.consumer.batches()], [64, 6])
        self.assertNoResult(d)
        post.ack()
        self.assertEqual(self.successResultOf(d), StreamStats(70, 70, 2, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeRetriesUntilDeadline(self) -> None:
        self.add(1)
        self.clock.advance(0.25)
        d = Deferred.fromCoroutine(self.streamer.close(self.clock.seconds() + 5))
        self.client.posts[0].fail(ConnectionRefusedError())
        self.clock.advance(1)
        self.assertEqual(self.client.posts[1].seqs(), [1])
        self.assertTrue(self.client.posts[1].ended)
        self.client.posts[1].fail(ConnectionRefusedError())
        self.clock.advance(2)
        self.client.posts[2].fail(ConnectionRefusedError())
        self.assertNoResult(d)
        self.clock.advance(2)  # the deadline
        self.assertEqual(self.successResultOf(d), StreamStats(1, 0, 0, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeDeadlineAbortsHangingPost(self) -> None:
        self.add(1)
        d = Deferred.fromCoroutine(self.streamer.close(self.clock.seconds() + 5))
        [post] = self.client.posts
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d), StreamStats(1, 0, 0, 1))
        self.assertTrue(post.answer.called)

    def test_closeWithNothing(self) -> None:
        stats = self.successResultOf(Deferred.fromCoroutine(self.streamer.close(0)))
        self.assertEqual(stats, StreamStats(0, 0, 0, 0))
        self.assertEqual(self.client.posts, [])


class SegmentProducerTests(SynchronousTestCase):
    def test_buffersUntilStarted(self) -> None:
        p = SegmentProducer()
        p.write(b"a\n")
        c = FakeEventsConsumer()
        d = p.startProducing(c)
        self.assertEqual(c.data, b"a\n")
        p.pauseProducing()
        p.write(b"b\n")
        p.end()
        self.assertNoResult(d)
        p.resumeProducing()
        self.assertEqual(c.data, b"a\nb\n")
        self.successResultOf(d)

    def test_stopped(self) -> None:
        p = SegmentProducer()
        c = FakeEventsConsumer()
        d = p.startProducing(c)
        p.stopProducing()
        p.write(b"x")
        p.end()
        self.assertEqual(c.data, b"")
        self.assertNoResult(d)


class StreamerOverHTTPTests(SynchronousTestCase):
    """
    The streamer with the real client, over HTTP in memory: batches reach
    the orchestrator in a chunked POST, and a resend after a failure is
    deduplicated there.
    """

    def test_endToEnd(self) -> None:
        clock = Clock()
        orch = FakeOrchestrator()
        http, flush = memoryHTTPClient(orch)
        client = OrchestratorClient(http, "http://orch", clock)
        streamer = EventStreamer(clock, client, runID(3), retryPolicy=lambda a: 1.0)
        path = "/v1/runs/%s/events" % (runID(3).hex(),)
        orch.answers[("POST", path)] = (503, b'{"error":"restarting"}')
        for i in range(100):
            streamer.add(2, {"n": i})
        clock.advance(0.25)
        flush()
        clock.advance(5)  # the segment ends, the orchestrator answers 503
        flush()
        self.assertEqual(len(orch.requests), 1)
        del orch.answers[("POST", path)]
        clock.advance(1)
        d = Deferred.fromCoroutine(streamer.close(clock.seconds() + 30))
        flush()
        self.assertEqual(self.successResultOf(d), StreamStats(100, 100, 2, 0))
        got = orch.batches[runID(3).hex()]
        self.assertEqual([b.seq for b in got], [1, 2])
        self.assertEqual([e.payload["n"] for b in got for e in b.events], list(range(100)))
