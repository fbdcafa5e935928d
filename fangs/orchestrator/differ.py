"""
The differ: fingerprints of a run's behaviour, per actor, compared with the
package's baseline.  Pure logic: no Twisted, no I/O, no clock.  The storage
layer executes what L{planAnalysis} returns.

How the storage layer uses it
=============================

1. B{While batches arrive}: C{FingerprintSet(credPaths).add(id, type,
   payload)} for each event, then upsert C{fps.rows()} into
   C{run_fingerprints} (C{count} summed, C{first_event_id} MIN, C{cred} and
   C{raw_ip} OR).  Rows are kept I{per process}: a public row's value is
   C{"<pid>\\x1f<value>"}; C{_} rows are process and socket facts (exec,
   fork, exit, parent pids, names carried on sockets, unresolved opens).
   Batch-independent: merged batch rows equal the rows of the whole run.

2. B{When the run is terminal}, in one transaction::

       fps  = FingerprintSet.fromTuples(<the run's stored rows>)
       plan = planAnalysis(fps, baselineKeys, Allowlist(...), runState=...,
                           eventsDropped=..., hasBaseline=..., context=
                           RunContext(package, version, manifest scripts),
                           manifestDeltas=<the release's deltas>)

   C{baselineKeys} are C{(category, value, actor_class)} of the package's
   baseline rows of I{other} runs, C{hasBaseline} "another run is baseline
   or clean" (so re-running the plan is harmless).

Actors
======

L{fangs.orchestrator.actors} builds the run's process tree from exec, fork,
exit events and header PPIDs and gives each process an actor: C{npm},
C{script:<package>@<version>:<phase>} (a lifecycle script and all its
descendants) or C{other} (unknown lineage included).  L{RunView} rolls the
per-process rows up into L{Fingerprint}s keyed C{(category, value,
actor_class)}: "an install script read /root/.npmrc" is not "npm read
/root/.npmrc".  Exec attempts of a PATH search that failed are dropped
(L{fangs.orchestrator.actors.pathSearchMisses}).

Categories
==========

=========================  ===============  ==================================
category                   event type       value
=========================  ===============  ==================================
C{fs_new_path_read/write}  file_access      normalised path, collapsed: the
                                            release's version -> C{<VERSION>},
                                            C{.../node_modules/<pkg>/<dir>/**}
C{proc_new_exec}           exec             normalised binary (PATH misses
                                            dropped)
C{net_new_destination}     net_connect      C{ip:port}
C{net_new_udp_destination} udp_send         C{ip:port}
C{net_new_dns}             dns_query        QName
C{net_new_https_host}      tls_sni          SNI
C{net_new_http_host}       http_request     C{METHOD host}
C{net_new_egress}          egress_attempt   C{protocol name-or-ip:port}
C{canary_exfiltrated}      canary_exfil...  C{bait via channel to dest} (and
                                            egress attempts with C{Canaries})
C{proc_io_uring}           io_uring         C{used} / C{refused}
C{proc_detached}           detached         binary
(C{run_unresolved_access}) unresolved       not a fingerprint: the run is
                                            C{incomplete} unless the raw path
                                            is absolute (then judged as is)
=========================  ===============  ==================================

Severity
========

L{SEVERITY_RULES} is the one table: the first row whose category matches
(C{*outbound} = any network category), whose C{requires} flags are present
and whose C{unless} flags are absent gives severity and reason.  Chains
(C{tree_*} flags) combine facts of one process tree: one install script and
its descendants, all of npm, or one process of unknown lineage.  A
credential or canary read plus a new outbound destination in one tree is
critical; a new exec from a writable directory plus outbound is high; a
detached process that reaches the network is high.

A destination inside a provider CIDR (CDN ranges anyone can rent) is hidden
only when every process's socket to it carried an allowlisted or baselined
name (TLS SNI, HTTP Host); otherwise it is a deviation, high when the
process also read a credential.

Verdicts
========

C{rejected} > C{incomplete} (failed, timeout, dropped events, unresolved
accesses) > C{baseline} (promoted, or a first run with nothing that must not
seed silently, see L{firstRunFinding}) > C{clean} (no finding of C{medium}
or above; C{low} ones are kept as notes) > C{deviations}.  A first run
with a credential read by a script, a canary, a raw-IP destination, a new
exec from a writable directory or anything high is C{deviations}: it seeds
the baseline only when a person promotes it.
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

from fangs.orchestrator import actors as A
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

NET_HTTP = "net_new_http_host"
NET_UDP = "net_new_udp_destination"
NET_EGRESS = "net_new_egress"
PROC_IO_URING = "proc_io_uring"
PROC_DETACHED = "proc_detached"
CANARY = "canary_exfiltrated"
RUN_UNRESOLVED = "run_unresolved_access"

CATEGORIES = (
    NET_DESTINATION, NET_DNS, NET_HTTPS_HOST, PROC_EXEC, FS_READ, FS_WRITE,
    NET_HTTP, NET_UDP, NET_EGRESS, PROC_IO_URING, PROC_DETACHED, CANARY,
)
FILE_CATEGORIES = frozenset((FS_READ, FS_WRITE))
OUTBOUND_CATEGORIES = frozenset((NET_DESTINATION, NET_DNS, NET_HTTPS_HOST, NET_HTTP, NET_UDP, NET_EGRESS))

#: Bookkeeping rows (never deviations).  C{_network}/C{reached}: network
#: events (count, first id).  C{_named_pid}/C{"<pid>"}: a process that sent a
#: DNS name or SNI.  C{_dest_pid}/C{"<pid> <ip:port>"}: a process connected
#: to a destination.
FACT_NETWORK = "_network"
FACT_EXEC = "_exec"
FACT_EXEC_TS = "_exec_ts"
FACT_FORK = "_fork"
FACT_EXIT = "_exit"
FACT_PPID = "_ppid"
FACT_SOCK = "_sock"
FACT_UNRESOLVED = "_unresolved"
FACT_CATEGORIES = (FACT_NETWORK, FACT_EXEC, FACT_EXEC_TS, FACT_FORK, FACT_EXIT, FACT_PPID, FACT_SOCK, FACT_UNRESOLVED)
#: Separates the pid (and other parts) inside stored row values.
SEP = "\x1f"
_FS = "\x1e"
_NETWORK_VALUE = "reached"

# Event types (ref §1.5) as plain ints for the hot path.
FILE_ACCESS = int(EventType.FILE_ACCESS)
EXEC = int(EventType.EXEC)
NET_CONNECT = int(EventType.NET_CONNECT)
DNS_QUERY = int(EventType.DNS_QUERY)
TLS_SNI = int(EventType.TLS_SNI)
HTTP_REQUEST = int(EventType.HTTP_REQUEST)
UDP_SEND = int(EventType.UDP_SEND)
IO_URING = int(EventType.IO_URING)
CANARY_EXFILTRATED = int(EventType.CANARY_EXFILTRATED)
DETACHED = int(EventType.DETACHED)
UNRESOLVED = int(EventType.UNRESOLVED)
EGRESS_ATTEMPT = int(EventType.EGRESS_ATTEMPT)
PROCESS_FORK = int(EventType.PROCESS_FORK)
PROCESS_EXIT = int(EventType.PROCESS_EXIT)

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
# ---------------------------------------------------------------------------
# Fingerprints


@attrs.frozen
class FingerprintRow:
    """
    One stored row of one run.  Public rows (category without C{_}) have
    the value C{"<pid>\\x1f<value>"}: fingerprints are kept per process at
    ingest and rolled up per actor at analysis (L{analyzeRows}).  Rows whose
    value has no separator are from before actors (legacy) and count as
    C{npm}.
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


