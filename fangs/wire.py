"""
Wire types of the FANGS protocol: frozen attrs classes and one cattrs converter.

The JSON these produce matches the Go reference byte for byte where the seeds
show it: snake_case keys, durations as integer nanoseconds, ``run_id`` as an
array of 16 integers inside bodies (and 32 lower-case hex characters in URLs
and in responses), ``dispatched_at`` as RFC 3339 UTC with a ``Z``, and
``omitempty`` fields left out when they hold their zero value.

Decoding is Go-lenient where Go is lenient (unknown keys ignored, keys matched
case-insensitively so ``Job`` and ``job`` both work) and strict where Go is
strict (a string is never an integer, a float is never an integer).

Structure untrusted input with L{structure}; it raises L{WireError} with a
precise message naming the offending field.
"""

from __future__ import annotations

import datetime
import enum
import json
import os
from typing import Any, Dict, List, Optional, Type, TypeVar

import attrs
from cattrs import Converter, transform_error
from cattrs.errors import BaseValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

PROTO_VERSION = 1

NANOSECOND = 1
MILLISECOND = 1_000_000
SECOND = 1_000_000_000

T = TypeVar("T")


class WireError(ValueError):
    """
    A request body that cannot be turned into a wire type.  The message names
    the field and what was wrong with it.
    """


def omitempty(default: Any = attrs.NOTHING, factory: Any = None) -> Any:
    """
    An attrs field left out of the JSON when it holds its zero value, like Go's
    C{omitempty}.
    """
    if factory is not None:
        return attrs.field(factory=factory, metadata={"omitempty": True})
    return attrs.field(default=default, metadata={"omitempty": True})


def omitnil(default: Any = None) -> Any:
    """
    An attrs field left out of the JSON only when it is C{None}, like a Go
    pointer with C{omitempty} (a zero it points to is kept).
    """
    return attrs.field(default=default, metadata={"omitnil": True})


