"""
Group commit of event batches.

Every stored batch costs a transaction; most of a small transaction's cost is
the commit itself (the pages it dirtied written to the WAL, the hop to the
store's thread and back).  L{GroupCommitter} hands the store every batch that
arrived while the previous group was being written as one group, stored in
one transaction by the store's C{ingestBatches}:

  - a batch's Deferred fires only after the transaction holding it committed,
    with that batch's own L{IngestOutcome} (a duplicate is still a duplicate);
  - a group that fails (the commit, or any statement in it) fails every batch
    in it, and stored none of them: their senders resend, as after any
    failed POST;
  - the fingerprints stay exact: the store extracts them per event with the
    event's own id, and merging the rows of several batches is what the
    upsert of each would have done (counts add, first ids take the minimum).

With no group in flight a batch is written at once, so a lone batch waits no
longer than before; under load the groups grow by themselves.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from fangs.orchestrator.db.model import BatchWrite

log = Logger()

#: A group holds at most this many events (and always at least one batch).
MAX_GROUP_EVENTS = 8192


class GroupCommitter:
    """
    @param write: the store's C{ingestBatches}: a list of L{BatchWrite} to
        store in one transaction -> Deferred of one outcome per batch, in order.
    @param concurrency: how many groups may be in flight at once (1 for one
        SQLite writer; more where the store has several connections).
    """

    def __init__(self, write: Callable[[List[BatchWrite]], "Deferred[List[Any]]"], concurrency: int = 1,
                 maxEvents: int = MAX_GROUP_EVENTS) -> None:
        self._write = write
        self._concurrency = max(1, concurrency)
        self._maxEvents = maxEvents
        self._pending: List[Tuple[BatchWrite, Deferred]] = []
        self._inFlight = 0
        #: Sizes (batches) of the groups written so far, for tests and metrics.
        self.groups = 0
        self.batches = 0

    def submit(self, batch: BatchWrite) -> "Deferred[Any]":
        d: Deferred = Deferred()
        self._pending.append((batch, d))
        self._flush()
        return d

    def _flush(self) -> None:
        while self._pending and self._inFlight < self._concurrency:
            group = self._take()
            self._inFlight += 1
            self.groups += 1
            self.batches += len(group)
            try:
                d = self._write([b for b, _ in group])
            except Exception:
                d = Deferred()
                d.errback(Failure())
            d.addBoth(self._written, group)

    def _take(self) -> List[Tuple[BatchWrite, Deferred]]:
        events = 0
        n = 0
        for batch, _ in self._pending:
            if n and events + len(batch.rows) > self._maxEvents:
                break
            events += len(batch.rows)
            n += 1
        group, self._pending = self._pending[:n], self._pending[n:]
        return group

    def _written(self, result: Any, group: List[Tuple[BatchWrite, Deferred]]) -> None:
        self._inFlight -= 1
        if isinstance(result, Failure):
            for _, d in group:
                d.errback(result)
        elif len(result) != len(group):
            failure = Failure(RuntimeError("the store answered %d outcomes for %d batches" % (len(result), len(group))))
            for _, d in group:
                d.errback(failure)
        else:
            for outcome, (_, d) in zip(result, group):
                d.callback(outcome)
        self._flush()
