"""
The differ: fingerprints of a run's behaviour, compared with the package's
baseline.  Pure logic: no Twisted, no I/O, no clock.  The storage layer
executes what L{planAnalysis} returns.

How the storage layer uses it
=============================

1. B{While batches arrive} (no event cap)::

       fps = FingerprintSet(credPaths=<the job's cred watched prefixes>)
       for event_id, type, payload in batch:      # ids as stored
           fps.add(event_id, type, payload)
       for row in fps.rows():                     # FingerprintRow
           upsert into run_fingerprints(run_id, category, value, ...)

   Merge rule for the upsert (the same as L{FingerprintRow.merge}):
   C{count = count + new.count}, C{first_event_id = min(...)},
   C{cred = cred OR new.cred}, C{raw_ip = raw_ip OR new.raw_ip}.  Extraction
   depends on nothing but the events, so one set per batch merged in SQL
   equals one set over the whole run (tested).  Alternatively keep one set
   per run in memory and L{FingerprintSet.merge} batches into it.

   Rows whose category starts with C{_} are bookkeeping (run facts, see
   below).  Store them like the others; never show them as fingerprints.

2. B{When the run is terminal} (its ScanResult arrived, or a timeout), in
   one transaction::

       fps   = FingerprintSet.fromRows(<the run's stored rows>)
       allow = Allowlist(<all allowlist rows>, packageName)
       plan  = planAnalysis(fps, baselineKeys, allow,
                            runState=..., eventsDropped=...,
                            hasBaseline=..., rejected=..., promoted=...)

   then: replace the run's deviation rows with C{plan.deviations}; insert
   C{plan.baseline_add} into the package baseline; set the run's verdict to
   C{plan.verdict}.

   Idempotency: the plan depends only on its inputs.  For re-running it to
   be harmless, C{baselineKeys} and C{hasBaseline} must describe the
   baseline I{without this run's own contribution}: store baseline rows
   keyed C{(package, category, value, run_id)} (insert-or-ignore), and read
   C{baselineKeys} as the distinct C{(category, value)} of rows whose
   C{run_id} is not this run; C{hasBaseline} is "another run of this package
   has verdict C{baseline} or C{clean}".  Occurrence counts are then
   C{COUNT(*)} over runs, never a counter bumped per analysis.

Categories
==========

=======================  ============  =====================================
category                 event type    value
=======================  ============  =====================================
C{net_new_destination}   net_connect   C{ip:port}; IPv6 bracketed
                                       (C{[2606:4700::1]:443}), compressed,
                                       IPv4-mapped shown as IPv4
C{net_new_dns}           dns_query     C{QName} trimmed, lower-case, one
                                       trailing dot dropped
C{net_new_https_host}    tls_sni       C{SNI}, same normalisation
C{proc_new_exec}         exec          C{BinaryPathStr} without NULs and
                                       surrounding space, then
                                       L{normalizePath} when it has a C{/}
C{fs_new_path_read}      file_access   L{normalizePath}(C{PathName}) with no
                                       write intent
C{fs_new_path_write}     file_access   ... with write intent:
                                       C{Flags & (O_WRONLY|O_RDWR|O_CREAT|
                                       O_TRUNC|O_APPEND)}
=======================  ============  =====================================

An empty value gives no fingerprint (it still counts for C{reached_network}).
Malformed payloads (missing keys, wrong types) never raise; the event is
skipped or its field treated as empty.

Each fingerprint keeps C{count} (contributing events), C{first_event_id}
(the smallest contributing id: the evidence pointer, order-independent),
C{cred} (a contributing file event was cred-tagged: C{Header.Tags & 2}, or
its canonical path lies under one of C{credPaths}, which closes the sensor's
C{/tmp/../root/.ssh/id_rsa} hole) and C{raw_ip} (true for every connect
destination: the kernel only ever sees an address).

Run facts (kept as C{_}-rows, see L{RunFacts}):

- C{reached_network}: the run had I{any} net_connect, dns_query or tls_sni
  event, even to loopback or with an unparseable name.  Deliberately
  broad: a loopback connect may be a local proxy, and a DNS query alone can
  exfiltrate.
- which processes (C{Header.PID}, the tgid) sent a non-empty DNS name or
  SNI, and which processes connected to each destination.  A destination
  counts as I{named} when one of the processes that connected to it also
  named a host somewhere in the run.  This is stricter than "the run also
  had a DNS name": npm itself resolves the registry in every run, so a
  run-level test would apply the CDN list to every connect and hide a
  postinstall's C{curl 1.2.3.4} into CloudFront.

Severity
========

One scale, L{Severity}: C{low < medium < high < critical}.  The rules are
the table L{SEVERITY_RULES}: the first row whose category matches, whose
C{requires} flags are all present and whose C{unless} flags are all absent
gives severity and reason.  Flags: C{cred}, C{network} (run reached the
network), C{raw_ip}, C{provider_range} (the IP is in a published CDN range).
Net effect:

- cred-tagged file read/write: high; critical if the run reached the network;
- connect destination: high (a raw IP no allowlist covers), medium when
  the IP is in a provider range but the connecting process named no host;
- new DNS name, SNI, exec: medium;
- other new paths: low.

Allowlists (L{fangs.orchestrator.allowlist}) suppress before severity:
C{path} entries for file categories (cred-tagged paths only by an exact
entry), C{exec}, C{sni}, C{dns}, C{cidr} for destinations, and provider
CIDRs for destinations that are named (see above).  Suppressed fingerprints
are neither deviations nor added to the baseline.

Verdicts
========

See L{verdict}: C{rejected} (operator) > C{incomplete} (failed, timeout,
not finished, or the sensor dropped events) > C{baseline} (promoted by an
operator, or the first complete run of a package) > C{clean} (complete, no
deviations) > C{deviations}.
"""

