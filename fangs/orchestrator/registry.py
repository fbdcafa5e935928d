"""
The in-memory registry of runners: who registered, when each was last seen,
and what each says it is doing.  Runners not seen for C{staleAfter} seconds
are pruned; a pruned runner re-registers when its heartbeat answers
C{unknown_runner}.

Given a store, registrations and heartbeats are also written there, so every
orchestrator on one database knows every runner: a runner this process has
not seen is looked up in the store (L{RunnerRegistry.exists}), and
L{RunnerRegistry.refresh} merges what the other orchestrators saw.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fangs import wire
from fangs.wire import Heartbeat, RunnerRegistration

log = Logger()

STALE_AFTER = 90.0
PRUNE_EVERY = 30.0
#: A long-poll refreshes the stored last-seen time at most this often.
TOUCH_WRITE_EVERY = 10.0


@attrs.define
class RunnerRecord:
    registration: RunnerRegistration
    registered_at: float
    last_seen: float
    status: str = ""
    active_run_id: str = ""
    active_run_ids: List[str] = attrs.field(factory=list)
    events_queued: int = 0
    written_at: float = 0.0

    @property
    def runner_id(self) -> str:
        return self.registration.runner_id


class RunnerRegistry:
    def __init__(self, clock: IReactorTime, staleAfter: float = STALE_AFTER, store: Any = None) -> None:
        self._clock = clock
        self._staleAfter = staleAfter
        self._runners: Dict[str, RunnerRecord] = {}
        self._store = store

    def _ns(self, seconds: float) -> int:
        return int(seconds * 1_000_000_000)

    def _write(self, d: Any, runnerID: str) -> None:
        d.addErrback(lambda f: log.failure("storing runner {runner_id} failed", f, runner_id=runnerID))

    def register(self, registration: RunnerRegistration) -> bool:
        """
        Add or replace a runner.  Returns True when it replaced one.
        """
        now = self._clock.seconds()
        replaced = registration.runner_id in self._runners
        self._runners[registration.runner_id] = RunnerRecord(registration, now, now, written_at=now)
        if self._store is not None:
            self._write(
                self._store.upsertRunner(registration.runner_id, wire.dumps(registration).decode("utf-8"), self._ns(now)),
                registration.runner_id,
            )
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
        if self._store is not None:
            record.written_at = record.last_seen
            self._write(
                self._store.touchRunner(
                    runnerID, self._ns(record.last_seen), record.status, record.active_run_ids, record.events_queued
                ),
                runnerID,
            )
        return True

    def touch(self, runnerID: str) -> None:
        """
        A long-poll also proves the runner is alive.
        """
        record = self._runners.get(runnerID)
        if record is not None:
            record.last_seen = self._clock.seconds()
            if self._store is not None and record.last_seen - record.written_at >= TOUCH_WRITE_EVERY:
                record.written_at = record.last_seen
                self._write(self._store.touchRunner(runnerID, self._ns(record.last_seen)), runnerID)

    async def exists(self, runnerID: str) -> bool:
        """
        Whether the runner is registered here, or (with a store) registered
        and alive at any orchestrator on the same database.
        """
        if runnerID in self._runners:
            return True
        if self._store is None:
            return False
        row = await self._store.getRunner(runnerID)
        if row is None or row["last_seen_ns"] < self._ns(self._clock.seconds() - self._staleAfter):
            return False
        self._merge(row)
        return runnerID in self._runners

    async def refresh(self) -> None:
        """
        Merge the runners every orchestrator on the database has seen.
        """
        if self._store is None:
            return
        for row in await self._store.listRunners(self._ns(self._clock.seconds() - self._staleAfter)):
            self._merge(row)

    def _merge(self, row: Dict[str, Any]) -> None:
        seen = row["last_seen_ns"] / 1e9
        record = self._runners.get(row["runner_id"])
        if record is None:
            try:
                reg = wire.loads(row["registration"].encode("utf-8"), RunnerRegistration)
            except Exception:
                log.failure("stored registration of runner {runner_id} is unreadable", runner_id=row["runner_id"])
                return
            record = RunnerRecord(reg, row["registered_ns"] / 1e9, seen, written_at=seen)
            self._runners[row["runner_id"]] = record
        elif seen > record.last_seen:
            record.last_seen = record.written_at = seen
        else:
            return
        record.status = row["status"]
        record.active_run_ids = list(row["active_run_ids"])
        record.active_run_id = record.active_run_ids[0] if record.active_run_ids else ""
        record.events_queued = row["events_queued"]

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
