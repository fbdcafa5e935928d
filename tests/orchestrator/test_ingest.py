"""
The group committer (L{fangs.orchestrator.ingest.GroupCommitter}) with a
store whose transactions the test commits or fails by hand.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator.db.model import BatchWrite, IngestOutcome
from fangs.orchestrator.groupcommit import GroupCommitter


def batch(seq: int, events: int = 1, run: str = "r") -> BatchWrite:
    return BatchWrite(run, seq, [object()] * events, 1, 2)


class HeldStore:
    """
    C{ingestBatches} that answers when the test says: each call is one
    transaction in flight.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[List[BatchWrite], Deferred]] = []

    def ingestBatches(self, writes: List[BatchWrite]) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((list(writes), d))
        return d

    def commit(self, i: int = 0) -> None:
        writes, d = self.calls.pop(i)
        d.callback([IngestOutcome(True, len(w.rows)) for w in writes])

    def fail(self, i: int = 0) -> None:
        _, d = self.calls.pop(i)
        d.errback(OSError("disk I/O error"))


class GroupCommitterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = HeldStore()
        self.committer = GroupCommitter(self.store.ingestBatches)

    def seqs(self, i: int) -> List[int]:
        return [w.seq for w in self.store.calls[i][0]]

    def test_aloneWrittenAtOnce(self) -> None:
        """
        With nothing in flight a batch goes to the store at once, alone.
        """
        d = self.committer.submit(batch(1))
        self.assertEqual([self.seqs(0)], [[1]])
        self.assertNoResult(d)
        self.store.commit()
        self.assertEqual(self.successResultOf(d), IngestOutcome(True, 1))

    def test_waitingBatchesGoTogether(self) -> None:
        """
        Batches handed in while a group is in flight wait, then go together
        as the next group (one transaction), in order; each is acknowledged
        only once its own transaction committed.
        """
        first = self.committer.submit(batch(1))
        waiting = [self.committer.submit(batch(seq, events=seq)) for seq in (2, 3, 4)]
        self.assertEqual(len(self.store.calls), 1)
        for d in waiting:
            self.assertNoResult(d)
        self.store.commit()
        self.successResultOf(first)
        self.assertEqual(self.seqs(0), [2, 3, 4])
        for d in waiting:
            self.assertNoResult(d)  # written, not committed yet
        self.store.commit()
        self.assertEqual([self.successResultOf(d) for d in waiting], [IngestOutcome(True, n) for n in (2, 3, 4)])
        self.assertEqual((self.committer.groups, self.committer.batches), (2, 4))

    def test_failureFailsEveryBatchOfTheGroup(self) -> None:
        """
        A group whose transaction fails fails every batch in it (none was
        stored), and only those: the next group is written and acknowledged.
        """
        self.committer.submit(batch(1)).addErrback(lambda f: None)
        group = [self.committer.submit(batch(seq)) for seq in (2, 3)]
        self.store.commit()
        self.store.fail()
        for d in group:
            self.failureResultOf(d, OSError)
        later = self.committer.submit(batch(4))
        self.assertEqual(self.seqs(0), [4])
        self.store.commit()
        self.assertEqual(self.successResultOf(later), IngestOutcome(True, 1))

    def test_storeRaising(self) -> None:
        """
        A store that raises instead of failing a Deferred fails the group
        the same way.
        """

        def broken(writes: Any) -> Deferred:
            raise RuntimeError("closed")

        committer = GroupCommitter(broken)
        self.failureResultOf(committer.submit(batch(1)), RuntimeError)
        self.failureResultOf(committer.submit(batch(2)), RuntimeError)

    def test_groupBounded(self) -> None:
        """
        A group holds at most C{maxEvents} events (but always one batch,
        however big).
        """
        committer = GroupCommitter(self.store.ingestBatches, maxEvents=10)
        committer.submit(batch(1))
        for seq, n in ((2, 4), (3, 4), (4, 4), (5, 30)):
            committer.submit(batch(seq, events=n))
        self.store.commit()
        self.assertEqual(self.seqs(0), [2, 3])
        self.store.commit()
        self.assertEqual(self.seqs(0), [4])
        self.store.commit()
        self.assertEqual(self.seqs(0), [5])

    def test_concurrency(self) -> None:
        """
        With C{concurrency=2} two groups may be in flight at once.
        """
        committer = GroupCommitter(self.store.ingestBatches, concurrency=2)
        for seq in (1, 2, 3, 4):
            committer.submit(batch(seq))
        self.assertEqual([self.seqs(0), self.seqs(1)], [[1], [2]])
        self.store.commit(1)
        self.assertEqual(self.seqs(1), [3, 4])

    def test_cancelledWaiterIgnored(self) -> None:
        """
        A batch whose caller went away (its Deferred cancelled, as Klein does
        when the client disconnects) is still written; its outcome is
        dropped without an error.
        """
        self.committer.submit(batch(1))
        d = self.committer.submit(batch(2))
        d.cancel()
        self.failureResultOf(d)
        self.store.commit()
        self.assertEqual(self.seqs(0), [2])
        self.store.commit()
