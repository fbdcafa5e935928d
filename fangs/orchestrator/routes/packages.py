"""
Watched packages, the releases the watcher recorded, and baselines.
"""

from __future__ import annotations



import attrs
from twisted.web.iweb import IRequest

from fangs import npm
from fangs.errors import BadRequest, NotFoundError
from fangs.orchestrator.auth import SCOPE_READ, SCOPE_WRITE, Caller, operator
from fangs.orchestrator.routes.base import Routes, actorOf, jsonObject, queryArg, route, stringField
from fangs.orchestrator.views import PackageAdded


class PackageRoutes(Routes):
    @route("/v1/packages", operator(SCOPE_READ), methods=["GET"])
    async def packages(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(request, await self.views.packages(caller.tenant))

    @route("/v1/packages", operator(SCOPE_WRITE), methods=["POST"])
    async def addPackage(self, request: IRequest, caller: Caller) -> bytes:
        body = jsonObject(request)
        name = stringField(body, "name")
        added = await self.core.addPackage(name, actorOf(request), caller.tenant)
        package = await self.views.package(name, caller.tenant)
        return self._json(request, PackageAdded(**attrs.asdict(package, recurse=False), added=added), 201 if added else 200)

    @route("/v1/packages/<path:rest>", operator({"GET": SCOPE_READ, "HEAD": SCOPE_READ, "DELETE": SCOPE_WRITE}), methods=["GET", "DELETE"])
    async def package(self, request: IRequest, caller: Caller, rest: str) -> bytes:
        if rest.endswith("/releases"):
            return await self.packageReleases(request, caller, rest[: -len("/releases")])
        baseline = rest.endswith("/baseline")
        name = rest[: -len("/baseline")] if baseline else rest
        try:
            npm.checkPackageName(name)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if request.method == b"DELETE":
            if baseline:
                await self.views.requireKnownPackage(name, caller.tenant)
                raise BadRequest("a baseline is changed by promoting or rejecting runs, not deleted")
            await self.core.removePackage(name, actorOf(request), caller.tenant)
            return self._json(request, {"name": name, "removed": True})
        if baseline:
            return self._json(request, await self.views.baseline(name, caller.tenant))
        package = await self.views.package(name, caller.tenant)
        if package is None:
            raise NotFoundError("package %r is not watched" % (name,), code="unknown_package")
        return self._json(request, package)

    # -- watcher and releases --

    async def packageReleases(self, request: IRequest, caller: Caller, name: str) -> bytes:
        """
        C{GET /v1/packages/<name>/releases?limit=N}: the versions the watcher
        recorded, newest first, with whether and as which run each was
        queued.
        """
        try:
            npm.checkPackageName(name)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        watch = await self.views.watch(name, caller.tenant)
        if request.method != b"GET":
            raise BadRequest("releases are recorded by the watcher; only GET is allowed")
        raw = queryArg(request, "limit") or "50"
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise BadRequest("limit must be an integer from 1 to 1000")
        return self._json(request, await self.views.releases(watch, name, int(raw), caller.tenant))
