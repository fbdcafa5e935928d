# -*- test-case-name: tests.runner.test_streamer -*-
"""
Per-run event streaming from the runner to the orchestrator.

The sensor hands every event of a run to L{EventStreamer.add} on the reactor
thread.  Events are grouped into L{EventBatch}es (every C{flushInterval}
seconds, or as soon as C{batchSize} are waiting), numbered from 1, and
written as NDJSON lines into one long-lived streaming POST to
C{/v1/runs/<hex>/events}.  A POST ends after C{segmentSeconds} (so the amount
of unacknowledged data stays bounded and the orchestrator answers, and
persists, as the run goes) and the next batches go into a new one.

Nothing is dropped on the way: the orchestrator acknowledges a POST when it
ends, and when a POST fails (refused, reset, 5xx, timeout) every batch it
carried is sent again in the next POST, after an exponential backoff with
jitter.  The orchestrator deduplicates on C{(run_id, seq)}.  Only a
permanent answer gives batches up: 404 (the run is unknown: everything is
given up) or another 4xx than 408/429 (that POST's batches are given up).

Only one POST is in flight at a time: while one is ending or backing off,
new batches wait in memory.  L{EventStreamer.close} flushes, ends the POST,
waits for the acknowledgements (retrying until its deadline) and returns the
run's L{StreamStats}.

This fixes the reference's lossy streamer (its §15 item 4): no tail lost on
close, the grace period's events are sent, failed batches are retried, and
there is no bounded queue that drops silently.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

import attrs
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from fangs import wire
from fangs.runner.client import OrchestratorError, UnknownRun
from fangs.wire import EventBatch, EventEnvelope, RunID

log = Logger()


@attrs.frozen
class StreamStats:
    """
    What happened to a run's events.

    @ivar eventsEmitted: events the sensor handed to the streamer.
    @ivar eventsAcked: events in batches the orchestrator acknowledged.
    @ivar batchesSent: batches the orchestrator acknowledged.
    @ivar batchesFailed: batches given up (permanent error, unknown run, or
        close deadline).
    """

    eventsEmitted: int
    eventsAcked: int
    batchesSent: int
    batchesFailed: int


@implementer(IBodyProducer)
class SegmentProducer:
    """
    The body of one streaming POST: lines are pushed in with L{write} as
    batches are made and L{end} finishes the body.  Of unknown length, so
    the HTTP client sends it chunked.  Lines written before the connection
    is up, or while the transport has paused us, wait in memory.
    """

    length = UNKNOWN_LENGTH

    def __init__(self) -> None:
        self._consumer: Optional[IConsumer] = None
        self._buffer: Deque[bytes] = deque()
        self._paused = False
        self._stopped = False
        self._ended = False
        self._done: Optional[Deferred[None]] = None

    def write(self, data: bytes) -> None:
        if self._stopped or self._ended:
            return
        self._buffer.append(data)
        self._drain()

    def end(self) -> None:
        """
        No more lines: the body ends once the buffered ones are written.
        """
        self._ended = True
        self._drain()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        self._drain()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        # The connection is gone: write nothing more and, as IBodyProducer
        # asks, never fire the startProducing Deferred.
        self._stopped = True
        self._buffer.clear()

    def _drain(self) -> None:
        consumer = self._consumer
        if consumer is None or self._stopped:
            return
        while self._buffer and not self._paused and not self._stopped:
            consumer.write(self._buffer.popleft())
        done = self._done
        if self._ended and not self._buffer and done is not None and not done.called \
                and not self._stopped:
            done.callback(None)


@attrs.define(eq=False)
class _Batch:
    seq: int
    line: bytes
    events: int


@attrs.define(eq=False)
class _Post:
    producer: SegmentProducer
    batches: List[_Batch] = attrs.field(factory=list)
    ending: bool = False
    rotateCall: Optional[IDelayedCall] = None
    request: Optional[Deferred[Any]] = None
    abandoned: bool = False


def _size(payload: Dict[str, Any]) -> int:
    """
    About how many bytes an event's JSON takes: its top-level strings (and
    those of its top-level objects) plus a fixed part.
    """
    n = 256
    for value in payload.values():
        if isinstance(value, str):
            n += len(value)
        elif isinstance(value, dict):
            for item in value.values():
                if isinstance(item, str):
                    n += len(item)
    return n


def _asDeferred(result: Any) -> Deferred[Any]:
    if isinstance(result, Deferred):
        return result
    return Deferred.fromCoroutine(result)


class EventStreamer:
    """
    Streams one run's events to the orchestrator; see the module docstring.

    @param client: an L{OrchestratorClient} (its C{postEvents} is used).
    @param retryPolicy: C{attempt -> seconds} between failed POSTs.
    """

    def __init__(self, clock: IReactorTime, client: Any, runID: RunID,
                 flushInterval: float = 0.25, batchSize: int = 64,
                 segmentSeconds: float = 5.0, requestTimeout: float = 30.0,
                 retryPolicy: Optional[Callable[[int], float]] = None,
                 batchBytes: int = 512 * 1024) -> None:
        self._clock = clock
        self._client = client
        self._runID = runID
        self._flushInterval = flushInterval
        self._batchSize = batchSize
        #: A batch is cut once its events' strings reach this many bytes (the
        #: orchestrator refuses NDJSON lines over 1 MiB; egress events carry
        #: up to 64 KiB of a captured body).
        self._batchBytes = batchBytes
        self._pendingSizes: List[int] = []
        self._pendingBytes = 0
        self._segmentSeconds = segmentSeconds
        self._requestTimeout = requestTimeout
        self._retryPolicy = retryPolicy or backoffPolicy(initialDelay=0.5, maxDelay=15.0)

        self._pending: List[EventEnvelope] = []
        self._flushCall: Optional[IDelayedCall] = None
        self._nextSeq = 1
        self._queue: Deque[_Batch] = deque()
        self._post: Optional[_Post] = None
        self._retryCall: Optional[IDelayedCall] = None
        self._attempt = 0
        self._closing = False
        self._gaveUp = False
        self._drainWaiters: List[Deferred[None]] = []

        self._emitted = 0
        self._acked = 0
        self._batchesAcked = 0
        self._batchesFailed = 0
        self.postsFailed = 0

    # -- the sensor side ----------------------------------------------------

    def add(self, eventType: int, payload: Dict[str, Any]) -> None:
        """
        Take one event (never blocks, never drops: it is buffered until
        acknowledged).
        """
        self._emitted += 1
        self._pending.append(EventEnvelope(type=int(eventType), payload=payload))
        size = _size(payload)
        self._pendingSizes.append(size)
        self._pendingBytes += size
        if len(self._pending) >= self._batchSize or self._pendingBytes >= self._batchBytes:
            self._flush()
        elif self._flushCall is None:
            self._flushCall = self._clock.callLater(self._flushInterval, self._flush)

    @property
    def unacked(self) -> int:
        """
        Events captured but not yet acknowledged by the orchestrator.
        """
        n = len(self._pending) + sum(b.events for b in self._queue)
        if self._post is not None:
            n += sum(b.events for b in self._post.batches)
        return n

    def stats(self) -> StreamStats:
        return StreamStats(
            eventsEmitted=self._emitted,
            eventsAcked=self._acked,
            batchesSent=self._batchesAcked,
            batchesFailed=self._batchesFailed,
        )

    async def close(self, deadline: float) -> StreamStats:
        """
        Flush everything, end the current POST and wait until every batch
        is acknowledged or given up, retrying failed POSTs until
        C{deadline} (in C{clock.seconds()} terms).  Then whatever is still
        unacknowledged is given up.
        """
        self._closing = True
        self._flush()
        if self._post is not None:
            self._endPost(self._post)
        if not self._isDrained():
            waiter: Deferred[None] = Deferred()
            self._drainWaiters.append(waiter)
            timer = self._clock.callLater(max(0.0, deadline - self._clock.seconds()),
                                          self._deadlineReached)
            try:
                await waiter
            finally:
                if timer.active():
                    timer.cancel()
        stats = self.stats()
        log.info(
            "run {run_id}: stream closed, {acked}/{emitted} events acknowledged in "
            "{batches} batches, {failed} batches given up, {postErrors} POST failures",
            run_id=self._runID.hex(), acked=stats.eventsAcked, emitted=stats.eventsEmitted,
            batches=stats.batchesSent, failed=stats.batchesFailed, postErrors=self.postsFailed,
        )
        return stats

    # -- batching ------------------------------------------------------------

    def _flush(self) -> None:
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        try:
            while self._pending:
                n, size = 0, 0
                while n < len(self._pending) and n < self._batchSize and (n == 0 or size + self._pendingSizes[n] <= self._batchBytes):
                    size += self._pendingSizes[n]
                    n += 1
                events = self._pending[:n]
                del self._pending[:n]
                del self._pendingSizes[:n]
                self._pendingBytes -= size
                batch = EventBatch(run_id=self._runID, seq=self._nextSeq, events=events)
                self._nextSeq += 1
                self._queue.append(_Batch(batch.seq, wire.dumps(batch) + b"\n", len(events)))
            self._pump()
        except Exception:
            log.failure("run {run_id}: flushing events failed", run_id=self._runID.hex())

    def _pump(self) -> None:
        """
        Move queued batches into the POST in progress, opening one when
        none is in flight and we are not backing off.
        """
        if self._gaveUp:
            self._giveUp(list(self._queue))
            self._queue.clear()
        if not self._queue:
            self._checkDrained()
            return
        if self._post is None:
            if self._retryCall is not None:
                return
            self._startPost()
        post = self._post
        if post is None or post.ending:
            # It failed at once, or it is waiting for its answer: the next
            # POST takes the queue.
            return
        while self._queue:
            batch = self._queue.popleft()
            post.batches.append(batch)
            post.producer.write(batch.line)
        if self._closing:
            self._endPost(post)

    # -- POSTs ---------------------------------------------------------------

    def _startPost(self) -> None:
        post = _Post(producer=SegmentProducer())
        post.rotateCall = self._clock.callLater(self._segmentSeconds, self._endPost, post)
        self._post = post
        d = Deferred.fromCoroutine(self._send(post))
        d.addErrback(lambda f: log.failure("run {run_id}: event POST bookkeeping failed", f,
                                           run_id=self._runID.hex()))

    def _endPost(self, post: _Post) -> None:
        if post.ending:
            return
        post.ending = True
        if post.rotateCall is not None and post.rotateCall.active():
            post.rotateCall.cancel()
        post.producer.end()

    async def _send(self, post: _Post) -> None:
        ack: Any = None
        error: Optional[BaseException] = None
        try:
            post.request = _asDeferred(self._client.postEvents(
                self._runID, post.producer, timeout=self._segmentSeconds + self._requestTimeout
            ))
            ack = await post.request
        except Exception as e:  # CancelledError included
            error = e
        if post.abandoned:
            return
        self._finished(post)
        if error is None:
            self._attempt = 0
            self._acked += sum(b.events for b in post.batches)
            self._batchesAcked += len(post.batches)
            log.debug("run {run_id}: {n} batches acknowledged ({ack})",
                      run_id=self._runID.hex(), n=len(post.batches), ack=ack)
        elif isinstance(error, UnknownRun):
            log.error("run {run_id}: orchestrator does not know the run ({error}); "
                      "giving up its events", run_id=self._runID.hex(), error=str(error))
            self._gaveUp = True
            self._giveUp(post.batches)
        elif isinstance(error, CancelledError):
            # Only close()'s deadline cancels a POST.
            self._giveUp(post.batches)
        elif isinstance(error, OrchestratorError) and error.isPermanent():
            self.postsFailed += 1
            log.error("run {run_id}: orchestrator refused {n} event batches ({error}); "
                      "giving them up", run_id=self._runID.hex(), n=len(post.batches),
                      error=str(error))
            self._giveUp(post.batches)
        else:
            self.postsFailed += 1
            text = str(error) if isinstance(error, OrchestratorError) else "%s: %s" % (
                error.__class__.__name__, error)
            self._retryLater(post, text)
        self._pump()

    def _finished(self, post: _Post) -> None:
        if post.rotateCall is not None and post.rotateCall.active():
            post.rotateCall.cancel()
        post.ending = True
        if self._post is post:
            self._post = None

    def _retryLater(self, post: _Post, error: str) -> None:
        if self._gaveUp:
            self._giveUp(post.batches)
            return
        self._queue.extendleft(reversed(post.batches))
        delay = self._retryPolicy(self._attempt)
        self._attempt += 1
        log.warn("run {run_id}: event POST failed ({error}); resending {n} batches in "
                 "{delay:.2f}s", run_id=self._runID.hex(), error=error, n=len(post.batches),
                 delay=delay)
        if self._retryCall is None:
            self._retryCall = self._clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retryCall = None
        try:
            self._pump()
        except Exception:
            log.failure("run {run_id}: resending events failed", run_id=self._runID.hex())

    def _giveUp(self, batches: List[_Batch]) -> None:
        self._batchesFailed += len(batches)

    # -- draining ------------------------------------------------------------

    def _isDrained(self) -> bool:
        return not self._pending and not self._queue and self._post is None

    def _checkDrained(self) -> None:
        if self._drainWaiters and self._isDrained():
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                d.callback(None)

    def _deadlineReached(self) -> None:
        unacked = self.unacked
        if unacked:
            log.error("run {run_id}: close deadline reached with {n} events unacknowledged; "
                      "giving them up", run_id=self._runID.hex(), n=unacked)
        self._gaveUp = True
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        if self._pending:
            self._flush()
        post = self._post
        if post is not None:
            if post.request is not None:
                post.request.cancel()
            if self._post is post:
                # The request did not give up when cancelled; forget it.
                post.abandoned = True
                self._finished(post)
                self._giveUp(post.batches)
        self._pump()
