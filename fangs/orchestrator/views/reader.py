"""
The read side: L{Views} reads the store (and the runner registry) and
answers with views; the API's handlers and the dashboard's pages ask here.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from twisted.logger import Logger

from fangs.errors import BadRequest, NotFoundError
from fangs.orchestrator import store as S
from fangs.orchestrator.steps import Step, runSteps
from fangs.orchestrator.views.admin import (
    AdminHealth,
    AuditEntryView,
    AuditTrail,
    DatabaseHealth,
    DeliveryHistory,
    DeliveryView,
    NotifierList,
    NotifierView,
    QueueHealth,
    RunnerList,
    RunnerView,
    RunnersHealth,
    TokenList,
    TokenView,
)
from fangs.orchestrator.views.catalog import (
    AllowEntryView,
    AllowList,
    BaselineFingerprint,
    BaselineView,
    PackageList,
    PackageView,
    ReleasesView,
    ReleaseView,
)
from fangs.orchestrator.views.dashboard import EGRESS, NANO, FleetRunner, Overview, PackagePage, PendingItem, ReviewQueue, RunRecord, payloadsOf, timeline
from fangs.orchestrator.views.runs import (
    DeviationDetail,
    DeviationsPage,
    DeviationView,
    EventView,
    RunDetail,
    RunStepsView,
    RunsPage,
    RunView,
    StepView,
    nsToTimestamp,
)


log = Logger()


def _pageArgs(e: S.BadPageToken) -> BadRequest:
    return BadRequest(str(e))


class Views:
    """
    The read side: the store's rows as views, for one tenant (C{None}: an
    all-tenant read).  The API's handlers and the dashboard's pages ask here.
    """

    def __init__(self, store: Any, registry: Any = None, dispatcher: Any = None, clock: Any = None) -> None:
        self.store = store
        self.registry = registry
        self.dispatcher = dispatcher
        self.clock = clock

    async def requireRun(self, runID: str, tenant: Optional[str] = None) -> S.RunRow:
        run = await self.store.getRun(runID) if tenant is None else await self.store.getRun(runID, tenant=tenant)
        if run is None:
            raise NotFoundError("run %s not found" % (runID,), code="unknown_run")
        return run

    async def runs(self, flt: S.RunFilter, size: int, token: Optional[str]) -> RunsPage:
        try:
            page = await self.store.listRuns(flt, size, token)
        except S.BadPageToken as e:
            raise _pageArgs(e) from None
        return RunsPage.of(page)

    async def run(self, runID: str, tenant: str) -> RunView:
        return RunView.of(await self.requireRun(runID, tenant))

    async def runDetail(self, runID: str, tenant: str) -> RunDetail:
        run = await self.requireRun(runID, tenant)
        counts = await self.store.eventCounts(run.id)
        found = await self.store.deviationsForRun(run.id, tenant=tenant)
        return RunDetail.build(run, counts, found, await self.store.artifactFor(run.id))

    async def stepsOf(self, run: S.RunRow, tenant: str) -> List[Step]:
        """
        The steps of C{run}'s life, its notifications as C{tenant}'s outbox has them.
        """
        return runSteps(run, await self.store.outboxFor(run.id, tenant=tenant))

    async def runSteps(self, runID: str, tenant: str) -> RunStepsView:
        run = await self.requireRun(runID, tenant)
        return RunStepsView(run.id, [StepView.of(s) for s in await self.stepsOf(run, tenant)])

    async def pending(self, size: int, token: Optional[str], tenant: str) -> RunsPage:
        try:
            page = await self.store.pendingRuns(size, token, tenant=tenant)
        except S.BadPageToken as e:
            raise _pageArgs(e) from None
        return RunsPage.of(page)

    async def deviations(self, flt: S.DeviationFilter, size: int, token: Optional[str]) -> DeviationsPage:
        try:
            page = await self.store.listDeviations(flt, size, token)
        except S.BadPageToken as e:
            raise _pageArgs(e) from None
        return DeviationsPage.of(page)

    async def deviation(self, deviationID: str, tenant: str) -> DeviationDetail:
        found = await self.store.getDeviation(deviationID, tenant=tenant)
        if found is None:
            raise NotFoundError("deviation %s not found" % (deviationID,))
        dev, event = found
        return DeviationDetail(**DeviationView.fields(dev), evidence_event=EventView.of(event) if event is not None else None)

    async def packages(self, tenant: str) -> PackageList:
        return PackageList([PackageView.of(p) for p in await self.store.listPackages(tenant=tenant)])

    async def package(self, name: str, tenant: str) -> Optional[PackageView]:
        found = await self.store.getPackage(name, tenant=tenant)
        return None if found is None else PackageView.of(found)

    async def baseline(self, name: str, tenant: str) -> BaselineView:
        """
        A package's baseline: 404 for a package the tenant neither watches
        nor scanned.
        """
        await self.requireKnownPackage(name, tenant)
        return BaselineView(name, [BaselineFingerprint.of(r) for r in await self.store.baselineFor(name, tenant=tenant)])

    async def requireKnownPackage(self, name: str, tenant: str) -> None:
        if await self.store.getPackage(name, tenant=tenant) is None and not await self.store.packageHasRuns(name, tenant=tenant):
            raise NotFoundError("package %r is neither watched nor scanned" % (name,), code="unknown_package")

    async def watch(self, name: str, tenant: str) -> Dict[str, Any]:
        """
        What the watcher keeps of a watched package (for L{releases}); 404
        for a package the tenant does not watch.
        """
        status = await self.store.watchStatus(name, tenant=tenant)
        if status is None:
            raise NotFoundError("package %r is not watched" % (name,), code="unknown_package")
        return status

    async def releases(self, watch: Dict[str, Any], name: str, limit: int, tenant: str) -> ReleasesView:
        rows = await self.store.listReleases(name, limit, tenant=tenant)
        return ReleasesView(
            last_seen_version=watch["last_seen_version"],
            etag=watch["etag"],
            last_error=watch["last_error"],
            last_checked_at=nsToTimestamp(watch["last_checked_ns"]),
            next_check_at=nsToTimestamp(watch["next_check_ns"]),
            package_name=name,
            releases=[ReleaseView.of(r) for r in rows],
        )

    async def allowlist(self, tenant: str, package: Optional[str] = None) -> AllowList:
        """
        The tenant's allowlist; with C{package}, the entries that apply to it
        (the global ones and its own).
        """
        entries = await self.store.listAllow(tenant=tenant)
        if package is not None:
            entries = [e for e in entries if e["scope"] == "global" or e["package_name"] == package]
        return AllowList([AllowEntryView.of(e) for e in entries])

    async def allowEntry(self, entryID: str, tenant: str) -> AllowEntryView:
        for e in await self.store.listAllow(tenant=tenant):
            if e["id"] == entryID:
                return AllowEntryView.of(e)
        raise NotFoundError("allowlist entry %s not found" % (entryID,))

    async def tokens(self, selected: Optional[str]) -> TokenList:
        return TokenList([TokenView.of(t) for t in await self.store.listTokens(tenant=selected)])

    async def audit(self, tenant: str, limit: int, target: Optional[str]) -> AuditTrail:
        return AuditTrail(tenant, [AuditEntryView.of(r) for r in await self.store.auditLog(tenant, limit, target)])

    async def adminHealth(self, selected: Optional[str], orchestratorID: str, version: str, stream: Any) -> AdminHealth:
        """
        Readiness as a caller acting on C{selected} (C{None}: all tenants)
        sees it: its tenant's queue and stream subscribers only.
        """
        started = self.clock.seconds()
        backend = getattr(self.store, "backend", "?")
        try:
            depth: Optional[int] = await self.store.queueDepth()
            byTenant = await self.store.queueDepthByTenant()
            if selected is not None:
                byTenant = {selected: byTenant.get(selected, 0)}
                depth = byTenant[selected]
            db = DatabaseHealth(backend, True, latency_ms=round((self.clock.seconds() - started) * 1000, 1))
        except Exception as e:
            log.warn("admin health: the database did not answer ({error})", error=str(e))
            depth, byTenant, db = None, {}, DatabaseHealth(backend, False, error=type(e).__name__)
        runners = self.registry.all()
        if stream is None:
            subscribers = 0
        elif selected is None:
            subscribers = len(stream.subscribers)
        else:
            subscribers = sum(1 for sub in stream.subscribers if sub.filter.tenant == selected)
        return AdminHealth(
            status="ok" if db.ok else "unavailable",
            orchestrator_id=orchestratorID,
            version=version,
            database=db,
            queue=QueueHealth(depth, byTenant),
            runners=RunnersHealth(len(runners), sum(1 for r in runners if r.active_run_ids or r.active_run_id)),
            long_polls_waiting=self.dispatcher.waiterCount(),
            stream_subscribers=subscribers,
        )

    async def notifiers(self, tenant: str) -> NotifierList:
        return NotifierList([NotifierView.of(n) for n in await self.store.listNotifiers(tenant=tenant)])

    async def deliveries(self, name: str, limit: int, tenant: str) -> DeliveryHistory:
        """
        A notifier's delivery attempts, newest first (its history outlives it).
        """
        return DeliveryHistory(name, [DeliveryView.of(r) for r in await self.store.deliveries(name, limit, tenant=tenant)])

    async def visibleRuns(self, selected: Optional[str], runIDs: Sequence[str]) -> List[str]:
        """
        The runs of C{runIDs} a caller acting on C{selected} may know of:
        all for an all-tenant view (C{None}), else its tenant's (a runner's
        other runs are other tenants').
        """
        if selected is None:
            return list(runIDs)
        return [r for r in runIDs if await self.store.getRun(r, tenant=selected) is not None]

    async def runners(self, selected: Optional[str]) -> RunnerList:
        now = self.clock.seconds()
        byTenant = await self.store.queueDepthByTenant()
        return RunnerList(
            runners=[
                RunnerView(
                    runner_id=r.runner_id,
                    hostname=r.registration.hostname,
                    kernel_version=r.registration.kernel_version,
                    capabilities=r.registration.capabilities,
                    status=r.status or "idle",
                    active_run_ids=await self.visibleRuns(selected, r.active_run_ids),
                    events_queued=r.events_queued,
                    registered_at=nsToTimestamp(int(r.registered_at * 1e9)),
                    last_seen_at=nsToTimestamp(int(r.last_seen * 1e9)),
                    last_seen_seconds_ago=round(now - r.last_seen, 1),
                )
                for r in self.registry.all()
            ],
            queue_depth=sum(byTenant.values()) if selected is None else byTenant.get(selected, 0),
            long_polls_waiting=self.dispatcher.waiterCount(),
        )

    # -- the dashboard's pages --

    async def overview(self, tenant: str, nowNs: int, recent: int = 10) -> Overview:
        summary = await self.store.dashboardSummary(nowNs - 24 * 3600 * NANO, tenant=tenant)
        runs = await self.store.listRuns(S.RunFilter(tenant=tenant), recent, None)
        return Overview(summary, list(runs.items), await self.fleet(tenant, nowNs),
                        (await self.store.queueDepthByTenant()).get(tenant, 0))

    async def fleet(self, tenant: str, nowNs: int) -> List[FleetRunner]:
        """
        The runners, each with the runs it works on that C{tenant} may know of.
        """
        runners = self.registry.all()
        active = sorted({a for r in runners for a in r.active_run_ids})
        visible = set(await self.visibleRuns(tenant, active))
        return [FleetRunner.of(r, visible, nowNs) for r in runners]

    async def reviewQueue(self, size: int, token: Optional[str], tenant: str, shown: int = 5) -> ReviewQueue:
        """
        The runs waiting for review, highest severity first, each with its
        first C{shown} deviations.
        """
        page = await self.store.pendingRuns(size, token, tenant=tenant)
        items = []
        for run in page.items:
            devs = await self.store.deviationsForRun(run.id, tenant=tenant)
            items.append(PendingItem(run, list(devs[:shown]), max(0, len(devs) - shown)))
        return ReviewQueue(items, page.next_token)

    async def packagePage(self, name: str, tenant: str) -> PackagePage:
        """
        A package the tenant watches or scanned (else 404): its runs merged
        with the releases the watcher recorded, and its baseline.
        """
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
        baseline = await self.store.baselineFor(name, tenant=tenant)
        categories: Dict[str, List[Dict[str, Any]]] = {}
        for f in baseline:
            categories.setdefault(f["category"], []).append(f)
        return PackagePage(name, watched, list(runs), timeline(releases, runs), sorted(categories.items()), len(baseline))

    async def runRecord(self, run: S.RunRow, tenant: str, after: Any, eventType: Optional[int], pageSize: int,
                        treeCap: int, egressLimit: int) -> RunRecord:
        """
        The run page's reads: C{pageSize} events after C{after} (of
        C{eventType} only, when given), the first C{treeCap} for its process
        tree, the first C{egressLimit} egress attempts.
        """
        counts = await self.store.eventCounts(run.id)
        page = await self.store.eventPage(run.id, after, pageSize + 1, eventType)
        deviations = await self.store.deviationsForRun(run.id, tenant=tenant)
        evidenceIDs = [d.evidence_event_id for d in deviations if d.evidence_event_id]
        evidence = {e.id: e for e in await self.store.eventsByID(evidenceIDs)}
        treeEvents = await self.store.eventPage(run.id, (0, -1), treeCap, None)
        egress: List[Dict[str, Any]] = []
        if counts.get(EGRESS):
            egress = payloadsOf(await self.store.eventPage(run.id, (0, -1), egressLimit, EGRESS))
        return RunRecord(run, counts, list(page[:pageSize]), len(page) > pageSize, list(deviations), evidence,
                         list(treeEvents), egress, await self.stepsOf(run, tenant))
