"""
Hand-made fakes of the runner's collaborators: the sensor, the Docker
sandbox, the cgroup manager, the orchestrator client (scripted), and an
in-memory orchestrator resource for the real client.
"""

from __future__ import annotations

import json
from urllib.parse import unquote
from typing import Any, Callable, Dict, List, Optional

import attrs
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from fangs import wire
from fangs.runner.sandboxprocs import LifeSnapshot, ProcessInfo
from fangs.wire import (
    WatchedPath,
    EventBatch,
    HeartbeatAck,
    IngestAck,
    RegistrationAck,
    ResultAck,
    RunID,
    SECOND,
)


def runID(n: int) -> RunID:
    return RunID(bytes([n]) * 16)


# -- sensor ----------------------------------------------------------------------


@attrs.define
class SensorRun:
    runID: RunID
    cgroupID: int
    watchedPaths: List[Any]
    sink: Callable[[int, dict], None]
    canaries: Optional[Dict[str, str]] = None
    baitWatches: List[tuple] = attrs.field(factory=list)


class FakeSensor:
    """
    Records calls in C{log}; L{emit} plays an event of a run into its sink.
    C{pendingOnRemove} events are delivered by L{removeRun} (the drain).
    """

    def __init__(self, startError: Optional[Exception] = None) -> None:
        self.startError = startError
        self.started = False
        self.stopped = False
        self.runs: Dict[str, SensorRun] = {}
        self.drops: Dict[str, int] = {}
        self.pendingOnRemove: Dict[str, List[tuple]] = {}
        self.log: List[tuple] = []
        self.addError: Optional[Exception] = None
        self.watchError: Optional[Exception] = None
        self.unresolved: Dict[str, int] = {}

    async def start(self) -> None:
        self.log.append(("start",))
        if self.startError is not None:
            raise self.startError
        self.started = True

    def addRun(self, runID: RunID, cgroupID: int, watchedPaths: Any,
               sink: Callable[[int, dict], None], canaries: Optional[Dict[str, str]] = None) -> None:
        self.log.append(("addRun", runID.hex(), cgroupID))
        if self.addError is not None:
            raise self.addError
        self.runs[runID.hex()] = SensorRun(runID, cgroupID, list(watchedPaths), sink,
                                           None if canaries is None else dict(canaries))

    def watchBaitFiles(self, runID: RunID, rootPid: int, paths: Any) -> None:
        self.log.append(("watchBaitFiles", runID.hex(), rootPid))
        if self.watchError is not None:
            raise self.watchError
        self.runs[runID.hex()].baitWatches.append((rootPid, list(paths)))

    def unresolvedFor(self, runID: RunID) -> int:
        self.log.append(("unresolvedFor", runID.hex()))
        return self.unresolved.get(runID.hex(), 0)

    def emit(self, runID: RunID, eventType: int = 1, payload: Optional[dict] = None) -> None:
        self.runs[runID.hex()].sink(eventType, payload or {"PathName": "/etc/passwd"})

    def removeRun(self, runID: RunID) -> None:
        self.log.append(("removeRun", runID.hex()))
        run = self.runs.pop(runID.hex())
        for eventType, payload in self.pendingOnRemove.pop(runID.hex(), []):
            run.sink(eventType, payload)

    def dropsFor(self, runID: RunID) -> int:
        self.log.append(("dropsFor", runID.hex()))
        return self.drops.get(runID.hex(), 0)

    def stop(self) -> None:
        self.log.append(("stop",))
        self.stopped = True


# -- cgroups ---------------------------------------------------------------------


@attrs.frozen
class FakeRunCgroup:
    relPath: str
    absPath: str
    cgroupID: int


class FakeCgroups:
    def __init__(self) -> None:
        self.created: List[FakeRunCgroup] = []
        self.removed: List[FakeRunCgroup] = []
        self.createError: Optional[Exception] = None
        self._next = 1000

    def ownedPath(self, path: str) -> Optional[str]:
        # The real rule on a tree rooted at /sys/fs/cgroup/unified with no links.
        import posixpath

        absolute = path if path.startswith("/sys/fs/cgroup/unified/") else "/sys/fs/cgroup/unified" + path
        real = posixpath.normpath(absolute)
        return real if real.startswith("/sys/fs/cgroup/unified/fangs/") else None

    def create(self, runHex: str) -> FakeRunCgroup:
        if self.createError is not None:
            raise self.createError
        self._next += 1
        cg = FakeRunCgroup("/fangs/" + runHex, "/cg/fangs/" + runHex, self._next)
        self.created.append(cg)
        return cg

    async def remove(self, cg: FakeRunCgroup, clock: Any) -> bool:
        self.removed.append(cg)
        return True


