"""
Views for operators and admins: runners, tokens, the audit trail, notifiers
and their deliveries.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import attrs

from fangs import wire

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


# -- readiness --------------------------------------------------------------------


@attrs.frozen
class DatabaseHealth:
    backend: str
    ok: bool
    #: How long the queue queries took, when the database answered.
    latency_ms: Optional[float] = wire.omitnil()
    #: What it raised (the class only), when it did not.
    error: Optional[str] = wire.omitnil()


@attrs.frozen
class QueueHealth:
    #: None when the database did not answer.  A queued run shared by
    #: several tenants counts for each.
    depth: Optional[int]
    by_tenant: Dict[str, int]


@attrs.frozen
class RunnersHealth:
    registered: int
    busy: int


@attrs.frozen
class AdminHealth:
    """
    Readiness: the database answers, and what waits (queue depth per tenant,
    runners, open long polls, stream subscribers).
    """

    status: str
    orchestrator_id: str
    version: str
    database: DatabaseHealth
    queue: QueueHealth
    runners: RunnersHealth
    long_polls_waiting: int
    stream_subscribers: int


# -- notifiers ------------------------------------------------------------------


@attrs.frozen
class NotifierView:
    """
    A notifier target (its secret only by the environment variable's name).
    """

    name: str
    url: str
    template: str
    secret_env: Optional[str]
    headers: Dict[str, Any]
    min_severity: Optional[str]
    packages: List[Any]
    enabled: bool
    created_at: Optional[str]
    updated_at: Optional[str]

    @staticmethod
    def fields(n: Dict[str, Any]) -> Dict[str, Any]:
        times = {"created_at": "created_ns", "updated_at": "updated_ns"}
        return {f.name: nsToTimestamp(n[times[f.name]]) if f.name in times else n[f.name] for f in attrs.fields(NotifierView)}

    @classmethod
    def of(cls, n: Dict[str, Any]) -> "NotifierView":
        return cls(**cls.fields(n))


@attrs.frozen
class NotifierSaved(NotifierView):
    created: bool


@attrs.frozen
class NotifierList:
    notifiers: List[NotifierView]


@attrs.frozen
class DeliveryView:
    """
    One attempt to deliver a message to a notifier.
    """

    outbox_id: Any
    run_id: Optional[str]
    attempt: int
    status: Any
    http_status: Optional[int]
    error: Optional[str]
    response_excerpt: Optional[str]
    message_state: str
    #: The attempt's time.  (The key has always been C{at_at}: the C{at_ns}
    #: column renamed; clients read it so.)
    at_at: Optional[str]
    next_attempt_at: Optional[str]

    @classmethod
    def of(cls, r: Dict[str, Any]) -> "DeliveryView":
        times = {"at_at": "at_ns", "next_attempt_at": "next_attempt_ns"}
        return cls(**{f.name: nsToTimestamp(r[times[f.name]]) if f.name in times else r[f.name] for f in attrs.fields(cls)})


@attrs.frozen
class DeliveryHistory:
    name: str
    deliveries: List[DeliveryView]
