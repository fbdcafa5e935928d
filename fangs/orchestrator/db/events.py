"""
Event batches and events: ingest, pages for export, counts, retention.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

from fangs.orchestrator import differ
from fangs.orchestrator.db.model import EventRow, StoredEvent, IngestOutcome
from fangs.orchestrator.db.connector import _transaction
from fangs.orchestrator.db.engines import READ_COMMITTED


class EventsComponent:
    """
    Event batches and events: ingest, pages for export, counts, retention.
    """

    # -- events --------------------------------------------------------------

    def ingestBatch(
        self,
        runID: str,
        seq: int,
        rows: Sequence[EventRow],
        nowNs: int,
        deadlineNs: int,
        credPaths: Sequence[str] = (),
    ) -> "Deferred[IngestOutcome]":
        """
        Store one batch and its fingerprints in one transaction.  A batch
        already stored (same run and C{seq}) is ignored, so a runner may
        resend safely.  Fingerprints are extracted here, batch by batch, so
        the verdict is ready as soon as the run ends.
        """
        return self._call(self._thd_ingestBatch, runID, seq, rows, nowNs, deadlineNs, credPaths)

    def _thd_ingestBatch(
        self,
        conn: Any,
        runID: str,
        seq: int,
        rows: Sequence[EventRow],
        nowNs: int,
        deadlineNs: int,
        credPaths: Sequence[str] = (),
    ) -> IngestOutcome:
        engine = conn.engine
        with _transaction(conn, READ_COMMITTED):
            if conn.execute(
                "INSERT INTO batches (run_id, seq, events, received_ns) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (runID, seq, len(rows), nowNs),
            ).rowcount == 0:
                return IngestOutcome(False, 0)
            if rows:
                ids = engine.insertEvents(conn, runID, rows, nowNs)
                fps = differ.FingerprintSet(credPaths or differ.DEFAULT_CRED_PATHS)
                for eid, r in zip(ids, rows):
                    if r.payload is not None:
                        fps.add(eid, r.type, r.payload)
                # One lock order, so concurrent batches of a run (PostgreSQL,
                # several orchestrators) never deadlock on its fingerprints.
                found = sorted(fps.rows(), key=lambda f: (f.category, f.value))
                if found:
                    conn.executemany(
                        "INSERT INTO run_fingerprints (run_id, category, value, count, first_event_id, cred, raw_ip)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (run_id, category, value) DO UPDATE SET"
                        " count = run_fingerprints.count + excluded.count,"
                        " first_event_id = %s, cred = %s, raw_ip = %s"
                        % (
                            engine.least("run_fingerprints.first_event_id", "excluded.first_event_id"),
                            engine.greatest("run_fingerprints.cred", "excluded.cred"),
                            engine.greatest("run_fingerprints.raw_ip", "excluded.raw_ip"),
                        ),
                        [(runID, f.category, f.value, f.count, f.first_event_id, int(f.cred), int(f.raw_ip)) for f in found],
                    )
            conn.execute(
                "UPDATE runs SET events_received = events_received + ?,"
                " batches_received = batches_received + 1, last_activity_ns = ?,"
                " deadline_ns = %s,"
                " state = CASE WHEN state = 'dispatched' THEN 'running' ELSE state END"
                " WHERE id = ?" % (engine.greatest("COALESCE(deadline_ns, 0)", "?"),),
                (len(rows), nowNs, deadlineNs, runID),
            )
            return IngestOutcome(True, len(rows))

    def eventPage(
        self, runID: str, after: Tuple[int, int], limit: int, eventType: Optional[int] = None
    ) -> "Deferred[List[StoredEvent]]":
        """
        Events of a run in stable order (C{seq}, C{idx}) after the position
        C{after}.
        """
        return self._call(self._thd_eventPage, runID, after, limit, eventType)

    def _thd_eventPage(
        self,
        conn: Any,
        runID: str,
        after: Tuple[int, int],
        limit: int,
        eventType: Optional[int],
    ) -> List[StoredEvent]:
        sql = (
            "SELECT id, run_id, seq, idx, type, ts_ns, received_ns, pid, data FROM events"
            " WHERE run_id = ? AND (seq > ? OR (seq = ? AND idx > ?))"
        )
        args: List[Any] = [runID, after[0], after[0], after[1]]
        if eventType is not None:
            sql += " AND type = ?"
            args.append(eventType)
        sql += " ORDER BY seq, idx LIMIT ?"
        args.append(limit)
        return [StoredEvent(*r) for r in conn.execute(sql, args)]

    def eventCounts(self, runID: str) -> "Deferred[Dict[int, int]]":
        return self._call(
            lambda conn: {
                t: n
                for t, n in conn.execute(
                    "SELECT type, COUNT(*) FROM events WHERE run_id = ? GROUP BY type", (runID,)
                )
            }
        )

    # -- retention --
    # Raw events older than the retention period go, in small batches (one
    # short transaction each), except those a deviation cites as evidence.
    # Runs, verdicts, deviations, baselines and the audit are kept.

    def pruneEvents(self, cutoffNs: int, batch: int = 5000) -> "Deferred[int]":
        """
        Delete up to C{batch} events received before C{cutoffNs} that no
        deviation cites; returns how many went.
        """
        return self._call(self._thd_pruneEvents, cutoffNs, batch)

    def _thd_pruneEvents(self, conn: Any, cutoffNs: int, batch: int) -> int:
        # SKIP LOCKED where the engine has it: two orchestrators pruning at
        # once take different rows.
        with _transaction(conn, READ_COMMITTED):
            return conn.execute(
                "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.received_ns < ?"
                " AND NOT EXISTS (SELECT 1 FROM deviations d WHERE d.evidence_event_id = e.id) LIMIT ?%s)"
                % (conn.engine.skipLocked,),
                (cutoffNs, batch),
            ).rowcount
