"""
Notifiers: where findings are sent, test messages and delivery history.
"""

from __future__ import annotations

from typing import Any, Dict

import attrs
from twisted.web.iweb import IRequest

from fangs.errors import BadRequest, FangsError, NotFoundError
from fangs.orchestrator.auth import SCOPE_ADMIN, Caller, operator
from fangs.orchestrator.routes.base import Routes, actorOf, jsonObject, queryArg, route, stringField
from fangs.orchestrator.views import NotifierSaved, NotifierView


class NotifierRoutes(Routes):
    def _targetPolicy(self) -> Any:
        from fangs.orchestrator.notifier import TargetPolicy

        sender = getattr(self.core, "notifier", None)
        if sender is not None and getattr(sender, "policy", None) is not None:
            return sender.policy
        cfg = self.core.config
        return TargetPolicy.fromConfig(cfg.notifierAllowPrivate, cfg.notifierEnv)

    async def _requireNotifier(self, name: str, tenant: str) -> Dict[str, Any]:
        from fangs.orchestrator.notifier import checkName

        found = await self.core.store.getNotifier(checkName(name), tenant=tenant)
        if found is None:
            raise NotFoundError("notifier %r not found" % (name,), code="unknown_notifier")
        return found

    @route("/v1/notifiers", operator(SCOPE_ADMIN), methods=["GET"])
    async def listNotifiers(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(request, await self.views.notifiers(caller.tenant))

    @route("/v1/notifiers", operator(SCOPE_ADMIN), methods=["POST"])
    async def putNotifier(self, request: IRequest, caller: Caller) -> bytes:
        from fangs.orchestrator.notifier import parseNotifier

        body = jsonObject(request)
        target = parseNotifier(stringField(body, "name"), body, self._targetPolicy())
        created = await self.core.store.upsertNotifier(target, actorOf(request), self.core.nowNs(), tenant=caller.tenant)
        found = await self.core.store.getNotifier(target["name"], tenant=caller.tenant)
        return self._json(request, NotifierSaved(**NotifierView.fields(found), created=created), 201 if created else 200)

    @route("/v1/notifiers/<name>", operator(SCOPE_ADMIN), methods=["GET", "DELETE"])
    async def notifier(self, request: IRequest, caller: Caller, name: str) -> bytes:
        found = await self._requireNotifier(name, caller.tenant)
        if request.method == b"DELETE":
            await self.core.store.deleteNotifier(name, actorOf(request), self.core.nowNs(), tenant=caller.tenant)
            return self._json(request, {"name": name, "removed": True})
        return self._json(request, NotifierView.of(found))

    @route("/v1/notifiers/<name>/test", operator(SCOPE_ADMIN), methods=["POST"])
    async def testNotifier(self, request: IRequest, caller: Caller, name: str) -> bytes:
        from fangs.errors import Unavailable

        found = await self._requireNotifier(name, caller.tenant)
        sender = getattr(self.core, "notifier", None)
        if sender is None:
            raise Unavailable("this orchestrator runs without a notifier")
        result = await sender.sendTest(found)
        if not result["ok"]:  # 502, so a client that only looks at the status sees the failure
            err = FangsError("test message to %s not delivered: %s (%s)" % (name, result["error"], result["status"]), code="notifier_failed")
            err.status = 502
            raise err
        return self._json(request, result)

    @route("/v1/notifiers/<name>/deliveries", operator(SCOPE_ADMIN), methods=["GET"])
    async def notifierDeliveries(self, request: IRequest, caller: Caller, name: str) -> bytes:
        from fangs.orchestrator.notifier import checkName

        raw = queryArg(request, "limit") or "100"
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise BadRequest("limit must be an integer from 1 to 1000")
        history = await self.views.deliveries(checkName(name), int(raw), caller.tenant)  # history outlives its notifier
        if not history.deliveries:
            await self._requireNotifier(name, caller.tenant)  # neither history nor notifier: no such name for this tenant
        return self._json(request, attrs.evolve(history, name=name))
