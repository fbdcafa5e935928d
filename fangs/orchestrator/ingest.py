"""
The events ingest pipeline: a runner's NDJSON stream of event batches,
parsed line by line (L{parseBatchLine}) and handed to the store in order,
with up to L{INGEST_PIPELINE} batches in flight.

L{EventIngest} is a part of L{fangs.orchestrator.core.Orchestrator} (it
reads the orchestrator's store, clock, metrics and run events).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Tuple

import attrs
import orjson

from fangs import wire
from fangs.errors import BadRequest, ConflictError
from fangs.orchestrator import store as S
from fangs.orchestrator.analysis import credPathsOf

INGEST_PIPELINE = 8


@attrs.frozen
class IngestProgress:
    received_batches: int = 0
    received_events: int = 0
    persisted: int = 0


class EventIngest:
    """
    The orchestrator's ingest of a run's events (a mixin of
    L{fangs.orchestrator.core.Orchestrator}).
    """

    async def ingestLines(self, runID: str, lines: Iterable[bytes]) -> IngestProgress:
        """
        Store each NDJSON line (one L{wire.EventBatch}) in its own
        transaction, in order.  A malformed line stops the stream with
        L{BadRequest}; every batch before it stays stored.
        """
        run = await self.requireRun(runID)
        finished = run.result_status is not None
        span = self._deadlineSpan(run)
        credPaths = credPathsOf(run)
        batches = events = persisted = 0
        # Up to INGEST_PIPELINE batches wait for the store's thread while the
        # next lines are parsed here: the store applies them in order, each
        # in its own transaction.
        inflight: List[Any] = []

        async def settle(limit: int) -> None:
            nonlocal persisted
            while len(inflight) > limit:
                d, rows, started = inflight.pop(0)
                outcome = await d
                self.metrics.ingestLatency.observe(self.clock.seconds() - started)
                self.metrics.eventsPersisted.inc(outcome.events)
                persisted += outcome.events
                if outcome.inserted:
                    if self.runEvents is not None:
                        # The stream keeps at most a few of these a second.
                        self.runEvents.announce("run.updated", runID, run.package_name, run.version, "running",
                                                events_received=run.events_received + persisted)

        try:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    seq, rows = parseBatchLine(line, runID)
                except BadRequest as e:
                    await settle(0)
                    raise BadRequest(
                        "line %d: %s (%d batches before it were stored)" % (lineno, e.message, batches)
                    ) from None
                self.metrics.eventsIn(r.type for r in rows)
                if finished:
                    # After the result only a resend of stored batches is
                    # accepted (a runner retrying a stream it had sent).
                    await settle(0)
                    if not await self.store.batchStored(runID, seq):
                        raise ConflictError(
                            "run %s has its result already; events after it are refused"
                            " (line %d, batch seq %d; %d batches before it were accepted as resends)"
                            % (runID, lineno, seq, batches),
                            code="run_finished",
                        )
                now = self.nowNs()
                inflight.append((self.store.ingestBatch(runID, seq, rows, now, now + span, credPaths), rows, self.clock.seconds()))
                batches += 1
                events += len(rows)
                await settle(INGEST_PIPELINE)
            await settle(0)
        except BaseException:
            # Let every batch already handed to the store finish (they are
            # stored), and never leave a Deferred's failure unhandled.
            for d, _, _ in inflight:
                d.addErrback(lambda f: None)
            raise
        return IngestProgress(batches, events, persisted)


def parseBatchLine(line: bytes, runID: str) -> Tuple[int, List[S.EventRow]]:
    """
    Validate one NDJSON line as an L{wire.EventBatch} and turn it into rows.

    This is the ingest hot path, so it checks the shape by hand instead of
    going through cattrs; the rules are the wire types'.
    """
    try:
        batch = orjson.loads(line)
    except orjson.JSONDecodeError:
        # orjson refuses what stdlib JSON accepts in a few corners (integers
        # beyond 64 bits, deep nesting); let the stdlib decide and explain.
        try:
            batch = json.loads(line)
        except RecursionError:
            raise BadRequest("JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest("malformed JSON: %s" % (e,)) from None
    if not isinstance(batch, dict):
        raise BadRequest("an event batch must be a JSON object")
    seq = batch.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        raise BadRequest("seq must be an integer >= 1")
    rid = batch.get("run_id")
    if rid is not None:
        try:
            batchRun = wire.structure(rid, wire.RunID)
        except wire.WireError as e:
            raise BadRequest("run_id: %s" % (e,)) from None
        if not batchRun.is_zero() and batchRun.hex() != runID:
            raise BadRequest("batch run_id %s does not match the URL's %s" % (batchRun.hex(), runID))
    items = batch.get("events")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise BadRequest("events must be an array")
    rows = []
    for idx, ev in enumerate(items):
        if not isinstance(ev, dict):
            raise BadRequest("events[%d] must be an object" % (idx,))
        etype = ev.get("type")
        if isinstance(etype, bool) or not isinstance(etype, int) or not 0 < etype < 256:
            raise BadRequest("events[%d].type must be an integer from 1 to 255" % (idx,))
        payload = ev.get("payload")
        if not isinstance(payload, dict):
            raise BadRequest("events[%d].payload must be an object" % (idx,))
        header = payload.get("Header")
        ts = pid = 0
        if isinstance(header, dict):
            ts = header.get("TsNs")
            pid = header.get("PID")
            if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**63:
                ts = 0
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < 2**63:
                pid = 0
        rows.append(S.EventRow(seq, idx, etype, ts, pid, _encodePayload(payload), payload))
    return seq, rows


def _encodePayload(payload: Dict[str, Any]) -> str:
    try:
        return orjson.dumps(payload).decode("utf-8")
    except TypeError:  # an integer beyond 64 bits (stdlib JSON keeps it), or a lone surrogate
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("payload holds text that is not valid Unicode (a lone surrogate escape)") from None
        return text