from __future__ import annotations

import enum
import re
from typing import (
    AbstractSet,
    Any,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Sized,
    Tuple,
    Union,
)

import attrs

from fangs.orchestrator.allowlist import (
    EMPTY_ALLOWLIST,
    KIND_DNS,
    KIND_SNI,
    Allowlist,
    PathPrefixes,
    canonicalPath,
    formatDestination,
    normalizeHostName,
    parseIP,
    providerFor,
    splitDestination,
)
from fangs.wire import TAG_CRED_ACCESS, EventType

# ---------------------------------------------------------------------------
# Categories

NET_DESTINATION = "net_new_destination"
NET_DNS = "net_new_dns"
NET_HTTPS_HOST = "net_new_https_host"
PROC_EXEC = "proc_new_exec"
FS_READ = "fs_new_path_read"
FS_WRITE = "fs_new_path_write"

CATEGORIES = (NET_DESTINATION, NET_DNS, NET_HTTPS_HOST, PROC_EXEC, FS_READ, FS_WRITE)
FILE_CATEGORIES = frozenset((FS_READ, FS_WRITE))

#: Bookkeeping rows (never deviations).  C{_network}/C{reached}: network
#: events (count, first id).  C{_named_pid}/C{"<pid>"}: a process that sent a
#: DNS name or SNI.  C{_dest_pid}/C{"<pid> <ip:port>"}: a process connected
#: to a destination.
FACT_NETWORK = "_network"
FACT_NAMED_PID = "_named_pid"
FACT_DEST_PID = "_dest_pid"
FACT_CATEGORIES = (FACT_NETWORK, FACT_NAMED_PID, FACT_DEST_PID)
_NETWORK_VALUE = "reached"

# Event types (ref §1.5) as plain ints for the hot path.
FILE_ACCESS = int(EventType.FILE_ACCESS)
EXEC = int(EventType.EXEC)
NET_CONNECT = int(EventType.NET_CONNECT)
DNS_QUERY = int(EventType.DNS_QUERY)
TLS_SNI = int(EventType.TLS_SNI)

O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_TRUNC = 0o1000
O_APPEND = 0o2000
WRITE_INTENT = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND

#: The reference's default cred-tagged watched paths.  Pass the job's own
#: list to L{FingerprintSet} when it has one.
DEFAULT_CRED_PATHS = (
    "/etc/shadow",
    "/etc/passwd",
    "/root/.ssh/",
    "/root/.aws/",
    "/root/.npmrc",
    "/root/.docker/",
    "/root/.kube/",
    "/root/.gnupg/",
    "/proc/self/environ",
)


# ---------------------------------------------------------------------------
# Severity


class Severity(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, label: str) -> "Severity":
        """
        C{"high"} -> C{Severity.HIGH}; L{ValueError} for anything else.
        """
        try:
            return cls[label.strip().upper()]
        except (KeyError, AttributeError):
            raise ValueError(
                "unknown severity %r (expected low, medium, high or critical)" % (label,)
            ) from None


