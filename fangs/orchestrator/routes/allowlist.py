"""
The allowlist: behaviour a tenant accepts (globally or for one package).
"""

from __future__ import annotations



from twisted.web.iweb import IRequest

from fangs.orchestrator.auth import SCOPE_READ, SCOPE_WRITE, Caller, operator
from fangs.orchestrator.routes.base import Routes, actorOf, jsonObject, queryArg, route, stringField


class AllowlistRoutes(Routes):
    @route("/v1/allow", operator(SCOPE_READ), methods=["GET"])
    async def listAllow(self, request: IRequest, caller: Caller) -> bytes:
        package = queryArg(request, "package")
        return self._json(request, await self.views.allowlist(caller.tenant, package))

    @route("/v1/allow", operator(SCOPE_WRITE), methods=["POST"])
    async def addAllow(self, request: IRequest, caller: Caller) -> bytes:
        body = jsonObject(request)
        package = stringField(body, "package_name", required=False)
        scope = stringField(body, "scope", required=False, default="package" if package else "global")
        entryID = await self.core.addAllow(
            stringField(body, "kind"),
            body.get("value"),
            scope,
            package,
            stringField(body, "note", required=False),
            actorOf(request),
            caller.tenant,
        )
        return self._json(request, await self.views.allowEntry(entryID, caller.tenant), 201)

    @route("/v1/allow/<entryID>", operator(SCOPE_WRITE), methods=["DELETE"])
    async def removeAllow(self, request: IRequest, caller: Caller, entryID: str) -> bytes:
        await self.core.removeAllow(entryID, actorOf(request), caller.tenant)
        return self._json(request, {"id": entryID, "removed": True})
