"""
Retention: raw events older than C{--retention-days} are deleted, a batch
per transaction so no lock is held for long, except every event a deviation
cites as evidence; so are the bytes of scanned tarballs no run used for as
long (their hash, size and integrity outcome stay with the runs).  Runs, verdicts, deviations, baselines and the audit are
never pruned.  Works on both stores (C{pruneEvents(cutoffNs, batch)}); two
orchestrators pruning one PostgreSQL database at once take different rows.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

log = Logger()

DAY_NS = 86400 * 1_000_000_000
PRUNE_EVERY = 3600.0
BATCH = 5000
#: Pause between batches, so ingest transactions get the tables in between.
PAUSE = 0.05


class Pruner:
    def __init__(self, clock: IReactorTime, store: Any, days: float, batch: int = BATCH, pause: float = PAUSE) -> None:
        self._clock = clock
        self._store = store
        self.days = days
        self.batch = batch
        self.pause = pause
        self.running = False

    async def prune(self) -> int:
        """
        Delete every expired event, batch by batch; returns how many went.
        Never raises (it runs from a timer).
        """
        if self.running or self.days <= 0:
            return 0
        self.running = True
        total = 0
        try:
            cutoff = int(self._clock.seconds() * 1_000_000_000) - int(self.days * DAY_NS)
            while True:
                n = await self._store.pruneEvents(cutoff, self.batch)
                total += n
                if n < self.batch:
                    break
                await deferLater(self._clock, self.pause, lambda: None)
            if total:
                log.info("retention: deleted {n} events older than {days} days", n=total, days=self.days)
            dropped = await self._store.pruneArtifacts(cutoff)
            if dropped:
                log.info("retention: dropped {n} tarballs unused for {days} days", n=dropped, days=self.days)
        except Exception:
            log.failure("retention prune failed after {n} events", n=total)
        finally:
            self.running = False
        return total


def retentionService(clock: IReactorTime, store: Any, days: float, every: float = PRUNE_EVERY) -> TimerService:
    """
    A C{TimerService} that prunes at start-up and then every C{every} seconds.
    """
    pruner = Pruner(clock, store, days)
    timer = TimerService(every, lambda: Deferred.fromCoroutine(pruner.prune()))
    timer.clock = clock
    timer.pruner = pruner  # type: ignore[attr-defined]
    return timer
