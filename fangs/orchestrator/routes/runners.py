"""
Runners: registration, heartbeats, the job long poll, and what a runner
sends back about its runs (the events ingest and the result).
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from fangs import wire
from fangs.errors import PayloadTooLarge
from fangs.orchestrator.auth import SCOPE_READ, Caller, operator, runner, runnerOfRun
from fangs.orchestrator.routes.base import JSON, Routes, loadsBody, ndjsonLines, readBody, route, runIDFromPath
from fangs.orchestrator.views import nsToTimestamp
log = Logger()


class RunnerRoutes(Routes):
    async def _visibleRuns(self, caller: Caller, runIDs: Any) -> List[str]:
        """
        The runs of C{runIDs} C{caller} may know of: all for an all-tenant
        view, else its tenant's (a runner's other runs are other tenants').
        """
        if caller.selected is None:
            return list(runIDs)
        return [r for r in runIDs if await self.core.store.getRun(r, tenant=caller.selected) is not None]

    @staticmethod
    def _depthFor(caller: Caller, byTenant: Dict[str, int]) -> int:
        return sum(byTenant.values()) if caller.selected is None else byTenant.get(caller.selected, 0)

    @route("/v1/runners/register", runner(), methods=["POST"])
    async def register(self, request: IRequest, caller: Caller) -> bytes:
        reg = loadsBody(request, wire.RunnerRegistration)
        await self.auth.requireRunner(request, reg.runner_id)
        return self._json(request, self.core.register(reg))

    @route("/v1/runners", operator(SCOPE_READ), methods=["GET"])
    async def runners(self, request: IRequest, caller: Caller) -> bytes:
        now = self.core.clock.seconds()
        return self._json(
            request,
            {
                "runners": [
                    {
                        "runner_id": r.runner_id,
                        "hostname": r.registration.hostname,
                        "kernel_version": r.registration.kernel_version,
                        "capabilities": r.registration.capabilities,
                        "status": r.status or "idle",
                        "active_run_ids": await self._visibleRuns(caller, r.active_run_ids),
                        "events_queued": r.events_queued,
                        "registered_at": nsToTimestamp(int(r.registered_at * 1e9)),
                        "last_seen_at": nsToTimestamp(int(r.last_seen * 1e9)),
                        "last_seen_seconds_ago": round(now - r.last_seen, 1),
                    }
                    for r in self.core.registry.all()
                ],
                "queue_depth": self._depthFor(caller, await self.core.store.queueDepthByTenant()),
                "long_polls_waiting": self.core.dispatcher.waiterCount(),
            },
        )

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
