"""
The web dashboard under C{/ui/}: server-rendered Jinja2 pages (autoescaped:
every path, argv, DNS name and SNI in an event was chosen by package code)
for reviewing deviations and acting on them.

Pages read the store directly; actions (promote, reject, allowlist changes)
go through the same domain calls as the C{/v1} API, as HTML form POSTs with
a double-submit CSRF token and a C{confirm()} from C{static/fangs.js}.  No
inline script anywhere, so C{Content-Security-Policy: default-src 'self'}
holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlencode

import jinja2
import orjson
from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.static import File
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from fangs import npm, wire
from fangs.egresstext import describeAttempt, summarise
from fangs.errors import BadRequest, FangsError, Forbidden, NotFoundError
from fangs.orchestrator.steps import runSteps
from fangs.orchestrator import differ
from fangs.orchestrator import store as S
from fangs.orchestrator.allowlist import KINDS as ALLOW_KINDS
from fangs.tenants import DEFAULT_TENANT

log = Logger()

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")
STATIC = os.path.join(HERE, "static")

CSP = b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
CSRF_COOKIE = b"fangs_csrf"
EVENTS_PER_PAGE = 100
#: Egress attempts listed on a run page (the events table has them all).
EGRESS_LIST_LIMIT = 200

#: The process tree is built from at most this many events of a run (plus
#: the deviations' evidence events); the page says so when it stops short.
TREE_EVENT_CAP = 5000
TREE_ITEMS_PER_KIND = 40
STALE_AFTER_S = 60.0
VERDICTS = ("baseline", "clean", "deviations", "incomplete", "rejected")
SEVERITIES = ("critical", "high", "medium", "low")
TYPE_ORDER = ("exec", "net_connect", "dns_query", "tls_sni", "file_access")
NANO = 1_000_000_000


def canWrite(request: IRequest) -> bool:
    """
    Whether this request may act (promote, reject, edit the allowlist): with
    no operator auth configured (C{fangsScopes} unset) or with the
    C{orchestrator:write} scope.  The one place the dashboard decides it.
    """
    scopes = getattr(request, "fangsScopes", None)
    return scopes is None or "orchestrator:write" in scopes


# -- formatting helpers (also Jinja filters) ---------------------------------


def shortID(value: Optional[str]) -> str:
    return (value or "")[:12]


def absTime(ns: Optional[int]) -> str:
    if not ns:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / NANO)) + " UTC"


def relTime(ns: Optional[int], nowNs: int) -> str:
    if not ns:
        return "—"
    d = (nowNs - ns) / NANO
    if d < -1:
        return "in the future"
    d = max(d, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= size:
            return "%d%s ago" % (d // size, unit)
    return "%ds ago" % (d,)


def duration(ns: Optional[int]) -> str:
    if not ns:
        return "—"
    if ns < 1_000_000:
        return "%d µs" % (ns // 1000,)
    if ns < NANO:
        return "%d ms" % (ns // 1_000_000,)
    if ns < 60 * NANO:
        return "%.1f s" % (ns / NANO,)
    return "%dm %02ds" % (ns // (60 * NANO), (ns // NANO) % 60)


def truncate(value: Any, n: int = 100) -> str:
    s = "" if value is None else str(value)
    return s if len(s) <= n else s[: n - 1] + "…"


def eventSummary(etype: int, p: Dict[str, Any]) -> str:
    """
    One line about an event: the path, the command line, the destination,
    the query name or the SNI.
    """
    if etype == wire.EventType.FILE_ACCESS:
        return str(p.get("PathName", ""))
    if etype == wire.EventType.EXEC:
        argv = p.get("ArgvStrs") or []
        binary = str(p.get("BinaryPathStr", ""))
        if isinstance(argv, list) and argv:
            return binary + "  ⟶  " + " ".join(str(a) for a in argv)
        return binary
    if etype == wire.EventType.NET_CONNECT:
        return _hostPort(p.get("DestIP"), p.get("DestPort"))
    if etype == wire.EventType.DNS_QUERY:
        return str(p.get("QName", ""))
    if etype == wire.EventType.TLS_SNI:
        return str(p.get("SNI", ""))
    if etype == wire.EventType.EGRESS_ATTEMPT:
        return describeAttempt(p)
    return truncate(json.dumps(p, sort_keys=True), 200)


def _hostPort(ip: Any, port: Any) -> str:
    ip = str(ip or "")
    return ("[%s]:%s" if ":" in ip else "%s:%s") % (ip, port)


def _header(p: Dict[str, Any]) -> Dict[str, Any]:
    h = p.get("Header")
    return h if isinstance(h, dict) else {}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def isCred(p: Dict[str, Any]) -> bool:
    return bool(_int(_header(p).get("Tags")) & wire.TAG_CRED_ACCESS)


def typeName(t: int) -> str:
    return wire.EVENT_TYPE_NAMES.get(t, "type %d" % (t,))


def typeSortKey(name: str) -> Tuple[int, str]:
    return (TYPE_ORDER.index(name) if name in TYPE_ORDER else len(TYPE_ORDER), name)


# -- the process tree ----------------------------------------------------------


class Process:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ppid = 0
        self.comm = ""
        self.binary = ""
        self.argv: List[str] = []
        self.children: List["Process"] = []
        #: kind -> {summary: [count, cred, first event id, evidence]}
        self.items: Dict[str, Dict[str, List[Any]]] = {"file": {}, "net": {}, "dns": {}, "sni": {}}
        self.evidence = False
        #: The id of an exec event of this process that is a deviation's evidence.
        self.execEvidence = 0
        self.onEvidencePath = False
        self.depth = 0

    def add(self, kind: str, summary: str, eventID: int, cred: bool, evidence: bool) -> None:
        slot = self.items[kind].get(summary)
        if slot is None:
            self.items[kind][summary] = [1, cred, eventID, evidence]
        else:
            slot[0] += 1
            slot[1] = slot[1] or cred
            if evidence:
                slot[2], slot[3] = eventID, True
        if evidence:
            self.evidence = True

    def listed(self, kind: str) -> List[Tuple[str, int, bool, int, bool]]:
        """
        Up to L{TREE_ITEMS_PER_KIND} items, evidence and cred first.
        """
        rows = [(s, v[0], v[1], v[2], v[3]) for s, v in self.items[kind].items()]
        rows.sort(key=lambda r: (not r[4], not r[2], r[3]))
        return rows[:TREE_ITEMS_PER_KIND]

    def more(self, kind: str) -> int:
        return max(0, len(self.items[kind]) - TREE_ITEMS_PER_KIND)

    def total(self) -> int:
        return sum(len(v) for v in self.items.values())


_KIND_OF = {
    wire.EventType.FILE_ACCESS: "file",
    wire.EventType.NET_CONNECT: "net",
    wire.EventType.DNS_QUERY: "dns",
    wire.EventType.TLS_SNI: "sni",
}


def processTree(events: Sequence[S.StoredEvent], evidenceIDs: Sequence[int] = ()) -> List[Process]:
    """
    The run's processes in depth-first order (each with its C{depth}): one
    per C{Header.PID}, parent from C{Header.PPID}, binary and argv from
    exec events, and each process's files, connections, DNS names and SNIs
    (deduplicated with counts).  Processes holding a deviation's evidence,
    and their ancestors, are marked.
    """
    evidence = set(evidenceIDs)
    procs: Dict[int, Process] = {}
    seen = set()
    for e in events:
        if e.id in seen:
            continue
        seen.add(e.id)
        try:
            p = orjson.loads(e.data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(p, dict):
            continue
        h = _header(p)
        pid = _int(h.get("PID")) or e.pid
        proc = procs.get(pid)
        if proc is None:
            proc = procs[pid] = Process(pid)
        ppid = _int(h.get("PPID"))
        comm = p.get("CommStr")
        if e.type == wire.EventType.EXEC:
            proc.binary = str(p.get("BinaryPathStr", ""))
            argv = p.get("ArgvStrs")
            proc.argv = [str(a) for a in argv] if isinstance(argv, list) else []
            if ppid:
                proc.ppid = ppid
            if isinstance(comm, str) and comm:
                proc.comm = comm
            if e.id in evidence:
                proc.evidence = True
                proc.execEvidence = e.id
            continue
        if ppid and not proc.ppid:
            proc.ppid = ppid
        if isinstance(comm, str) and comm and not proc.comm:
            proc.comm = comm
        kind = _KIND_OF.get(e.type)
        if kind is not None:
            proc.add(kind, eventSummary(e.type, p), e.id, isCred(p), e.id in evidence)
    roots = []
    for proc in procs.values():
        parent = procs.get(proc.ppid)
        if parent is None or parent is proc:
            roots.append(proc)
        else:
            parent.children.append(proc)
    out: List[Process] = []
    visited = set()
    stack = [(r, 0) for r in sorted(roots, key=lambda r: r.pid, reverse=True)]
    while stack:
        proc, depth = stack.pop()
        if proc.pid in visited:
            continue
        visited.add(proc.pid)
        proc.depth = depth
        out.append(proc)
        for c in sorted(proc.children, key=lambda c: c.pid, reverse=True):
            stack.append((c, depth + 1))
    # A parent cycle leaves processes unreached from any root: show them too.
    out.extend(p for p in sorted(procs.values(), key=lambda p: p.pid) if p.pid not in visited)
    for proc in procs.values():
        if proc.evidence:
            up, guard = procs.get(proc.ppid), 0
            while up is not None and not up.onEvidencePath and guard < 10_000:
                up.onEvidencePath = True
                up, guard = procs.get(up.ppid), guard + 1
    return out


# -- CSRF ------------------------------------------------------------------------


class CSRF:
    """
    Double-submit token: a random cookie, and in each form the HMAC of that
    cookie under a per-process secret.  A cross-site page can neither read
    the cookie nor compute the HMAC.
    """

    def __init__(self, secret: Optional[bytes] = None) -> None:
        self._secret = secret or os.urandom(32)

    def tokenFor(self, request: IRequest) -> str:
        cookie = request.getCookie(CSRF_COOKIE)
        if not cookie or len(cookie) != 32:
            cookie = os.urandom(16).hex().encode()
            request.addCookie(
                CSRF_COOKIE, cookie, path=b"/ui/", httpOnly=True, sameSite="strict", secure=request.isSecure()
            )
            request.received_cookies[CSRF_COOKIE] = cookie
        return hmac.new(self._secret, cookie, hashlib.sha256).hexdigest()

    def check(self, request: IRequest, token: Optional[str]) -> bool:
        cookie = request.getCookie(CSRF_COOKIE)
        if not cookie or not token:
            return False
        want = hmac.new(self._secret, cookie, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, token)


# -- the app ---------------------------------------------------------------------


class DashboardUI:
    app = Klein()

    def __init__(self, core: Any, csrf: Optional[CSRF] = None) -> None:
        self.core = core
        self.store = core.store
        self.csrf = csrf or CSRF()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(short=shortID, abstime=absTime, duration=duration, truncate=truncate)
        self.env.globals.update(typeName=typeName, VERDICTS=VERDICTS, SEVERITIES=SEVERITIES)
        self._static = File(STATIC)

    def resource(self) -> Any:
        return self.app.resource()

    # -- rendering ---------------------------------------------------------

    def _secure(self, request: IRequest) -> None:
        request.setHeader(b"Content-Security-Policy", CSP)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"same-origin")
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Cache-Control", b"no-store")

    def render(self, request: IRequest, template: str, status: int = 200, **context: Any) -> bytes:
        self._secure(request)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        now = self.core.nowNs()
        context.setdefault("nav", "")
        page = self.env.get_template(template).render(
            csrf=self.csrf.tokenFor(request),
            writable=canWrite(request),
            version=self.core.version,
            now=now,
            ago=lambda ns: relTime(ns, now),
            path=request.path.decode("utf-8", "replace"),
            flash=_flash(request),
            **context,
        )
        return page.encode("utf-8")

    @app.handle_errors
    def error(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(CancelledError):
            return b""
        if failure.check(FangsError):
            code, message = failure.value.status, failure.value.message
        elif failure.check(S.BadPageToken):
            code, message = 400, str(failure.value)
        elif failure.check(MethodNotAllowed):
            code, message = 405, "method not allowed"
        elif failure.check(NotFound):
            code, message = 404, "no such page"
        elif failure.check(HTTPException):
            code, message = failure.value.code or 500, failure.value.description or ""
        else:
            code, message = 500, "internal error; see the orchestrator log"
            log.failure("dashboard error on {path}", failure, path=request.path)
        return self.render(request, "error.html", code, title="Error %d" % (code,), code=code, message=message)

    # -- static --------------------------------------------------------------

    @app.route("/static/", branch=True, methods=["GET", "HEAD"])
    def static(self, request: IRequest) -> Any:
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"max-age=300")
        return self._static

    # -- overview ------------------------------------------------------------

    @app.route("/", methods=["GET"])
    async def overview(self, request: IRequest) -> bytes:
        now = self.core.nowNs()
        tenant = _tenant(request)
        summary = await self.store.dashboardSummary(now - 24 * 3600 * NANO, tenant=tenant)
        recent = await self.store.listRuns(S.RunFilter(tenant=tenant), 10, None)
        runners = []
        active = {a for r in self.core.registry.all() for a in r.active_run_ids}
        visible = {a for a in active if await self.store.getRun(a, tenant=tenant) is not None}
        for r in self.core.registry.all():
            age = now / NANO - r.last_seen
            runners.append(
                {
                    "id": r.runner_id,
                    "status": "stale" if age > STALE_AFTER_S else (r.status or "idle"),
                    "active": [a for a in r.active_run_ids if a in visible],
                    "last_seen_ns": int(r.last_seen * NANO),
                    "kernel": r.registration.kernel_version,
                    "hostname": r.registration.hostname,
                    "queued": r.events_queued,
                }
            )
        verdicts = summary["runs_by_verdict"]
        total24 = sum(verdicts.values())
        context = dict(
            title="Overview",
            nav="overview",
            s=summary,
            total24=total24,
            bars=[
                (v, verdicts.get(v, 0), 100.0 * verdicts.get(v, 0) / total24 if total24 else 0)
                for v in VERDICTS + ("in progress",)
            ],
            runners=runners,
            recent=recent.items,
            queue=(await self.store.queueDepthByTenant()).get(tenant, 0),
        )
        if request.args.get(b"fragment"):
            return self.render(request, "overview_live.html", **context)
        return self.render(request, "overview.html", **context)

    # -- packages -------------------------------------------------------------

    @app.route("/packages", methods=["GET"])
    async def packages(self, request: IRequest) -> bytes:
        return self.render(
            request, "packages.html", title="Packages", nav="packages", packages=await self.store.dashboardPackages(tenant=_tenant(request))
        )

    @app.route("/packages/<path:name>", methods=["GET"])
    async def package(self, request: IRequest, name: str) -> bytes:
        try:
            npm.checkPackageName(name)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        tenant = _tenant(request)
        watched = await self.store.getPackage(name, tenant=tenant)
        runs = (await self.store.listRuns(S.RunFilter(package=name, tenant=tenant), 100, None)).items
        if watched is None and not runs:
            raise NotFoundError("package %s is neither watched nor scanned" % (name,))
        releases: List[Dict[str, Any]] = []
        if watched is not None and hasattr(self.store, "listReleases"):
            try:
                releases = await self.store.listReleases(name, 100, tenant=tenant)
            except Exception:  # the releases table may not exist yet
                log.failure("listing releases of {name}", name=name)
        byID = {r.id: r for r in runs}
        byVersion: Dict[str, S.RunRow] = {}
        for r in runs:
            byVersion.setdefault(r.version, r)
        timeline = []
        for rel in releases:
            run = byID.get(rel.get("run_id") or "") or byVersion.get(rel["version"])
            timeline.append({"version": rel["version"], "when": rel.get("published_ns") or rel.get("discovered_ns"),
                             "run": run, "seeded": rel.get("seeded"), "error": rel.get("last_error", "")})
        listed = {t["version"] for t in timeline}
        for r in runs:
            if r.version not in listed:
                listed.add(r.version)
                timeline.append({"version": r.version, "when": r.created_ns, "run": r, "seeded": False, "error": ""})
        timeline.sort(key=lambda t: t["when"] or 0, reverse=True)
        baseline = await self.store.baselineFor(name, tenant=tenant)
        categories: Dict[str, List[Dict[str, Any]]] = {}
        for f in baseline:
            categories.setdefault(f["category"], []).append(f)
        return self.render(
            request,
            "package.html",
            title=name,
            nav="packages",
            name=name,
            watched=watched,
            runs=runs,
            timeline=timeline,
            categories=sorted(categories.items()),
            fingerprints=len(baseline),
        )

    # -- runs -----------------------------------------------------------------

    @app.route("/runs", methods=["GET"])
    async def runs(self, request: IRequest) -> bytes:
        package = _arg(request, "package") or None
        verdict = _arg(request, "verdict") or None
        state = _arg(request, "state") or None
        if verdict is not None and verdict not in VERDICTS + ("none",):
            raise BadRequest("verdict must be one of %s or none" % (", ".join(VERDICTS),))
        if state is not None and state not in S.ALL_STATES:
            raise BadRequest("state must be one of %s" % (", ".join(S.ALL_STATES),))
        limit = _intArg(request, "limit", 50, 1, 500)
        page = await self.store.dashboardRuns(package, verdict, state, limit, _arg(request, "page") or None,
                                              tenant=_tenant(request))
        query = {k: v for k, v in (("package", package), ("verdict", verdict), ("state", state)) if v}
        nextURL = "/ui/runs?" + urlencode(dict(query, page=page.next_token)) if page.next_token else None
        return self.render(
            request, "runs.html", title="Runs", nav="runs", runs=page.items, f=query, nextURL=nextURL,
            firstURL="/ui/runs?" + urlencode(query) if _arg(request, "page") else None, states=S.ALL_STATES,
        )

    @app.route("/runs/<runID>", methods=["GET"])
    async def run(self, request: IRequest, runID: str) -> bytes:
        run = await self._run(runID, request)
        counts = await self.store.eventCounts(run.id)
        typeArg = _arg(request, "type") or None
        eventType = None
        if typeArg is not None:
            eventType = wire.EVENT_TYPE_IDS.get(typeArg)
            if eventType is None:
                raise BadRequest("type must be one of %s" % (", ".join(wire.EVENT_TYPE_IDS),))
        after = _cursor(_arg(request, "after"))
        page = await self.store.eventPage(run.id, after, EVENTS_PER_PAGE + 1, eventType)
        more = len(page) > EVENTS_PER_PAGE
        page = page[:EVENTS_PER_PAGE]
        deviations = await self.store.deviationsForRun(run.id, tenant=_tenant(request))
        evidenceIDs = [d.evidence_event_id for d in deviations if d.evidence_event_id]
        evidence = {e.id: e for e in await self.store.eventsByID(evidenceIDs)}
        treeEvents = await self.store.eventPage(run.id, (0, -1), TREE_EVENT_CAP, None)
        tree = processTree(list(treeEvents) + list(evidence.values()), evidenceIDs)
        evidencePid = {d.id: evidence[d.evidence_event_id].pid for d in deviations if d.evidence_event_id in evidence}
        rows = []
        for e in page:
            try:
                p = orjson.loads(e.data)
            except orjson.JSONDecodeError:
                p = {}
            if not isinstance(p, dict):
                p = {}
            h = _header(p)
            rows.append(
                {
                    "id": e.id,
                    "type": typeName(e.type),
                    "pid": _int(h.get("PID")) or e.pid,
                    "comm": p.get("CommStr") or "",
                    "summary": eventSummary(e.type, p),
                    "cred": isCred(p),
                    "evidence": e.id in evidence,
                    "ts": e.ts_ns,
                }
            )
        chips = sorted(((typeName(t), n) for t, n in counts.items()), key=lambda c: typeSortKey(c[0]))
        egress = await self._egress(run.id, counts)
        base = "/ui/runs/%s" % (run.id,)
        nextURL = None
        if more:
            q = {"after": "%d.%d" % (page[-1].seq, page[-1].idx)}
            if typeArg:
                q["type"] = typeArg
            nextURL = base + "?" + urlencode(q) + "#events"
        return self.render(
            request,
            "run.html",
            title="Run %s" % (shortID(run.id),),
            nav="runs",
            run=run,
            job=_jobSummary(run.job),
            chips=chips,
            total=sum(counts.values()),
            typeArg=typeArg,
            events=rows,
            nextURL=nextURL,
            firstURL=(base + ("?" + urlencode({"type": typeArg}) if typeArg else "") + "#events") if after != (0, -1) else None,
            deviations=deviations,
            evidencePid=evidencePid,
            tree=tree,
            treeCapped=len(treeEvents) >= TREE_EVENT_CAP,
            treeCap=TREE_EVENT_CAP,
            actions=_actions(run),
            steps=runSteps(run, await self.store.outboxFor(run.id, tenant=_tenant(request))),
            egress=egress,
            egressMore=max(0, counts.get(int(wire.EventType.EGRESS_ATTEMPT), 0) - EGRESS_LIST_LIMIT),
        )

    async def _egress(self, runID: str, counts: Dict[int, int]) -> List[Dict[str, Any]]:
        """
        The run's egress attempts the gateway stopped, one line each
        (repeats counted, what limits cut first).
        """
        if not counts.get(int(wire.EventType.EGRESS_ATTEMPT)):
            return []
        payloads = []
        events = await self.store.eventPage(runID, (0, -1), EGRESS_LIST_LIMIT, int(wire.EventType.EGRESS_ATTEMPT))
        for e in events:
            try:
                p = orjson.loads(e.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(p, dict):
                payloads.append(p)
        lines = summarise(payloads)
        return [{"text": t, "canary": " the bait" in t or " the baits " in t, "cut": t.startswith("egress limits")}
                for t in lines]

    async def _run(self, runID: str, request: IRequest) -> S.RunRow:
        if len(runID) != 32 or any(c not in "0123456789abcdef" for c in runID):
            raise BadRequest("run id must be 32 lower-case hex characters")
        run = await self.store.getRun(runID, tenant=_tenant(request))
        if run is None:
            raise NotFoundError("run %s not found" % (runID,))
        return run

    @app.route("/runs/<runID>/decide", methods=["POST"])
    async def decide(self, request: IRequest, runID: str) -> bytes:
        self._checkWrite(request)
        run = await self._run(runID, request)
        decision = _arg(request, "decision")
        if decision not in ("promoted", "rejected", "reanalyze"):
            raise BadRequest("decision must be promoted, rejected or reanalyze")
        outcome = await self.core.decide(run.id, decision, _actor(request), _tenant(request))
        return self._redirect(request, "/ui/runs/%s" % (run.id,), "%s:%s:%s" % (decision, run.id, outcome.verdict))

    # -- review ---------------------------------------------------------------

    @app.route("/pending", methods=["GET"])
    async def pending(self, request: IRequest) -> bytes:
        tenant = _tenant(request)
        page = await self.store.pendingRuns(_intArg(request, "limit", 100, 1, 500), _arg(request, "page") or None, tenant=tenant)
        items = []
        for run in page.items:
            devs = await self.store.deviationsForRun(run.id, tenant=tenant)
            items.append({"run": run, "deviations": devs[:5], "more": max(0, len(devs) - 5)})
        return self.render(
            request, "pending.html", title="Pending review", nav="pending", items=items,
            nextURL="/ui/pending?" + urlencode({"page": page.next_token}) if page.next_token else None,
        )

    @app.route("/deviations", methods=["GET"])
    async def deviations(self, request: IRequest) -> bytes:
        severity = _arg(request, "severity") or None
        rank = 0
        if severity is not None:
            try:
                rank = differ.severityRank(severity)
            except ValueError:
                raise BadRequest("severity must be one of low, medium, high, critical") from None
        run = _arg(request, "run") or None
        package = _arg(request, "package") or None
        flt = S.DeviationFilter(package=package, min_severity_rank=rank, run_id=run, tenant=_tenant(request))
        page = await self.store.listDeviations(flt, _intArg(request, "limit", 100, 1, 500), _arg(request, "page") or None)
        query = {k: v for k, v in (("package", package), ("severity", severity), ("run", run)) if v}
        return self.render(
            request, "deviations.html", title="Deviations", nav="deviations", deviations=page.items, f=query,
            nextURL="/ui/deviations?" + urlencode(dict(query, page=page.next_token)) if page.next_token else None,
        )

    # -- allowlist --------------------------------------------------------------

    @app.route("/allowlist", methods=["GET"])
    async def allowlist(self, request: IRequest) -> bytes:
        entries = await self.store.listAllow(tenant=_tenant(request))
        groups: Dict[str, List[Dict[str, Any]]] = {}
        for e in entries:
            groups.setdefault("global" if e["scope"] == "global" else "package " + (e["package_name"] or ""), []).append(e)
        return self.render(
            request, "allowlist.html", title="Allowlist", nav="allowlist",
            groups=sorted(groups.items(), key=lambda g: (g[0] != "global", g[0])), kinds=ALLOW_KINDS, count=len(entries),
        )

    @app.route("/allowlist", methods=["POST"])
    async def addAllow(self, request: IRequest) -> bytes:
        self._checkWrite(request)
        package = _arg(request, "package_name") or ""
        entryID = await self.core.addAllow(
            _arg(request, "kind") or "",
            _arg(request, "value") or "",
            "package" if package else "global",
            package,
            _arg(request, "note") or "",
            _actor(request),
            _tenant(request),
        )
        return self._redirect(request, "/ui/allowlist", "allow-added:%s:" % (entryID,))

    @app.route("/allowlist/<entryID>/remove", methods=["POST"])
    async def removeAllow(self, request: IRequest, entryID: str) -> bytes:
        self._checkWrite(request)
        await self.core.removeAllow(entryID, _actor(request), _tenant(request))
        return self._redirect(request, "/ui/allowlist", "allow-removed:%s:" % (entryID,))

    # -- notifiers and configuration ----------------------------------------

    @app.route("/notifiers", methods=["GET"])
    async def notifiers(self, request: IRequest) -> bytes:
        # Targets and their receivers' answers are the API's admin-only data.
        scopes = getattr(request, "fangsScopes", None)
        if scopes is not None and "orchestrator:admin" not in scopes:
            raise Forbidden("notifiers and their delivery history are visible to admins only")
        tenant = _tenant(request)
        notifiers = await self.store.tableRows("notifiers", 100, tenant=tenant)
        tables = [t for t in await self.store.tableNames() if "deliver" in t]
        deliveries = None
        if tables:
            deliveries = await self.store.tableRows(tables[0], 100, tenant=tenant)
        return self.render(
            request, "notifiers.html", title="Notifiers", nav="notifiers",
            notifiers=_table(notifiers, hide=("secret", "hmac_secret", "token", "headers")), deliveries=_table(deliveries, hide=("body", "payload")),
        )

    @app.route("/config", methods=["GET"])
    async def config(self, request: IRequest) -> bytes:
        cfg = self.core.config
        allow = [e for e in await self.store.listAllow(tenant=_tenant(request)) if e["source"] != "operator"]
        return self.render(
            request, "config.html", title="Configuration", nav="config", cfg=cfg, allow=allow,
        )

    # -- helpers ----------------------------------------------------------------

    def _checkWrite(self, request: IRequest) -> None:
        if not canWrite(request):
            raise Forbidden("this session is read-only")
        if not self.csrf.check(request, _arg(request, "csrf")):
            raise Forbidden("missing or stale form token; reload the page and try again")

    def _redirect(self, request: IRequest, to: str, flash: str) -> bytes:
        self._secure(request)
        request.setResponseCode(303)
        request.setHeader(b"Location", (to + "?" + urlencode({"flash": flash})).encode("utf-8"))
        return b""


# -- request helpers ----------------------------------------------------------------


def _arg(request: IRequest, name: str) -> Optional[str]:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[-1].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadRequest("parameter %s is not UTF-8" % (name,)) from None


def _intArg(request: IRequest, name: str, default: int, low: int, high: int) -> int:
    raw = _arg(request, name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest("%s must be an integer from %d to %d" % (name, low, high))
    return int(raw)


def _cursor(raw: Optional[str]) -> Tuple[int, int]:
    if not raw:
        return (0, -1)
    seq, _, idx = raw.partition(".")
    if not seq.isdigit() or not idx.isdigit():
        raise BadRequest("after must be SEQ.IDX")
    return (int(seq), int(idx))


def _tenant(request: IRequest) -> str:
    """
    The tenant the dashboard shows: the signed-in principal's (set by the
    API's route declaration), else the default.
    """
    return getattr(request, "fangsTenant", None) or DEFAULT_TENANT


def _actor(request: IRequest) -> str:
    identity = getattr(request, "fangsIdentity", None)
    if identity:
        return str(identity)
    peer = request.getClientAddress()
    return "dashboard@%s" % (getattr(peer, "host", "?"),)


_FLASH = {
    "promoted": "Promoted run {0}: its behaviour joined the baseline; verdict is now {1}.",
    "rejected": "Rejected run {0}: verdict is now {1}.",
    "reanalyze": "Re-analysed run {0}: verdict is now {1}.",
    "allow-added": "Added allowlist entry {0}.",
    "allow-removed": "Removed allowlist entry {0}.",
}


def _flash(request: IRequest) -> Optional[Dict[str, str]]:
    raw = _arg(request, "flash")
    if not raw:
        return None
    kind, _, rest = raw.partition(":")
    subject, _, verdict = rest.partition(":")
    template = _FLASH.get(kind)
    if template is None:
        return None
    return {"text": template.format(shortID(subject) if len(subject) == 32 else subject, verdict), "kind": kind}


def _actions(run: S.RunRow) -> List[Tuple[str, str, str]]:
    """
    The decisions offered on a finished run: (decision, label, confirm text).
    """
    if run.state not in S.TERMINAL_STATES or run.verdict is None:
        return []
    out = []
    complete = differ.isComplete(run.result_status or "", run.events_dropped)
    if run.verdict not in ("baseline",) and run.decision != "promoted" and complete and run.package_name:
        out.append(("promoted", "Promote to baseline",
                    "Promote this run? Its behaviour becomes part of the baseline of %s." % (run.package_name,)))
    if run.verdict != "rejected":
        out.append(("rejected", "Reject", "Reject this run as malicious? It will never become baseline."))
    return out


def _jobSummary(job: str) -> Dict[str, Any]:
    try:
        j = json.loads(job)
    except ValueError:
        return {}
    sandbox = j.get("sandbox") or {}
    return {"image": sandbox.get("image", ""), "duration": j.get("duration") or 0,
            "watched": len(j.get("watched_paths") or ())}


def _table(rows: Optional[List[Dict[str, Any]]], hide: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """
    A generic table of store rows (for tables other engineers own): column
    names, and values with secrets left out and C{*_ns} as times.
    """
    if rows is None:
        return None
    columns = [c for c in (rows[0].keys() if rows else []) if c not in hide]
    out = []
    for r in rows:
        out.append([_cell(c, r[c]) for c in columns])
    return {"columns": [c[:-3] + "_at" if c.endswith("_ns") else c for c in columns], "rows": out}


def _cell(column: str, value: Any) -> str:
    if column.endswith("_ns") and isinstance(value, int):
        return absTime(value)
    if column == "url" and isinstance(value, str):
        # Webhook URLs often carry their secret in the path: show the host only.
        scheme, sep, rest = value.partition("://")
        return scheme + sep + rest.split("/", 1)[0] + ("/…" if "/" in rest.strip("/") else "")
    if isinstance(value, bytes):
        return "%d bytes" % (len(value),)
    return truncate(value, 120)
