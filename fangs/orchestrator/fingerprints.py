"""
Fingerprints of a run: one row per (category, normalised value), with counts
and first event ids, built incrementally from event payloads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Iterable, List, Mapping, Tuple

import attrs

from fangs.orchestrator import actors as A
from fangs.orchestrator.allowlist import PathPrefixes, canonicalPath, formatDestination, normalizeHostName
from fangs.wire import TAG_CRED_ACCESS
from fangs.orchestrator.categories import (
    NET_DESTINATION,
    NET_DNS,
    NET_HTTPS_HOST,
    FS_READ,
    FS_WRITE,
    NET_HTTP,
    NET_UDP,
    NET_EGRESS,
    PROC_IO_URING,
    PROC_DETACHED,
    CANARY,
    CATEGORIES,
    FACT_NETWORK,
    FACT_EXEC,
    FACT_EXEC_TS,
    FACT_FORK,
    FACT_EXIT,
    FACT_SOCK,
    FACT_UNRESOLVED,
    FACT_CATEGORIES,
    SEP,
    _FS,
    _NETWORK_VALUE,
    FILE_ACCESS,
    EXEC,
    NET_CONNECT,
    DNS_QUERY,
    TLS_SNI,
    HTTP_REQUEST,
    UDP_SEND,
    IO_URING,
    CANARY_EXFILTRATED,
    DETACHED,
    UNRESOLVED,
    EGRESS_ATTEMPT,
    PROCESS_FORK,
    PROCESS_EXIT,
    WRITE_INTENT,
    DEFAULT_CRED_PATHS,
)
from fangs.orchestrator.normalize import _applyRules, normalizeExec

if TYPE_CHECKING:
    from fangs.orchestrator.runview import Fingerprint, RunView


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
_NORMALISERS: Dict[Tuple[str, ...], Tuple[PathPrefixes, PathPrefixes, Dict[str, Tuple[str, bool]]]] = {}
_NORMALISERS_LIMIT = 64


def _normaliser(credPaths: Tuple[str, ...]) -> Tuple[PathPrefixes, PathPrefixes, Dict[str, Tuple[str, bool]]]:
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
        # built for them (one per stored group of batches): a path seen in
        # an earlier batch is not normalised again.
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
        from fangs.orchestrator.runview import RunView  # builds on this module

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
