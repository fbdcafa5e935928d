"""
The live run stream: C{run.queued}, C{run.started}, C{run.updated},
C{run.completed}, C{run.failed}, C{run.cancelled}, one JSON object a line,
to every subscriber whose filter matches (C{GET /v1/runs/stream}, as NDJSON
over a long-lived response or over a WebSocket).

Every line is first appended to the store (L{fangs.orchestrator.db.stream})
and gets a cursor there; the hub then reads what is new, in cursor order,
and fans it out.  So every orchestrator on one PostgreSQL database sends the
same lines in the same order (a NOTIFY tells the others to read), and a
client that reconnects with C{since=<cursor>} is sent what it missed, from
the store, before it joins the live lines.

Subscribers cannot grow the orchestrator's memory: each holds at most
C{maxBuffered} unsent lines (the transport pauses it when its socket is
full); one that falls further behind is cut with a final C{stream.closed}
line saying why.  Idle streams get a C{stream.keepalive} line now and then,
so proxies and clients can tell a quiet stream from a dead one.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Set, Tuple

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from fangs import wire
from fangs.tenants import DEFAULT_TENANT

log = Logger()

RUN_EVENT_TYPES = ("run.queued", "run.started", "run.updated", "run.completed", "run.failed", "run.cancelled")
#: At most this many C{run.updated} lines per run per second.
UPDATES_PER_SECOND = 2
MAX_BUFFERED = 1000
#: A line the database refuses is tried again this many times, waiting
#: 0.1 s more each time (at most APPEND_RETRY_CAP), before it is logged lost.
APPEND_ATTEMPTS = 40
APPEND_RETRY_CAP = 2.0
KEEPALIVE_SECONDS = 15.0
_READ_LIMIT = 1000


class StreamError(ValueError):
    """
    A subscription cannot be made (a bad filter or cursor); the message says why.
    """


@attrs.frozen
class StreamFilter:
    package: str = ""
    state: str = ""
    tenant: str = ""
    run_id: str = ""

    def matches(self, line: Mapping[str, Any]) -> bool:
        if self.package and line.get("package") != self.package:
            return False
        if self.state and line.get("status") != self.state and line.get("type") != self.state:
            return False
        if self.tenant and line.get("tenant") != self.tenant:
            return False
        if self.run_id and line.get("run_id") != self.run_id:
            return False
        return True


def parseCursor(text: Optional[str]) -> Optional[int]:
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise StreamError("since must be a cursor from an earlier stream line (a decimal number)")
    return int(text)


def _encode(line: Mapping[str, Any]) -> bytes:
    return orjson.dumps(line) + b"\n"


@implementer(IPushProducer)
class Subscriber:
    """
    One client of the stream.  C{sink(bytes)} writes a line to the client,
    C{close()} ends its stream; the transport pauses and resumes it.
    """

    def __init__(self, hub: "RunStream", sink: Callable[[bytes], Any], close: Callable[[], Any],
                 filter: StreamFilter, maxBuffered: int) -> None:
        self.hub = hub
        self.filter = filter
        self._sink = sink
        self._close = close
        self._max = maxBuffered
        self._queue: Deque[bytes] = collections.deque()
        self._paused = False
        #: Lines at or below this cursor were sent (or skipped by the filter).
        self.sent = 0
        #: While the backlog is read from the store, live lines wait here.
        self.replaying = True
        self.closed = False
        self.done: Deferred[str] = Deferred()

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.end("client went away", tell=False)

    def offer(self, cursor: int, line: Mapping[str, Any]) -> None:
        """
        A line of the stream, in cursor order; sent if the filter matches.
        """
        if self.closed or cursor <= self.sent:
            return
        self.sent = cursor
        if not self.filter.matches(line):
            return
        self._queue.append(_encode(line))
        if len(self._queue) > self._max:
            self.end("client too slow: more than %d lines unread" % (self._max,))
            return
        self._flush()

    def control(self, line: Mapping[str, Any]) -> None:
        """
        A line about the stream itself (open, gap, keepalive): never filtered.
        """
        if not self.closed:
            self._queue.append(_encode(line))
            self._flush()

    def _flush(self) -> None:
        while self._queue and not self._paused and not self.closed:
            self._sink(self._queue.popleft())

    def end(self, reason: str, tell: bool = True) -> None:
        if self.closed:
            return
        if tell:
            self._queue.clear()
            try:
                self._sink(_encode({"type": "stream.closed", "reason": reason, "cursor": str(self.sent)}))
            except Exception:
                log.failure("writing the last stream line failed")
        self.closed = True
        self._queue.clear()
        self.hub.unsubscribe(self)
        try:
            self._close()
        except Exception:
            log.failure("closing a stream failed")
        self.done.callback(reason)


class RunStream:
    """
    The hub.  C{store} has C{appendStream}, C{streamSince}, C{streamBounds}
    (and, on PostgreSQL, C{streamListeners}).
    """

    def __init__(self, clock: IReactorTime, store: Any, maxBuffered: int = MAX_BUFFERED,
                 keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.clock = clock
        self.store = store
        self.maxBuffered = maxBuffered
        self.subscribers: Set[Subscriber] = set()
        self._head = 0
        self._reading = False
        self._again = False
        self._lastUpdate: Dict[str, float] = {}
        self._pending: Deque[Any] = collections.deque()
        self._appending = False
        self._stopped = False
        self._keepalive = LoopingCall(self._keepaliveAll)
        self._keepalive.clock = clock
        self._keepaliveSeconds = keepalive

    async def start(self) -> None:
        _, self._head = await self.store.streamBounds()
        if self._stopped:
            return  # stopped while the store answered (a quick shutdown)
        listeners = getattr(self.store, "streamListeners", None)
        if listeners is not None:
            listeners.append(self.poke)
        self._keepalive.start(self._keepaliveSeconds, now=False).addErrback(
            lambda f: log.failure("stream keepalive stopped", f))

    def stop(self) -> None:
        self._stopped = True
        if self._keepalive.running:
            self._keepalive.stop()
        for sub in list(self.subscribers):
            sub.end("orchestrator shutting down")

    # -- publishing -----------------------------------------------------------

    def publish(self, type: str, runID: str, package: str = "", version: str = "", status: str = "",
                traceID: str = "", tenant: Optional[str] = None, **fields: Any) -> Deferred:
        """
        Append a line and fan it out.  Never fails (a failure is logged):
        the run's own state is already stored.  A line is one tenant's:
        C{tenant=None} appends one line for each tenant the run is linked
        to (a shared scan is news for every tenant that watches it).
        """
        now = self.clock.seconds()
        if type == "run.updated":
            last = self._lastUpdate.get(runID)
            if last is not None and now - last < 1.0 / UPDATES_PER_SECOND:
                return Deferred.fromCoroutine(_nothing())
            self._lastUpdate[runID] = now
        elif type != "run.queued" and type != "run.started":
            self._lastUpdate.pop(runID, None)
        nowNs = int(now * 1_000_000_000)
        line = {"type": type, "tenant": tenant, "run_id": runID, "package": package, "version": version,
                "status": status, "timestamp": wire.timestampFromNs(nowNs).isoformat().replace("+00:00", "Z"),
                "trace_id": traceID}
        line.update(fields)
        done: Deferred[None] = Deferred()
        self._pending.append((nowNs, tenant, runID, type, line, done))
        if not self._appending:
            d = Deferred.fromCoroutine(self._appendAll())
            d.addErrback(lambda f: log.failure("the run stream's appender stopped", f))
        return done

    async def _appendAll(self) -> None:
        """
        Append the waiting lines one at a time, in the order they were
        published (the store's pool would otherwise let a later line take
        an earlier cursor).
        """
        self._appending = True
        try:
            while self._pending:
                nowNs, tenant, runID, type, line, done = self._pending.popleft()
                try:
                    tenants = [tenant] if tenant is not None else await self._retrying(self._tenantsOf, runID)
                    for name in tenants:
                        line["tenant"] = name
                        await self._retrying(self.store.appendStream, nowNs, name, runID, type,
                                             orjson.dumps(line).decode("utf-8"))
                except Exception:
                    log.failure("run stream line {type} for {run_id} not stored", type=type, run_id=runID)
                done.callback(None)
                self.poke()
        finally:
            self._appending = False

    async def _retrying(self, f: Callable[..., Any], *args: Any) -> Any:
        """
        C{await f(*args)}, again after a short wait while it fails: a busy
        database passes, and the line (with every line after it, so order
        is kept) waits rather than being lost.
        """
        for attempt in range(APPEND_ATTEMPTS - 1):
            try:
                return await f(*args)
            except Exception as e:
                log.warn("run stream waits for the database ({error})", error=e)
                await deferLater(self.clock, min(APPEND_RETRY_CAP, 0.1 * (attempt + 1)), lambda: None)
        return await f(*args)

    async def _tenantsOf(self, runID: str) -> List[str]:
        find = getattr(self.store, "runTenants", None)
        tenants = list(await find(runID)) if find is not None else []
        return tenants or [DEFAULT_TENANT]

    def poke(self) -> None:
        """
        Something was appended (here or by another orchestrator): read it.
        """
        if self._reading:
            self._again = True
            return
        d = Deferred.fromCoroutine(self._readNew())
        d.addErrback(lambda f: log.failure("reading the run stream failed", f))

    async def _readNew(self) -> None:
        self._reading = True
        try:
            while True:
                self._again = False
                rows = await self.store.streamSince(self._head, _READ_LIMIT)
                for row in rows:
                    self._head = row.cursor
                    line = _line(row)
                    for sub in list(self.subscribers):
                        if not sub.replaying:
                            sub.offer(row.cursor, line)
                if len(rows) < _READ_LIMIT and not self._again:
                    return
        finally:
            self._reading = False

    # -- subscribing ----------------------------------------------------------

    async def subscribe(self, sink: Callable[[bytes], Any], close: Callable[[], Any], filter: StreamFilter,
                        since: Optional[int] = None) -> Subscriber:
        """
        A new subscriber: an opening line with the current cursor, then (with
        C{since}) every matching line after C{since}, then the live lines.

        @raise StreamError: C{since} is ahead of the stream.
        """
        oldest, head = await self.checkSince(since)
        sub = Subscriber(self, sink, close, filter, self.maxBuffered)
        self.subscribers.add(sub)
        start = head if since is None else since
        sub.sent = start
        sub.control({"type": "stream.open", "cursor": str(head)})
        if since is not None and since < head and (oldest is None or oldest > since + 1):
            sub.control({"type": "stream.gap", "reason": "lines after %d are no longer kept" % (since,),
                         "oldest": str(oldest if oldest is not None else head)})
        try:
            cursor = start
            while not sub.closed and cursor < self._head:
                rows = await self.store.streamSince(cursor, _READ_LIMIT)
                if not rows:
                    break
                for row in rows:
                    sub.offer(row.cursor, _line(row))
                cursor = rows[-1].cursor
        finally:
            sub.replaying = False
        return sub

    async def checkSince(self, since: Optional[int]) -> Tuple[Optional[int], int]:
        """
        C{(oldest, head)} of the stream; L{StreamError} when C{since} is ahead of it.
        """
        oldest, head = await self.store.streamBounds()
        head = max(head, self._head)
        if since is not None and since > head:
            raise StreamError("since=%d is ahead of the stream (its newest cursor is %d)" % (since, head))
        return oldest, head

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _keepaliveAll(self) -> None:
        for sub in list(self.subscribers):
            if not sub.replaying:
                sub.control({"type": "stream.keepalive", "cursor": str(max(sub.sent, 0))})


async def _nothing() -> None:
    return None


def _line(row: Any) -> Dict[str, Any]:
    line = orjson.loads(row.body)
    line["cursor"] = str(row.cursor)
    return line


class RunStreamPublisher:
    """
    Turns what the orchestrator does into stream lines: called by
    L{fangs.orchestrator.core.Orchestrator} at each state change and, as a
    verdict listener of the analyzer, when a verdict is reached or changed.
    """

    def __init__(self, stream: Any, store: Any) -> None:
        self.stream = stream
        self.store = store

    def announce(self, type: str, runID: str, package: str, version: str, status: str, **fields: Any) -> None:
        # A run's trace id is its id: 16 bytes of hex, as W3C trace ids are.
        self.stream.publish(type, runID, package=package, version=version, status=status, traceID=runID, **fields)

    def run(self, type: str, run: Any, **fields: Any) -> None:
        self.announce(type, run.id, run.package_name, run.version, run.state, **fields)

    # A verdict is one tenant's (each tenant judges a shared run against its
    # own baseline): its line goes to that tenant's stream only.

    def verdict(self, outcome: Any) -> None:
        d = Deferred.fromCoroutine(self._verdict(outcome))
        d.addErrback(lambda f: log.failure("run stream verdict line for {run_id} failed", f, run_id=outcome.run_id))

    async def _verdict(self, outcome: Any) -> None:
        tenant = getattr(outcome, "tenant", DEFAULT_TENANT)
        run = await self.store.getRun(outcome.run_id, tenant=tenant)
        if run is None:
            return
        if run.decision:
            type = "run.updated"
        elif run.state == "done":
            type = "run.completed"
        elif run.state == "cancelled":
            type = "run.cancelled"
        else:
            type = "run.failed"
        self.run(type, run, verdict=outcome.verdict, deviations=outcome.deviations,
                 max_severity=outcome.max_severity, events_received=run.events_received,
                 reason=run.failure_reason, decision=run.decision, tenant=tenant)
