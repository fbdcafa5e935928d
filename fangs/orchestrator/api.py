"""
The orchestrator's HTTP API on Klein: the one app, the route declaration
(L{authorizedRoute}), the pre-body gate (L{OrchestratorAPI.gate}, with the
L{BrowserPolicy}) and the one error mapping (L{OrchestratorAPI.error}).

The routes themselves live by area in L{fangs.orchestrator.routes}: each
module's mixin marks its handlers with L{fangs.orchestrator.routes.base.route}
and L{OrchestratorAPI} inherits them all and registers every one on its app.
Handlers are short: structure the input with the wire converter, call the
domain (L{fangs.orchestrator.core.Orchestrator}), render a view
(L{fangs.orchestrator.views}).  Every error, from any route or from routing
itself, leaves through L{OrchestratorAPI.error} as the one JSON envelope
C{{"error": {"code", "message", "trace_id"}}}.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import re
from typing import Any, Dict, FrozenSet, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import attrs

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from fangs import wire
from fangs.errors import BadRequest, FangsError, Forbidden, NotFoundError, Unauthorized
from fangs.orchestrator import store as S
from fangs.orchestrator.auth import Access, Authenticator, TenantForbidden  # noqa: F401 (TenantForbidden: re-exported)
from fangs.orchestrator.core import Orchestrator
from fangs.orchestrator.routes.admin import AdminRoutes
from fangs.orchestrator.routes.allowlist import AllowlistRoutes
from fangs.orchestrator.routes.base import JSON, NDJSON, routesOf, runIDFromPath, traceID
from fangs.orchestrator.routes.notifiers import NotifierRoutes
from fangs.orchestrator.routes.packages import PackageRoutes
from fangs.orchestrator.routes.review import ReviewRoutes
from fangs.orchestrator.routes.runners import RunnerRoutes
from fangs.orchestrator.routes.runs import RunRoutes
from fangs.orchestrator.ui.session import DashboardRoutes
from fangs.orchestrator.views import Views

log = Logger()


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


#: The API's areas, each a mixin of routes (L{fangs.orchestrator.routes}).
AREAS = (AdminRoutes, RunnerRoutes, RunRoutes, ReviewRoutes, PackageRoutes, AllowlistRoutes, NotifierRoutes, DashboardRoutes)


def registerRoutes(app: Klein, areas: Tuple[type, ...]) -> None:
    """
    Register on C{app} every handler C{areas} declare with
    L{fangs.orchestrator.routes.base.route}, through L{authorizedRoute}.
    """
    for handler, (paths, access, routeKwargs) in routesOf(*areas):
        authorizedRoute(app, paths, access, **routeKwargs)(handler)


class OrchestratorAPI(*AREAS):
    app = Klein()
    registerRoutes(app, AREAS)

    def __init__(self, core: Orchestrator, auth: Optional[Authenticator] = None, policy: Optional[BrowserPolicy] = None,
                 stream: Any = None) -> None:
        self.core = core
        self.auth = auth or Authenticator("none")
        self.policy = policy or BrowserPolicy()
        #: The L{fangs.orchestrator.stream.RunStream} of C{/v1/runs/stream}, or None.
        self.stream = stream
        self.views = Views(core.store, core.registry, core.dispatcher, core.clock)

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