# -- sandbox ---------------------------------------------------------------------


@attrs.frozen
class FakeExitInfo:
    exitCode: int
    error: Optional[str] = None
    oomKilled: bool = False


class FakeSandboxError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fakeProcess(pid: int, argv: Any = ("sh", "-c", "sleep 3; cat ~/.npmrc"), ppid: int = 1) -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=ppid, uid=1000, gid=1000, comm=argv[0][:15], argv=tuple(argv),
                       exe="/usr/bin/" + argv[0], startTicks=pid * 10)


class FakeHandle:
    """
    A created sandbox.  The test plays the install's exit (L{installExit}),
    the processes left (C{processes}) and the container's exit (L{exit}).
    """

    def __init__(self, runID: RunID, spec: Any, cgroupParent: str) -> None:
        self.containerID = "c-" + runID.hex()[:12]
        self.runID = runID
        self.spec = spec
        self.cgroupParent = cgroupParent
        self.exited: Deferred[FakeExitInfo] = Deferred()
        self.stops = 0
        self.starts = 0
        self.startError: Optional[Exception] = None
        self.snapshotError: Optional[Exception] = None
        self.snapshots = 0
        self.pid = 0
        self.home = "/home/node"
        self.baitPaths = ["/home/node/.npmrc", "/home/node/.ssh/id_rsa"]
        self.canaries = {"npm_token": "npm_" + "A" * 36}
        self.extraWatched = [WatchedPath("/home/node/.npmrc", True), WatchedPath("/home/node/.ssh/", True)]
        self.installCode: Optional[int] = None
        self.installWallNs = 0
        self.installMonoNs = 0
        self.processes: List[ProcessInfo] = []
        self.monoNs = 5_000_000_000
        self.oomKills = 0
        self.logText = "line 1\nnpm ERR! boom\n"

    def watchedPaths(self, jobPaths: Any = None) -> List[Any]:
        return list(self.extraWatched)

    async def start(self) -> None:
        self.starts += 1
        if self.startError is not None:
            raise self.startError
        self.pid = 4000 + self.runID.raw[0]

    def installExit(self, code: int = 0, wallNs: int = 0, monoNs: int = 0) -> None:
        self.installCode, self.installWallNs, self.installMonoNs = code, wallNs, monoNs

    async def snapshot(self) -> LifeSnapshot:
        self.snapshots += 1
        if self.snapshotError is not None:
            raise self.snapshotError
        return LifeSnapshot(installExit=self.installCode, installExitedWallNs=self.installWallNs,
                            installExitedMonoNs=self.installMonoNs, processes=tuple(self.processes),
                            monoNs=self.monoNs, cgroupID=77, initAlive=not self.exited.called,
                            oomKills=self.oomKills)

    def exit(self, code: int = 0, oomKilled: bool = False) -> None:
        if not self.exited.called:
            self.exited.callback(FakeExitInfo(code, None, oomKilled))

    def wait(self) -> Deferred[FakeExitInfo]:
        d: Deferred[FakeExitInfo] = Deferred()

        def fire(info: Any) -> Any:
            if not d.called:
                d.callback(info)
            return info

        self.exited.addCallback(fire)
        return d

    async def stop(self, timeout: int = 5) -> None:
        self.stops += 1
        self.exit(137)

    async def logs(self, tail: int = 50) -> str:
        return self.logText


class FakeSandbox:
    def __init__(self) -> None:
        self.handles: Dict[str, FakeHandle] = {}
        self.launchError: Optional[Exception] = None
        self.reaped = 0
        self.log: List[tuple] = []

    async def reapStale(self) -> int:
        self.log.append(("reapStale",))
        return self.reaped

    async def create(self, runID: RunID, spec: Any, cgroupParent: str) -> FakeHandle:
        self.log.append(("create", runID.hex(), cgroupParent))
        if self.launchError is not None:
            raise self.launchError
        handle = FakeHandle(runID, spec, cgroupParent)
        self.handles[runID.hex()] = handle
        return handle


