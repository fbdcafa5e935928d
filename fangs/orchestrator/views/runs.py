"""
Views of runs: a run, a page of runs, one run in detail (its job, event
counts, findings and tarball), deviations and the events that are their
evidence.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

import attrs

from fangs import wire
from fangs.orchestrator import store as S
from fangs.orchestrator.steps import Step



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


@attrs.frozen
class StepView:
    """
    One step of a run's life (queued, dispatched, install, observe, analyse,
    notify) and how it went.
    """

    name: str
    state: str
    started_at: Optional[str]
    ended_at: Optional[str]
    attempts: int
    outcome: str
    detail: str

    @classmethod
    def of(cls, s: Step) -> "StepView":
        return cls(s.name, s.state, nsToTimestamp(s.started_ns) if s.started_ns else None,
                   nsToTimestamp(s.ended_ns) if s.ended_ns else None, s.attempts, s.outcome, s.detail)


@attrs.frozen
class RunStepsView:
    run_id: str
    steps: List[StepView]


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
