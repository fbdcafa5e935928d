"""
Views of the dashboard's pages that are not the API's: the runner fleet of
the overview, the review queue with each run's first findings, and a
package's release timeline.  The templates read their attributes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import attrs
import orjson

from fangs import wire
from fangs.orchestrator import store as S
from fangs.orchestrator.steps import Step

NANO = 1_000_000_000
#: A runner not heard from for this long shows as stale.
STALE_AFTER_S = 60.0


@attrs.frozen
class FleetRunner:
    id: str
    status: str
    #: The runs it works on that the viewing tenant may know of.
    active: List[str]
    last_seen_ns: int
    kernel: str
    hostname: str
    queued: int

    @classmethod
    def of(cls, r: Any, visible: Any, nowNs: int) -> "FleetRunner":
        age = nowNs / NANO - r.last_seen
        return cls(
            id=r.runner_id,
            status="stale" if age > STALE_AFTER_S else (r.status or "idle"),
            active=[a for a in r.active_run_ids if a in visible],
            last_seen_ns=int(r.last_seen * NANO),
            kernel=r.registration.kernel_version,
            hostname=r.registration.hostname,
            queued=r.events_queued,
        )


@attrs.frozen
class PendingItem:
    """
    A run waiting for review, with its first few deviations.
    """

    run: S.RunRow
    deviations: List[S.DeviationRow]
    more: int


@attrs.frozen
class ReviewQueue:
    items: List[PendingItem]
    next_token: Optional[str]


@attrs.frozen
class TimelineEntry:
    """
    One version of a package: the release the watcher recorded and/or the
    run that scanned it.
    """

    version: str
    when: Optional[int]
    run: Optional[S.RunRow]
    seeded: bool
    error: str


def timeline(releases: Sequence[Dict[str, Any]], runs: Sequence[S.RunRow]) -> List[TimelineEntry]:
    """
    Releases and runs merged, newest first: a release with the run queued
    for it (else the newest run of its version), then versions only runs know.
    """
    byID = {r.id: r for r in runs}
    byVersion: Dict[str, S.RunRow] = {}
    for r in runs:
        byVersion.setdefault(r.version, r)
    out = []
    for rel in releases:
        run = byID.get(rel.get("run_id") or "") or byVersion.get(rel["version"])
        out.append(TimelineEntry(rel["version"], rel.get("published_ns") or rel.get("discovered_ns"), run,
                                 bool(rel.get("seeded")), rel.get("last_error") or ""))
    listed = {t.version for t in out}
    for r in runs:
        if r.version not in listed:
            listed.add(r.version)
            out.append(TimelineEntry(r.version, r.created_ns, r, False, ""))
    out.sort(key=lambda t: t.when or 0, reverse=True)
    return out


@attrs.frozen
class PackagePage:
    """
    A package as the dashboard shows it: whether it is watched, its runs,
    its timeline, and its baseline by category.
    """

    name: str
    watched: Optional[Dict[str, Any]]
    runs: List[S.RunRow]
    timeline: List[TimelineEntry]
    categories: List[Any]
    fingerprints: int


@attrs.frozen
class RunRecord:
    """
    What the run page shows of one run, as read: its event counts, the page
    of events asked for (and whether more follow), its deviations and their
    evidence events, the events its process tree is built from, the
    payloads of the egress attempts the gateway stopped, its steps.
    """

    run: S.RunRow
    counts: Dict[int, int]
    events: List[S.StoredEvent]
    more: bool
    deviations: List[S.DeviationRow]
    evidence: Dict[int, S.StoredEvent]
    treeEvents: List[S.StoredEvent]
    egress: List[Dict[str, Any]]
    steps: List[Step]


@attrs.frozen
class Overview:
    """
    The overview page: the last day's summary, the latest runs, the fleet,
    the tenant's queue depth.
    """

    summary: Dict[str, Any]
    recent: List[S.RunRow]
    runners: List[FleetRunner]
    queue: int


def payloadsOf(events: Sequence[S.StoredEvent]) -> List[Dict[str, Any]]:
    out = []
    for e in events:
        try:
            p = orjson.loads(e.data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(p, dict):
            out.append(p)
    return out


EGRESS = int(wire.EventType.EGRESS_ATTEMPT)