# -- scripted client ------------------------------------------------------------


DEFAULT_ACK = RegistrationAck(ok=True, orchestrator_id="fake", job_poll_interval=5 * SECOND,
                              heartbeat_interval=30 * SECOND)


class FakeEventsConsumer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def batches(self) -> List[EventBatch]:
        return [wire.loads(line, EventBatch) for line in self.data.splitlines() if line]


class FakeClient:
    """
    A scripted L{OrchestratorClient}.  Each list of C{*Script} is consumed
    one answer per call (an exception is raised); when it is empty the
    default answer is given.  A poll with an empty script hangs in
    C{pendingPolls} until the test answers it.
    """

    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self.registerScript: List[Any] = []
        self.ack = DEFAULT_ACK
        self.heartbeatScript: List[Any] = []
        self.heartbeats: List[Any] = []
        self.pollScript: List[Any] = []
        self.pendingPolls: List[Deferred[Any]] = []
        self.resultScript: List[Any] = []
        self.results: List[Any] = []
        self.eventsScript: List[Any] = []
        self.events: Dict[str, List[EventBatch]] = {}
        self.posts: List[FakeEventsConsumer] = []

    def _next(self, script: List[Any], default: Any) -> Any:
        answer = script.pop(0) if script else default
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def register(self, registration: Any) -> RegistrationAck:
        self.calls.append(("register", registration))
        return self._next(self.registerScript, self.ack)

    async def heartbeat(self, runnerID: str, heartbeat: Any) -> HeartbeatAck:
        self.calls.append(("heartbeat", runnerID))
        self.heartbeats.append(heartbeat)
        return self._next(self.heartbeatScript, HeartbeatAck(ok=True))

    def poll(self, runnerID: str) -> Deferred[Any]:
        self.calls.append(("poll", runnerID))
        if self.pollScript:
            answer = self.pollScript.pop(0)
            if isinstance(answer, Exception):
                return Deferred.fromCoroutine(_raise(answer))
            return succeed(answer)
        d: Deferred[Any] = Deferred()
        self.pendingPolls.append(d)
        return d

    def answerPoll(self, answer: Any) -> None:
        d = self.pendingPolls.pop(0)
        if isinstance(answer, Exception):
            d.errback(answer)
        else:
            d.callback(answer)

    def postEvents(self, runID: RunID, producer: Any, timeout: Any = None) -> Deferred[Any]:
        self.calls.append(("postEvents", runID.hex()))
        if self.eventsScript:
            answer = self.eventsScript.pop(0)
            return Deferred.fromCoroutine(_raise(answer))
        consumer = FakeEventsConsumer()
        self.posts.append(consumer)
        done = producer.startProducing(consumer)

        def acked(_: Any) -> IngestAck:
            batches = consumer.batches()
            self.events.setdefault(runID.hex(), []).extend(batches)
            n = sum(len(b.events) for b in batches)
            return IngestAck(received_batches=len(batches), received_events=n, persisted=n)

        return done.addCallback(acked)

    def eventsOf(self, runID: RunID) -> List[Any]:
        return [e for b in self.events.get(runID.hex(), []) for e in b.events]

    async def postResult(self, runID: RunID, result: Any) -> ResultAck:
        self.calls.append(("postResult", runID.hex()))
        answer = self._next(self.resultScript, None)
        self.results.append(result)
        return ResultAck(recorded=True) if answer is None else answer


async def _raise(e: Exception) -> Any:
    raise e


# -- an in-memory orchestrator for the real client -------------------------------