SEVERITY_LABELS = tuple(s.label for s in Severity)


def severityRank(label: Optional[str]) -> int:
    """
    Rank of a severity label for comparisons and sorting: C{low} = 1 ...
    C{critical} = 4, and 0 for "no severity" (C{None} or C{""}, e.g. a run
    without deviations).  L{ValueError} for any other unknown label.
    """
    if not label:
        return 0
    return int(Severity.parse(label))


# ---------------------------------------------------------------------------
# Normalisation

# The reference's eight rules, in order (ref §3.3), with C{\Z} for C{$} and
# rule 8 using a look-ahead so consecutive hex components all collapse.
_R1_PROC_PID = re.compile(r"^/proc/[0-9]+(/|\Z)")
_R2_TMP_RAND = re.compile(r"^/tmp/[a-zA-Z0-9._-]*-[0-9]{3,}([a-zA-Z0-9._-]*)")
_R3_DEBUG_LOG = re.compile(r"/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9_]+Z-debug-[0-9]+\.log\Z")
_R4_DATE_FILE = re.compile(r"/[0-9]{4}-[0-9]{2}-[0-9]{2}(\.[a-zA-Z]+)\Z")
_R5_CACACHE_CONTENT = re.compile(
    r"(/\.npm/_cacache/[^/]+/[a-zA-Z0-9]+)/[a-f0-9]{2}/[a-f0-9]{2}/[a-f0-9]+"
)
_R6_CACACHE_INDEX = re.compile(r"(/\.npm/_cacache/index-[^/]+)/[a-f0-9]{2}/[a-f0-9]{2}/[a-f0-9]+")
# Rule 7 widened: npm names its cacache temp entries with any random
# characters (C{tmp/jlNkTC}), not only hex.
_R7_CACACHE_TMP = re.compile(r"(/\.npm/_cacache/tmp)/[^/]+")
# Beyond the reference: random UUIDs anywhere in a path.
_R9_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_R8_LONG_HEX = re.compile(r"/[a-f0-9]{12,}(?=/|\Z)")


def _keepGroup(placeholder: str) -> Any:
    # A callable replacement: no template expansion on every sub() call.
    def replace(match: "re.Match[str]") -> str:
        return match.group(1) + placeholder

    return replace


def _prefixGroup(prefix: str) -> Any:
    def replace(match: "re.Match[str]") -> str:
        return prefix + match.group(1)

    return replace


_SUB_PID = _prefixGroup("/proc/<PID>")
_SUB_DATE = _prefixGroup("/<DATE>")
_SUB_SHA = _keepGroup("/<SHA256>")
_SUB_HASH = _keepGroup("/<HASH>")
_SUB_HEX = _keepGroup("/<HEX>")


def _applyRules(path: str) -> str:
    """
    The eight substitutions; each is gated by a cheap test that is true
    whenever the rule could match (tested against the ungated chain), so
    most paths only pay for rule 8.
    """
    if path.startswith("/proc/"):
        path = _R1_PROC_PID.sub(_SUB_PID, path)
    if path.startswith("/tmp/"):
        path = _R2_TMP_RAND.sub("/tmp/<RAND>", path)
    # Rules 3 and 4 can only match the last component (no "/" inside), which
    # must look like "dddd-dd-dd...".
    slash = path.rfind("/")
    if len(path) - slash > 11 and path[slash + 5] == "-" and path[slash + 8] == "-":
        if "-debug-" in path:
            path = _R3_DEBUG_LOG.sub("/<TIMESTAMP>-debug-<N>.log", path)
        path = _R4_DATE_FILE.sub(_SUB_DATE, path)
    if "/.npm/_cacache/" in path:
        path = _R5_CACACHE_CONTENT.sub(_SUB_SHA, path)
        if "/.npm/_cacache/index-" in path:
            path = _R6_CACACHE_INDEX.sub(_SUB_HASH, path)
        if "/.npm/_cacache/tmp/" in path:
            path = _R7_CACACHE_TMP.sub(_SUB_HEX, path)
    if path.count("-") >= 4:
        path = _R9_UUID.sub("<UUID>", path)
    return _R8_LONG_HEX.sub("/<HEX>", path)


def normalizePath(path: str) -> str:
    """
    Canonicalise (C{.}, C{..}, C{//}, trailing C{/}), then apply the
    reference's eight rules.
    """
    return _applyRules(canonicalPath(path))


