"""
What every route module shares: the L{route} marker, the L{Routes} base
class (the collaborators a handler reaches and JSON rendering), and the
helpers that turn a request's path, query and body into checked values.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from twisted.web.iweb import IRequest

from fangs import wire
from fangs.errors import BadRequest, PayloadTooLarge
from fangs.orchestrator.auth import Access
from fangs.orchestrator.site import MAX_NDJSON_LINE

#: A route's declaration: its path (or aliases), its access, Klein's route arguments.
RouteSpec = Tuple[Any, Access, Dict[str, Any]]

_order = [0]


def route(paths: Any, access: Access, **routeKwargs: Any) -> Callable[[Any], Any]:
    """
    Declare C{f} a route of the orchestrator's API: C{paths} (one URL pattern
    or a list of aliases), who may call it (C{access}) and Klein's route
    arguments (C{methods=}, C{branch=}).  The handler is called as
    C{f(self, request, caller, **pathArgs)};
    L{fangs.orchestrator.api.OrchestratorAPI} registers it on its one app
    through L{fangs.orchestrator.api.authorizedRoute}.
    """

    def mark(f: Any) -> Any:
        _order[0] += 1
        f.fangsRoute = (paths, access, routeKwargs)
        f.fangsRouteOrder = _order[0]
        return f

    return mark


def routesOf(*areas: type) -> Iterator[Tuple[Any, RouteSpec]]:
    """
    The handlers C{areas} declare with L{route}, in declaration order.
    """
    found = [f for area in areas for f in vars(area).values() if getattr(f, "fangsRoute", None) is not None]
    for f in sorted(found, key=lambda f: f.fangsRouteOrder):
        yield f, f.fangsRoute


class Routes:
    """
    The base of every area's mixin: the collaborators
    L{fangs.orchestrator.api.OrchestratorAPI} holds, and JSON rendering.
    """

    core: Any
    auth: Any
    #: The read side (L{fangs.orchestrator.views.Views}).
    views: Any
    policy: Any
    stream: Any
    #: The one error mapping (L{fangs.orchestrator.api.OrchestratorAPI.error}).
    error: Any

    def _json(self, request: IRequest, value: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", JSON)
        return wire.dumps(value) + b"\n"


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


#: How much of a stored request body L{ndjsonLines} reads at a time.
_READ_CHUNK = 1 << 20


def ndjsonLines(request: IRequest) -> Iterator[bytes]:
    """
    The request body's lines (without their newline), each at most
    L{MAX_NDJSON_LINE} bytes, one at a time.  The body is read in large
    chunks: a line at a time through the file's small buffer cost more
    than splitting.
    """
    content = request.content
    content.seek(0)
    lineno = 0
    rest = b""
    while True:
        chunk = content.read(_READ_CHUNK)
        if not chunk:
            break
        lines = (rest + chunk if rest else chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            lineno += 1
            if len(line) > MAX_NDJSON_LINE:
                raise PayloadTooLarge("line %d exceeds %d bytes" % (lineno, MAX_NDJSON_LINE))
            yield line
        if len(rest) > MAX_NDJSON_LINE:
            raise PayloadTooLarge("line %d exceeds %d bytes" % (lineno + 1, MAX_NDJSON_LINE))
    if rest:
        yield rest


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


