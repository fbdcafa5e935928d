"""
Administration: health and readiness, tokens, the audit trail, metrics.
"""

from __future__ import annotations

from typing import Any, List

from twisted.web.iweb import IRequest

from fangs import wire
from fangs.errors import BadRequest, NotFoundError
from fangs.orchestrator.auth import SCOPE_ADMIN, SCOPE_READ, Caller, TenantForbidden, operator, public
from fangs.orchestrator.routes.base import Routes, actorOf, jsonObject, queryArg, route, stringField
from fangs.tenants import ALL_TENANTS, TenantError, checkTenant


class AdminRoutes(Routes):
    @route("/v1/health", public(), methods=["GET"])
    def health(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(
            request,
            wire.HealthResponse(status="ok", orchestrator_id=self.core.orchestratorID, version=self.core.version),
        )

    @route("/v1/admin/health", operator(SCOPE_READ), methods=["GET"])
    async def adminHealth(self, request: IRequest, caller: Caller) -> bytes:
        """
        Readiness: the database answers, and what waits: queue depth (per
        tenant), runners, open long polls and stream subscribers.  503 when
        the database does not answer.
        """
        health = await self.views.adminHealth(caller.selected, self.core.orchestratorID, self.core.version, self.stream)
        return self._json(request, health, 200 if health.database.ok else 503)

    # -- tokens (admin) --

    @route(["/v1/tokens", "/v1/admin/tokens"], operator(SCOPE_ADMIN), methods=["GET"])
    async def listTokens(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(request, await self.views.tokens(caller.selected))

    @route(["/v1/tokens", "/v1/admin/tokens"], operator(SCOPE_ADMIN), methods=["POST"])
    async def createToken(self, request: IRequest, caller: Caller) -> bytes:
        body = jsonObject(request)
        name = stringField(body, "name")
        scopes = body.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(x, str) for x in scopes):
            raise BadRequest("scopes must be a non-empty array of strings")
        tenant = self._tokenTenant(caller, body.get("tenant"), scopes)
        created = await self.core.createToken(name, scopes, actorOf(request), tenant)
        return self._json(request, created, 201)

    def _tokenTenant(self, caller: Caller, asked: Any, scopes: List[str]) -> str:
        """
        The tenant of a token C{caller} mints: the one asked for (C{*}: all
        tenants), else the tenant the caller acts on.  A tenant's admin mints
        tokens of its own tenant only; runners serve every tenant, so runner
        tokens come from all-tenant admins.
        """
        if asked is not None:
            try:
                asked = checkTenant(asked, allowAll=True)
            except TenantError as e:
                raise BadRequest("tenant: %s" % (e,)) from None
        if "runner" in scopes:
            if not caller.allTenants:
                raise TenantForbidden("runner tokens serve every tenant: only an admin of all tenants creates them")
            return ALL_TENANTS
        tenant = asked if asked is not None else caller.tenant
        if not caller.allTenants and tenant != caller.principal.tenant:
            raise TenantForbidden("this credential belongs to tenant %r; it cannot create tokens of %r"
                                  % (caller.principal.tenant, tenant))
        return tenant

    @route(["/v1/tokens/<tokenID>", "/v1/admin/tokens/<tokenID>"], operator(SCOPE_ADMIN), methods=["DELETE"])
    async def revokeToken(self, request: IRequest, caller: Caller, tokenID: str) -> bytes:
        if not await self.core.store.revokeToken(tokenID, actorOf(request), self.core.nowNs(), tenant=caller.selected):
            raise NotFoundError("token %s not found or already revoked" % (tokenID,))
        return self._json(request, {"id": tokenID, "revoked": True})

    @route("/v1/audit", operator(SCOPE_ADMIN), methods=["GET"])
    async def audit(self, request: IRequest, caller: Caller) -> bytes:
        """
        The tenant's audit trail, newest first: C{target=} (such as
        C{run:<id>}, C{package:<name>}, C{token:<id>}) for one object's.
        """
        raw = queryArg(request, "limit") or "100"
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise BadRequest("limit must be an integer from 1 to 1000")
        target = queryArg(request, "target")
        if target is not None and not 1 <= len(target) <= 300:
            raise BadRequest("target must be 1-300 characters")
        return self._json(request, await self.views.audit(caller.tenant, int(raw), target))

    @route(["/metrics", "/v1/metrics"], operator(SCOPE_READ), methods=["GET"])
    async def metrics(self, request: IRequest, caller: Caller) -> bytes:
        from fangs.orchestrator.metrics import CONTENT_TYPE

        body = await self.core.metrics.render(self.core.store, tenant=caller.selected)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        return body