def normalizeDNS(name: str) -> str:
    return normalizeHostName(name)


def normalizeSNI(name: str) -> str:
    return normalizeHostName(name)


def normalizeExec(binary: str) -> str:
    """
    Strip NULs and surrounding space; a value with a C{/} is a path and gets
    L{normalizePath} (so C{/tmp/npm-1234-x/run.sh} is stable across runs).
    """
    binary = binary.replace("\x00", "").strip()
    if "/" in binary:
        return normalizePath(binary)
    return binary


# ---------------------------------------------------------------------------
# Fingerprints


@attrs.frozen
class FingerprintRow:
    """
    One stored fingerprint of one run (or a C{_} bookkeeping row).
    """

    category: str
    value: str
    count: int
    first_event_id: int
    cred: bool = False
    raw_ip: bool = False

    @property
    def key(self) -> Tuple[str, str]:
        return (self.category, self.value)

    @property
    def internal(self) -> bool:
        return self.category.startswith("_")

    def merge(self, other: "FingerprintRow") -> "FingerprintRow":
        """
        The row for both sets of events (same category and value).
        """
        if self.key != other.key:
            raise ValueError("cannot merge %r with %r" % (self.key, other.key))
        return FingerprintRow(
            category=self.category,
            value=self.value,
            count=self.count + other.count,
            first_event_id=min(self.first_event_id, other.first_event_id),
            cred=self.cred or other.cred,
            raw_ip=self.raw_ip or other.raw_ip,
        )


@attrs.frozen
class RunFacts:
    """
    Run-level facts derived from the bookkeeping rows.
    """

    reached_network: bool = False
    network_event_id: Optional[int] = None
    named_pids: FrozenSet[int] = frozenset()
    dest_pids: Mapping[str, FrozenSet[int]] = attrs.field(factory=dict)

    def isNamed(self, destination: str) -> bool:
        """
        Whether a process that connected to C{destination} also sent a DNS
        name or SNI in this run.
        """
        pids = self.dest_pids.get(destination)
        return bool(pids) and not self.named_pids.isdisjoint(pids)


# A record is [count, first_event_id, cred, raw_ip]; mutable lists keep the
# per-event cost to one dict lookup and a few stores.
_Record = List[Any]

#: Entries of the per-set path memo before it is reset.
_MEMO_LIMIT = 1 << 16


