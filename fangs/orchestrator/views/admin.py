"""
Views for operators and admins: runners, tokens and the audit trail.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import attrs

from fangs.orchestrator.views.runs import nsToTimestamp



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
