"""
Read-side views: what the API and the dashboard show of runs, deviations,
events, artifacts and packages.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from fangs import wire
from fangs.orchestrator import store as S


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