def _intField(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0


class FingerprintSet:
    """
    The fingerprints of some events of one run.  Feed events with L{add};
    read plain rows with L{rows}; rebuild from stored rows with L{fromRows};
    combine with L{merge}.  The result depends only on the multiset of
    events, not on their order or on how they were split into batches.
    """

    __slots__ = (
        "_tables",
        "_read",
        "_write",
        "_exec",
        "_dest",
        "_dns",
        "_sni",
        "_network",
        "_named",
        "_destPid",
        "_cred",
        "_credProc",
        "_memo",
    )

    def __init__(self, credPaths: Iterable[str] = DEFAULT_CRED_PATHS) -> None:
        self._tables: Dict[str, Dict[str, _Record]] = {
            c: {} for c in CATEGORIES + FACT_CATEGORIES
        }
        t = self._tables
        self._read = t[FS_READ]
        self._write = t[FS_WRITE]
        self._exec = t[PROC_EXEC]
        self._dest = t[NET_DESTINATION]
        self._dns = t[NET_DNS]
        self._sni = t[NET_HTTPS_HOST]
        self._network = t[FACT_NETWORK]
        self._named = t[FACT_NAMED_PID]
        self._destPid = t[FACT_DEST_PID]
        # raw path -> (normalised value, cred by path); bounded.
        self._memo: Dict[str, Tuple[str, bool]] = {}
        credPaths = tuple(credPaths)
        self._cred = PathPrefixes(credPaths)
        # /proc/self/... cred prefixes also cover /proc/<pid>/... and
        # /proc/thread-self/...: reading another process's environ is the
        # same secret.
        self._credProc = PathPrefixes(
            p[len("/proc/self") :] for p in credPaths if p.startswith("/proc/self/")
        )

    # -- feeding -----------------------------------------------------------

    def add(self, event_id: int, kind: int, payload: Mapping[str, Any]) -> None:
        """
        Account for one event.  Never raises on a malformed payload.

        (Hot path: exact C{type(...) is} checks instead of C{isinstance}
        against C{typing} ABCs, which cost more than the rest of the work.
        Payloads are decoded JSON, so they are plain C{dict}s.)
        """
        if type(payload) is not dict:  # noqa: E721
            if not isinstance(payload, Mapping):
                return
            payload = dict(payload)
        if kind == FILE_ACCESS:
            path = payload.get("PathName")
            if not path or type(path) is not str:  # noqa: E721
                return
            header = payload.get("Header")
            tags = header.get("Tags", 0) if type(header) is dict else 0  # noqa: E721
            if type(tags) is not int:  # noqa: E721
                tags = 0
            flags = payload.get("Flags", 0)
            if type(flags) is not int:  # noqa: E721
                flags = 0
            memo = self._memo
            hit = memo.get(path)
            if hit is None:
                canonical = canonicalPath(path)
                hit = (_applyRules(canonical), self._credPath(canonical))
                if len(memo) >= _MEMO_LIMIT:
                    memo.clear()
                memo[path] = hit
            value, cred = hit
            if tags & TAG_CRED_ACCESS:
                cred = True
            table = self._write if flags & WRITE_INTENT else self._read
            record = table.get(value)
            if record is None:
                table[value] = [1, event_id, cred, False]
            else:
                record[0] += 1
                if event_id < record[1]:
                    record[1] = event_id
                if cred:
                    record[2] = True
        elif kind == EXEC:
            binary = payload.get("BinaryPathStr")
            if binary and type(binary) is str:  # noqa: E721
                value = normalizeExec(binary)
                if value:
                    _bump(self._exec, value, event_id)
        elif kind == NET_CONNECT:
            _bump(self._network, _NETWORK_VALUE, event_id)
            ip = payload.get("DestIP")
            if not ip or type(ip) is not str or not ip.strip():  # noqa: E721
                return
            value = formatDestination(ip, payload.get("DestPort"))
            record = _bump(self._dest, value, event_id)
            record[3] = True
            _bump(self._destPid, "%d %s" % (_pid(payload), value), event_id)
        elif kind == DNS_QUERY or kind == TLS_SNI:
            _bump(self._network, _NETWORK_VALUE, event_id)
            name = payload.get("QName" if kind == DNS_QUERY else "SNI")
            if not name or type(name) is not str:  # noqa: E721
                return
            value = normalizeHostName(name)
            if not value:
                return
            _bump(self._dns if kind == DNS_QUERY else self._sni, value, event_id)
            _bump(self._named, str(_pid(payload)), event_id)

    def addAll(self, events: Iterable[Tuple[int, int, Mapping[str, Any]]]) -> "FingerprintSet":
        add = self.add
        for event_id, kind, payload in events:
            add(event_id, kind, payload)
        return self

    def _credPath(self, canonical: str) -> bool:
        if self._cred.covers(canonical):
            return True
        if self._credProc and canonical.startswith("/proc/"):
            rest = canonical[6:]
            slash = rest.find("/")
            head = rest[:slash] if slash >= 0 else rest
            if slash >= 0 and (head.isdigit() or head == "thread-self"):
                return self._credProc.covers(rest[slash:])
        return False

    # -- combining and serialising ----------------------------------------

    def merge(self, other: "FingerprintSet") -> "FingerprintSet":
        """
        Fold C{other}'s fingerprints into this set; returns C{self}.
        """
        for row in other.rows():
            self._addRow(row)
        return self

    def _addRow(self, row: FingerprintRow) -> None:
        table = self._tables.setdefault(row.category, {})
        record = table.get(row.value)
        if record is None:
            table[row.value] = [row.count, row.first_event_id, row.cred, row.raw_ip]
        else:
            record[0] += row.count
            record[1] = min(record[1], row.first_event_id)
            record[2] = record[2] or row.cred
            record[3] = record[3] or row.raw_ip

    @classmethod
    def fromRows(
        cls, rows: Iterable[FingerprintRow], credPaths: Iterable[str] = DEFAULT_CRED_PATHS
    ) -> "FingerprintSet":
        """
        Rebuild a set from stored rows (duplicates are merged).  Unknown
        categories are kept (they round-trip) but never diffed.
        """
        fps = cls(credPaths)
        for row in rows:
            fps._addRow(row)
        return fps

    def rows(self) -> List[FingerprintRow]:
        """
        Every row, bookkeeping included, sorted by category then value.
        """
        out = []
        for category in sorted(self._tables):
            table = self._tables[category]
            for value in sorted(table):
                count, first, cred, rawIP = table[value]
                out.append(FingerprintRow(category, value, count, first, bool(cred), bool(rawIP)))
        return out

    def fingerprints(self) -> List[FingerprintRow]:
        """
        The public fingerprints only (no C{_} rows), sorted.
        """
        return [row for row in self.rows() if not row.internal]

    def keys(self) -> FrozenSet[Tuple[str, str]]:
        return frozenset(row.key for row in self.fingerprints())

    def __len__(self) -> int:
        return sum(len(self._tables[c]) for c in CATEGORIES if c in self._tables)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FingerprintSet):
            return NotImplemented
        return self.rows() == other.rows()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "<FingerprintSet %d fingerprints>" % (len(self),)

    def facts(self) -> RunFacts:
        network = self._network.get(_NETWORK_VALUE)
        destPids: Dict[str, set] = {}
        for key in self._destPid:
            pid, _, destination = key.partition(" ")
            try:
                destPids.setdefault(destination, set()).add(int(pid))
            except ValueError:
                continue
        named = set()
        for key in self._named:
            try:
                named.add(int(key))
            except ValueError:
                continue
        return RunFacts(
            reached_network=network is not None,
            network_event_id=network[1] if network is not None else None,
            named_pids=frozenset(named),
            dest_pids={d: frozenset(p) for d, p in destPids.items()},
        )


