"""
The long-poll dispatcher: runners wait for jobs on Deferreds, the queue itself
lives in the database.

A poll first registers its waiter and then tries to lease a job, so a job
queued in between is never missed.  A waiter fires exactly once: with a lease
C{(run_id, job_json)}, or with None when the poll wait expires.  Cancelling
it (Klein does when the client disconnects) unregisters it; a lease that
arrives for an abandoned waiter goes straight back to the head of the queue.

A lease becomes a dispatch only once the response carrying the job was
written (L{confirm}); otherwise it is released (L{release}).  So a runner that
disconnects mid long-poll loses no job.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

Lease = Tuple[str, str]


class _Waiter:
    def __init__(self, runnerID: str) -> None:
        self.runnerID = runnerID
        self.result: Deferred = Deferred(canceller=self._cancel)
        self.timer: Optional[IDelayedCall] = None
        self.done = False
        self.claiming = False
        self.again = False
        self.onCancel: Any = None

    def _cancel(self, d: Deferred) -> None:
        if self.onCancel is not None:
            self.onCancel(self)


class Dispatcher:
    def __init__(self, clock: IReactorTime, store: Any, pollWait: float = 25.0) -> None:
        self._clock = clock
        self._store = store
        self.pollWait = pollWait
        self._waiters: Dict[str, List[_Waiter]] = {}

    def waiterCount(self) -> int:
        return sum(len(ws) for ws in self._waiters.values())

    def poll(self, runnerID: str, wait: Optional[float] = None) -> "Deferred[Optional[Lease]]":
        w = _Waiter(runnerID)
        w.onCancel = self._finish
        self._waiters.setdefault(runnerID, []).append(w)
        w.timer = self._clock.callLater(self.pollWait if wait is None else wait, self._expire, w)
        self._attempt(w)
        return w.result

    def wake(self, target: Optional[str]) -> None:
        """
        A job was queued for C{target} (None: the shared queue, any runner).
        """
        if target is None:
            waiters = [w for ws in self._waiters.values() for w in ws]
        else:
            waiters = list(self._waiters.get(target, ()))
        for w in waiters:
            self._attempt(w)

    def _attempt(self, w: _Waiter) -> None:
        if w.done:
            return
        if w.claiming:
            w.again = True
            return
        w.claiming = True
        d = self._store.claimJob(w.runnerID)
        d.addCallbacks(self._claimed, self._claimFailed, callbackArgs=(w,), errbackArgs=(w,))

    def _claimed(self, lease: Optional[Lease], w: _Waiter) -> None:
        w.claiming = False
        if lease is not None:
            if w.done:
                # The poll ended while the lease was being taken.
                self._releaseQuietly(lease[0], w.runnerID)
                return
            self._finish(w)
            w.result.callback(lease)
            return
        if w.again:
            w.again = False
            self._attempt(w)

    def _claimFailed(self, failure: Any, w: _Waiter) -> None:
        w.claiming = False
        log.failure("claiming a job for runner {runner_id} failed", failure, runner_id=w.runnerID)

    def _expire(self, w: _Waiter) -> None:
        w.timer = None
        if not w.done:
            self._finish(w)
            w.result.callback(None)

    def _finish(self, w: _Waiter) -> None:
        w.done = True
        if w.timer is not None and w.timer.active():
            w.timer.cancel()
        w.timer = None
        ws = self._waiters.get(w.runnerID)
        if ws is not None:
            if w in ws:
                ws.remove(w)
            if not ws:
                del self._waiters[w.runnerID]

    def _releaseQuietly(self, runID: str, runnerID: str) -> None:
        d = self.release(runID, runnerID)
        d.addErrback(lambda f: log.failure("releasing lease of run {run_id} failed", f, run_id=runID))

    def release(self, runID: str, runnerID: str) -> Deferred:
        """
        The job of a lease did not reach its runner: back to the queue, and
        wake whoever may take it.
        """
        d = self._store.releaseLease(runID)

        def released(ok: bool) -> bool:
            if ok:
                log.info("job {run_id} went back to the queue (runner {runner_id} did not take it)", run_id=runID, runner_id=runnerID)
                self.wake(runnerID)
                self.wake(None)
            return ok

        return d.addCallback(released)

    def cancelAll(self) -> None:
        """
        At shutdown: end every poll with "no job".
        """
        for ws in list(self._waiters.values()):
            for w in list(ws):
                self._expire(w)