_Record = List[Any]
_MEMO_LIMIT = 1 << 16
_NORMALISERS: Dict[Tuple[str, ...], Tuple["PathPrefixes", "PathPrefixes", Dict[str, Tuple[str, bool]]]] = {}
_NORMALISERS_LIMIT = 64


def _normaliser(credPaths: Tuple[str, ...]) -> Tuple["PathPrefixes", "PathPrefixes", Dict[str, Tuple[str, bool]]]:
    """
    The cred-path matchers and the path memo (path -> (normalised value,
    cred)) for C{credPaths}.  The memo caches a pure function of the path
    and C{credPaths}, so sharing it between sets (and threads: single dict
    operations) changes no fingerprint.
    """
    found = _NORMALISERS.get(credPaths)
    if found is None:
        if len(_NORMALISERS) >= _NORMALISERS_LIMIT:
            _NORMALISERS.clear()
        found = _NORMALISERS[credPaths] = (
            PathPrefixes(credPaths),
            PathPrefixes(p[len("/proc/self") :] for p in credPaths if p.startswith("/proc/self/")),
            {},
        )
    return found


def _intField(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0


def _strField(payload: Mapping[str, Any], key: str) -> str:
    v = payload.get(key)
    if type(v) is str:  # noqa: E721
        return v.replace("\x00", "").replace(SEP, "").strip()
    return ""


class FingerprintSet:
    """
    The per-process fingerprints and process facts of some events of one
    run.  Order- and batch-independent: rows of batches merged with
    L{FingerprintRow.merge} equal the rows of the whole run.
    """

    __slots__ = ("_tables", "_read", "_write", "_cred", "_credProc", "_memo", "_prefixes")

    def __init__(self, credPaths: Iterable[str] = DEFAULT_CRED_PATHS) -> None:
        self._tables: Dict[str, Dict[str, _Record]] = {c: {} for c in CATEGORIES + FACT_CATEGORIES}
        self._read = self._tables[FS_READ]
        self._write = self._tables[FS_WRITE]
        self._prefixes: Dict[Tuple[int, int], Tuple[str, str]] = {}
        # The path normalisation of these cred paths, shared by every set
        # built for them (one per stored batch): a path seen in an earlier
        # batch is not normalised again.
        self._cred, self._credProc, self._memo = _normaliser(tuple(credPaths))

    def _bump(self, category: str, value: str, event_id: int) -> _Record:
        return _bump(self._tables[category], value, event_id)

    def add(self, event_id: int, kind: int, payload: Mapping[str, Any]) -> None:
        """
        Account for one event.  Never raises on a malformed payload.
        """
        if type(payload) is not dict:  # noqa: E721
            if not isinstance(payload, Mapping):
                return
            payload = dict(payload)
        header = payload.get("Header")
        pid = ppid = 0
        if type(header) is dict:  # noqa: E721
            pid = header.get("PID", 0)
            ppid = header.get("PPID", 0)
            if type(pid) is not int:  # noqa: E721
                pid = 0
            if type(ppid) is not int:  # noqa: E721
                ppid = 0
        else:
            header = {}
        # Public rows are keyed "<pid>:<ppid>\x1f<value>" (the parent in
        # the header names the process's lineage even when it never exec'd),
        # bookkeeping rows "<pid>\x1f...".
        prefixes = self._prefixes.get((pid, ppid))
        if prefixes is None:
            bprefix = "%d%s" % (pid, SEP)
            prefixes = self._prefixes[(pid, ppid)] = (
                "%d:%d%s" % (pid, ppid, SEP) if ppid > 0 and pid > 0 else bprefix, bprefix)
        try:
            self._add(event_id, kind, payload, header, pid, prefixes[0], prefixes[1])
        except (AttributeError, TypeError, ValueError):
            return

    def _add(self, event_id: int, kind: int, payload: Dict[str, Any], header: Dict[str, Any], pid: int, prefix: str,
             bprefix: str) -> None:
        if kind == FILE_ACCESS:
            path = payload.get("PathName")
            if not path or type(path) is not str:  # noqa: E721
                return
            tags = header.get("Tags", 0)
            if type(tags) is not int:  # noqa: E721
                tags = 0
            flags = payload.get("Flags", 0)
            if type(flags) is not int:  # noqa: E721
                flags = 0
            memo = self._memo
            hit = memo.get(path)
            if hit is None:
                canonical = canonicalPath(path)
                hit = (_applyRules(canonical).replace(SEP, ""), self._credPath(canonical))
                if len(memo) >= _MEMO_LIMIT:
                    memo.clear()
                memo[path] = hit
            value, cred = hit
            if tags & TAG_CRED_ACCESS:
                cred = True
            table = self._write if flags & WRITE_INTENT else self._read
            key = prefix + value
            record = table.get(key)
            if record is None:
                table[key] = [1, event_id, cred, False]
            else:
                record[0] += 1
                if event_id < record[1]:
                    record[1] = event_id
                if cred:
                    record[2] = True
        elif kind == EXEC:
            record = A.execRecord(pid, _intField(header.get("TsNs")), event_id, payload)
            if record is None or not record.binary:
                return
            # pid SEP binary FS ppid FS ancestors FS cwd FS lifecycle FS failed FS argv...
            fields = [record.binary, str(record.ppid), ",".join("%d:%d" % a for a in record.ancestors),
                      record.cwd, record.lifecycle, {None: "", True: "1", False: "0"}[record.failed]]
            fields.extend(record.argv)
            detail = _FS.join(f.replace(_FS, "") for f in fields).replace(SEP, "")
            # One row per distinct exec of a process (evidence: the first
            # event id), and beside it the earliest time it happened (kept
            # in the row's first_event_id column, merged with MIN too).
            self._bump(FACT_EXEC, bprefix + detail, event_id)
            self._bump(FACT_EXEC_TS, bprefix + detail, record.ts if record.ts > 0 else 0)
        elif kind == NET_CONNECT or kind == UDP_SEND:
            self._bump(FACT_NETWORK, _NETWORK_VALUE, event_id)
            ip = _strField(payload, "DestIP")
            if not ip:
                return
            value = formatDestination(ip, payload.get("DestPort"))
            record = self._bump(NET_DESTINATION if kind == NET_CONNECT else NET_UDP, prefix + value, event_id)
            record[3] = True
        elif kind == DNS_QUERY or kind == TLS_SNI:
            self._bump(FACT_NETWORK, _NETWORK_VALUE, event_id)
            name = payload.get("QName" if kind == DNS_QUERY else "SNI")
            if not name or type(name) is not str:  # noqa: E721
                return
            value = normalizeHostName(name).replace(SEP, "")
            if not value:
                return
            self._bump(NET_DNS if kind == DNS_QUERY else NET_HTTPS_HOST, prefix + value, event_id)
            self._sock(payload, bprefix, value, event_id)
        elif kind == HTTP_REQUEST:
            self._bump(FACT_NETWORK, _NETWORK_VALUE, event_id)
            host = normalizeHostName(_strField(payload, "Host"))
            method = _strField(payload, "Method").upper()[:16] or "?"
            if host:
                self._bump(NET_HTTP, "%s%s %s" % (prefix, method, host), event_id)
                self._sock(payload, bprefix, host.split(":")[0], event_id)
        elif kind == EGRESS_ATTEMPT:
            self._bump(FACT_NETWORK, _NETWORK_VALUE, event_id)
            name = normalizeHostName(_strField(payload, "DestName") or _strField(payload, "Host") or _strField(payload, "SNI"))
            ip = _strField(payload, "DestIP")
            port = payload.get("DestPort")
            proto = _strField(payload, "Protocol") or "?"
            where = name or ip
            if where:
                dest = "%s:%d" % (where, port) if type(port) is int and port > 0 else where  # noqa: E721
                record = self._bump(NET_EGRESS, "%s%s %s" % (prefix, proto, dest), event_id)
                record[3] = not name
            canaries = payload.get("Canaries")
            if isinstance(canaries, list) and canaries:
                for bait in canaries:
                    if isinstance(bait, str) and bait:
                        self._bump(CANARY, "%s%s via %s to %s" % (prefix, bait, proto, where or "?"), event_id)
        elif kind == CANARY_EXFILTRATED:
            self._bump(FACT_NETWORK, _NETWORK_VALUE, event_id)
            baits = payload.get("Bait")
            if isinstance(baits, str):
                baits = [baits]
            if not isinstance(baits, list) or not baits:
                baits = ["?"]
            channel = _strField(payload, "Channel") or "?"
            dest = normalizeHostName(_strField(payload, "DestName")) or _strField(payload, "DestIP") or "?"
            for bait in baits:
                if isinstance(bait, str):
                    self._bump(CANARY, "%s%s via %s to %s" % (prefix, bait.replace(SEP, "") or "?", channel, dest), event_id)
        elif kind == IO_URING:
            refused = payload.get("Refused")
            self._bump(PROC_IO_URING, prefix + ("refused" if refused is True else "used"), event_id)
        elif kind == DETACHED:
            binary = _strField(payload, "BinaryPathStr")
            argv = payload.get("ArgvStrs")
            if not binary and isinstance(argv, list) and argv and isinstance(argv[0], str):
                binary = argv[0].replace(SEP, "")
            self._bump(PROC_DETACHED, prefix + (normalizeExec(binary) or "?"), event_id)
        elif kind == UNRESOLVED:
            raw = _strField(payload, "RawPath")
            reason = _strField(payload, "Reason")
            self._bump(FACT_UNRESOLVED, "%s%s%s%s" % (bprefix, raw, SEP, reason), event_id)
        elif kind == PROCESS_FORK:
            child = payload.get("ChildPID")
            if type(child) is int and child > 0:  # noqa: E721
                self._bump(FACT_FORK, "%s%d%s%d" % (bprefix, child, SEP, _intField(header.get("TsNs"))), event_id)
        elif kind == PROCESS_EXIT:
            self._bump(FACT_EXIT, "%s%d" % (bprefix, _intField(header.get("TsNs"))), event_id)

    def _sock(self, payload: Mapping[str, Any], prefix: str, name: str, event_id: int) -> None:
        ip = _strField(payload, "DestIP")
        if ip:
            dest = formatDestination(ip, payload.get("DestPort"))
            self._bump(FACT_SOCK, "%s%s%s%s" % (prefix, dest, SEP, name), event_id)

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
        fps = cls(credPaths)
        for row in rows:
            fps._addRow(row)
        return fps

    @classmethod
    def fromTuples(
        cls, rows: Iterable[Tuple[str, str, int, int, Any, Any]], credPaths: Iterable[str] = DEFAULT_CRED_PATHS
    ) -> "FingerprintSet":
        """
        L{fromRows} from plain C{(category, value, count, first_event_id,
        cred, raw_ip)} tuples as the store reads them (no duplicates).
        """
        fps = cls(credPaths)
        tables = fps._tables
        for category, value, count, first, cred, rawIP in rows:
            table = tables.get(category)
            if table is None:
                table = tables[category] = {}
            record = table.get(value)
            if record is None:
                table[value] = [count, first, bool(cred), bool(rawIP)]
            else:
                record[0] += count
                record[1] = min(record[1], first)
                record[2] = record[2] or bool(cred)
                record[3] = record[3] or bool(rawIP)
        return fps

    def rows(self) -> List[FingerprintRow]:
        """
        Every stored row, sorted by category then value.
        """
        out = []
        for category in sorted(self._tables):
            table = self._tables[category]
            for value in sorted(table):
                count, first, cred, rawIP = table[value]
                out.append(FingerprintRow(category, value, count, first, bool(cred), bool(rawIP)))
        return out

    def tuples(self) -> List[Tuple[str, str, int, int, int, int]]:
        """
        L{rows} as plain C{(category, value, count, first_event_id, cred,
        raw_ip)} tuples with 0/1 flags, what the store writes (no row
        object per fingerprint on the ingest path).
        """
        out = []
        for category in sorted(self._tables):
            table = self._tables[category]
            for value in sorted(table):
                count, first, cred, rawIP = table[value]
                out.append((category, value, count, first, 1 if cred else 0, 1 if rawIP else 0))
        return out

    def table(self, category: str) -> Dict[str, _Record]:
        return self._tables.get(category, {})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FingerprintSet):
            return NotImplemented
        return self.rows() == other.rows()

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return sum(len(self._tables[c]) for c in CATEGORIES if c in self._tables)

    def __repr__(self) -> str:
        return "<FingerprintSet %d per-process fingerprints>" % (len(self),)

    # -- the run's view: actors ------------------------------------------------

    def view(self, context: A.RunContext = A.RunContext()) -> "RunView":
        return RunView.build(self, context)

    def fingerprints(self, context: A.RunContext = A.RunContext()) -> List["Fingerprint"]:
        return self.view(context).fingerprints

    def keys(self, context: A.RunContext = A.RunContext()) -> FrozenSet[Tuple[str, str, str]]:
        return frozenset(f.key for f in self.fingerprints(context))


