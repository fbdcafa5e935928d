"""
The allowlist: behaviour a tenant accepts (globally or for one package).
"""

from __future__ import annotations



from twisted.web.iweb import IRequest

from fangs.orchestrator.auth import SCOPE_READ, SCOPE_WRITE, Caller, operator
from fangs.orchestrator.routes.base import Routes, actorOf, jsonObject, queryArg, route, stringField
from fangs.orchestrator.views import nsToTimestamp


class AllowlistRoutes(Routes):
    @route("/v1/allow", operator(SCOPE_READ), methods=["GET"])
    async def listAllow(self, request: IRequest, caller: Caller) -> bytes:
        package = queryArg(request, "package")
        entries = await self.core.store.listAllow(tenant=caller.tenant)
        if package is not None:
            entries = [e for e in entries if e["scope"] == "global" or e["package_name"] == package]
        for e in entries:
            e["created_at"] = nsToTimestamp(e.pop("created_ns"))
        return self._json(request, {"entries": entries})

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
        entries = [e for e in await self.core.store.listAllow(tenant=caller.tenant) if e["id"] == entryID]
        entry = entries[0]
        entry["created_at"] = nsToTimestamp(entry.pop("created_ns"))
        return self._json(request, entry, 201)

    @route("/v1/allow/<entryID>", operator(SCOPE_WRITE), methods=["DELETE"])
    async def removeAllow(self, request: IRequest, caller: Caller, entryID: str) -> bytes:
        await self.core.removeAllow(entryID, actorOf(request), caller.tenant)
        return self._json(request, {"id": entryID, "removed": True})
