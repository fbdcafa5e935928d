"""
Runners: registration, heartbeats, the job long poll, and what a runner
sends back about its runs (the events ingest and the result).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from fangs import wire
from fangs.errors import PayloadTooLarge
from fangs.orchestrator.auth import SCOPE_READ, Caller, operator, runner, runnerOfRun
from fangs.orchestrator.routes.base import JSON, Routes, loadsBody, ndjsonLines, readBody, route, runIDFromPath
log = Logger()


class RunnerRoutes(Routes):
    @route("/v1/runners/register", runner(), methods=["POST"])
    async def register(self, request: IRequest, caller: Caller) -> bytes:
        reg = loadsBody(request, wire.RunnerRegistration)
        await self.auth.requireRunner(request, reg.runner_id)
        return self._json(request, self.core.register(reg))

    @route("/v1/runners", operator(SCOPE_READ), methods=["GET"])
    async def runners(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(request, await self.views.runners(caller.selected))

    @route("/v1/runners/<runnerID>/heartbeat", runner("runnerID"), methods=["POST"])
    async def heartbeat(self, request: IRequest, caller: Caller, runnerID: str) -> bytes:
        body = readBody(request)
        beat = loadsBody(request, wire.Heartbeat) if body.strip() else wire.Heartbeat()
        return self._json(request, await self.core.heartbeat(runnerID, beat))

    @route("/v1/runners/<runnerID>/jobs", runner("runnerID"), methods=["GET"])
    async def jobs(self, request: IRequest, caller: Caller, runnerID: str) -> bytes:
        lease = await self.core.pollJob(runnerID)
        if lease is None:
            request.setResponseCode(204)
            return b""
        runID, jobJSON = lease

        def written(_: Any) -> None:
            d = Deferred.fromCoroutine(self.core.confirmDispatch(runID, jobJSON))
            _logErrors(d, "confirming dispatch of run {run_id}", run_id=runID)

        def lost(f: Failure) -> None:
            _logErrors(self.core.dispatcher.release(runID, runnerID), "releasing run {run_id}", run_id=runID)

        request.notifyFinish().addCallbacks(written, lost)
        request.setHeader(b"Content-Type", JSON)
        return jobJSON.encode("utf-8") + b"\n"

    @route("/v1/runs/<runID>/events", runnerOfRun("runID"), methods=["POST"])
    async def postEvents(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        runID = runIDFromPath(runID)
        if getattr(request, "bodyTooLarge", False):
            raise PayloadTooLarge("event stream too large")
        progress = await self.core.ingestLines(runID, ndjsonLines(request))
        return self._json(
            request,
            wire.IngestAck(
                received_batches=progress.received_batches,
                received_events=progress.received_events,
                persisted=progress.persisted,
            ),
        )

    @route("/v1/runs/<runID>/result", runnerOfRun("runID"), methods=["POST"])
    async def postResult(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        runID = runIDFromPath(runID)
        result = loadsBody(request, wire.ScanResult)
        await self.core.recordResult(runID, result)
        return self._json(request, wire.ResultAck(recorded=True))


def _logErrors(d: Any, what: str, **kw: Any) -> None:
    d.addErrback(lambda f: log.failure(what + " failed", f, **kw))