def _bump(table: Dict[str, _Record], value: str, event_id: int) -> _Record:
    record = table.get(value)
    if record is None:
        record = table[value] = [1, event_id, False, False]
    else:
        record[0] += 1
        if event_id < record[1]:
            record[1] = event_id
    return record


def extract(
    events: Iterable[Tuple[int, int, Mapping[str, Any]]],
    credPaths: Iterable[str] = DEFAULT_CRED_PATHS,
) -> FingerprintSet:
    return FingerprintSet(credPaths).addAll(events)


# ---------------------------------------------------------------------------
# Collapsing benign churn

_IN_PACKAGE = re.compile(r"^(.*/node_modules/((?:@[^/]+/)?[^/]+))/(.+)$")
_CACACHE_TMP_FILE = re.compile(r"^(.*/\.npm/_cacache/tmp/<HEX>)/.+$")
NPM_CONFIG_FILES = ("/root/.npmrc", "/etc/npmrc", "/usr/etc/npmrc", "/usr/local/etc/npmrc")


def collapseValue(category: str, value: str, version: str = "") -> str:
    """
    Fold release churn out of a file fingerprint: the release's own version
    string becomes C{<VERSION>}; a path inside an installed package
    (C{.../node_modules/<pkg>/<rest>}) becomes one fingerprint per directory
    role, C{.../node_modules/<pkg>/<first dir>/**} (or C{.../<pkg>/*} for its
    top-level files); npm's cacache temp entries collapse likewise.
    """
    if category not in FILE_CATEGORIES:
        return value
    if version and len(version) >= 3 and version in value:
        value = value.replace(version, "<VERSION>")
    m = _IN_PACKAGE.match(value)
    if m:
        rest = m.group(3)
        slash = rest.find("/")
        if slash < 0:
            return m.group(1) + "/*"
        return "%s/%s/**" % (m.group(1), rest[:slash])
    m = _CACACHE_TMP_FILE.match(value)
    if m:
        return m.group(1) + "/**"
    return value