def _bump(table: Dict[str, _Record], value: str, event_id: int) -> _Record:
    record = table.get(value)
    if record is None:
        record = table[value] = [1, event_id, False, False]
    else:
        record[0] += 1
        if event_id < record[1]:
            record[1] = event_id
    return record


def _pid(payload: Mapping[str, Any]) -> int:
    header = payload.get("Header")
    if type(header) is dict:  # noqa: E721
        return _intField(header.get("PID"))
    return 0


def extract(
    events: Iterable[Tuple[int, int, Mapping[str, Any]]],
    credPaths: Iterable[str] = DEFAULT_CRED_PATHS,
) -> FingerprintSet:
    """
    One-shot extraction: C{FingerprintSet(credPaths).addAll(events)}.
    """
    return FingerprintSet(credPaths).addAll(events)


# ---------------------------------------------------------------------------
# Severity rules

FLAG_CRED = "cred"
FLAG_NETWORK = "network"
FLAG_RAW_IP = "raw_ip"
FLAG_PROVIDER_RANGE = "provider_range"
FLAGS = frozenset((FLAG_CRED, FLAG_NETWORK, FLAG_RAW_IP, FLAG_PROVIDER_RANGE))


@attrs.frozen
class SeverityRule:
    category: str
    requires: FrozenSet[str]
    unless: FrozenSet[str]
    severity: Severity
    reason: str

    def matches(self, category: str, flags: AbstractSet[str]) -> bool:
        return (
            category == self.category
            and self.requires <= flags
            and self.unless.isdisjoint(flags)
        )


def _rule(category: str, requires: str, unless: str, severity: Severity, reason: str) -> SeverityRule:
    return SeverityRule(
        category, frozenset(requires.split()), frozenset(unless.split()), severity, reason
    )


_L, _M, _H, _C = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL

#: First matching row wins.  C{{provider}} in a reason is replaced by the
#: provider name.
SEVERITY_RULES: Tuple[SeverityRule, ...] = (
    # category        requires        unless            sev  reason
    _rule(FS_READ,    "cred network", "",               _C, "read of cred-tagged path while the run also reached the network"),
    _rule(FS_WRITE,   "cred network", "",               _C, "write to cred-tagged path while the run also reached the network"),
    _rule(FS_READ,    "cred",         "",               _H, "read of cred-tagged path"),
    _rule(FS_WRITE,   "cred",         "",               _H, "write to cred-tagged path"),
    _rule(NET_DESTINATION, "raw_ip",  "provider_range", _H, "connection to a raw IP outside every allowlist"),
    _rule(NET_DESTINATION, "raw_ip provider_range", "", _M, "connection into a {provider} range by a process that named no host (no DNS query or SNI)"),
    _rule(NET_DESTINATION, "",        "",               _M, "new network destination"),
    _rule(NET_DNS,    "",             "",               _M, "new DNS name queried"),
    _rule(NET_HTTPS_HOST, "",         "",               _M, "new TLS server name (SNI)"),
    _rule(PROC_EXEC,  "",             "",               _M, "new executable run"),
    _rule(FS_READ,    "",             "",               _L, "new path read"),
    _rule(FS_WRITE,   "",             "",               _L, "new path written"),
)  # fmt: skip


