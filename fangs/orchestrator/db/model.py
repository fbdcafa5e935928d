"""
The store's vocabulary: run states, row types, errors, page tokens and
idempotency checks, shared by every storage component and both engines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import attrs

from fangs.errors import FangsError


# Run states.  A run is also its job: while C{pending} it waits in the queue.
PENDING = "pending"  # queued, not yet handed to a runner
LEASED = "leased"  # handed to a long-poll whose response is being written
DISPATCHED = "dispatched"  # the runner has it
RUNNING = "running"  # events are arriving
DONE = "done"  # result ok
FAILED = "failed"  # result failed, or the runner was lost
TIMEOUT = "timeout"  # result timeout
CANCELLED = "cancelled"  # withdrawn or stopped by an operator

QUEUED_STATES = (PENDING, LEASED)
ACTIVE_STATES = (LEASED, DISPATCHED, RUNNING)
TERMINAL_STATES = (DONE, FAILED, TIMEOUT, CANCELLED)
ALL_STATES = (PENDING, LEASED, DISPATCHED, RUNNING, DONE, FAILED, TIMEOUT, CANCELLED)

RESULT_STATES = {"ok": DONE, "failed": FAILED, "timeout": TIMEOUT}


class StoreError(Exception):
    """
    A storage operation failed for a reason a caller can act on.
    """


class NotFound(StoreError):
    pass


class IdempotencyMismatch(StoreError):
    """
    An idempotency key the same caller used before with a different body.
    """


class Conflict(StoreError):
    pass


class ConstraintViolation(Conflict):
    """
    A write broke a constraint of the schema (a unique key, a foreign key, a
    check) on either engine.
    """


class StorageFault(StoreError, FangsError):
    """
    The database could not do the work now; the failed write was rolled
    back, so the caller may retry.  Raised by the engine's classification
    of a driver error (L{fangs.orchestrator.db.engines.Engine.classify}),
    the same class for the same fault on SQLite and PostgreSQL, so the HTTP
    edge answers both alike.

    @ivar detail: the driver's own message, for the log (never the client).
    """

    def __init__(self, message: str, detail: str = "") -> None:
        FangsError.__init__(self, message)
        self.detail = detail


class StorageBusy(StorageFault):
    """
    Locked by another writer, out of connections, a lock or statement
    timeout, or the server unreachable: waited out by a retry.
    """

    status = 503
    code = "database_busy"


class StorageFull(StorageFault):
    """
    The database's disk is full.
    """

    status = 507
    code = "insufficient_storage"


@attrs.frozen
class NewRun:
    id: str
    package_name: str
    version: str
    kind: str
    target_runner: Optional[str]
    job: str  # the Job as wire JSON
    created_ns: int
    idempotency_key: Optional[str] = None
    #: SHA-256 of the request body the key was first used with.
    idempotency_digest: str = ""
    #: The tenant that queues it (migration 60); others may be linked later.
    tenant: str = "default"


@attrs.frozen
class ResultLifecycle:
    """
    The optional lifecycle part of a runner's result (migration 7).
    """

    install_exit_code: Optional[int] = None
    install_finished_ns: Optional[int] = None
    observation_ended_ns: Optional[int] = None
    events_unresolved: int = 0


@attrs.frozen
class RunRow:
    id: str
    package_name: str
    version: str
    kind: str
    state: str
    target_runner: Optional[str]
    runner_id: Optional[str]
    job: str
    created_ns: int
    dispatched_ns: Optional[int]
    last_activity_ns: Optional[int]
    deadline_ns: Optional[int]
    finished_ns: Optional[int]
    cancel_requested: bool
    result_status: Optional[str]
    failure_reason: str
    events_emitted: int
    events_dropped: int
    duration_ns: int
    events_received: int
    batches_received: int
    verdict: Optional[str]
    decision: Optional[str] = None
    analyzed_ns: Optional[int] = None
    deviation_count: int = 0
    max_severity: Optional[str] = None
    #: From the runner's result (migration 7): the install's own exit status,
    #: when it finished, when observation of its processes ended, and how
    #: many file accesses the sensor could not resolve.
    install_exit_code: Optional[int] = None
    install_finished_ns: Optional[int] = None
    observation_ended_ns: Optional[int] = None
    events_unresolved: int = 0
    #: Why the differ held a first run or called a run incomplete.
    analysis_reason: str = ""
    #: The tenant whose view this is: its verdict, decision and deviation
    #: counts (migration 60); unscoped reads show the run's owner's.
    tenant: str = "default"


_RUN_COLUMNS = [f.name for f in attrs.fields(RunRow)]
_RUN_SELECT = "SELECT " + ", ".join(_RUN_COLUMNS) + " FROM runs"
#: What each tenant judges of a shared run for itself (C{run_tenants}).
TENANT_RUN_COLUMNS = ("verdict", "decision", "analyzed_ns", "deviation_count", "max_severity", "analysis_reason", "tenant")
#: A run as one tenant sees it; the first parameter is the tenant.  Only
#: runs linked to the tenant exist in it.
_TENANT_RUN_SELECT = (
    "SELECT " + ", ".join(("rt." if c in TENANT_RUN_COLUMNS else "runs.") + c for c in _RUN_COLUMNS)
    + " FROM runs JOIN run_tenants rt ON rt.run_id = runs.id AND rt.tenant = ?"
)


def _runRow(row: Sequence[Any]) -> RunRow:
    values = dict(zip(_RUN_COLUMNS, row))
    values["cancel_requested"] = bool(values["cancel_requested"])
    return RunRow(**values)


class EventRow(NamedTuple):
    """
    One event as stored: C{data} is the payload's JSON text exactly as it
    will be exported.  A named tuple, not an attrs class: one is built per
    ingested event, and a frozen attrs instance costs several times more to
    build.
    """

    seq: int
    idx: int
    type: int
    ts_ns: int
    pid: int
    data: str
    #: The decoded payload, for fingerprint extraction (not stored as such).
    payload: Any = None


@attrs.frozen
class StoredEvent:
    id: int
    run_id: str
    seq: int
    idx: int
    type: int
    ts_ns: int
    received_ns: int
    pid: int
    data: str


@attrs.frozen
class IngestOutcome:
    inserted: bool  # False when the batch was a duplicate
    events: int


@attrs.frozen
class BatchWrite:
    """
    One batch to store (L{fangs.orchestrator.db.events.EventsComponent.ingestBatches}):
    its events, when it arrived, how far it pushes the run's deadline, and
    the cred paths its fingerprints are extracted with.
    """

    run_id: str
    seq: int
    rows: Sequence["EventRow"]
    now_ns: int
    deadline_ns: int
    cred_paths: Sequence[str] = ()


@attrs.frozen
class RunFilter:
    package: Optional[str] = None
    state: Optional[str] = None
    since_ns: Optional[int] = None
    until_ns: Optional[int] = None
    #: Only this tenant's runs, as it sees them (None: every run, unscoped).
    tenant: Optional[str] = None


@attrs.frozen
class Page:
    items: List[Any]
    next_token: Optional[str]


class BadPageToken(StoreError):
    pass


@attrs.frozen
class AnalysisOutcome:
    run_id: str
    package_name: str
    verdict: str
    deviations: int
    max_severity: Optional[str]
    #: Whether the verdict, deviation count or severity changed (a repeated
    #: analysis of the same data changes nothing and notifies nobody).
    changed: bool
    #: Whose verdict it is: each tenant a run is linked to judges it.
    tenant: str = "default"


@attrs.frozen
class DeviationRow:
    id: str
    run_id: str
    package_name: str
    category: str
    value: str
    severity: str
    severity_rank: int
    reason: str
    evidence_event_id: int
    count: int
    detected_ns: int
    #: The actor class (C{npm}, C{script}, C{other}, or C{registry} for a
    #: manifest delta) and, as JSON, the actor: label, package, version,
    #: phase, pid, argv.
    actor: str = ""
    detail: str = "{}"

    @property
    def actorDetail(self) -> Dict[str, Any]:
        try:
            found = json.loads(self.detail or "{}")
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}


_DEVIATION_SELECT = (
    "SELECT id, run_id, package_name, category, value, severity, severity_rank, reason,"
    " evidence_event_id, count, detected_ns, actor, detail FROM deviations"
)


@attrs.frozen
class DeviationFilter:
    package: Optional[str] = None
    min_severity_rank: int = 0
    run_id: Optional[str] = None
    since_ns: Optional[int] = None
    tenant: str = "default"


def _jsonList(text: Any) -> List[Any]:
    try:
        found = json.loads(text or "[]")
    except ValueError:
        return []
    return found if isinstance(found, list) else []


def _actorLabel(actor: str, detail: str) -> str:
    """
    The actor label of a stored deviation (C{script:pkg@1.0.0:postinstall},
    C{npm}, C{other}, C{registry}); C{""} for rows from before actors.
    """
    try:
        found = json.loads(detail or "{}")
    except ValueError:
        found = {}
    label = found.get("label") if isinstance(found, dict) else None
    return label if isinstance(label, str) and label else actor


def deviationID(runID: str, category: str, value: str, actor: str = "", tenant: str = "default") -> str:
    """
    Deterministic, so a re-analysis yields the same ids; each tenant's
    deviations of a shared run have ids of their own.
    """
    key = "%s|%s|%s" % (runID, category, value) + ("|" + actor if actor else "")
    if tenant != "default":
        key += "|tenant:" + tenant
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def encodeToken(values: Sequence[Any]) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decodeToken(token: str, shape: Sequence[type]) -> List[Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError):
        raise BadPageToken("page_token is not a token this server issued") from None
    if not isinstance(values, list) or len(values) != len(shape):
        raise BadPageToken("page_token is not a token this server issued")
    for v, t in zip(values, shape):
        if not isinstance(v, t) or isinstance(v, bool):
            raise BadPageToken("page_token is not a token this server issued")
        if isinstance(v, int) and not -(2**63) <= v < 2**63:
            raise BadPageToken("page_token is not a token this server issued")
        if isinstance(v, str) and (len(v) > 256 or not _encodable(v)):
            raise BadPageToken("page_token is not a token this server issued")
    return values


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checkIdempotency(stored: str, given: str) -> None:
    """
    A repeated idempotency key must come with the body it was first used
    with (an empty digest is a row from before digests were kept, or the
    watcher, which never sends a body).

    @raise IdempotencyMismatch: the bodies differ.
    """
    if stored and given and not hmac.compare_digest(stored, given):
        raise IdempotencyMismatch("Idempotency-Key was used before with a different request body")