def packageDirOf(path: str) -> Tuple[str, str]:
    """
    C{(dir, package)} of the innermost installed package a path lies in,
    or C{("", "")}.
    """
    m = _IN_PACKAGE.match(path)
    if m:
        return m.group(1), m.group(2)
    return "", ""


WRITABLE_DIRS = PathPrefixes(("/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/run/user"))


def isWritableExec(binary: str) -> bool:
    """
    An executable in a directory anyone may write (C{/tmp}, C{/dev/shm},
    home directories), outside an installed package tree.
    """
    return binary.startswith("/") and WRITABLE_DIRS.covers(binary) and "/node_modules/" not in binary


# ---------------------------------------------------------------------------
# The run seen by actor


@attrs.frozen
class Fingerprint:
    """
    One behaviour of one actor class: the unit of baselines and deviations.
    C{actor} is the actor (the first one, by evidence) that showed it;
    C{actors} every distinct actor label.
    """

    category: str
    value: str
    actor_class: str
    count: int
    first_event_id: int
    cred: bool
    raw_ip: bool
    actor: A.Actor
    actors: Tuple[str, ...]
    pids: FrozenSet[int]

    @property
    def key(self) -> Tuple[str, str, str]:
        return (self.category, self.value, self.actor_class)


class RunView:
    """
    A run's fingerprints per actor, its process tree and its socket facts.
    """

    def __init__(self) -> None:
        self.tree = A.ProcessTree()
        self.fingerprints: List[Fingerprint] = []
        self.reached_network = False
        self.network_event_id: Optional[int] = None
        #: (pid, destination) -> names carried on that socket.
        self.socket_names: Dict[Tuple[int, str], set] = {}
        #: destination -> names any process carried on it.
        self.dest_names: Dict[str, set] = {}
        self.network_pids: set = set()
        #: Processes that sent a host name (DNS query, SNI, HTTP Host).
        self.naming_pids: set = set()
        self.unresolved: List[Tuple[int, str, str, int]] = []

    @classmethod
    def build(cls, fps: FingerprintSet, context: A.RunContext = A.RunContext()) -> "RunView":
        view = cls()
        tree = view.tree = A.ProcessTree(context)
        net = fps.table(FACT_NETWORK).get(_NETWORK_VALUE)
        if net is not None:
            view.reached_network = True
            view.network_event_id = net[1]
        for value in fps.table(FACT_PPID):
            pid, _, ppid = value.partition(SEP)
            if pid.isdigit() and ppid.isdigit():
                tree.addParent(int(pid), int(ppid))
        for value in fps.table(FACT_FORK):
            parent, child, ts = (value.split(SEP) + ["", "", ""])[:3]
            if parent.isdigit() and child.isdigit():
                tree.addFork(int(parent), int(child), int(ts) if ts.lstrip("-").isdigit() else 0)
        for value in fps.table(FACT_EXIT):
            pid, _, ts = value.partition(SEP)
            if pid.isdigit():
                tree.addExit(int(pid), int(ts) if ts.lstrip("-").isdigit() else 0)
        for value in fps.table(PROC_DETACHED):
            pid = value.partition(SEP)[0].partition(":")[0]
            if pid.isdigit():
                tree.markDetached(int(pid))
        execs: List[Tuple[A.ExecRecord, _Record]] = []
        times = fps.table(FACT_EXEC_TS)
        for value, record in fps.table(FACT_EXEC).items():
            ts = times.get(value)
            parsed = _parseExec(value, record[1], ts[1] if ts is not None else 0)
            if parsed is not None:
                execs.append((parsed, record))
                tree.addExec(parsed)
        for value in fps.table(FACT_SOCK):
            pid, dest, name = (value.split(SEP) + ["", "", ""])[:3]
            if pid.lstrip("-").isdigit() and dest and name:
                view.naming_pids.add(int(pid))
                view.socket_names.setdefault((int(pid), dest), set()).add(name)
                view.dest_names.setdefault(dest, set()).add(name)
        for value, record in fps.table(FACT_UNRESOLVED).items():
            pid, raw, reason = (value.split(SEP) + ["", "", ""])[:3]
            view.unresolved.append((int(pid) if pid.isdigit() else 0, raw, reason, record[1]))

        # Per-process rows roll up per actor class.  First pass: rows by the
        # process they came from (the row keys also name each process's
        # parent, which completes the tree); second: per actor class.
        version = context.version
        byProcess: Dict[str, List[Tuple[str, str, _Record]]] = {}
        for category in CATEGORIES:
            for value, record in fps.table(category).items():
                pid_s, sep, rest = value.partition(SEP)
                if not sep:
                    pid_s, rest = "", value  # legacy row (before actors): npm
                rows = byProcess.get(pid_s)
                if rows is None:
                    rows = byProcess[pid_s] = []
                rows.append((category, rest, record))
        pidOf = {pid_s: (_pidAndParent(pid_s, tree) if pid_s else -1) for pid_s in byProcess}
        for pid_s, rows in byProcess.items():
            # The package whose files a process read first (lowest event
            # id): a fallback for naming a script's package.
            best: Optional[Tuple[int, str]] = None
            for category, rest, record in rows:
                if category == FS_READ and "/node_modules/" in rest and (best is None or record[1] < best[0]):
                    package = packageDirOf(rest)[1]
                    if package and not package.startswith("."):
                        best = (record[1], package)
            if best is not None and pidOf[pid_s] > 0:
                tree.hintPackage(pidOf[pid_s], best[1])
        misses = A.pathSearchMisses(e for e, _ in execs)
        for record, stored in execs:
            if (record.pid, record.ts, record.binary) in misses:
                continue
            key = "%d" % (record.pid,)
            pidOf.setdefault(key, record.pid)
            byProcess.setdefault(key, []).append((PROC_EXEC, record.binary, stored))

        actorCache: Dict[int, List[A.Actor]] = {}
        groups: Dict[Tuple[str, str, str], List[Any]] = {}
        collapsed: Dict[Tuple[str, str], str] = {}
        for pid_s, rows in byProcess.items():
            pid = pidOf[pid_s]
            actors = actorCache.get(pid)
            if actors is None:
                actors = actorCache[pid] = [A.Actor(A.ACTOR_NPM)] if pid < 0 else tree.actorsOf(pid)
            for category, rest, (count, first, cred, rawIP) in rows:
                ck = (category, rest)
                shown = collapsed.get(ck)
                if shown is None:
                    if category == PROC_EXEC:
                        shown = normalizeExec(rest)
                    else:
                        shown = collapseValue(category, rest, version)
                    collapsed[ck] = shown
                if category in OUTBOUND_CATEGORIES:
                    view.network_pids.add(pid)
                    if category in (NET_DNS, NET_HTTPS_HOST, NET_HTTP):
                        view.naming_pids.add(pid)
                for actor in actors:
                    key = (category, shown, actor.cls)
                    g = groups.get(key)
                    if g is None:
                        groups[key] = [count, first, cred, rawIP, actor, {pid}]
                    else:
                        g[0] += count
                        if first < g[1]:
                            g[1] = first
                            g[4] = actor
                        if cred:
                            g[2] = True
                        if rawIP:
                            g[3] = True
                        g[5].add(pid)
        fingerprints = []
        for (c, v, ac), g in groups.items():
            pids = frozenset(g[5])
            labels = sorted({a.label for pid in pids for a in actorCache[pid] if a.cls == ac})
            fingerprints.append(Fingerprint(c, v, ac, g[0], g[1], bool(g[2]), bool(g[3]), g[4], tuple(labels), pids))
        fingerprints.sort(key=lambda f: (f.category, f.value, f.actor_class))
        view.fingerprints = fingerprints
        return view

    def socketNamed(self, pids: AbstractSet[int], destination: str) -> set:
        names: set = set()
        for pid in pids:
            names |= self.socket_names.get((pid, destination), set())
        return names


