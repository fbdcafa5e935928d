"""
Review: promoting, rejecting and re-analysing runs, the pending queue, and
the deviations found.
"""

from __future__ import annotations



from twisted.web.iweb import IRequest

from fangs.errors import BadRequest
from fangs.orchestrator import differ
from fangs.orchestrator import store as S
from fangs.orchestrator.auth import SCOPE_READ, SCOPE_WRITE, Caller, operator
from fangs.orchestrator.routes.base import _RUN_ID, Routes, actorOf, pageSize, queryArg, route, runIDFromPath, timeArg


class ReviewRoutes(Routes):
    @route("/v1/runs/<runID>/promote", operator(SCOPE_WRITE), methods=["POST"])
    async def promote(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        return await self._decide(request, caller, runID, "promoted")

    @route("/v1/runs/<runID>/reject", operator(SCOPE_WRITE), methods=["POST"])
    async def reject(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        return await self._decide(request, caller, runID, "rejected")

    @route("/v1/runs/<runID>/reanalyze", operator(SCOPE_WRITE), methods=["POST"])
    async def reanalyze(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        return await self._decide(request, caller, runID, "reanalyze")

    async def _decide(self, request: IRequest, caller: Caller, runID: str, decision: str) -> bytes:
        outcome = await self.core.decide(runIDFromPath(runID), decision, actorOf(request), caller.tenant)
        return self._json(request, await self.views.run(outcome.run_id, caller.tenant))

    @route("/v1/pending", operator(SCOPE_READ), methods=["GET"])
    async def pending(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(request, await self.views.pending(pageSize(request), queryArg(request, "page_token"), caller.tenant))

    @route("/v1/deviations", operator(SCOPE_READ), methods=["GET"])
    async def deviations(self, request: IRequest, caller: Caller) -> bytes:
        severity = queryArg(request, "severity")
        rank = 0
        if severity is not None:
            try:
                rank = differ.severityRank(severity)
            except ValueError:
                rank = 0
            if not rank:
                raise BadRequest("severity must be one of low, medium, high, critical")
        run = queryArg(request, "run")
        flt = S.DeviationFilter(
            package=queryArg(request, "package"),
            min_severity_rank=rank,
            run_id=runIDFromPath(run) if run is not None else None,
            since_ns=timeArg(request, "since"),
            tenant=caller.tenant,
        )
        return self._json(request, await self.views.deviations(flt, pageSize(request), queryArg(request, "page_token")))

    @route("/v1/deviations/<deviationID>", operator(SCOPE_READ), methods=["GET"])
    async def deviation(self, request: IRequest, caller: Caller, deviationID: str) -> bytes:
        if not _RUN_ID.match(deviationID):
            raise BadRequest("deviation id must be 32 lower-case hex characters")
        return self._json(request, await self.views.deviation(deviationID, caller.tenant))
