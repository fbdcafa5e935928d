"""
The orchestrator's C{/v1} HTTP API on Klein.

Handlers are short: structure the input with the wire converter, call the
domain (L{fangs.orchestrator.core.Orchestrator}), render JSON.  Every error,
from any route or from routing itself, leaves through L{OrchestratorAPI.error}
as the one JSON envelope C{{"error": {"code", "message", "trace_id"}}}.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import ipaddress
import json
import os
import re
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import attrs

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from fangs import npm, wire
from fangs.errors import BadRequest, FangsError, Forbidden, Gone, NotFoundError, PayloadTooLarge, Unauthorized
from fangs.orchestrator import differ
from fangs.orchestrator.auth import (
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Access,
    Authenticator,
    Caller,
    TenantForbidden,
    callerKey,
    operator,
    public,
    runner,
    runnerOfRun,
)
from fangs.tenants import ALL_TENANTS, DEFAULT_TENANT, TenantError, checkTenant
from fangs.orchestrator import store as S
from fangs.orchestrator.core import Orchestrator
from fangs.orchestrator.site import MAX_NDJSON_LINE

log = Logger()

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_SHA512 = re.compile(r"^[0-9a-f]{128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
JSON = b"application/json"
NDJSON = b"application/x-ndjson"
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
EXPORT_PAGE = 1000


def traceID(request: IRequest) -> str:
    """
    The request's trace id: from a W3C C{traceparent} header when it has a
    valid one, else a fresh random one (kept on the request).
    """
    existing = getattr(request, "fangsTraceID", None)
    if existing:
        return existing
    header = request.getHeader(b"traceparent")
    value = None
    if header:
        m = _TRACEPARENT.match(header.decode("latin-1").strip().lower())
        if m and m.group(1) != "0" * 32:
            value = m.group(1)
    if value is None:
        value = os.urandom(16).hex()
    request.fangsTraceID = value  # type: ignore[attr-defined]
    return value


def runIDFromPath(text: str) -> str:
    if not _RUN_ID.match(text):
        raise BadRequest("run id must be 32 lower-case hex characters")
    return text


def readBody(request: IRequest) -> bytes:
    if getattr(request, "bodyTooLarge", False):
        raise PayloadTooLarge("request body exceeds %d bytes" % (request.bodyLimit,))
    request.content.seek(0)
    return request.content.read()


def ndjsonLines(request: IRequest) -> Iterator[bytes]:
    """
    The request body's lines, each at most L{MAX_NDJSON_LINE} bytes.
    """
    content = request.content
    content.seek(0)
    lineno = 0
    while True:
        line = content.readline(MAX_NDJSON_LINE + 1)
        if not line:
            return
        lineno += 1
        if len(line) > MAX_NDJSON_LINE and not line.endswith(b"\n"):
            raise PayloadTooLarge("line %d exceeds %d bytes" % (lineno, MAX_NDJSON_LINE))
        yield line


def queryArg(request: IRequest, name: str) -> Optional[str]:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("query parameter %s is not UTF-8" % (name,)) from None


def pageSize(request: IRequest) -> int:
    raw = queryArg(request, "page_size")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise BadRequest("page_size must be an integer from 1 to %d" % (MAX_PAGE_SIZE,))
    return int(raw)


def timeArg(request: IRequest, name: str) -> Optional[int]:
    raw = queryArg(request, name)
    if raw is None:
        return None
    try:
        when = wire.parseTimestamp(raw)
        ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    except (wire.WireError, OverflowError, ValueError):
        raise BadRequest("%s must be an RFC 3339 timestamp, like 2026-05-22T01:23:45Z" % (name,)) from None
    if not 0 <= ns < 2**63:
        raise BadRequest("%s must be between 1970 and 2262" % (name,))
    return ns


def nsToTimestamp(ns: Optional[int]) -> Optional[str]:
    return None if ns is None else wire.formatTimestamp(wire.timestampFromNs(ns))


def runJSON(run: S.RunRow) -> Dict[str, Any]:
    """
    The public view of a run.
    """
    return {
        "run_id": run.id,
        "package_name": run.package_name,
        "version": run.version,
        "kind": run.kind,
        "state": run.state,
        "verdict": run.verdict,
        "target_runner": run.target_runner,
        "runner_id": run.runner_id,
        "created_at": nsToTimestamp(run.created_ns),
        "dispatched_at": nsToTimestamp(run.dispatched_ns),
        "finished_at": nsToTimestamp(run.finished_ns),
        "result_status": run.result_status,
        "failure_reason": run.failure_reason,
        "cancel_requested": run.cancel_requested,
        "events_emitted": run.events_emitted,
        "events_dropped": run.events_dropped,
        "events_received": run.events_received,
        "batches_received": run.batches_received,
        "duration": run.duration_ns,
        "decision": run.decision,
        "deviation_count": run.deviation_count,
        "max_severity": run.max_severity,
        "analyzed_at": nsToTimestamp(run.analyzed_ns),
        "install_exit_code": run.install_exit_code,
        "install_finished_at": nsToTimestamp(run.install_finished_ns),
        "observation_ended_at": nsToTimestamp(run.observation_ended_ns),
        "events_unresolved": run.events_unresolved,
        # Whose view this is: the verdict, decision and counts are that tenant's.
        "tenant": run.tenant,
    }


def artifactJSON(a: Any) -> Optional[Dict[str, Any]]:
    """
    The run's tarball: where to fetch it and what its integrity check found.
    """
    if a is None:
        return None
    return {
        "sha512": a.sha512,
        "status": a.status,
        "detail": a.detail,
        "integrity": a.integrity,
        "tarball_url": a.tarball_url,
        "size": a.size,
        "checked_at": nsToTimestamp(a.checked_ns),
        "url": "/v1/artifacts/%s" % (a.sha512,) if a.sha512 and a.stored else None,
    }


def deviationJSON(d: S.DeviationRow) -> Dict[str, Any]:
    return {
        "id": d.id,
        "run_id": d.run_id,
        "package_name": d.package_name,
        "category": d.category,
        "value": d.value,
        "severity": d.severity,
        "reason": d.reason,
        "evidence_event_id": d.evidence_event_id,
        "count": d.count,
        "detected_at": nsToTimestamp(d.detected_ns),
        # Who did it: class (npm, script, other; registry for a manifest
        # delta), label (script:<package>@<version>:<phase>), pid, argv.
        "actor": (d.actorDetail.get("label") or d.actor) if d.actor else "",
        "actor_detail": d.actorDetail,
    }


def eventJSON(e: S.StoredEvent) -> Dict[str, Any]:
    return {
        "id": e.id,
        "run_id": e.run_id,
        "seq": e.seq,
        "idx": e.idx,
        "type": e.type,
        "type_name": wire.EVENT_TYPE_NAMES.get(e.type, "unknown"),
        "received_at": nsToTimestamp(e.received_ns),
        "payload": json.loads(e.data),
    }


def packageJSON(p: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(p)
    for key in ("added_ns", "last_checked_ns"):
        out[key.replace("_ns", "_at")] = nsToTimestamp(out.pop(key))
    return out


def actorOf(request: IRequest) -> str:
    """
    Who made a decision, for the audit trail.  Without authentication the
    best we know is where the request came from.
    """
    identity = getattr(request, "fangsIdentity", None)
    if identity:
        return str(identity)
    peer = request.getClientAddress()
    return "anonymous@%s" % (getattr(peer, "host", "?"),)


def decodeBody(request: IRequest) -> Any:
    """
    The request's JSON body, refused (400) when it holds text that cannot
    be stored (a lone UTF-16 surrogate such as C{"\\ud800"}).
    """
    body = readBody(request)
    value = wire.decodeJSON(body)
    if b"\\u" in body or b"\\U" in body:
        checkEncodable(value)
    return value


def checkEncodable(value: Any) -> None:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("body holds text that is not valid Unicode (a lone surrogate escape)") from None
    except (ValueError, RecursionError):
        raise BadRequest("body cannot be stored") from None


def loadsBody(request: IRequest, cls: Any) -> Any:
    return wire.structure(decodeBody(request), cls)


def jsonObject(request: IRequest) -> Dict[str, Any]:
    value = decodeBody(request)
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


def stringField(body: Dict[str, Any], name: str, required: bool = True, default: str = "") -> str:
    value = body.get(name, None)
    if value is None:
        if required:
            raise BadRequest("missing %s" % (name,))
        return default
    if not isinstance(value, str):
        raise BadRequest("%s must be a string" % (name,))
    return value



_SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")
_FORM = b"application/x-www-form-urlencoded"
_PUBLIC_POSTS = ("/ui/login",)
_RUNNER_ROUTE = re.compile(r"^/v1/runners/([^/]+)/(heartbeat|jobs)$")
_RUN_ROUTE = re.compile(r"^/v1/runs/([^/]+)/(events|result)$")


def _mediaType(request: IRequest) -> Optional[bytes]:
    raw = request.getHeader(b"content-type")
    if raw is None:
        return None
    return raw.split(b";", 1)[0].strip().lower()


def _hasBody(request: IRequest) -> bool:
    length = request.getHeader(b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return request.getHeader(b"transfer-encoding") is not None


def _splitHost(value: str) -> Tuple[str, Optional[int]]:
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if port and not port.isdigit():
        raise ValueError(value)
    return host.rstrip("."), int(port) if port else None


def _isIP(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@attrs.frozen
class BrowserPolicy:
    """
    What keeps a browser from being used against the orchestrator, in every
    auth mode:

     - C{Host} must be one the orchestrator is known by (its public URL's
       host, C{--allowed-host} names, an IP literal, C{localhost}): a page
       on a rebound DNS name reaches the socket but is refused.
       C{allowedHosts=None} checks no Host (embedding in tests).
     - a state-changing request carrying C{Origin} (every browser sends it
       with a cross-origin POST) must come from one of C{origins} (the
       public URL's); C{Sec-Fetch-Site: cross-site} is refused too.
     - a state-changing request's body must be C{application/json}
       (C{application/x-ndjson} for event streams, the dashboard's
       CSRF-protected form under C{/ui/}): a cross-site form or a no-cors
       C{fetch} can send neither without a CORS preflight, which is never
       answered.
    """

    allowedHosts: Optional[FrozenSet[str]] = None
    origins: FrozenSet[str] = frozenset()

    def check(self, request: IRequest, method: bytes, path: str) -> None:
        self.checkHost(request)
        if method.upper() in _SAFE_METHODS:
            return
        self.checkOrigin(request)
        media = _mediaType(request)
        if media is None and not _hasBody(request):
            return
        allowed = {JSON}
        if _RUN_ROUTE.match(path) and path.endswith("/events"):
            allowed.add(NDJSON)
        if path.startswith("/ui/"):
            allowed.add(_FORM)  # the dashboard's forms carry its CSRF token (and login its token)
        if media not in allowed:
            raise UnsupportedMediaType(
                "Content-Type must be %s for %s %s"
                % (" or ".join(sorted(a.decode() for a in allowed)), method.decode("latin-1"), path[:200])
            )

    def checkOrigin(self, request: IRequest) -> None:
        """
        Refuse a request a page of another origin made: state-changing
        requests, and WebSocket upgrades (a cross-site page may open one with
        the user's cookie).
        """
        origin = request.getHeader(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").strip().lower().rstrip("/")
            if text not in self.origins:
                raise Forbidden("cross-origin request from %s refused (allowed: the orchestrator's public URL; see --public-url)" % (text[:100],), code="cross_origin")
        if (request.getHeader(b"sec-fetch-site") or b"").strip().lower() == b"cross-site":
            raise Forbidden("cross-site request refused", code="cross_origin")

    def checkHost(self, request: IRequest) -> None:
        if self.allowedHosts is None:
            return
        raw = request.getHeader(b"host")
        if raw is None:
            raise BadRequest("a Host header is required")
        try:
            host, _ = _splitHost(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the Host header is not a host name") from None
        if host in self.allowedHosts or _isIP(host) or host == "localhost":
            return
        raise Forbidden(
            "unknown Host %r (the orchestrator answers to %s; see --public-url and --allowed-host)"
            % (host[:100], ", ".join(sorted(self.allowedHosts)) or "IP addresses only"),
            code="unknown_host",
        )


def policyFor(publicURLs: List[str], extraHosts: List[str]) -> BrowserPolicy:
    """
    The policy of an orchestrator known by C{publicURLs} (scheme://host:port)
    and the extra host names.
    """
    origins = set()
    hosts = {h.lower().strip("[]") for h in extraHosts}
    for url in publicURLs:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        hosts.add(host)
        default = {"http": 80, "https": 443}.get(parts.scheme)
        port = parts.port or default
        shown = "[%s]" % (host,) if ":" in host else host
        origins.add("%s://%s" % (parts.scheme, shown) if port == default else "%s://%s:%d" % (parts.scheme, shown, port))
    return BrowserPolicy(frozenset(hosts), frozenset(origins))


#: Every route's declared access, by Klein endpoint (what the site's gate and
#: the tenant isolation test read).
ROUTE_ACCESS: Dict[str, Access] = {}


def authorizedRoute(app: Klein, paths: Any, access: Access, **routeKwargs: Any) -> Any:
    """
    Declare a route and who may call it, once (tahoe-lafs'
    C{_authorized_route}): the handler is called as
    C{handler(self, request, caller, **pathArgs)} with the L{Caller} (the
    principal and the tenant it acts on) after the request passed
    C{access}; a refusal is a 401/403 in the error envelope and the handler
    never runs.  C{paths} is one URL pattern or a list of aliases.
    """
    if isinstance(paths, str):
        paths = [paths]

    def decorator(f: Any) -> Any:
        @functools.wraps(f)
        async def handler(self: "OrchestratorAPI", request: IRequest, **args: Any) -> Any:
            caller = await self.auth.authorize(request, access, args, self._runnerOfRun)
            result = f(self, request, caller, **args)
            if inspect.isawaitable(result):
                result = await result
            return result

        handler.fangsAccess = access  # type: ignore[attr-defined]
        for i, path in enumerate(paths):
            endpoint = f.__name__ if i == 0 else "%s_%d" % (f.__name__, i)
            ROUTE_ACCESS[endpoint] = access
            if routeKwargs.get("branch"):
                ROUTE_ACCESS[endpoint + "_branch"] = access
            app.route(path, endpoint=endpoint, **routeKwargs)(handler)
        return handler

    return decorator


class UnsupportedMediaType(FangsError):
    code = "unsupported_media_type"
    status = 415

class OrchestratorAPI:
    app = Klein()

    def __init__(self, core: Orchestrator, auth: Optional[Authenticator] = None, policy: Optional[BrowserPolicy] = None,
                 stream: Any = None) -> None:
        self.core = core
        self.auth = auth or Authenticator("none")
        self.policy = policy or BrowserPolicy()
        #: The L{fangs.orchestrator.stream.RunStream} of C{/v1/runs/stream}, or None.
        self.stream = stream

    async def _runnerOfRun(self, runID: str) -> Optional[str]:
        """
        The runner a run was dispatched to (L{runnerOfRun} routes: its
        events and result come only from it).  Asked after the caller proved
        to be a runner, so an unauthenticated caller cannot probe run ids.
        """
        run = await self.core.store.getRun(runIDFromPath(runID))
        if run is None:
            raise NotFoundError("run %s not found" % (runID,), code="unknown_run")
        return run.runner_id

    async def gate(self, request: IRequest) -> None:
        """
        Run on a request's headers, before its body is read (the site calls
        it): the browser policy, then, for a request with a body, the
        route's declared access (L{authorizedRoute}) -- all of the
        authorisation that needs no body.
        """
        method = getattr(request, "requestMethod", b"") or b""
        raw = getattr(request, "requestPath", b"") or b""
        try:
            path = unquote(raw.split(b"?", 1)[0].decode("utf-8"), errors="strict")
        except UnicodeDecodeError:
            raise BadRequest("the URL must be UTF-8") from None
        self.policy.check(request, method, path)
        if self.auth.mode == "none" or method.upper() in _SAFE_METHODS:
            return
        try:
            endpoint, args = self.app.url_map.bind("localhost").match(path, method.decode("latin-1").upper())
        except HTTPException:
            # No such route (the router answers it), or a redirect: the
            # caller must still be somebody.
            await self.auth.principal(request)
            return
        await self.auth.authorize(request, ROUTE_ACCESS[endpoint], args, self._runnerOfRun)

    def resource(self) -> Any:
        return self.core.metrics.instrument(_UTF8URLs(self.app.resource(), self), self.app.url_map)  # counts requests by route

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

    # -- rendering ------------------------------------------------------------

    def _json(self, request: IRequest, value: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", JSON)
        return wire.dumps(value) + b"\n"

    @app.handle_errors
    def error(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(CancelledError):
            return b""  # the client went away; nothing to answer
        if (failure.check(Unauthorized) and request.path.startswith(b"/ui/")
                and b"text/html" in (request.getHeader(b"accept") or b"")):
            request.redirect(b"/ui/login")  # a browser without a session signs in
            return b""
        trace = traceID(request)
        if failure.check(S.StorageFault):
            # Locked by another writer, unreachable, or out of disk, on
            # either engine (the engine classified the driver's error): the
            # failed write was rolled back, and the client may retry it.
            err = failure.value
            status, code, message = err.status, err.code, err.message
            request.setHeader(b"Retry-After", b"1")
            log.warn("{method} {path} -> {status}: {error} (trace {trace_id})", method=request.method, path=request.path, status=status, error=err.detail or err.message, trace_id=trace)
        elif failure.check(FangsError):
            err = failure.value
            status, code, message = err.status, err.code, err.message
        elif failure.check(S.ConstraintViolation):
            # A write the schema refused (e.g. events for a run deleted
            # meanwhile); the driver's text stays in the log.
            status, code, message = 409, "conflict", "the request conflicts with what is stored (trace %s)" % (trace,)
            log.info("constraint refused on {method} {path}: {error} (trace {trace_id})", method=request.method, path=request.path, error=str(failure.value), trace_id=trace)
        elif failure.check(S.Conflict):
            status, code, message = 409, "conflict", str(failure.value)
        elif failure.check(wire.WireError):
            status, code, message = 400, "bad_request", str(failure.value)
        elif failure.check(MethodNotAllowed):
            status, code = 405, "method_not_allowed"
            message = "method %s not allowed on %s" % (
                request.method.decode("latin-1"),
                request.path.decode("latin-1", "replace"),
            )
        elif failure.check(NotFound):
            status, code = 404, "not_found"
            message = "no route %s %s" % (
                request.method.decode("latin-1"),
                request.path.decode("latin-1", "replace"),
            )
        elif failure.check(HTTPException):
            status, code, message = failure.value.code, "http_error", failure.value.description or ""
        else:
            status, code, message = 500, "internal", "internal error; see the orchestrator log (trace %s)" % (trace,)
            log.failure(
                "unhandled error on {method} {path} (trace {trace_id})",
                failure,
                method=request.method,
                path=request.path,
                trace_id=trace,
            )
        if status >= 400 and status < 500:
            log.info(
                "{method} {path} -> {status} {code}: {message} (trace {trace_id})",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1", "replace"),
                status=status,
                code=code,
                message=message,
                trace_id=trace,
            )
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="fangs"')
        body = wire.ErrorEnvelope(wire.ErrorBody(code=code, message=message, trace_id=trace))
        return self._json(request, body, status)

    # -- runners --------------------------------------------------------------

    @authorizedRoute(app, "/v1/health", public(), methods=["GET"])
    def health(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(
            request,
            wire.HealthResponse(status="ok", orchestrator_id=self.core.orchestratorID, version=self.core.version),
        )

    @authorizedRoute(app, "/v1/admin/health", operator(SCOPE_READ), methods=["GET"])
    async def adminHealth(self, request: IRequest, caller: Caller) -> bytes:
        """
        Readiness: the database answers, and what waits: queue depth (per
        tenant), runners, open long polls and stream subscribers.  503 when
        the database does not answer.
        """
        clock = self.core.clock
        started = clock.seconds()
        try:
            depth = await self.core.store.queueDepth()
            byTenant = await self.core.store.queueDepthByTenant()
            if caller.selected is not None:
                byTenant = {caller.selected: byTenant.get(caller.selected, 0)}
                depth = byTenant[caller.selected]
            db = {"backend": getattr(self.core.store, "backend", "?"), "ok": True,
                  "latency_ms": round((clock.seconds() - started) * 1000, 1)}
        except Exception as e:
            log.warn("admin health: the database did not answer ({error})", error=str(e))
            depth, byTenant, db = None, {}, {"backend": getattr(self.core.store, "backend", "?"), "ok": False, "error": type(e).__name__}
        runners = self.core.registry.all()
        body = {
            "status": "ok" if db["ok"] else "unavailable",
            "orchestrator_id": self.core.orchestratorID,
            "version": self.core.version,
            "database": db,
            # A queued run shared by several tenants counts for each.
            "queue": {"depth": depth, "by_tenant": byTenant},
            "runners": {"registered": len(runners), "busy": sum(1 for r in runners if r.active_run_ids or r.active_run_id)},
            "long_polls_waiting": self.core.dispatcher.waiterCount(),
            # A tenant's view counts its own tenant's subscribers only.
            "stream_subscribers": (0 if self.stream is None else len(self.stream.subscribers) if caller.selected is None
                                   else sum(1 for sub in self.stream.subscribers if sub.filter.tenant == caller.selected)),
        }
        return self._json(request, body, 200 if db["ok"] else 503)

    @authorizedRoute(app, "/v1/runners/register", runner(), methods=["POST"])
    async def register(self, request: IRequest, caller: Caller) -> bytes:
        reg = loadsBody(request, wire.RunnerRegistration)
        await self.auth.requireRunner(request, reg.runner_id)
        return self._json(request, self.core.register(reg))

    @authorizedRoute(app, "/v1/runners", operator(SCOPE_READ), methods=["GET"])
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

    @authorizedRoute(app, "/v1/runners/<runnerID>/heartbeat", runner("runnerID"), methods=["POST"])
    async def heartbeat(self, request: IRequest, caller: Caller, runnerID: str) -> bytes:
        body = readBody(request)
        beat = loadsBody(request, wire.Heartbeat) if body.strip() else wire.Heartbeat()
        return self._json(request, await self.core.heartbeat(runnerID, beat))

    @authorizedRoute(app, "/v1/runners/<runnerID>/jobs", runner("runnerID"), methods=["GET"])
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

    # -- scans and runs ---------------------------------------------------------

    @authorizedRoute(app, "/v1/scans", operator(SCOPE_WRITE), methods=["POST"])
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

    @authorizedRoute(app, "/v1/runs/<runID>/events", runnerOfRun("runID"), methods=["POST"])
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

    @authorizedRoute(app, "/v1/runs/<runID>/result", runnerOfRun("runID"), methods=["POST"])
    async def postResult(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        runID = runIDFromPath(runID)
        result = loadsBody(request, wire.ScanResult)
        await self.core.recordResult(runID, result)
        return self._json(request, wire.ResultAck(recorded=True))

    @authorizedRoute(app, "/v1/runs", operator(SCOPE_READ), methods=["GET"])
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
        try:
            page = await self.core.store.listRuns(flt, pageSize(request), queryArg(request, "page_token"))
        except S.BadPageToken as e:
            raise BadRequest(str(e)) from None
        return self._json(
            request, {"runs": [runJSON(r) for r in page.items], "next_page_token": page.next_token or ""}
        )

    @authorizedRoute(app, "/v1/runs/stream", operator(SCOPE_READ), methods=["GET"])
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

    @authorizedRoute(app, "/v1/runs/<runID>/steps", operator(SCOPE_READ), methods=["GET"])
    async def runSteps(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        from fangs.orchestrator.steps import runSteps, stepsJSON

        run = await self.core.requireRun(runIDFromPath(runID), caller.tenant)
        steps = runSteps(run, await self.core.store.outboxFor(run.id, tenant=caller.tenant))
        return self._json(request, {"run_id": run.id, "steps": stepsJSON(steps, nsToTimestamp)})

    @authorizedRoute(app, "/v1/runs/<runID>", operator(SCOPE_READ), methods=["GET"])
    async def getRun(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        run = await self.core.requireRun(runIDFromPath(runID), caller.tenant)
        counts = await self.core.store.eventCounts(run.id)
        body = runJSON(run)
        body["job"] = json.loads(run.job)
        body["event_counts"] = {wire.EVENT_TYPE_NAMES.get(t, str(t)): n for t, n in sorted(counts.items())}
        found = [deviationJSON(d) for d in await self.core.store.deviationsForRun(run.id, tenant=caller.tenant)]
        # On a clean run the stored findings are all low: notes, not deviations.
        body["deviations"] = [] if run.verdict == "clean" else found
        body["notes"] = found if run.verdict == "clean" else []
        body["manifest_deltas"] = [d for d in found if d["actor"] == "registry"]
        body["analysis_reason"] = run.analysis_reason
        body["artifact"] = artifactJSON(await self.core.store.artifactFor(run.id))
        return self._json(request, body)

    @authorizedRoute(app, "/v1/artifacts/<sha512>", operator(SCOPE_READ), methods=["GET"])
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

    # -- review ---------------------------------------------------------------------

    @authorizedRoute(app, "/v1/runs/<runID>/promote", operator(SCOPE_WRITE), methods=["POST"])
    async def promote(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        return await self._decide(request, caller, runID, "promoted")

    @authorizedRoute(app, "/v1/runs/<runID>/reject", operator(SCOPE_WRITE), methods=["POST"])
    async def reject(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        return await self._decide(request, caller, runID, "rejected")

    @authorizedRoute(app, "/v1/runs/<runID>/reanalyze", operator(SCOPE_WRITE), methods=["POST"])
    async def reanalyze(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        return await self._decide(request, caller, runID, "reanalyze")

    async def _decide(self, request: IRequest, caller: Caller, runID: str, decision: str) -> bytes:
        outcome = await self.core.decide(runIDFromPath(runID), decision, actorOf(request), caller.tenant)
        run = await self.core.requireRun(outcome.run_id, caller.tenant)
        return self._json(request, runJSON(run))

    @authorizedRoute(app, "/v1/pending", operator(SCOPE_READ), methods=["GET"])
    async def pending(self, request: IRequest, caller: Caller) -> bytes:
        try:
            page = await self.core.store.pendingRuns(pageSize(request), queryArg(request, "page_token"), tenant=caller.tenant)
        except S.BadPageToken as e:
            raise BadRequest(str(e)) from None
        return self._json(request, {"runs": [runJSON(r) for r in page.items], "next_page_token": page.next_token or ""})

    @authorizedRoute(app, "/v1/deviations", operator(SCOPE_READ), methods=["GET"])
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
        try:
            page = await self.core.store.listDeviations(flt, pageSize(request), queryArg(request, "page_token"))
        except S.BadPageToken as e:
            raise BadRequest(str(e)) from None
        return self._json(
            request, {"deviations": [deviationJSON(d) for d in page.items], "next_page_token": page.next_token or ""}
        )

    @authorizedRoute(app, "/v1/deviations/<deviationID>", operator(SCOPE_READ), methods=["GET"])
    async def deviation(self, request: IRequest, caller: Caller, deviationID: str) -> bytes:
        if not _RUN_ID.match(deviationID):
            raise BadRequest("deviation id must be 32 lower-case hex characters")
        found = await self.core.store.getDeviation(deviationID, tenant=caller.tenant)
        if found is None:
            raise NotFoundError("deviation %s not found" % (deviationID,))
        dev, event = found
        body = deviationJSON(dev)
        body["evidence_event"] = eventJSON(event) if event is not None else None
        return self._json(request, body)

    @authorizedRoute(app, "/v1/packages", operator(SCOPE_READ), methods=["GET"])
    async def packages(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(request, {"packages": [packageJSON(p) for p in await self.core.store.listPackages(tenant=caller.tenant)]})

    @authorizedRoute(app, "/v1/packages", operator(SCOPE_WRITE), methods=["POST"])
    async def addPackage(self, request: IRequest, caller: Caller) -> bytes:
        body = jsonObject(request)
        name = stringField(body, "name")
        added = await self.core.addPackage(name, actorOf(request), caller.tenant)
        package = await self.core.store.getPackage(name, tenant=caller.tenant)
        return self._json(request, dict(packageJSON(package), added=added), 201 if added else 200)

    @authorizedRoute(app, "/v1/packages/<path:rest>", operator({"GET": SCOPE_READ, "HEAD": SCOPE_READ, "DELETE": SCOPE_WRITE}), methods=["GET", "DELETE"])
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
                if await self.core.store.getPackage(name, tenant=caller.tenant) is None and not await self.core.store.packageHasRuns(name, tenant=caller.tenant):
                    raise NotFoundError("package %r is neither watched nor scanned" % (name,), code="unknown_package")
                raise BadRequest("a baseline is changed by promoting or rejecting runs, not deleted")
            await self.core.removePackage(name, actorOf(request), caller.tenant)
            return self._json(request, {"name": name, "removed": True})
        package = await self.core.store.getPackage(name, tenant=caller.tenant)
        if baseline:
            if package is None and not await self.core.store.packageHasRuns(name, tenant=caller.tenant):
                raise NotFoundError("package %r is neither watched nor scanned" % (name,), code="unknown_package")
            rows = await self.core.store.baselineFor(name, tenant=caller.tenant)
            return self._json(request, {"package_name": name, "fingerprints": rows})
        if package is None:
            raise NotFoundError("package %r is not watched" % (name,), code="unknown_package")
        return self._json(request, packageJSON(package))

    # -- tokens (admin) --

    @authorizedRoute(app, ["/v1/tokens", "/v1/admin/tokens"], operator(SCOPE_ADMIN), methods=["GET"])
    async def listTokens(self, request: IRequest, caller: Caller) -> bytes:
        tokens = await self.core.store.listTokens(tenant=caller.selected)
        for t in tokens:
            t["scopes"] = t["scopes"].split()
            t["created_at"] = nsToTimestamp(t.pop("created_ns"))
            t["revoked_at"] = nsToTimestamp(t.pop("revoked_ns"))
        return self._json(request, {"tokens": tokens})

    @authorizedRoute(app, ["/v1/tokens", "/v1/admin/tokens"], operator(SCOPE_ADMIN), methods=["POST"])
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

    @authorizedRoute(app, ["/v1/tokens/<tokenID>", "/v1/admin/tokens/<tokenID>"], operator(SCOPE_ADMIN), methods=["DELETE"])
    async def revokeToken(self, request: IRequest, caller: Caller, tokenID: str) -> bytes:
        if not await self.core.store.revokeToken(tokenID, actorOf(request), self.core.nowNs(), tenant=caller.selected):
            raise NotFoundError("token %s not found or already revoked" % (tokenID,))
        return self._json(request, {"id": tokenID, "revoked": True})

    @authorizedRoute(app, "/v1/audit", operator(SCOPE_ADMIN), methods=["GET"])
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
        rows = await self.core.store.auditLog(caller.tenant, int(raw), target)
        for r in rows:
            r["at"] = nsToTimestamp(r.pop("at_ns"))
        return self._json(request, {"tenant": caller.tenant, "entries": rows})

    @authorizedRoute(app, "/v1/allow", operator(SCOPE_READ), methods=["GET"])
    async def listAllow(self, request: IRequest, caller: Caller) -> bytes:
        package = queryArg(request, "package")
        entries = await self.core.store.listAllow(tenant=caller.tenant)
        if package is not None:
            entries = [e for e in entries if e["scope"] == "global" or e["package_name"] == package]
        for e in entries:
            e["created_at"] = nsToTimestamp(e.pop("created_ns"))
        return self._json(request, {"entries": entries})

    @authorizedRoute(app, "/v1/allow", operator(SCOPE_WRITE), methods=["POST"])
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

    @authorizedRoute(app, "/v1/allow/<entryID>", operator(SCOPE_WRITE), methods=["DELETE"])
    async def removeAllow(self, request: IRequest, caller: Caller, entryID: str) -> bytes:
        await self.core.removeAllow(entryID, actorOf(request), caller.tenant)
        return self._json(request, {"id": entryID, "removed": True})

    @authorizedRoute(app, "/v1/runs/<runID>/events", operator(SCOPE_READ), methods=["GET"])
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
            request.write(b"".join(_eventLine(e) for e in page))
            after = (page[-1].seq, page[-1].idx)
            if len(page) < EXPORT_PAGE:
                break
        return b""

    @authorizedRoute(app, "/v1/runs/<runID>/cancel", operator(SCOPE_WRITE), methods=["POST"])
    async def cancelRun(self, request: IRequest, caller: Caller, runID: str) -> bytes:
        run = await self.core.cancel(runIDFromPath(runID), caller.tenant)
        return self._json(request, {"run_id": run.id, "state": run.state, "cancel_requested": run.cancel_requested})


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
        status = await self.core.store.watchStatus(name, tenant=caller.tenant)
        if status is None:
            raise NotFoundError("package %r is not watched" % (name,), code="unknown_package")
        if request.method != b"GET":
            raise BadRequest("releases are recorded by the watcher; only GET is allowed")
        raw = queryArg(request, "limit") or "50"
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise BadRequest("limit must be an integer from 1 to 1000")
        rows = await self.core.store.listReleases(name, int(raw), tenant=caller.tenant)
        for r in rows:
            for key in ("published_ns", "discovered_ns", "queued_ns"):
                r[key.replace("_ns", "_at")] = nsToTimestamp(r.pop(key))
        for key in ("last_checked_ns", "next_check_ns"):
            status[key.replace("_ns", "_at")] = nsToTimestamp(status.pop(key))
        return self._json(request, dict(status, package_name=name, releases=rows))

    # -- web dashboard (fangs.orchestrator.ui) --

    @authorizedRoute(app, "/ui/login", public(), methods=["GET"])
    def loginPage(self, request: IRequest, caller: Caller) -> bytes:
        return self._loginHTML(request, "")

    @authorizedRoute(app, "/ui/login", public(), methods=["POST"])
    async def login(self, request: IRequest, caller: Caller) -> bytes:
        token = (request.args.get(b"token") or [b""])[-1].decode("latin-1").strip()
        if self.auth.mode == "none":
            request.redirect(b"/ui/")
            return b""
        try:
            cookie, principal = await self.auth.sessionFor(token, self.core.nowNs())
        except FangsError as e:
            return self._loginHTML(request, e.message, 401 if e.status == 401 else 403)
        request.addCookie(SESSION_COOKIE, cookie, path=b"/ui/", httpOnly=True, sameSite="strict", secure=request.isSecure(), max_age=str(SESSION_SECONDS))
        log.info("dashboard sign-in by {principal}", principal=str(principal))
        request.redirect(b"/ui/")
        return b""

    @authorizedRoute(app, "/ui/logout", public(), methods=["POST"])
    async def logout(self, request: IRequest, caller: Caller) -> bytes:
        ended = await self.auth.endSession(request.getCookie(SESSION_COOKIE))
        if ended:
            log.info("dashboard sign-out")
        request.addCookie(SESSION_COOKIE, b"", path=b"/ui/", httpOnly=True, sameSite="strict", max_age="0")
        request.redirect(b"/ui/login")
        return b""

    @authorizedRoute(app, "/ui/static/", public(), branch=True, methods=["GET", "HEAD"])
    def dashboardStatic(self, request: IRequest, caller: Caller) -> Any:
        from fangs.orchestrator.ui import STATIC

        from twisted.web.static import File

        return File(STATIC)

    def _loginHTML(self, request: IRequest, error: str, status: int = 200) -> bytes:
        import html

        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Security-Policy", b"default-src 'self'")
        request.setHeader(b"X-Frame-Options", b"DENY")
        message = '<p class="login-error">%s</p>' % (html.escape(error),) if error else ""
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>FANGS — sign in</title>'
            '<link rel="stylesheet" href="/ui/static/fangs.css"></head><body class="login">'
            '<main class="login-box"><h1>FANGS</h1><p>Sign in with an operator token '
            "(<code>fangs token create --name you --scope orchestrator:write</code>).</p>%s"
            '<form method="post" action="/ui/login"><input type="password" name="token" autocomplete="off" '
            'placeholder="fangs_…" required autofocus><button type="submit">Sign in</button></form></main></body></html>'
            % (message,)
        ).encode("utf-8")

    @authorizedRoute(app, "/ui/", operator(SCOPE_READ), branch=True)
    async def dashboard(self, request: IRequest, caller: Caller) -> Any:
        ui = getattr(self, "_ui", None)
        if ui is None:
            from fangs.orchestrator.ui import DashboardUI

            ui = self._ui = DashboardUI(self.core).resource()
        request.fangsTenant = caller.tenant  # the dashboard shows (and changes) this tenant's objects
        return ui

    @authorizedRoute(app, "/", public(), methods=["GET"])
    def root(self, request: IRequest, caller: Caller) -> bytes:
        request.redirect(b"/ui/")
        return b""

    # -- notifiers and metrics --

    def _notifierJSON(self, n: Dict[str, Any]) -> Dict[str, Any]:
        out = dict(n)
        for key in ("created_ns", "updated_ns"):
            out[key.replace("_ns", "_at")] = nsToTimestamp(out.pop(key))
        return out

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

    @authorizedRoute(app, "/v1/notifiers", operator(SCOPE_ADMIN), methods=["GET"])
    async def listNotifiers(self, request: IRequest, caller: Caller) -> bytes:
        return self._json(request, {"notifiers": [self._notifierJSON(n) for n in await self.core.store.listNotifiers(tenant=caller.tenant)]})

    @authorizedRoute(app, "/v1/notifiers", operator(SCOPE_ADMIN), methods=["POST"])
    async def putNotifier(self, request: IRequest, caller: Caller) -> bytes:
        from fangs.orchestrator.notifier import parseNotifier

        body = jsonObject(request)
        target = parseNotifier(stringField(body, "name"), body, self._targetPolicy())
        created = await self.core.store.upsertNotifier(target, actorOf(request), self.core.nowNs(), tenant=caller.tenant)
        found = await self.core.store.getNotifier(target["name"], tenant=caller.tenant)
        return self._json(request, dict(self._notifierJSON(found), created=created), 201 if created else 200)

    @authorizedRoute(app, "/v1/notifiers/<name>", operator(SCOPE_ADMIN), methods=["GET", "DELETE"])
    async def notifier(self, request: IRequest, caller: Caller, name: str) -> bytes:
        found = await self._requireNotifier(name, caller.tenant)
        if request.method == b"DELETE":
            await self.core.store.deleteNotifier(name, actorOf(request), self.core.nowNs(), tenant=caller.tenant)
            return self._json(request, {"name": name, "removed": True})
        return self._json(request, self._notifierJSON(found))

    @authorizedRoute(app, "/v1/notifiers/<name>/test", operator(SCOPE_ADMIN), methods=["POST"])
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

    @authorizedRoute(app, "/v1/notifiers/<name>/deliveries", operator(SCOPE_ADMIN), methods=["GET"])
    async def notifierDeliveries(self, request: IRequest, caller: Caller, name: str) -> bytes:
        from fangs.orchestrator.notifier import checkName

        raw = queryArg(request, "limit") or "100"
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise BadRequest("limit must be an integer from 1 to 1000")
        rows = await self.core.store.deliveries(checkName(name), int(raw), tenant=caller.tenant)  # history outlives its notifier
        if not rows:
            await self._requireNotifier(name, caller.tenant)  # neither history nor notifier: no such name for this tenant
        for r in rows:
            for key in ("at_ns", "next_attempt_ns"):
                r[key.replace("_ns", "_at")] = nsToTimestamp(r.pop(key))
        return self._json(request, {"name": name, "deliveries": rows})

    @authorizedRoute(app, ["/metrics", "/v1/metrics"], operator(SCOPE_READ), methods=["GET"])
    async def metrics(self, request: IRequest, caller: Caller) -> bytes:
        from fangs.orchestrator.metrics import CONTENT_TYPE

        body = await self.core.metrics.render(self.core.store, tenant=caller.selected)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        return body


def _eventLine(e: S.StoredEvent) -> bytes:
    head = json.dumps(
        {
            "id": e.id,
            "seq": e.seq,
            "idx": e.idx,
            "type": e.type,
            "type_name": wire.EVENT_TYPE_NAMES.get(e.type, "unknown"),
            "received_at": nsToTimestamp(e.received_ns),
        },
        separators=(",", ":"),
    )
    return (head[:-1] + ',"payload":' + e.data + "}\n").encode("utf-8")


class _UTF8URLs(Resource):
    """
    Klein answers a URL or Host that is not UTF-8 with its own HTML 400 (and
    logs a traceback), and a NUL in a static file's path is a 500: refuse
    both here, in the envelope, instead.
    """

    isLeaf = True

    def __init__(self, inner: Any, api: OrchestratorAPI) -> None:
        super().__init__()
        self._inner = inner
        self._api = api

    def render(self, request: IRequest) -> Any:
        path = b"/".join(request.postpath)
        try:
            path.decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return self._api.error(request, Failure(BadRequest("the URL and Host must be UTF-8")))
        if b"\0" in path:
            return self._api.error(request, Failure(BadRequest("the URL must not contain NUL")))
        try:
            self._api.policy.check(request, request.method, request.path.decode("utf-8", "replace"))
        except FangsError:
            return self._api.error(request, Failure())
        return self._inner.render(request)


def _logErrors(d: Any, what: str, **kw: Any) -> None:
    d.addErrback(lambda f: log.failure(what + " failed", f, **kw))