def _pidAndParent(text: str, tree: A.ProcessTree) -> int:
    """
    C{"<pid>:<ppid>"} or C{"<pid>"} of a stored row: the pid, the parent
    told to the tree.  0 when unreadable.
    """
    pid_s, _, ppid_s = text.partition(":")
    if not pid_s.isdigit():
        return 0
    pid = int(pid_s)
    if ppid_s.isdigit():
        tree.addParent(pid, int(ppid_s))
    return pid


def _parseExec(value: str, eventID: int, ts: int) -> Optional[A.ExecRecord]:
    try:
        pid_s, detail = value.split(SEP, 1)
        fields = detail.split(_FS)
        binary, ppid, ancestors, cwd, lifecycle, failed = fields[:6]
        pairs = []
        for item in ancestors.split(",") if ancestors else ():
            a, _, b = item.partition(":")
            pairs.append((int(a), int(b)))
        return A.ExecRecord(
            pid=int(pid_s), ppid=int(ppid), ts=ts, event_id=eventID, binary=binary,
            argv=tuple(fields[6:]), ancestors=tuple(pairs), cwd=cwd, lifecycle=lifecycle,
            failed={"1": True, "0": False}.get(failed),
        )
    except (ValueError, TypeError):
        return None


# ---------------------------------------------------------------------------
# Severity rules

FLAG_CRED = "cred"
FLAG_NETWORK = "network"
FLAG_RAW_IP = "raw_ip"
FLAG_PROVIDER_RANGE = "provider_range"
FLAG_SCRIPT = "script"
FLAG_NPM = "npm"
FLAG_NPM_CONFIG = "npm_config"
FLAG_OWN_PACKAGE = "own_package"
FLAG_WRITABLE_EXEC = "writable_exec"
FLAG_DETACHED = "detached"
FLAG_TREE_OUTBOUND = "tree_outbound"
FLAG_TREE_CRED = "tree_cred"
FLAG_TREE_WRITABLE_EXEC = "tree_writable_exec"
FLAG_TREE_NETWORK = "tree_network"
FLAG_PROC_CRED = "process_cred"
FLAG_ACCOUNT_DB = "account_db"
FLAG_OUTSIDE_WRITE = "outside_write"
FLAG_NAMING_PROCESS = "naming_process"
ACCOUNT_DB_FILES = ("/etc/passwd", "/etc/group")
FLAGS = frozenset((
    FLAG_CRED, FLAG_NETWORK, FLAG_RAW_IP, FLAG_PROVIDER_RANGE, FLAG_SCRIPT, FLAG_NPM, FLAG_NPM_CONFIG,
    FLAG_OWN_PACKAGE, FLAG_WRITABLE_EXEC, FLAG_DETACHED, FLAG_TREE_OUTBOUND, FLAG_TREE_CRED,
    FLAG_TREE_WRITABLE_EXEC, FLAG_TREE_NETWORK, FLAG_PROC_CRED, FLAG_ACCOUNT_DB, FLAG_OUTSIDE_WRITE,
    FLAG_NAMING_PROCESS,
))