def classify(category: str, flags: AbstractSet[str], provider: str = "") -> Tuple[Severity, str]:
    """
    Severity and reason from L{SEVERITY_RULES}.
    """
    for rule in SEVERITY_RULES:
        if rule.matches(category, flags):
            return rule.severity, rule.reason.replace("{provider}", provider or "provider")
    raise ValueError("no severity rule for category %r" % (category,))


# ---------------------------------------------------------------------------
# Diff


@attrs.frozen
class Deviation:
    category: str
    value: str
    severity: Severity
    evidence_event_id: int
    count: int
    reason: str

    @property
    def severity_label(self) -> str:
        return self.severity.label


@attrs.frozen
class _Assessment:
    allowed: bool
    flags: FrozenSet[str] = frozenset()
    provider: str = ""


def _assess(row: FingerprintRow, facts: RunFacts, allow: Allowlist) -> _Assessment:
    """
    Whether an allowlist suppresses C{row}, else its severity flags.
    """
    category = row.category
    flags = set()
    if facts.reached_network:
        flags.add(FLAG_NETWORK)
    provider = ""
    if category in FILE_CATEGORIES:
        if allow.coversPath(row.value, cred=row.cred):
            return _Assessment(True)
        if row.cred:
            flags.add(FLAG_CRED)
    elif category == PROC_EXEC:
        if allow.coversExec(row.value):
            return _Assessment(True)
    elif category == NET_DNS:
        if allow.coversName(KIND_DNS, row.value):
            return _Assessment(True)
    elif category == NET_HTTPS_HOST:
        if allow.coversName(KIND_SNI, row.value):
            return _Assessment(True)
    elif category == NET_DESTINATION:
        host, _ = splitDestination(row.value)
        address = parseIP(host)
        if allow.cidrFor(address) is not None:
            return _Assessment(True)
        provider = providerFor(address) or ""
        if provider and facts.isNamed(row.value):
            return _Assessment(True)
        if row.raw_ip:
            flags.add(FLAG_RAW_IP)
        if provider:
            flags.add(FLAG_PROVIDER_RANGE)
    return _Assessment(False, frozenset(flags), provider)


def isAllowed(row: FingerprintRow, facts: RunFacts, allow: Allowlist) -> bool:
    return _assess(row, facts, allow).allowed


def diff(
    fingerprints: FingerprintSet,
    baselineKeys: AbstractSet[Tuple[str, str]],
    allow: Allowlist = EMPTY_ALLOWLIST,
    facts: Optional[RunFacts] = None,
) -> List[Deviation]:
    """
    The run's fingerprints that are neither in C{baselineKeys} (a set of
    C{(category, value)}) nor allowlisted, with severity and reason; most
    severe first, then by category and value.  C{facts} defaults to
    C{fingerprints.facts()}.
    """
    if facts is None:
        facts = fingerprints.facts()
    out = []
    for row in fingerprints.fingerprints():
        if row.key in baselineKeys:
            continue
        assessment = _assess(row, facts, allow)
        if assessment.allowed:
            continue
        severity, reason = classify(row.category, assessment.flags, assessment.provider)
        out.append(Deviation(row.category, row.value, severity, row.first_event_id, row.count, reason))
    out.sort(key=lambda d: (-d.severity, d.category, d.value))
    return out


# ---------------------------------------------------------------------------
# Verdict and plan

VERDICT_BASELINE = "baseline"
VERDICT_CLEAN = "clean"
VERDICT_DEVIATIONS = "deviations"
VERDICT_INCOMPLETE = "incomplete"
VERDICT_REJECTED = "rejected"
VERDICTS = (VERDICT_BASELINE, VERDICT_CLEAN, VERDICT_DEVIATIONS, VERDICT_INCOMPLETE, VERDICT_REJECTED)

#: The only run state that counts as complete.  C{failed}, C{timeout} and
#: every non-terminal state (C{pending}, C{running}, ...) are incomplete.
COMPLETE_STATE = "ok"


def isComplete(runState: str, eventsDropped: int) -> bool:
    """
    A run can seed or extend a baseline only if it finished C{ok} and its
    sensor dropped nothing.  The promote endpoint should refuse (409) runs
    for which this is false.
    """
    return runState == COMPLETE_STATE and eventsDropped == 0


