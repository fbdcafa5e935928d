"""
Read-side views: what the API and the dashboard show of runs, deviations,
events, artifacts, packages and runners.

Each view is a frozen attrs type whose field names are the JSON keys, made
from the store's rows by its C{of} constructor and rendered by the one wire
converter (L{fangs.wire.dumps}); L{Views} reads the store for them, so a
handler asks for a view and returns it.  The JSON is the protocol's: field
order and values are those the API always sent.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

import attrs

from fangs import wire
from fangs.errors import BadRequest, NotFoundError
from fangs.orchestrator import store as S


def nsToTimestamp(ns: Optional[int]) -> Optional[str]:
    return None if ns is None else wire.formatTimestamp(wire.timestampFromNs(ns))


# -- runs ---------------------------------------------------------------------


@attrs.frozen
class RunView:
    """
    The public view of a run (as one tenant sees it: the verdict, decision
    and counts are that tenant's).
    """

    run_id: str
    package_name: str
    version: str
    kind: str
    state: str
    verdict: Optional[str]
    target_runner: Optional[str]
    runner_id: Optional[str]
    created_at: Optional[str]
    dispatched_at: Optional[str]
    finished_at: Optional[str]
    result_status: Optional[str]
    failure_reason: str
    cancel_requested: bool
    events_emitted: int
    events_dropped: int
    events_received: int
    batches_received: int
    duration: int
    decision: Optional[str]
    deviation_count: int
    max_severity: Optional[str]
    analyzed_at: Optional[str]
    install_exit_code: Optional[int]
    install_finished_at: Optional[str]
    observation_ended_at: Optional[str]
    events_unresolved: int
    tenant: str

    @staticmethod
    def fields(run: S.RunRow) -> Dict[str, Any]:
        return dict(
            run_id=run.id,
            package_name=run.package_name,
            version=run.version,
            kind=run.kind,
            state=run.state,
            verdict=run.verdict,
            target_runner=run.target_runner,
            runner_id=run.runner_id,
            created_at=nsToTimestamp(run.created_ns),
            dispatched_at=nsToTimestamp(run.dispatched_ns),
            finished_at=nsToTimestamp(run.finished_ns),
            result_status=run.result_status,
            failure_reason=run.failure_reason,
            cancel_requested=run.cancel_requested,
            events_emitted=run.events_emitted,
            events_dropped=run.events_dropped,
            events_received=run.events_received,
            batches_received=run.batches_received,
            duration=run.duration_ns,
            decision=run.decision,
            deviation_count=run.deviation_count,
            max_severity=run.max_severity,
            analyzed_at=nsToTimestamp(run.analyzed_ns),
            install_exit_code=run.install_exit_code,
            install_finished_at=nsToTimestamp(run.install_finished_ns),
            observation_ended_at=nsToTimestamp(run.observation_ended_ns),
            events_unresolved=run.events_unresolved,
            tenant=run.tenant,
        )

    @classmethod
    def of(cls, run: S.RunRow) -> "RunView":
        return cls(**cls.fields(run))


@attrs.frozen
class RunsPage:
    runs: List[RunView]
    next_page_token: str

    @classmethod
    def of(cls, page: S.Page) -> "RunsPage":
        return cls([RunView.of(r) for r in page.items], page.next_token or "")


@attrs.frozen
class ArtifactView:
    """
    A run's tarball: where to fetch it and what its integrity check found.
    """

    sha512: Optional[str]
    status: str
    detail: str
    integrity: Optional[str]
    tarball_url: Optional[str]
    size: Optional[int]
    checked_at: Optional[str]
    url: Optional[str]

    @classmethod
    def of(cls, a: Any) -> Optional["ArtifactView"]:
        if a is None:
            return None
        return cls(
            sha512=a.sha512,
            status=a.status,
            detail=a.detail,
            integrity=a.integrity,
            tarball_url=a.tarball_url,
            size=a.size,
            checked_at=nsToTimestamp(a.checked_ns),
            url="/v1/artifacts/%s" % (a.sha512,) if a.sha512 and a.stored else None,
        )


# -- deviations and events ------------------------------------------------------


@attrs.frozen
class DeviationView:
    id: str
    run_id: str
    package_name: str
    category: str
    value: str
    severity: str
    reason: str
    evidence_event_id: int
    count: int
    detected_at: Optional[str]
    #: Who did it: class (npm, script, other; registry for a manifest
    #: delta), label (script:<package>@<version>:<phase>), pid, argv.
    actor: str
    actor_detail: Dict[str, Any]

    @staticmethod
    def fields(d: S.DeviationRow) -> Dict[str, Any]:
        detail = d.actorDetail
        return dict(
            id=d.id,
            run_id=d.run_id,
            package_name=d.package_name,
            category=d.category,
            value=d.value,
            severity=d.severity,
            reason=d.reason,
            evidence_event_id=d.evidence_event_id,
            count=d.count,
            detected_at=nsToTimestamp(d.detected_ns),
            actor=(detail.get("label") or d.actor) if d.actor else "",
            actor_detail=detail,
        )

    @classmethod
    def of(cls, d: S.DeviationRow) -> "DeviationView":
        return cls(**cls.fields(d))


@attrs.frozen
class DeviationsPage:
    deviations: List[DeviationView]
    next_page_token: str

    @classmethod
    def of(cls, page: S.Page) -> "DeviationsPage":
        return cls([DeviationView.of(d) for d in page.items], page.next_token or "")


@attrs.frozen
class EventView:
    id: int
    run_id: str
    seq: int
    idx: int
    type: int
    type_name: str
    received_at: Optional[str]
    payload: Dict[str, Any]

    @classmethod
    def of(cls, e: S.StoredEvent) -> "EventView":
        return cls(
            id=e.id,
            run_id=e.run_id,
            seq=e.seq,
            idx=e.idx,
            type=e.type,
            type_name=wire.EVENT_TYPE_NAMES.get(e.type, "unknown"),
            received_at=nsToTimestamp(e.received_ns),
            payload=json.loads(e.data),
        )


@attrs.frozen
class DeviationDetail(DeviationView):
    """
    One deviation with the event that is its evidence.
    """

    evidence_event: Optional[EventView]


@attrs.frozen
class RunDetail(RunView):
    """
    One run: its job, what it recorded, what was found, its tarball.
    """

    job: Dict[str, Any]
    event_counts: Dict[str, int]
    #: On a clean run the stored findings are all low: notes, not deviations.
    deviations: List[DeviationView]
    notes: List[DeviationView]
    manifest_deltas: List[DeviationView]
    analysis_reason: str
    artifact: Optional[ArtifactView]

    @classmethod
    def build(cls, run: S.RunRow, counts: Dict[int, int], found: Sequence[S.DeviationRow], artifact: Any) -> "RunDetail":
        views = [DeviationView.of(d) for d in found]
        clean = run.verdict == "clean"
        return cls(
            **RunView.fields(run),
            job=json.loads(run.job),
            event_counts={wire.EVENT_TYPE_NAMES.get(t, str(t)): n for t, n in sorted(counts.items())},
            deviations=[] if clean else views,
            notes=views if clean else [],
            manifest_deltas=[d for d in views if d.actor == "registry"],
            analysis_reason=run.analysis_reason,
            artifact=ArtifactView.of(artifact),
        )


def eventLine(e: S.StoredEvent) -> bytes:
    """
    One event of an NDJSON export, its stored payload spliced in as stored.
    """
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


# -- packages -------------------------------------------------------------------


@attrs.frozen
class PackageView:
    """
    A watched package and what its runs amount to.
    """

    name: str
    last_seen_version: Optional[str]
    runs: int
    baseline_runs: int
    pending_runs: int
    baseline_fingerprints: int
    added_at: Optional[str]
    last_checked_at: Optional[str]

    @staticmethod
    def fields(p: Dict[str, Any]) -> Dict[str, Any]:
        return dict(
            name=p["name"],
            last_seen_version=p["last_seen_version"],
            runs=p["runs"],
            baseline_runs=p["baseline_runs"],
            pending_runs=p["pending_runs"],
            baseline_fingerprints=p["baseline_fingerprints"],
            added_at=nsToTimestamp(p["added_ns"]),
            last_checked_at=nsToTimestamp(p["last_checked_ns"]),
        )

    @classmethod
    def of(cls, p: Dict[str, Any]) -> "PackageView":
        return cls(**cls.fields(p))


@attrs.frozen
class PackageAdded(PackageView):
    added: bool


@attrs.frozen
class PackageList:
    packages: List[PackageView]


@attrs.frozen
class BaselineFingerprint:
    """
    One fingerprint of a package's baseline, with how many runs showed it
    and the first and last of them.
    """

    category: str
    value: str
    actor: str
    occurrences: int
    events: int
    first_seen_run_id: str
    last_seen_run_id: str

    @classmethod
    def of(cls, r: Dict[str, Any]) -> "BaselineFingerprint":
        return cls(**{f.name: r[f.name] for f in attrs.fields(cls)})


@attrs.frozen
class BaselineView:
    package_name: str
    fingerprints: List[BaselineFingerprint]


@attrs.frozen
class ReleaseView:
    """
    A release the watcher recorded, and whether and as which run it was queued.
    """

    package_name: str
    version: str
    integrity: Optional[str]
    shasum: Optional[str]
    tarball: Optional[str]
    dist_tags: List[Any]
    seeded: bool
    queued: bool
    run_id: Optional[str]
    attempts: int
    last_error: Optional[str]
    #: What the registry's manifest changed against the previous release.
    deltas: List[Any]
    published_at: Optional[str]
    discovered_at: Optional[str]
    queued_at: Optional[str]

    @classmethod
    def of(cls, r: Dict[str, Any]) -> "ReleaseView":
        times = {"published_at": "published_ns", "discovered_at": "discovered_ns", "queued_at": "queued_ns"}
        return cls(**{f.name: nsToTimestamp(r[times[f.name]]) if f.name in times else r[f.name] for f in attrs.fields(cls)})


@attrs.frozen
class ReleasesView:
    """
    What the watcher knows of a package, and its releases newest first.
    """

    last_seen_version: Optional[str]
    etag: Optional[str]
    last_error: Optional[str]
    last_checked_at: Optional[str]
    next_check_at: Optional[str]
    package_name: str
    releases: List[ReleaseView]


# -- the allowlist ----------------------------------------------------------------


@attrs.frozen
class AllowEntryView:
    """
    One allowlist entry: behaviour a tenant accepts, globally or for one package.
    """

    id: str
    kind: str
    value: Any
    scope: str
    package_name: Optional[str]
    note: str
    source: str
    created_by: str
    created_at: Optional[str]

    @classmethod
    def of(cls, e: Dict[str, Any]) -> "AllowEntryView":
        return cls(
            id=e["id"], kind=e["kind"], value=e["value"], scope=e["scope"], package_name=e["package_name"],
            note=e["note"], source=e["source"], created_by=e["created_by"], created_at=nsToTimestamp(e["created_ns"]),
        )


@attrs.frozen
class AllowList:
    entries: List[AllowEntryView]


# -- tokens and the audit trail ---------------------------------------------------


@attrs.frozen
class TokenView:
    """
    An API token as admins see it (never its secret).
    """

    id: str
    name: str
    scopes: List[str]
    created_by: str
    tenant: str
    created_at: Optional[str]
    revoked_at: Optional[str]

    @classmethod
    def of(cls, t: Dict[str, Any]) -> "TokenView":
        return cls(id=t["id"], name=t["name"], scopes=t["scopes"].split(), created_by=t["created_by"],
                   tenant=t["tenant"], created_at=nsToTimestamp(t["created_ns"]), revoked_at=nsToTimestamp(t["revoked_ns"]))


@attrs.frozen
class TokenList:
    tokens: List[TokenView]


@attrs.frozen
class AuditEntryView:
    actor: str
    action: str
    target: str
    detail: Dict[str, Any]
    at: Optional[str]

    @classmethod
    def of(cls, r: Dict[str, Any]) -> "AuditEntryView":
        return cls(actor=r["actor"], action=r["action"], target=r["target"], detail=r["detail"], at=nsToTimestamp(r["at_ns"]))


@attrs.frozen
class AuditTrail:
    tenant: str
    entries: List[AuditEntryView]


# -- runners --------------------------------------------------------------------


@attrs.frozen
class RunnerView:
    runner_id: str
    hostname: str
    kernel_version: str
    capabilities: List[str]
    status: str
    active_run_ids: List[str]
    events_queued: int
    registered_at: Optional[str]
    last_seen_at: Optional[str]
    last_seen_seconds_ago: float


@attrs.frozen
class RunnerList:
    runners: List[RunnerView]
    queue_depth: int
    long_polls_waiting: int


# -- reading them ---------------------------------------------------------------


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