#: Where an install script has no business writing: home directories and
#: system configuration (shell startup files, autostart, cron, profile.d),
#: outside installed packages and npm's own cache.
PERSISTENCE_DIRS = PathPrefixes(("/root", "/home", "/etc", "/usr/local/bin", "/usr/bin", "/var/spool/cron"))


def _persistencePath(path: str) -> bool:
    return (
        PERSISTENCE_DIRS.covers(path)
        and "/node_modules/" not in path
        and "/.npm/" not in path
        and "/.cache/" not in path
    )


@attrs.frozen
class SeverityRule:
    category: str
    requires: FrozenSet[str]
    unless: FrozenSet[str]
    severity: Severity
    reason: str

    def matches(self, category: str, flags: AbstractSet[str]) -> bool:
        return (
            (self.category == "*outbound" and category in OUTBOUND_CATEGORIES or category == self.category)
            and self.requires <= flags
            and self.unless.isdisjoint(flags)
        )


def _rule(category: str, requires: str, unless: str, severity: Severity, reason: str) -> SeverityRule:
    return SeverityRule(
        category, frozenset(requires.split()), frozenset(unless.split()), severity, reason
    )


_L, _M, _H, _C = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL
_OUT = "*outbound"

#: First matching row wins.  C{tree_*} flags are chains: facts of the same
#: actor's process tree (one install script and all its descendants; or all
#: of npm; or all of "other").  C{{provider}} is the provider's name.
SEVERITY_RULES: Tuple[SeverityRule, ...] = (
    # category        requires                    unless          sev  reason
    _rule(CANARY,     "",                         "",             _C, "a planted credential (canary) left the sandbox"),
    _rule(FS_READ,    "cred tree_outbound",       "npm_config",   _C, "credential read and a new outbound destination in the same process tree"),
    _rule(FS_WRITE,   "cred tree_outbound",       "npm_config",   _C, "write to a credential path and a new outbound destination in the same process tree"),
    _rule(_OUT,       "tree_cred",                "",             _C, "new outbound destination from a process tree that read a credential"),
    _rule(FS_READ,    "cred npm_config npm",      "",             _L, "npm reads its own configuration"),
    _rule(FS_READ,    "cred account_db",          "script",       _L, "account database read by the container runtime or npm (user lookup)"),
    _rule(FS_READ,    "cred",                     "",             _H, "read of cred-tagged path"),
    _rule(FS_WRITE,   "cred",                     "",             _H, "write to cred-tagged path"),
    _rule(PROC_IO_URING, "",                      "",             _H, "io_uring used (its I/O is invisible to the sensor)"),
    _rule(PROC_DETACHED, "tree_network",          "",             _H, "detached process that reached the network"),
    _rule(PROC_DETACHED, "",                      "",             _M, "process left running after the install (detached)"),
    _rule(PROC_EXEC,  "writable_exec tree_outbound", "",          _H, "new executable from a writable directory, and a new outbound destination in the same tree"),
    _rule(_OUT,       "tree_writable_exec",       "",             _H, "new outbound destination from a process tree that ran an executable from a writable directory"),
    _rule(_OUT,       "detached",                 "",             _H, "new outbound destination from a detached process"),
    _rule(NET_DESTINATION, "raw_ip provider_range process_cred", "", _H, "connection into a {provider} range, no allowlisted or baselined name on the socket, by a process that read a credential"),
    _rule(NET_DESTINATION, "raw_ip",              "provider_range", _H, "connection to a raw IP outside every allowlist"),
    _rule(NET_DESTINATION, "raw_ip provider_range", "",           _M, "connection into a {provider} range without an allowlisted or baselined name (TLS SNI / HTTP Host) on that socket"),
    _rule(NET_DESTINATION, "",                    "",             _M, "new network destination"),
    _rule(NET_EGRESS, "raw_ip",                   "",             _H, "egress attempt to a raw IP"),
    _rule(NET_EGRESS, "",                         "",             _M, "new egress attempt"),
    _rule(NET_UDP,    "",                         "",             _M, "new UDP destination"),
    _rule(NET_DNS,    "",                         "",             _M, "new DNS name queried"),
    _rule(NET_HTTPS_HOST, "",                     "",             _M, "new TLS server name (SNI)"),
    _rule(NET_HTTP,   "",                         "",             _M, "new plain-HTTP host"),
    _rule(PROC_EXEC,  "writable_exec",            "",             _M, "new executable from a writable directory"),
    _rule(PROC_EXEC,  "",                         "",             _M, "new executable run"),
    _rule(FS_WRITE,   "own_package script",       "",             _L, "build output inside the script's own package directory"),
    _rule(FS_WRITE,   "outside_write script",     "",             _M, "install script wrote into a home or system directory (persistence?)"),
    _rule(FS_READ,    "",                         "",             _L, "new path read"),
    _rule(FS_WRITE,   "",                         "",             _L, "new path written"),
)  # fmt: skip


def classify(category: str, flags: AbstractSet[str], provider: str = "") -> Tuple[Severity, str]:
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
    actor: str = A.ACTOR_OTHER
    detail: Mapping[str, Any] = attrs.field(factory=dict)
    #: The rule flags that held (not stored; for L{firstRunFinding}).
    flags: FrozenSet[str] = attrs.field(default=frozenset(), eq=False)

    @property
    def severity_label(self) -> str:
        return self.severity.label

    @property
    def actor_label(self) -> str:
        return str(self.detail.get("label") or self.actor)


@attrs.frozen
class ManifestDelta:
    """
    A change in the registry's manifest of the release (see
    L{fangs.orchestrator.manifest}).
    """

    category: str
    value: str
    severity: Severity
    reason: str


def _treeKeys(f: Fingerprint) -> List[Tuple[str, int]]:
    """
    The process trees a fingerprint belongs to, for chains: one install
    script (and its descendants); all of npm; each process of unknown
    lineage on its own.
    """
    a = f.actor
    if a.cls == A.ACTOR_SCRIPT:
        return [(a.label, a.pid)]
    if a.cls == A.ACTOR_NPM:
        return [(a.cls, 0)]
    return [(a.cls, pid) for pid in sorted(f.pids)]


