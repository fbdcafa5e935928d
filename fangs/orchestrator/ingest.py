"""
The events ingest pipeline: a runner's NDJSON stream of event batches,
parsed line by line (L{parseBatchLine}) and handed, in order, to the group
committer (L{fangs.orchestrator.groupcommit}), with up to
L{INGEST_PIPELINE_EVENTS} events and L{INGEST_PIPELINE_BYTES} bytes in
flight; each batch is acknowledged only after the transaction holding it
committed.

L{EventIngest} is a part of L{fangs.orchestrator.core.Orchestrator} (it
reads the orchestrator's store, clock, metrics, group committer and run
events).
"""

from __future__ import annotations

import collections
import json
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

import attrs
import orjson

from fangs import wire
from fangs.errors import BadRequest, ConflictError
from fangs.orchestrator import store as S
from fangs.orchestrator.analysis import credPathsOf, jobOf
from fangs.orchestrator.db.model import BatchWrite

DEFAULT_DURATION_NS = 10 * wire.SECOND
LOST_MARGIN_NS = 60 * wire.SECOND
#: Parsed batches of one POST waiting for the store: at most this many
#: events and this many bytes of their lines (the group committer writes
#: the waiting ones together, so a deeper pipeline makes bigger groups).
INGEST_PIPELINE_EVENTS = 8192
INGEST_PIPELINE_BYTES = 16 * 1024 * 1024


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

    async def ingestLines(self, runID: str, lines: Iterable[bytes], run: Optional[S.RunRow] = None) -> IngestProgress:
        """
        Store each NDJSON line (one L{wire.EventBatch}), in order.  Batches
        go through the group committer: each is acknowledged only once the
        transaction holding it committed.  A malformed line stops the stream
        with L{BadRequest}; every batch before it stays stored.

        @param run: the run as the caller read it already (the HTTP layer
            does, to check who sends), so it is not read again.
        """
        if run is None or run.id != runID:
            run = await self.requireRun(runID)
        finished = run.result_status is not None
        span, credPaths = _ingestTerms(run)
        batches = events = persisted = 0
        # Batches (up to INGEST_PIPELINE_*) wait for the store while the
        # next lines are parsed here; the committer writes those that wait
        # together, each acknowledged after its transaction committed.
        inflight: Deque[Any] = collections.deque()

        waiting = [0, 0]  # events, bytes in flight

        async def settle(everything: bool = True) -> None:
            nonlocal persisted
            while inflight and (everything or waiting[0] > INGEST_PIPELINE_EVENTS or waiting[1] > INGEST_PIPELINE_BYTES):
                d, rows, started, size = inflight.popleft()
                waiting[0] -= len(rows)
                waiting[1] -= size
                outcome = await d
                self.metrics.ingestLatency.observe(self.clock.seconds() - started)
                self.metrics.eventsPersisted.inc(outcome.events)
                persisted += outcome.events
                if outcome.inserted and self.runEvents is not None:
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
                    await settle()
                    raise BadRequest(
                        "line %d: %s (%d batches before it were stored)" % (lineno, e.message, batches)
                    ) from None
                self.metrics.eventsIn(r.type for r in rows)
                if finished:
                    # After the result only a resend of stored batches is
                    # accepted (a runner retrying a stream it had sent).
                    await settle()
                    if not await self.store.batchStored(runID, seq):
                        raise ConflictError(
                            "run %s has its result already; events after it are refused"
                            " (line %d, batch seq %d; %d batches before it were accepted as resends)"
                            % (runID, lineno, seq, batches),
                            code="run_finished",
                        )
                now = self.nowNs()
                inflight.append((self.ingest.submit(BatchWrite(runID, seq, rows, now, now + span, credPaths)), rows,
                                 self.clock.seconds(), len(line)))
                waiting[0] += len(rows)
                waiting[1] += len(line)
                batches += 1
                events += len(rows)
                await settle(everything=False)
            await settle()
        except BaseException:
            # Let every batch already handed to the store finish (they are
            # stored), and never leave a Deferred's failure unhandled.
            for d, *_ in inflight:
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
    append = rows.append
    row = S.EventRow
    dumps = orjson.dumps
    for idx, ev in enumerate(items):
        # type(x) is int: neither a bool nor an int subclass.
        if type(ev) is not dict:  # noqa: E721
            raise BadRequest("events[%d] must be an object" % (idx,))
        etype = ev.get("type")
        if type(etype) is not int or not 0 < etype < 256:  # noqa: E721
            raise BadRequest("events[%d].type must be an integer from 1 to 255" % (idx,))
        payload = ev.get("payload")
        if type(payload) is not dict:  # noqa: E721
            raise BadRequest("events[%d].payload must be an object" % (idx,))
        header = payload.get("Header")
        ts = pid = 0
        if type(header) is dict:  # noqa: E721
            ts = header.get("TsNs")
            pid = header.get("PID")
            if type(ts) is not int or not 0 <= ts < _INT63:  # noqa: E721
                ts = 0
            if type(pid) is not int or not 0 <= pid < _INT63:  # noqa: E721
                pid = 0
        try:
            data = dumps(payload).decode("utf-8")
        except TypeError:
            data = _encodePayload(payload)
        append(row(seq, idx, etype, ts, pid, data, payload))
    return seq, rows


_INT63 = 2**63


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


def _ingestTerms(run: S.RunRow) -> Tuple[int, Tuple[str, ...]]:
    """
    From the run's job, parsed once: how far each stored batch pushes the
    run's deadline, and the cred-tagged watched prefixes (the fingerprints'
    cred paths).
    """
    job = jobOf(run)
    grace = (job.get("sandbox") or {}).get("grace_period") or 0
    span = (job.get("duration") or DEFAULT_DURATION_NS) + grace + LOST_MARGIN_NS
    return span, credPathsOf(run, job)
