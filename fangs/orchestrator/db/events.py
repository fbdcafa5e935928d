"""
Event batches and events: ingest, pages for export, counts, retention.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

from fangs.orchestrator import differ
from fangs.orchestrator.db.model import BatchWrite, EventRow, IngestOutcome, StoredEvent
from fangs.orchestrator.db.connector import _transaction
from fangs.orchestrator.db.engines import READ_COMMITTED


#: Runs whose event counts L{EventsComponent.eventCounts} keeps.
_COUNTS_KEPT = 256


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
        write = BatchWrite(runID, seq, rows, nowNs, deadlineNs, tuple(credPaths))
        return self._call(self._thd_ingestBatches, [write]).addCallback(lambda outcomes: outcomes[0])

    def ingestBatches(self, writes: Sequence[BatchWrite]) -> "Deferred[List[IngestOutcome]]":
        """
        Store several batches (of any runs) in one transaction: what
        L{ingestBatch} does for each, with one commit.  One outcome per
        batch, in order; a failure stores none of them.
        """
        return self._call(self._thd_ingestBatches, list(writes))

    def _thd_ingestBatches(self, conn: Any, writes: Sequence[BatchWrite]) -> List[IngestOutcome]:
        engine = conn.engine
        with _transaction(conn, READ_COMMITTED):
            outcomes = []
            fresh = []
            for w in writes:
                if conn.execute(
                    "INSERT INTO batches (run_id, seq, events, received_ns) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (w.run_id, w.seq, len(w.rows), w.now_ns),
                ).rowcount == 0:
                    outcomes.append(IngestOutcome(False, 0))
                    continue
                outcomes.append(IngestOutcome(True, len(w.rows)))
                fresh.append(w)
            if not fresh:
                return outcomes
            sets: Dict[Tuple[str, Tuple[str, ...]], differ.FingerprintSet] = {}
            for w in fresh:
                if not w.rows:
                    continue
                ids = engine.insertEvents(conn, w.run_id, w.rows, w.now_ns)
                key = (w.run_id, tuple(w.cred_paths))
                fps = sets.get(key)
                if fps is None:
                    fps = sets[key] = differ.FingerprintSet(w.cred_paths or differ.DEFAULT_CRED_PATHS)
                add = fps.add
                for eid, r in zip(ids, w.rows):
                    if r.payload is not None:
                        add(eid, r.type, r.payload)
            # The rows of several batches merged in one set are what the
            # upsert of each batch's rows would have summed.  One lock order,
            # so concurrent groups (PostgreSQL, several orchestrators) never
            # deadlock on a run's fingerprints.
            found = sorted((runID,) + f for (runID, _), fps in sets.items() for f in fps.tuples())
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
                    found,
                )
            for runID, (events_, batches, nowNs, deadlineNs) in sorted(_perRun(fresh).items()):
                conn.execute(
                    "UPDATE runs SET events_received = events_received + ?,"
                    " batches_received = batches_received + ?, last_activity_ns = ?,"
                    " deadline_ns = %s,"
                    " state = CASE WHEN state = 'dispatched' THEN 'running' ELSE state END"
                    " WHERE id = ?" % (engine.greatest("COALESCE(deadline_ns, 0)", "?"),),
                    (events_, batches, nowNs, deadlineNs, runID),
                )
            return outcomes

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

    #: Whether L{eventCounts} may count only the events stored since its
    #: last answer: event ids grow in commit order (one writer), and only
    #: this store deletes events.  Not so where several writers share the
    #: database (PostgreSQL).
    _incrementalCounts = True

    def eventCounts(self, runID: str) -> "Deferred[Dict[int, int]]":
        """
        The run's events by type.  A run page polled while its events
        arrive (the dashboard, C{fangs run watch}) counts only the events
        stored since the last poll, not the whole run again.
        """
        return self._call(self._thd_eventCounts, runID)

    def _thd_eventCounts(self, conn: Any, runID: str) -> Dict[int, int]:
        if not self._incrementalCounts:
            return {t: n for t, n in conn.execute(
                "SELECT type, COUNT(*) FROM events WHERE run_id = ? GROUP BY type", (runID,))}
        cache: Dict[str, Tuple[int, Dict[int, int]]] = self.__dict__.setdefault("_typeCounts", {})
        known = cache.pop(runID, None)
        if known is None:
            last, counts = 0, {}
            rows = conn.execute("SELECT type, COUNT(*), MAX(id) FROM events WHERE run_id = ? GROUP BY type", (runID,))
        else:
            last, counts = known[0], dict(known[1])
            # "+run_id": walk the ids after the last answer, not the run's index.
            rows = conn.execute(
                "SELECT type, COUNT(*), MAX(id) FROM events WHERE id > ? AND +run_id = ? GROUP BY type", (last, runID))
        for t, n, highest in rows:
            counts[t] = counts.get(t, 0) + n
            last = max(last, highest)
        if len(cache) >= _COUNTS_KEPT:
            del cache[next(iter(cache))]
        cache[runID] = (last, counts)
        return dict(counts)

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
        self.__dict__.pop("_typeCounts", None)  # counts of pruned runs go down
        # SKIP LOCKED where the engine has it: two orchestrators pruning at
        # once take different rows.
        with _transaction(conn, READ_COMMITTED):
            return conn.execute(
                "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.received_ns < ?"
                " AND NOT EXISTS (SELECT 1 FROM deviations d WHERE d.evidence_event_id = e.id) LIMIT ?%s)"
                % (conn.engine.skipLocked,),
                (cutoffNs, batch),
            ).rowcount


def _perRun(writes: Sequence[BatchWrite]) -> Dict[str, Tuple[int, int, int, int]]:
    """
    Per run of the stored batches: events, batches, the latest arrival and
    the furthest deadline (what one C{UPDATE runs} per batch would leave).
    """
    out: Dict[str, Tuple[int, int, int, int]] = {}
    for w in writes:
        events, batches, nowNs, deadlineNs = out.get(w.run_id, (0, 0, w.now_ns, w.deadline_ns))
        out[w.run_id] = (events + len(w.rows), batches + 1, max(nowNs, w.now_ns), max(deadlineNs, w.deadline_ns))
    return out
