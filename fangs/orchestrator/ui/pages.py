"""
The web dashboard under C{/ui/}: server-rendered Jinja2 pages (autoescaped:
every path, argv, DNS name and SNI in an event was chosen by package code)
for reviewing deviations and acting on them.

Pages read the store's typed rows (and the read-side views of
L{fangs.orchestrator.views}); actions (promote, reject, allowlist changes)
go through the same domain calls as the C{/v1} API, as HTML form POSTs with
a double-submit CSRF token (L{fangs.orchestrator.ui.session}) and a
C{confirm()} from C{static/fangs.js}.  No inline script anywhere, so
C{Content-Security-Policy: default-src 'self'} holds.  Errors are mapped by
the API's one mapping (L{fangs.orchestrator.api.OrchestratorAPI.error}) and
shown as an HTML page.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlencode

import orjson
from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.static import File

from fangs import npm, wire
from fangs.egresstext import summarise
from fangs.errors import BadRequest, Forbidden
from fangs.orchestrator import differ
from fangs.orchestrator import store as S
from fangs.orchestrator.allowlist import KINDS as ALLOW_KINDS
from fangs.orchestrator.ui.render import (
    EGRESS_LIST_LIMIT,
    EVENTS_PER_PAGE,
    STATIC,
    TREE_EVENT_CAP,
    VERDICTS,
    _actions,
    _header,
    _int,
    _jobSummary,
    _table,
    environment,
    eventSummary,
    isCred,
    processTree,
    relTime,
    secureHeaders,
    shortID,
    typeName,
    typeSortKey,
)
from fangs.orchestrator.ui.session import CSRF, _actor, _arg, _cursor, _intArg, _tenant, canWrite
from fangs.orchestrator.views import Views

log = Logger()


class DashboardUI:
    app = Klein()

    def __init__(self, core: Any, errors: Callable[[IRequest, Failure], bytes], csrf: Optional[CSRF] = None,
                 views: Any = None) -> None:
        """
        @param errors: the one error mapping (the API's C{error}): sets the
            status and headers of a failed request and returns its JSON
            envelope; the dashboard shows the envelope's message as a page.
        """
        self.core = core
        self.store = core.store
        self.errors = errors
        #: The read side shared with the API (L{fangs.orchestrator.views.Views}).
        self.views = views if views is not None else Views(core.store, core.registry, core.dispatcher, core.clock)
        self.csrf = csrf or CSRF()
        self.env = environment()
        self._static = File(STATIC)

    def resource(self) -> Any:
        return self.app.resource()

    # -- rendering ---------------------------------------------------------

    def _secure(self, request: IRequest) -> None:
        secureHeaders(request)

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
        if failure.check(S.BadPageToken):
            failure = Failure(BadRequest(str(failure.value)))
        envelope = self.errors(request, failure)
        if not envelope:
            return envelope  # the client went away, or a browser is sent to sign in
        code = request.code
        message = json.loads(envelope)["error"]["message"]
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
        view = await self.views.overview(tenant, now)
        summary = view.summary
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
            runners=view.runners,
            recent=view.recent,
            queue=view.queue,
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
        page = await self.views.packagePage(name, _tenant(request))
        return self.render(
            request,
            "package.html",
            title=name,
            nav="packages",
            name=name,
            watched=page.watched,
            runs=page.runs,
            timeline=page.timeline,
            categories=page.categories,
            fingerprints=page.fingerprints,
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
        typeArg = _arg(request, "type") or None
        eventType = None
        if typeArg is not None:
            eventType = wire.EVENT_TYPE_IDS.get(typeArg)
            if eventType is None:
                raise BadRequest("type must be one of %s" % (", ".join(wire.EVENT_TYPE_IDS),))
        after = _cursor(_arg(request, "after"))
        record = await self.views.runRecord(run, _tenant(request), after, eventType, EVENTS_PER_PAGE, TREE_EVENT_CAP,
                                            EGRESS_LIST_LIMIT)
        counts, page, more, deviations, evidence = record.counts, record.events, record.more, record.deviations, record.evidence
        evidenceIDs = [d.evidence_event_id for d in deviations if d.evidence_event_id]
        tree = processTree(list(record.treeEvents) + list(evidence.values()), evidenceIDs)
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
        egress = _egressLines(record.egress)
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
            treeCapped=len(record.treeEvents) >= TREE_EVENT_CAP,
            treeCap=TREE_EVENT_CAP,
            actions=_actions(run),
            steps=record.steps,
            egress=egress,
            egressMore=max(0, counts.get(int(wire.EventType.EGRESS_ATTEMPT), 0) - EGRESS_LIST_LIMIT),
        )

    async def _run(self, runID: str, request: IRequest) -> S.RunRow:
        if len(runID) != 32 or any(c not in "0123456789abcdef" for c in runID):
            raise BadRequest("run id must be 32 lower-case hex characters")
        return await self.views.requireRun(runID, _tenant(request))

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
        queue = await self.views.reviewQueue(_intArg(request, "limit", 100, 1, 500), _arg(request, "page") or None,
                                             _tenant(request))
        return self.render(
            request, "pending.html", title="Pending review", nav="pending", items=queue.items,
            nextURL="/ui/pending?" + urlencode({"page": queue.next_token}) if queue.next_token else None,
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


def _egressLines(payloads: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """
    The run's egress attempts the gateway stopped, one line each (repeats
    counted, what limits cut first).
    """
    return [{"text": t, "canary": " the bait" in t or " the baits " in t, "cut": t.startswith("egress limits")}
            for t in summarise(payloads)]
