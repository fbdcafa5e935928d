"""
The in-memory registry of runners: who registered, when each was last seen,
and what each says it is doing.  Runners not seen for C{staleAfter} seconds
are pruned; a pruned runner re-registers when its heartbeat answers
C{unknown_runner}.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fangs.wire import Heartbeat, RunnerRegistration

log = Logger()

STALE_AFTER = 90.0
PRUNE_EVERY = 30.0


@attrs.define
class RunnerRecord:
    registration: RunnerRegistration
    registered_at: float
    last_seen: float
    status: str = ""
    active_run_id: str = ""
    active_run_ids: List[str] = attrs.field(factory=list)
    events_queued: int = 0

    @property
    def runner_id(self) -> str:
        return self.registration.runner_id


class RunnerRegistry:
    def __init__(self, clock: IReactorTime, staleAfter: float = STALE_AFTER) -> None:
        self._clock = clock
        self._staleAfter = staleAfter
        self._runners: Dict[str, RunnerRecord] = {}

    def register(self, registration: RunnerRegistration) -> bool:
        """
        Add or replace a runner.  Returns True when it replaced one.
        """
        now = self._clock.seconds()
        replaced = registration.runner_id in self._runners
        self._runners[registration.runner_id] = RunnerRecord(registration, now, now)
        log.info(
            "runner {runner_id} registered (kernel {kernel}, replaced={replaced})",
            runner_id=registration.runner_id,
            kernel=registration.kernel_version,
            replaced=replaced,
        )
        return replaced

    def heartbeat(self, runnerID: str, beat: Heartbeat) -> bool:
        """
        Record a heartbeat.  Returns False for an unknown runner.
        """
        record = self._runners.get(runnerID)
        if record is None:
            return False
        record.last_seen = self._clock.seconds()
        record.active_run_id = beat.active_run_id
        record.active_run_ids = list(beat.active_run_ids) or ([beat.active_run_id] if beat.active_run_id else [])
        if beat.status:
            record.status = beat.status
        record.events_queued = beat.events_queued
        return True

    def touch(self, runnerID: str) -> None:
        """
        A long-poll also proves the runner is alive.
        """
        record = self._runners.get(runnerID)
        if record is not None:
            record.last_seen = self._clock.seconds()

    def get(self, runnerID: str) -> Optional[RunnerRecord]:
        return self._runners.get(runnerID)

    def __contains__(self, runnerID: str) -> bool:
        return runnerID in self._runners

    def all(self) -> List[RunnerRecord]:
        return [self._runners[k] for k in sorted(self._runners)]

    def prune(self) -> List[str]:
        """
        Drop runners not seen for longer than C{staleAfter}.  Never raises.
        """
        cutoff = self._clock.seconds() - self._staleAfter
        gone = [k for k, r in self._runners.items() if r.last_seen < cutoff]
        for k in gone:
            del self._runners[k]
            log.warn("pruned runner {runner_id}: not seen for {seconds:.0f}s", runner_id=k, seconds=self._staleAfter)
        return gone