def _allowed(f: Fingerprint, view: RunView, allow: Allowlist, baselineKeys: AbstractSet[Tuple[str, str, str]]) -> Tuple[bool, str]:
    """
    Whether an allowlist (or, for provider ranges, a named socket) hides
    C{f}; and the provider name for a destination in a provider range.
    """
    c = f.category
    if c in FILE_CATEGORIES:
        return allow.coversPath(f.value, cred=f.cred), ""
    if c == PROC_EXEC:
        return allow.coversExec(f.value), ""
    if c == NET_DNS:
        return allow.coversName(KIND_DNS, f.value), ""
    if c == NET_HTTPS_HOST:
        return allow.coversName(KIND_SNI, f.value), ""
    if c == NET_HTTP:
        host = f.value.partition(" ")[2].split(":")[0]
        return allow.coversName(KIND_SNI, host), ""
    if c == NET_EGRESS:
        # "<protocol> <name or ip>[:port]"
        where = f.value.partition(" ")[2]
        host, _ = splitDestination(where) if where.count(":") <= 1 or where.startswith("[") else (where, -1)
        address = parseIP(host)
        if address is not None:
            return allow.cidrFor(address) is not None, ""
        return allow.coversName(KIND_SNI, host) or allow.coversName(KIND_DNS, host), ""
    if c in (NET_DESTINATION, NET_UDP):
        host, _ = splitDestination(f.value)
        address = parseIP(host)
        if allow.cidrFor(address) is not None:
            return True, ""
        provider = providerFor(address) or ""
        if provider and f.pids and all(
            any(_goodName(name, allow, baselineKeys) for name in view.socketNamed({pid}, f.value)) for pid in f.pids
        ):
            # Socket level: every process's socket to it carried a name
            # that is allowlisted or in the baseline.
            return True, provider
        return False, provider
    return False, ""


def _goodName(name: str, allow: Allowlist, baselineKeys: AbstractSet[Tuple[str, str, str]]) -> bool:
    if allow.coversName(KIND_SNI, name) or allow.coversName(KIND_DNS, name):
        return True
    for ac in A.ACTOR_CLASSES:
        if (NET_HTTPS_HOST, name, ac) in baselineKeys:
            return True
        if any((NET_HTTP, v, ac) in baselineKeys for v in _httpValues(name)):
            return True
    return False


def _httpValues(name: str) -> List[str]:
    return ["%s %s" % (m, name) for m in ("GET", "POST", "PUT", "HEAD", "CONNECT")]


def _deviation(f: Fingerprint, severity: Severity, reason: str, flags: AbstractSet[str] = frozenset()) -> Deviation:
    a = f.actor
    detail = a.asDict()
    detail["actors"] = list(f.actors)
    who = a.label
    if a.pid:
        who += " (pid %d%s)" % (a.pid, ": " + " ".join(a.argv)[:160] if a.argv else "")
    return Deviation(f.category, f.value, severity, f.first_event_id, f.count, "%s; by %s" % (reason, who), a.cls, detail,
                     frozenset(flags))


def diff(
    view: Union[RunView, FingerprintSet],
    baselineKeys: AbstractSet[Tuple[str, str, str]],
    allow: Allowlist = EMPTY_ALLOWLIST,
    context: A.RunContext = A.RunContext(),
) -> List[Deviation]:
    """
    The run's actor fingerprints that are neither in C{baselineKeys} (a set
    of C{(category, value, actor_class)}) nor allowlisted, with severity and
    reason; most severe first.
    """
    if isinstance(view, FingerprintSet):
        view = view.view(context)
    new: List[Tuple[Fingerprint, str]] = []
    for f in view.fingerprints:
        # (category, value) keys without an actor (from before actors)
        # match every actor.
        if f.key in baselineKeys or (f.category, f.value) in baselineKeys:
            continue
        allowed, provider = _allowed(f, view, allow, baselineKeys)
        if not allowed:
            new.append((f, provider))
    # Chains: facts of each actor's process tree among the new fingerprints.
    treeFacts: Dict[Tuple[str, int], set] = {}
    credPids: set = set()
    for f, _ in new:
        found = set()
        if f.category in OUTBOUND_CATEGORIES:
            found.add(FLAG_TREE_OUTBOUND)
        if f.category == CANARY or (f.category in FILE_CATEGORIES and f.cred and not _npmConfig(f)):
            found.add(FLAG_TREE_CRED)
            credPids |= f.pids
        if f.category == PROC_EXEC and isWritableExec(f.value):
            found.add(FLAG_TREE_WRITABLE_EXEC)
        for key in _treeKeys(f):
            treeFacts.setdefault(key, set()).update(found)
    networkTrees = set()
    for f in view.fingerprints:
        if f.category in OUTBOUND_CATEGORIES:
            networkTrees.update(_treeKeys(f))
        elif f.category in FILE_CATEGORIES and f.cred and not _npmConfig(f):
            credPids |= f.pids  # baselined or not: "the process also read a credential"
    out = []
    for f, provider in new:
        keys = _treeKeys(f)
        flags = set()
        for key in keys:
            flags |= treeFacts.get(key, set())
        if view.reached_network:
            flags.add(FLAG_NETWORK)
        if any(key in networkTrees for key in keys):
            flags.add(FLAG_TREE_NETWORK)
        if f.actor_class == A.ACTOR_SCRIPT:
            flags.add(FLAG_SCRIPT)
        elif f.actor_class == A.ACTOR_NPM:
            flags.add(FLAG_NPM)
        if f.actor.detached:
            flags.add(FLAG_DETACHED)
        if f.category in FILE_CATEGORIES:
            if f.cred:
                flags.add(FLAG_CRED)
            if _npmConfig(f):
                flags.add(FLAG_NPM_CONFIG)
            if f.value in ACCOUNT_DB_FILES:
                flags.add(FLAG_ACCOUNT_DB)
            if f.actor.package and packageDirOf(f.value)[1] == f.actor.package:
                flags.add(FLAG_OWN_PACKAGE)
        if f.category == PROC_EXEC and isWritableExec(f.value):
            flags.add(FLAG_WRITABLE_EXEC)
        if f.raw_ip and not (f.category in (NET_DESTINATION, NET_UDP) and view.socketNamed(f.pids, f.value)):
            flags.add(FLAG_RAW_IP)
            if not f.pids.isdisjoint(view.naming_pids):
                flags.add(FLAG_NAMING_PROCESS)
        if provider:
            flags.add(FLAG_PROVIDER_RANGE)
        if not f.pids.isdisjoint(credPids):
            flags.add(FLAG_PROC_CRED)
        if f.category == FS_WRITE and f.actor_class == A.ACTOR_SCRIPT and _persistencePath(f.value):
            flags.add(FLAG_OUTSIDE_WRITE)
        severity, reason = classify(f.category, flags, provider)
        out.append(_deviation(f, severity, reason, flags))
    out.sort(key=lambda d: (-d.severity, d.category, d.value, d.actor))
    return out


def _npmConfig(f: Fingerprint) -> bool:
    return f.category == FS_READ and (f.value in NPM_CONFIG_FILES or f.value.endswith("/.npmrc")) and f.actor_class == A.ACTOR_NPM


