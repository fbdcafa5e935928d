"""
Scans and runs: submitting scans, listing and reading runs, their steps,
artifacts and events, the live run stream, cancelling.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
from twisted.web.iweb import IRequest

from fangs import npm, wire
from fangs.errors import BadRequest, Forbidden, Gone, NotFoundError
from fangs.orchestrator import store as S
from fangs.orchestrator.auth import SCOPE_READ, SCOPE_WRITE, Caller, TenantForbidden, callerKey, operator
from fangs.orchestrator.routes.base import EXPORT_PAGE, NDJSON, _SHA512, Routes, loadsBody, pageSize, queryArg, readBody, route, runIDFromPath, timeArg
from fangs.orchestrator.views import eventLine
from fangs.tenants import DEFAULT_TENANT, TenantError, checkTenant


class RunRoutes(Routes):
    def _streamTenant(self, caller: Caller, asked: str) -> str:
        """
        The tenant whose stream lines C{caller} gets: its own; an all-tenant
        principal every tenant's, or the one it selects (header or
        C{tenant=}).  A tenant principal asking for another is refused.
        """
        if asked:
            try:
                checkTenant(asked)
            except TenantError as e:
                raise BadRequest("tenant: %s" % (e,)) from None
        if caller.selected is None:
            return asked
        if asked and asked != caller.selected:
            raise TenantForbidden("this stream is of tenant %r; %r is not selectable" % (caller.selected, asked))
        return caller.selected

    @route("/v1/scans", operator(SCOPE_WRITE), methods=["POST"])
    async def scans(self, request: IRequest, caller: Caller) -> bytes:
        req = loadsBody(request, wire.ScanRequest)
        tenant = caller.tenant
        key = request.getHeader(b"Idempotency-Key")
        digest = ""
        if key is not None:
            key = key.decode("latin-1").strip()
            if not 1 <= len(key) <= 200:
                raise BadRequest("Idempotency-Key must be 1-200 characters")
            if key.lower().startswith("watch:"):
                # The watcher's key names the watcher's own scan of that
                # release: whatever the body asked for, the scan queued is
                # exactly the one the watcher would queue (so a decoy under
                # this key cannot stand in for the real release's scan).
                req = self._watcherScan(key, req)
                runID, created = await self.core.submitScan(req, key, requireTarget=False, tenant=tenant)
                return self._json(request, wire.ScanQueued(queued=True, run_id=runID), 202)
            # Keys are the caller's own: another caller's key names another run.
            # (and a tenant's: an all-tenant admin's key in another tenant is another key).
            owner = callerKey(caller.principal)
            key = "api:%s:%s" % (owner if tenant == DEFAULT_TENANT else "%s@%s" % (owner, tenant), key)
            digest = hashlib.sha256(readBody(request)).hexdigest()
        runID, created = await self.core.submitScan(req, key, requireTarget=False, idempotencyDigest=digest, tenant=tenant)
        return self._json(request, wire.ScanQueued(queued=True, run_id=runID), 202)

    def _watcherScan(self, key: str, req: wire.ScanRequest) -> wire.ScanRequest:
        from fangs.orchestrator.watcher import idempotencyKey, scanRequest

        spec = key[len("watch:") :]
        at = spec.rfind("@")
        package, version = (spec[:at], spec[at + 1 :]) if at > 0 else ("", "")
        try:
            npm.checkPackageName(package)
            npm.checkVersion(version)
        except ValueError:
            raise Forbidden("Idempotency-Key watch:<package>@<version> is reserved for the watcher's scans") from None
        if idempotencyKey(package, version) != key:
            raise Forbidden("Idempotency-Key watch:<package>@<version> is reserved for the watcher's scans")
        if req.job.package_name != package or req.job.version != version:
            raise Forbidden("Idempotency-Key %s names another package or version than the job" % (key[:200],))
        return scanRequest(package, version, int(self.core.config.scanDurationSeconds * 1e9))

    @route("/v1/runs", operator(SCOPE_READ), methods=["GET"])
    async def listRuns(self, request: IRequest, caller: Caller) -> bytes:
        state = queryArg(request, "state")
        if state is not None and state not in S.ALL_STATES:
            raise BadRequest("state must be one of %s" % (", ".join(S.ALL_STATES),))
        flt = S.RunFilter(
            package=queryArg(request, "package"),
            state=state,
            since_ns=timeArg(request, "since"),
            until_ns=timeArg(request, "until"),
            tenant=caller.tenant,
        )
        return self._json(request, await self.views.runs(flt, pageSize(request), queryArg(request, "page_token")))

    @route("/v1/runs/stream", operator(SCOPE_READ), methods=["GET"])
    async def runStream(self, request: IRequest, caller: Caller) -> Any:
        """
        The live run stream: NDJSON, or a WebSocket when the request upgrades.
        """
        from fangs.orchestrator import streamhttp
        from fangs.orchestrator.stream import StreamError

        if self.stream is None:
            raise NotFoundError("this orchestrator has no run stream")
        flt, since = streamhttp.streamQuery(request)
        flt = attrs.evolve(flt, tenant=self._streamTenant(caller, flt.tenant))
        if streamhttp.wantsWebSocket(request):
            self.policy.checkOrigin(request)
            try:
                await self.stream.checkSince(since)
            except StreamError as e:
                raise BadRequest(str(e)) from None
            return streamhttp.webSocketResource(self.stream, flt, since)
        return await streamhttp.serveNDJSON(self.stream, request, flt, since)

    @route("/v1/runs/<runID>/steps", operator(SCOPE_READ), methods=["GET"])
    async def runSteps(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        return self._json(request, await self.views.runSteps(runIDFromPath(runID), caller.tenant))

    @route("/v1/runs/<runID>", operator(SCOPE_READ), methods=["GET"])
    async def getRun(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        return self._json(request, await self.views.runDetail(runIDFromPath(runID), caller.tenant))

    @route("/v1/artifacts/<sha512>", operator(SCOPE_READ), methods=["GET"])
    async def getArtifact(self, request: IRequest, caller: Caller, sha512: str) -> bytes:
        """
        A scanned tarball by its SHA-512 (hex).
        """
        if not _SHA512.match(sha512):
            raise BadRequest("an artifact id is the 128 lower-case hex characters of its SHA-512")
        # Only an artifact one of the tenant's runs references exists for it.
        found = await self.core.store.getArtifact(sha512) if await self.core.store.artifactVisible(sha512, caller.tenant) else None
        if found is None:
            raise NotFoundError("artifact %s... not found" % (sha512[:16],), code="unknown_artifact")
        size, data = found
        if data is None:
            raise Gone("artifact %s... (%d bytes) was dropped by retention; its hash and integrity check are"
                       " kept with the runs" % (sha512[:16], size), code="artifact_expired")
        request.setHeader(b"Content-Type", b"application/gzip")
        request.setHeader(b"Content-Disposition", b'attachment; filename="%s.tgz"' % (sha512[:16].encode(),))
        request.setHeader(b"X-Fangs-Sha512", sha512.encode())
        return data

    @route("/v1/runs/<runID>/events", operator(SCOPE_READ), methods=["GET"])
    async def exportEvents(self, request: IRequest, caller: Caller, runID: str) -> Any:
        run = await self.core.requireRun(runIDFromPath(runID), caller.tenant)
        eventType = None
        typeArg = queryArg(request, "type")
        if typeArg is not None:
            eventType = wire.EVENT_TYPE_IDS.get(typeArg)
            if eventType is None:
                raise BadRequest("type must be one of %s" % (", ".join(wire.EVENT_TYPE_IDS),))
        request.setHeader(b"Content-Type", NDJSON)
        after = (0, -1)
        while True:
            page = await self.core.store.eventPage(run.id, after, EXPORT_PAGE, eventType)
            if not page:
                break
            request.write(b"".join(eventLine(e) for e in page))
            after = (page[-1].seq, page[-1].idx)
            if len(page) < EXPORT_PAGE:
                break
        return b""

    @route("/v1/runs/<runID>/cancel", operator(SCOPE_WRITE), methods=["POST"])
    async def cancelRun(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        run = await self.core.cancel(runIDFromPath(runID), caller.tenant)
        return self._json(request, {"run_id": run.id, "state": run.state, "cancel_requested": run.cancel_requested})