def verdict(
    runState: str,
    eventsDropped: int,
    hasBaseline: bool,
    deviations: Union[int, Sized],
    rejected: bool = False,
    promoted: bool = False,
) -> str:
    """
    In order: C{rejected} if an operator rejected the run; C{incomplete} if
    it did not finish C{ok} or events were dropped (promotion does not
    override this); C{baseline} if an operator promoted it or no baseline
    exists yet; C{clean} with zero deviations; else C{deviations}.
    """
    count = deviations if isinstance(deviations, int) else len(deviations)
    if rejected:
        return VERDICT_REJECTED
    if not isComplete(runState, eventsDropped):
        return VERDICT_INCOMPLETE
    if promoted or not hasBaseline:
        return VERDICT_BASELINE
    if count == 0:
        return VERDICT_CLEAN
    return VERDICT_DEVIATIONS


@attrs.frozen
class AnalysisPlan:
    """
    What the storage layer does, in one transaction:

    - set the run's verdict to C{verdict};
    - replace the run's deviation rows with exactly C{deviations};
    - insert-or-ignore C{baseline_add} into the package baseline keyed
      C{(package, category, value, run_id)};
    - C{in_baseline} is true when the run is now part of the baseline
      (verdict C{baseline} or C{clean}).

    C{max_severity} is the most severe deviation (C{None} without any), for
    the notifier.
    """

    verdict: str
    complete: bool
    in_baseline: bool
    deviations: Tuple[Deviation, ...]
    baseline_add: Tuple[FingerprintRow, ...]
    max_severity: Optional[Severity]


def planAnalysis(
    fingerprints: Union[FingerprintSet, Iterable[FingerprintRow]],
    baselineKeys: AbstractSet[Tuple[str, str]],
    allow: Allowlist = EMPTY_ALLOWLIST,
    *,
    runState: str,
    eventsDropped: int,
    hasBaseline: bool,
    rejected: bool = False,
    promoted: bool = False,
) -> AnalysisPlan:
    """
    Decide the whole analysis of one run.  Pure: same inputs, same plan.

    C{baselineKeys}/C{hasBaseline} must exclude this run's own contribution
    (see the module docstring).  Deviations are computed against the
    baseline whenever one exists and are written for verdicts C{deviations},
    C{incomplete} and C{rejected} (evidence stays visible); none are written
    when the run seeds the baseline, is promoted, or is clean.  Baseline
    rows: every public, non-allowlisted fingerprint, for verdicts
    C{baseline} and C{clean} only.
    """
    if not isinstance(fingerprints, FingerprintSet):
        fingerprints = FingerprintSet.fromRows(fingerprints)
    facts = fingerprints.facts()
    deviations: Sequence[Deviation] = ()
    if hasBaseline:
        deviations = diff(fingerprints, baselineKeys, allow, facts)
    outcome = verdict(runState, eventsDropped, hasBaseline, deviations, rejected, promoted)
    inBaseline = outcome in (VERDICT_BASELINE, VERDICT_CLEAN)
    written: Tuple[Deviation, ...] = ()
    if outcome in (VERDICT_DEVIATIONS, VERDICT_INCOMPLETE, VERDICT_REJECTED):
        written = tuple(deviations)
    baselineAdd: Tuple[FingerprintRow, ...] = ()
    if inBaseline:
        baselineAdd = tuple(
            row for row in fingerprints.fingerprints() if not _assess(row, facts, allow).allowed
        )
    return AnalysisPlan(
        verdict=outcome,
        complete=isComplete(runState, eventsDropped),
        in_baseline=inBaseline,
        deviations=written,
        baseline_add=baselineAdd,
        max_severity=max((d.severity for d in written), default=None),
    )


__all__ = [
    "AnalysisPlan",
    "CATEGORIES",
    "DEFAULT_CRED_PATHS",
    "Deviation",
    "FingerprintRow",
    "FingerprintSet",
    "RunFacts",
    "SEVERITY_RULES",
    "Severity",
    "SeverityRule",
    "VERDICTS",
    "classify",
    "diff",
    "extract",
    "isAllowed",
    "isComplete",
    "normalizeDNS",
    "normalizeExec",
    "normalizePath",
    "normalizeSNI",
    "planAnalysis",
    "severityRank",
    "verdict",
]
