"""
The shared runner registry and runners' cumulative drop counters.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from twisted.internet.defer import Deferred

from fangs.orchestrator.db.connector import _transaction
from fangs.orchestrator.db.engines import RUNNERS_CHANNEL


class RunnersComponent:
    """
    The shared runner registry and runners' cumulative drop counters.
    """

    # -- cumulative drop counters of runners that report no per-run drops --

    def dropIncrease(self, runnerID: str, cumulative: int) -> "Deferred[int]":
        """
        Record a runner's cumulative C{events_dropped} and return how much it
        grew since the last report (a smaller value means the runner
        restarted: the whole value is new).
        """

        def thd(conn: Any) -> int:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT events_dropped FROM runner_drop_counters WHERE runner_id = ?", (runnerID,)
                ).fetchone()
                previous = row[0] if row is not None else 0
                conn.execute(
                    "INSERT INTO runner_drop_counters (runner_id, events_dropped) VALUES (?, ?)"
                    " ON CONFLICT (runner_id) DO UPDATE SET events_dropped = excluded.events_dropped",
                    (runnerID, cumulative),
                )
                return cumulative - previous if cumulative >= previous else cumulative

        return self._call(thd)

    def batchStored(self, runID: str, seq: int) -> "Deferred[bool]":
        """
        Whether batch C{seq} of the run is stored already (a resend).
        """
        return self._call(
            lambda conn: conn.execute("SELECT 1 FROM batches WHERE run_id = ? AND seq = ?", (runID, seq)).fetchone()
            is not None
        )

    # -- shared runner registry --
    # Registrations and heartbeats, so every orchestrator on one database
    # knows every runner (L{fangs.orchestrator.registry} caches them).

    def upsertRunner(self, runnerID: str, registration: str, nowNs: int) -> "Deferred[bool]":
        """
        Record a (re-)registration (C{registration} is the wire JSON).
        Returns True when it replaced one.
        """
        return self._call(self._thd_upsertRunner, runnerID, registration, nowNs)

    def _thd_upsertRunner(self, conn: Any, runnerID: str, registration: str, nowNs: int) -> bool:
        with _transaction(conn):
            replaced = conn.execute("SELECT 1 FROM runners WHERE runner_id = ?", (runnerID,)).fetchone() is not None
            conn.execute(
                "INSERT INTO runners (runner_id, registration, registered_ns, last_seen_ns) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (runner_id) DO UPDATE SET registration = excluded.registration,"
                " registered_ns = excluded.registered_ns, last_seen_ns = excluded.last_seen_ns, status = '',"
                " active_run_ids = '[]', events_queued = 0",
                (runnerID, registration, nowNs, nowNs),
            )
            conn.engine.notify(conn, RUNNERS_CHANNEL, runnerID)
            return replaced

    def touchRunner(
        self,
        runnerID: str,
        nowNs: int,
        status: Optional[str] = None,
        activeRunIDs: Optional[Sequence[str]] = None,
        eventsQueued: Optional[int] = None,
    ) -> "Deferred[bool]":
        """
        A heartbeat or poll: last seen (never moved back), and what the
        heartbeat says when given.  False for an unknown runner.
        """
        active = None if activeRunIDs is None else json.dumps(list(activeRunIDs))
        return self._call(
            lambda conn: conn.execute(
                "UPDATE runners SET last_seen_ns = %s, status = COALESCE(?, status),"
                " active_run_ids = COALESCE(?, active_run_ids), events_queued = COALESCE(?, events_queued)"
                " WHERE runner_id = ?" % (conn.engine.greatest("last_seen_ns", "?"),),
                (nowNs, status, active, eventsQueued, runnerID),
            ).rowcount
            == 1
        )

    _RUNNER_SELECT = (
        "SELECT runner_id, registration, registered_ns, last_seen_ns, status, active_run_ids, events_queued FROM runners"
    )

    @staticmethod
    def _runnerDict(r: Sequence[Any]) -> Dict[str, Any]:
        return {
            "runner_id": r[0],
            "registration": r[1],
            "registered_ns": r[2],
            "last_seen_ns": r[3],
            "status": r[4],
            "active_run_ids": json.loads(r[5] or "[]"),
            "events_queued": r[6],
        }

    def getRunner(self, runnerID: str) -> "Deferred[Optional[Dict[str, Any]]]":
        def thd(conn: Any) -> Optional[Dict[str, Any]]:
            r = conn.execute(self._RUNNER_SELECT + " WHERE runner_id = ?", (runnerID,)).fetchone()
            return None if r is None else self._runnerDict(r)

        return self._call(thd)

    def listRunners(self, seenSinceNs: int) -> "Deferred[List[Dict[str, Any]]]":
        """
        Runners seen at or after C{seenSinceNs}, by id.
        """
        return self._call(
            lambda conn: [
                self._runnerDict(r)
                for r in conn.execute(self._RUNNER_SELECT + " WHERE last_seen_ns >= ? ORDER BY runner_id", (seenSinceNs,))
            ]
        )