class FakeOrchestrator(Resource):
    """
    Just enough of the orchestrator's C{/v1} routes, recording requests.
    C{answers} maps C{(method, path)} to C{(status, body bytes)} to
    override the default answer; a poll with nothing in C{jobs} answers 204.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[tuple] = []
        self.registered: Dict[str, Any] = {}
        self.jobs: List[Any] = []
        self.answers: Dict[tuple, tuple] = {}
        self.batches: Dict[str, List[EventBatch]] = {}
        self.seen: set = set()
        self.results: Dict[str, Any] = {}
        self.heldPolls: List[Any] = []
        self.holdPolls = False

    def render(self, request: Any) -> Any:
        method = request.method.decode()
        path = request.path.decode()
        body = request.content.read()
        self.requests.append((method, path, dict(request.requestHeaders.getAllRawHeaders()), body))
        override = self.answers.get((method, path))
        if override is not None:
            status, payload = override
            return self._answer(request, status, payload)
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:3] == ["v1", "runners", "register"]:
            reg = json.loads(body)
            self.registered[reg["runner_id"]] = reg
            return self._answer(request, 200, wire.dumps(DEFAULT_ACK))
        if parts[:2] == ["v1", "runners"] and parts[3:] == ["heartbeat"]:
            if parts[2] not in self.registered:
                return self._answer(request, 200, b'{"ok":false,"unknown_runner":true}\n')
            return self._answer(request, 200, b'{"ok":true}\n')
        if parts[:2] == ["v1", "runners"] and parts[3:] == ["jobs"]:
            if parts[2] not in self.registered:
                return self._answer(request, 404, b'{"error":"runner not registered"}')
            if self.jobs:
                return self._answer(request, 200, wire.dumps(self.jobs.pop(0)))
            if self.holdPolls:
                self.heldPolls.append(request)
                return NOT_DONE_YET
            request.setResponseCode(204)
            return b""
        if parts[:2] == ["v1", "runs"] and parts[3:] == ["events"]:
            n = 0
            for line in body.splitlines():
                if not line.strip():
                    continue
                batch = wire.loads(line, EventBatch)
                if (parts[2], batch.seq) in self.seen:
                    continue
                self.seen.add((parts[2], batch.seq))
                self.batches.setdefault(parts[2], []).append(batch)
                n += len(batch.events)
            ack = IngestAck(received_batches=len(self.batches.get(parts[2], [])),
                            received_events=n, persisted=n)
            return self._answer(request, 200, wire.dumps(ack))
        if parts[:2] == ["v1", "runs"] and parts[3:] == ["result"]:
            self.results[parts[2]] = json.loads(body)
            return self._answer(request, 200, b'{"recorded":true}')
        return self._answer(request, 404, b'{"error":{"code":"not_found","message":"no route"}}')

    @staticmethod
    def _answer(request: Any, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return body


def memoryHTTPClient(resource: Resource) -> tuple[HTTPClient, Callable[[], None]]:
    """
    A treq C{HTTPClient} talking to C{resource} in memory (like C{StubTreq},
    but one that accepts a streaming body producer), and its C{flush}.
    """
    agent = RequestTraversalAgent(resource)
    return HTTPClient(agent), agent.flush


# -- event POSTs under the test's control ---------------------------------------


class FakePost:
    """
    One events POST: the body lines the streamer wrote (C{consumer}), whether
    the body ended (C{ended}), and the answer the test gives (L{ack},
    L{fail}).
    """

    def __init__(self, runID: RunID, producer: Any, timeout: Any) -> None:
        self.runID = runID
        self.producer = producer
        self.timeout = timeout
        self.consumer = FakeEventsConsumer()
        self.ended = False
        self.answer: Deferred[IngestAck] = Deferred()
        producer.startProducing(self.consumer).addCallback(self._ended)

    def _ended(self, _: Any) -> None:
        self.ended = True

    def seqs(self) -> List[int]:
        return [b.seq for b in self.consumer.batches()]

    def ack(self) -> None:
        batches = self.consumer.batches()
        n = sum(len(b.events) for b in batches)
        self.answer.callback(IngestAck(received_batches=len(batches), received_events=n,
                                       persisted=n))

    def fail(self, error: Exception) -> None:
        self.producer.stopProducing()
        self.answer.errback(error)


class FakeEventsClient:
    def __init__(self) -> None:
        self.posts: List[FakePost] = []

    def postEvents(self, runID: RunID, producer: Any, timeout: Any = None) -> Deferred[IngestAck]:
        post = FakePost(runID, producer, timeout)
        self.posts.append(post)
        return post.answer