def _is_empty(value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return len(value) == 0
    if isinstance(value, RunID):
        return value.is_zero()
    return False


# ---------------------------------------------------------------------------
# Scalar wire types


@attrs.frozen(order=True)
class RunID:
    """
    A 16-byte run identifier: an array of 16 integers in JSON bodies, 32
    lower-case hex characters in URLs, the database and responses.
    """

    raw: bytes = attrs.field()

    @raw.validator
    def _check(self, attribute: Any, value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != 16:
            raise WireError("run_id must be 16 bytes")

    @classmethod
    def zero(cls) -> "RunID":
        return cls(bytes(16))

    @classmethod
    def generate(cls, nowNs: int) -> "RunID":
        """
        Time-ordered id: 8 bytes of big-endian nanoseconds (so ids sort by
        creation like the reference's) followed by 8 random bytes (so two ids
        made in the same nanosecond, or on two orchestrators, never collide).
        """
        return cls(nowNs.to_bytes(8, "big") + os.urandom(8))

    @classmethod
    def fromHex(cls, text: str) -> "RunID":
        if not isinstance(text, str) or len(text) != 32:
            raise WireError("run_id must be 32 hex characters")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise WireError("run_id must be 32 hex characters") from None
        if text != text.lower():
            raise WireError("run_id must be lower-case hex")
        return cls(raw)

    def hex(self) -> str:
        return self.raw.hex()

    def is_zero(self) -> bool:
        return self.raw == bytes(16)

    def __str__(self) -> str:
        return self.hex()


def formatTimestamp(when: datetime.datetime) -> str:
    """
    RFC 3339 in UTC with a C{Z}, fractional seconds with trailing zeros
    trimmed (Go's C{RFC3339Nano}).
    """
    when = when.astimezone(datetime.timezone.utc)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += ("." + "%06d" % (when.microsecond,)).rstrip("0")
    return text + "Z"


def parseTimestamp(text: str) -> datetime.datetime:
    if not isinstance(text, str):
        raise WireError("timestamp must be an RFC 3339 string")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    # Python before 3.11 cannot parse more than 6 fractional digits; Go sends 9.
    if "." in value:
        head, _, rest = value.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        value = head + "." + (digits[:6] or "0") + rest
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise WireError("timestamp %r is not RFC 3339" % (text,)) from None
    if when.tzinfo is None:
        raise WireError("timestamp %r has no zone" % (text,))
    return when.astimezone(datetime.timezone.utc)


def timestampFromNs(ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.timezone.utc).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )


class EventType(enum.IntEnum):
    FILE_ACCESS = 1
    EXEC = 2
    NET_CONNECT = 3
    DNS_QUERY = 4
    TLS_SNI = 5
    #: A plain-HTTP request line and its C{Host} header, on any port.
    HTTP_REQUEST = 6
    #: A datagram sent to an address (UDP other than a parsed DNS query).
    UDP_SEND = 7
    #: An attempt to set up io_uring (refused by the sandbox's seccomp profile).
    IO_URING = 8
    #: A bait value (or an encoding of it) seen leaving the sandbox.
    CANARY_EXFILTRATED = 9
    #: A process of the package still alive after the install itself exited.
    DETACHED = 10
    #: A file access the sensor could not resolve to the object opened (raw string kept).
    UNRESOLVED = 11
    #: A connection or request the egress gateway sinkholed or refused.
    EGRESS_ATTEMPT = 12
    #: A process created a child (C{ChildPID}): the process tree of the run.
    PROCESS_FORK = 13
    #: A process ended (pid reuse is seen against this).
    PROCESS_EXIT = 14

    @property
    def label(self) -> str:
        return self.name.lower()


EVENT_TYPE_NAMES = {t.value: t.label for t in EventType}
EVENT_TYPE_IDS = {t.label: t.value for t in EventType}

# Header tag bits set by the sensor on file events.
TAG_INTERESTING = 1
TAG_CRED_ACCESS = 2


# ---------------------------------------------------------------------------
# Messages


@attrs.frozen
class HealthResponse:
    status: str
    orchestrator_id: str
    version: str


@attrs.frozen
class RunnerRegistration:
    runner_id: str
    hostname: str = ""
    capabilities: List[str] = attrs.field(factory=list)
    kernel_version: str = ""
    proto_version: int = 0


@attrs.frozen
class RegistrationAck:
    ok: bool
    orchestrator_id: str
    job_poll_interval: int
    heartbeat_interval: int


@attrs.frozen
class Heartbeat:
    runner_id: str = omitempty("")
    active_run_id: str = omitempty("")
    status: str = omitempty("")
    events_queued: int = omitempty(0)
    #: Extension: every run the runner is working on (the reference only
    #: knows one).  Ignored by a reference orchestrator.
    active_run_ids: List[str] = omitempty(factory=list)


@attrs.frozen
class HeartbeatAck:
    ok: bool
    unknown_runner: bool = omitempty(False)
    #: Extension: runs the runner must stop (cancelled by an operator).  A
    #: reference runner ignores the key.
    cancel_runs: List[str] = omitempty(factory=list)


@attrs.frozen
class WatchedPath:
    prefix: str
    cred_tagged: bool = omitempty(False)


@attrs.frozen
class SandboxSpec:
    image: str = ""
    command: List[str] = omitempty(factory=list)
    env: Dict[str, str] = omitempty(factory=dict)
    working_dir: str = omitempty("")
    user: str = omitempty("")
    network_mode: str = omitempty("")
    memory_bytes: int = omitempty(0)
    nano_cpus: int = omitempty(0)
    pids_limit: int = omitempty(0)
    pull_policy: str = omitempty("")
    grace_period: int = omitempty(0)
    cgroup_parent: str = omitempty("")
    #: Extension: C{contain} (default), C{registry-only} or C{open}; see
    #: docs/egress.md.  A reference runner ignores the key.
    egress_policy: str = omitempty("")
    #: Extension: host names (or C{host:port}) the sandbox may reach through
    #: the egress gateway; the registry's host when empty.
    allowed_hosts: List[str] = omitempty(factory=list)


@attrs.frozen
class Job:
    run_id: RunID = attrs.field(factory=RunID.zero)
    kind: str = ""
    package_name: str = omitempty("")
    version: str = omitempty("")
    cgroup_path: str = omitempty("")
    watched_paths: Optional[List[WatchedPath]] = None
    duration: int = 0
    dispatched_at: Optional[datetime.datetime] = None
    sandbox: Optional[SandboxSpec] = omitempty(None)


@attrs.frozen
class ScanRequest:
    job: Job
    target_runner: str = ""


@attrs.frozen
class ScanQueued:
    queued: bool
    run_id: str


@attrs.frozen
class EventEnvelope:
    """
    One sensor event.  C{payload} stays a plain JSON object: the orchestrator
    stores it as it came and only the differ reads a few of its fields.
    """

    type: int
    payload: Dict[str, Any]


@attrs.frozen
class EventBatch:
    run_id: RunID = attrs.field(factory=RunID.zero)
    seq: int = 0
    events: List[EventEnvelope] = attrs.field(factory=list)


@attrs.frozen
class IngestAck:
    received_batches: int
    received_events: int
    persisted: int


@attrs.frozen
class ScanResult:
    status: str
    run_id: RunID = attrs.field(factory=RunID.zero)
    reason: str = omitempty("")
    events_emitted: int = 0
    events_dropped: int = 0
    duration: int = 0
    #: Extensions (a reference orchestrator ignores them): the install's own
    #: exit status (Go C{*int}), when it finished, when observation of the
    #: run's processes ended (Go C{*time.Time}), and how many file accesses
    #: the sensor could not resolve (the run is incomplete, as with drops).
    install_exit_code: Optional[int] = omitnil()
    install_finished_at: Optional[datetime.datetime] = omitnil()
    observation_ended_at: Optional[datetime.datetime] = omitnil()
    events_unresolved: int = omitempty(0)


@attrs.frozen
class ResultAck:
    recorded: bool


@attrs.frozen
class ErrorBody:
    code: str
    message: str
    trace_id: str = ""


@attrs.frozen
class ErrorEnvelope:
    error: ErrorBody


SCAN_STATUSES = ("ok", "failed", "timeout")


# ---------------------------------------------------------------------------
# The converter


def _strictInt(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer, got %s" % (_jsonTypeName(value),))
    return value


def _strictStr(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string, got %s" % (_jsonTypeName(value),))
    return value


def _strictBool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected a boolean, got %s" % (_jsonTypeName(value),))
    return value


def _jsonTypeName(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _structureRunID(value: Any, _type: Any) -> RunID:
    if isinstance(value, str):
        return RunID.fromHex(value)
    if not isinstance(value, list) or len(value) != 16:
        raise TypeError("run_id must be an array of 16 integers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 255:
            raise TypeError("run_id must be an array of 16 integers from 0 to 255")
    return RunID(bytes(value))


def _structureStrDict(value: Any, _type: Any) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError("expected an object, got %s" % (_jsonTypeName(value),))
    for k, v in value.items():
        if not isinstance(v, str):
            raise TypeError("value of %r must be a string" % (k,))
    return dict(value)


def _structureAnyDict(value: Any, _type: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected an object, got %s" % (_jsonTypeName(value),))
    return value


def _structureStrList(value: Any, _type: Any) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError("expected an array, got %s" % (_jsonTypeName(value),))
    for item in value:
        if not isinstance(item, str):
            raise TypeError("array items must be strings")
    return list(value)


def _makeConverter() -> Converter:
    conv = Converter()
    conv.register_structure_hook(int, _strictInt)
    conv.register_structure_hook(str, _strictStr)
    conv.register_structure_hook(bool, _strictBool)
    conv.register_structure_hook(RunID, _structureRunID)
    conv.register_unstructure_hook(RunID, lambda r: list(r.raw))
    conv.register_structure_hook(datetime.datetime, lambda v, _t: parseTimestamp(v))
    conv.register_unstructure_hook(datetime.datetime, formatTimestamp)
    conv.register_structure_hook_func(lambda t: t == Dict[str, str], _structureStrDict)
    conv.register_structure_hook_func(lambda t: t == Dict[str, Any], _structureAnyDict)
    conv.register_structure_hook_func(lambda t: t == List[str], _structureStrList)

    def isWireClass(cls: Any) -> bool:
        return attrs.has(cls) and cls is not RunID

    def unstructureFactory(cls: Any) -> Any:
        base = make_dict_unstructure_fn(cls, conv)
        omit = [f.name for f in attrs.fields(cls) if f.metadata.get("omitempty")]
        omitNil = [f.name for f in attrs.fields(cls) if f.metadata.get("omitnil")]
        if not omit and not omitNil:
            return base

        def unstructure(obj: Any) -> Dict[str, Any]:
            out = base(obj)
            for name in omit:
                if _is_empty(getattr(obj, name)):
                    out.pop(name, None)
            for name in omitNil:
                if getattr(obj, name) is None:
                    out.pop(name, None)
            return out

        return unstructure

    def structureFactory(cls: Any) -> Any:
        base = make_dict_structure_fn(cls, conv, _cattrs_detailed_validation=True)
        names = {f.name.lower(): f.name for f in attrs.fields(cls)}

        def structure(value: Any, type_: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError("expected an object, got %s" % (_jsonTypeName(value),))
            folded: Dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    continue
                name = key if key in names.values() else names.get(key.lower())
                if name is None:
                    continue  # unknown keys are ignored, as Go does
                # An exact match wins over a case-folded one, like Go.
                if name in folded and key != name:
                    continue
                if item is None and attrs.fields_dict(cls)[name].default is not attrs.NOTHING:
                    continue  # JSON null means "zero value" in Go
                folded[name] = item
            return base(folded, type_)

        return structure

    conv.register_unstructure_hook_factory(isWireClass, unstructureFactory)
    conv.register_structure_hook_factory(isWireClass, structureFactory)
    return conv


converter = _makeConverter()


def structure(value: Any, cls: Type[T]) -> T:
    """
    Turn decoded JSON into a wire type, or raise L{WireError} naming the field.
    """
    try:
        return converter.structure(value, cls)
    except BaseValidationError as e:
        messages = transform_error(e, path="$")
        raise WireError("; ".join(messages)) from None
    except (TypeError, ValueError, KeyError) as e:
        raise WireError(str(e) or e.__class__.__name__) from None


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def dumps(obj: Any) -> bytes:
    """
    Encode a wire object (or plain JSON data) as compact UTF-8 JSON.
    """
    if attrs.has(type(obj)) or isinstance(obj, list):
        obj = converter.unstructure(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def loads(data: bytes, cls: Type[T]) -> T:
    """
    Decode and structure a JSON body, raising L{WireError} on any problem.
    """
    return structure(decodeJSON(data), cls)


def decodeJSON(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError("body is not valid UTF-8 (byte %d)" % (e.start,)) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise WireError("JSON nested too deeply") from None
    except ValueError as e:
        raise WireError("malformed JSON: %s" % (e,)) from None