def firstRunFinding(d: Deviation) -> bool:
    """
    A finding that keeps a package's first run from seeding the baseline
    silently: a credential read by a script, a canary, a raw-IP destination
    (no name on the socket), a new exec from a writable directory, or
    anything high or above.
    """
    if d.severity >= Severity.HIGH:
        return True
    if d.category == CANARY:
        return True
    if d.category in FILE_CATEGORIES and d.actor == A.ACTOR_SCRIPT and FLAG_CRED in d.flags:
        return True
    if d.category in (NET_DESTINATION, NET_UDP, NET_EGRESS) and FLAG_RAW_IP in d.flags and FLAG_NAMING_PROCESS not in d.flags:
        return True
    if d.category == PROC_EXEC and isWritableExec(d.value):
        return True
    return False


# ---------------------------------------------------------------------------
# Verdict and plan

VERDICT_BASELINE = "baseline"
VERDICT_CLEAN = "clean"
VERDICT_DEVIATIONS = "deviations"
VERDICT_INCOMPLETE = "incomplete"
VERDICT_REJECTED = "rejected"
VERDICTS = (VERDICT_BASELINE, VERDICT_CLEAN, VERDICT_DEVIATIONS, VERDICT_INCOMPLETE, VERDICT_REJECTED)

COMPLETE_STATE = "ok"

#: Only findings at or above this make a run wait for a person.
BLOCKING = Severity.MEDIUM


def isComplete(runState: str, eventsDropped: int) -> bool:
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
    C{rejected} > C{incomplete} > C{baseline} (promoted, or no baseline) >
    C{clean} (no blocking deviation) > C{deviations}.  C{deviations} counts
    blocking ones (a plain int), or is a sequence of L{Deviation}s.
    """
    if isinstance(deviations, int):
        count = deviations
    else:
        count = sum(1 for d in deviations if getattr(d, "severity", BLOCKING) >= BLOCKING)  # type: ignore[union-attr]
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
    What the storage layer does, in one transaction: set the verdict;
    replace the run's deviation rows with C{deviations} (on C{clean} they are
    the C{low} notes); insert C{baseline_add} keys C{(category, value,
    actor_class)} with counts; C{reason} explains an C{incomplete} or a held
    first run.
    """

    verdict: str
    complete: bool
    in_baseline: bool
    deviations: Tuple[Deviation, ...]
    baseline_add: Tuple[Fingerprint, ...]
    max_severity: Optional[Severity]
    reason: str = ""

    @property
    def blocking(self) -> Tuple[Deviation, ...]:
        return tuple(d for d in self.deviations if d.severity >= BLOCKING)


def planAnalysis(
    fingerprints: Union[FingerprintSet, Iterable[FingerprintRow]],
    baselineKeys: AbstractSet[Tuple[str, str, str]],
    allow: Allowlist = EMPTY_ALLOWLIST,
    *,
    runState: str,
    eventsDropped: int,
    hasBaseline: bool,
    rejected: bool = False,
    promoted: bool = False,
    context: A.RunContext = A.RunContext(),
    manifestDeltas: Sequence[ManifestDelta] = (),
) -> AnalysisPlan:
    """
    Decide the whole analysis of one run.  Pure: same inputs, same plan.

    Without a baseline the run is compared with an empty one: a first run
    with a L{firstRunFinding} is C{deviations} (it waits for a person, who
    may promote it), otherwise it seeds the baseline.  Unresolved file
    accesses make a run C{incomplete} unless their raw path is absolute
    (then they are judged as reads of that path).
    """
    if not isinstance(fingerprints, FingerprintSet):
        fingerprints = FingerprintSet.fromRows(fingerprints)
    view = fingerprints.view(context)
    reason = ""
    unresolved = [u for u in view.unresolved if not u[1].startswith("/")]
    extra: List[Deviation] = []
    if unresolved:
        runState = runState if runState != COMPLETE_STATE else "unresolved"
        reason = "%d file access(es) the sensor could not resolve (e.g. %r: %s)" % (
            len(unresolved), unresolved[0][1], unresolved[0][2] or "unknown")
        who = view.tree.actorOf(unresolved[0][0])
        more = " (+%d more)" % (len(unresolved) - 1) if len(unresolved) > 1 else ""
        extra.append(Deviation(RUN_UNRESOLVED, (unresolved[0][1] or "?") + more, Severity.MEDIUM,
                               unresolved[0][3], len(unresolved), reason, who.cls, who.asDict()))
    deviations: List[Deviation] = list(diff(view, baselineKeys if hasBaseline else frozenset(), allow, context))
    for m in manifestDeltas:
        deviations.append(Deviation(m.category, m.value, m.severity, 0, 1, m.reason, "registry", {"label": "registry", "class": "registry"}))
    deviations.sort(key=lambda d: (-d.severity, d.category, d.value, d.actor))
    held = False
    if not hasBaseline and not promoted and isComplete(runState, eventsDropped):
        findings = [d for d in deviations if firstRunFinding(d)]
        if findings:
            held = True
            deviations = findings
            if not reason:
                reason = "first run of the package, held for review: %d finding(s) of the kind that must not seed a baseline silently" % (len(findings),)
    if held and not rejected and isComplete(runState, eventsDropped):
        outcome = VERDICT_DEVIATIONS
    else:
        outcome = verdict(runState, eventsDropped, hasBaseline, deviations, rejected, promoted)
    inBaseline = outcome in (VERDICT_BASELINE, VERDICT_CLEAN)
    written: Tuple[Deviation, ...] = ()
    if outcome in (VERDICT_DEVIATIONS, VERDICT_INCOMPLETE, VERDICT_REJECTED):
        written = tuple(extra + deviations) if (hasBaseline or held) else tuple(extra)
    elif outcome == VERDICT_CLEAN:
        written = tuple(d for d in deviations if d.severity < BLOCKING)
    baselineAdd: Tuple[Fingerprint, ...] = ()
    if inBaseline:
        baselineAdd = tuple(f for f in view.fingerprints if not _allowed(f, view, allow, baselineKeys)[0])
    blocking = [d for d in written if d.severity >= BLOCKING] if outcome != VERDICT_CLEAN else []
    return AnalysisPlan(
        verdict=outcome,
        complete=isComplete(runState, eventsDropped),
        in_baseline=inBaseline,
        deviations=written,
        baseline_add=baselineAdd,
        max_severity=max((d.severity for d in blocking), default=None),
        reason=reason,
    )


__all__ = [
    "AnalysisPlan",
    "CATEGORIES",
    "DEFAULT_CRED_PATHS",
    "Deviation",
    "Fingerprint",
    "FingerprintRow",
    "FingerprintSet",
    "ManifestDelta",
    "RunView",
    "SEVERITY_RULES",
    "Severity",
    "SeverityRule",
    "VERDICTS",
    "classify",
    "collapseValue",
    "diff",
    "extract",
    "firstRunFinding",
    "isComplete",
    "normalizeDNS",
    "normalizeExec",
    "normalizePath",
    "normalizeSNI",
    "planAnalysis",
    "severityRank",
    "verdict",
]
