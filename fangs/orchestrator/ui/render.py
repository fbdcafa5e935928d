"""
The dashboard's rendering: the Jinja2 environment and the security headers
of every page, and the helpers that turn stored runs and events into what
the templates show (times, summaries, the process tree, generic tables).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jinja2
import orjson
from twisted.web.iweb import IRequest

from fangs import wire
from fangs.egresstext import describeAttempt
from fangs.orchestrator import differ
from fangs.orchestrator import store as S

#: The dashboard's templates and static files sit beside its package.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(HERE, "templates")
STATIC = os.path.join(HERE, "static")

CSP = b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
EVENTS_PER_PAGE = 100
#: Egress attempts listed on a run page (the events table has them all).
EGRESS_LIST_LIMIT = 200

#: The process tree is built from at most this many events of a run (plus
#: the deviations' evidence events); the page says so when it stops short.
TREE_EVENT_CAP = 5000
TREE_ITEMS_PER_KIND = 40
VERDICTS = ("baseline", "clean", "deviations", "incomplete", "rejected")
SEVERITIES = ("critical", "high", "medium", "low")
TYPE_ORDER = ("exec", "net_connect", "dns_query", "tls_sni", "file_access")
NANO = 1_000_000_000


def environment() -> jinja2.Environment:
    """
    The dashboard's templates: autoescaped (every path, argv, DNS name and
    SNI in an event was chosen by package code), strict about undefined names.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(short=shortID, abstime=absTime, duration=duration, truncate=truncate)
    env.globals.update(typeName=typeName, VERDICTS=VERDICTS, SEVERITIES=SEVERITIES)
    return env


def secureHeaders(request: IRequest) -> None:
    """
    What every dashboard answer carries: its CSP (no inline script, no
    framing), and no sniffing, caching or cross-site referrers.
    """
    request.setHeader(b"Content-Security-Policy", CSP)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"same-origin")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Cache-Control", b"no-store")


# -- formatting helpers (also Jinja filters) ---------------------------------


def shortID(value: Optional[str]) -> str:
    return (value or "")[:12]


def absTime(ns: Optional[int]) -> str:
    if not ns:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / NANO)) + " UTC"


def relTime(ns: Optional[int], nowNs: int) -> str:
    if not ns:
        return "—"
    d = (nowNs - ns) / NANO
    if d < -1:
        return "in the future"
    d = max(d, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= size:
            return "%d%s ago" % (d // size, unit)
    return "%ds ago" % (d,)


def duration(ns: Optional[int]) -> str:
    if not ns:
        return "—"
    if ns < 1_000_000:
        return "%d µs" % (ns // 1000,)
    if ns < NANO:
        return "%d ms" % (ns // 1_000_000,)
    if ns < 60 * NANO:
        return "%.1f s" % (ns / NANO,)
    return "%dm %02ds" % (ns // (60 * NANO), (ns // NANO) % 60)


def truncate(value: Any, n: int = 100) -> str:
    s = "" if value is None else str(value)
    return s if len(s) <= n else s[: n - 1] + "…"


def eventSummary(etype: int, p: Dict[str, Any]) -> str:
    """
    One line about an event: the path, the command line, the destination,
    the query name or the SNI.
    """
    if etype == wire.EventType.FILE_ACCESS:
        return str(p.get("PathName", ""))
    if etype == wire.EventType.EXEC:
        argv = p.get("ArgvStrs") or []
        binary = str(p.get("BinaryPathStr", ""))
        if isinstance(argv, list) and argv:
            return binary + "  ⟶  " + " ".join(str(a) for a in argv)
        return binary
    if etype == wire.EventType.NET_CONNECT:
        return _hostPort(p.get("DestIP"), p.get("DestPort"))
    if etype == wire.EventType.DNS_QUERY:
        return str(p.get("QName", ""))
    if etype == wire.EventType.TLS_SNI:
        return str(p.get("SNI", ""))
    if etype == wire.EventType.EGRESS_ATTEMPT:
        return describeAttempt(p)
    return truncate(json.dumps(p, sort_keys=True), 200)


def _hostPort(ip: Any, port: Any) -> str:
    ip = str(ip or "")
    return ("[%s]:%s" if ":" in ip else "%s:%s") % (ip, port)


def _header(p: Dict[str, Any]) -> Dict[str, Any]:
    h = p.get("Header")
    return h if isinstance(h, dict) else {}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def isCred(p: Dict[str, Any]) -> bool:
    return bool(_int(_header(p).get("Tags")) & wire.TAG_CRED_ACCESS)


def typeName(t: int) -> str:
    return wire.EVENT_TYPE_NAMES.get(t, "type %d" % (t,))


def typeSortKey(name: str) -> Tuple[int, str]:
    return (TYPE_ORDER.index(name) if name in TYPE_ORDER else len(TYPE_ORDER), name)


# -- the process tree ----------------------------------------------------------


class Process:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ppid = 0
        self.comm = ""
        self.binary = ""
        self.argv: List[str] = []
        self.children: List["Process"] = []
        #: kind -> {summary: [count, cred, first event id, evidence]}
        self.items: Dict[str, Dict[str, List[Any]]] = {"file": {}, "net": {}, "dns": {}, "sni": {}}
        self.evidence = False
        #: The id of an exec event of this process that is a deviation's evidence.
        self.execEvidence = 0
        self.onEvidencePath = False
        self.depth = 0

    def add(self, kind: str, summary: str, eventID: int, cred: bool, evidence: bool) -> None:
        slot = self.items[kind].get(summary)
        if slot is None:
            self.items[kind][summary] = [1, cred, eventID, evidence]
        else:
            slot[0] += 1
            slot[1] = slot[1] or cred
            if evidence:
                slot[2], slot[3] = eventID, True
        if evidence:
            self.evidence = True

    def listed(self, kind: str) -> List[Tuple[str, int, bool, int, bool]]:
        """
        Up to L{TREE_ITEMS_PER_KIND} items, evidence and cred first.
        """
        rows = [(s, v[0], v[1], v[2], v[3]) for s, v in self.items[kind].items()]
        rows.sort(key=lambda r: (not r[4], not r[2], r[3]))
        return rows[:TREE_ITEMS_PER_KIND]

    def more(self, kind: str) -> int:
        return max(0, len(self.items[kind]) - TREE_ITEMS_PER_KIND)

    def total(self) -> int:
        return sum(len(v) for v in self.items.values())


_KIND_OF = {
    wire.EventType.FILE_ACCESS: "file",
    wire.EventType.NET_CONNECT: "net",
    wire.EventType.DNS_QUERY: "dns",
    wire.EventType.TLS_SNI: "sni",
}


def processTree(events: Sequence[S.StoredEvent], evidenceIDs: Sequence[int] = ()) -> List[Process]:
    """
    The run's processes in depth-first order (each with its C{depth}): one
    per C{Header.PID}, parent from C{Header.PPID}, binary and argv from
    exec events, and each process's files, connections, DNS names and SNIs
    (deduplicated with counts).  Processes holding a deviation's evidence,
    and their ancestors, are marked.
    """
    evidence = set(evidenceIDs)
    procs: Dict[int, Process] = {}
    seen = set()
    for e in events:
        if e.id in seen:
            continue
        seen.add(e.id)
        try:
            p = orjson.loads(e.data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(p, dict):
            continue
        h = _header(p)
        pid = _int(h.get("PID")) or e.pid
        proc = procs.get(pid)
        if proc is None:
            proc = procs[pid] = Process(pid)
        ppid = _int(h.get("PPID"))
        comm = p.get("CommStr")
        if e.type == wire.EventType.EXEC:
            proc.binary = str(p.get("BinaryPathStr", ""))
            argv = p.get("ArgvStrs")
            proc.argv = [str(a) for a in argv] if isinstance(argv, list) else []
            if ppid:
                proc.ppid = ppid
            if isinstance(comm, str) and comm:
                proc.comm = comm
            if e.id in evidence:
                proc.evidence = True
                proc.execEvidence = e.id
            continue
        if ppid and not proc.ppid:
            proc.ppid = ppid
        if isinstance(comm, str) and comm and not proc.comm:
            proc.comm = comm
        kind = _KIND_OF.get(e.type)
        if kind is not None:
            proc.add(kind, eventSummary(e.type, p), e.id, isCred(p), e.id in evidence)
    roots = []
    for proc in procs.values():
        parent = procs.get(proc.ppid)
        if parent is None or parent is proc:
            roots.append(proc)
        else:
            parent.children.append(proc)
    out: List[Process] = []
    visited = set()
    stack = [(r, 0) for r in sorted(roots, key=lambda r: r.pid, reverse=True)]
    while stack:
        proc, depth = stack.pop()
        if proc.pid in visited:
            continue
        visited.add(proc.pid)
        proc.depth = depth
        out.append(proc)
        for c in sorted(proc.children, key=lambda c: c.pid, reverse=True):
            stack.append((c, depth + 1))
    # A parent cycle leaves processes unreached from any root: show them too.
    out.extend(p for p in sorted(procs.values(), key=lambda p: p.pid) if p.pid not in visited)
    for proc in procs.values():
        if proc.evidence:
            up, guard = procs.get(proc.ppid), 0
            while up is not None and not up.onEvidencePath and guard < 10_000:
                up.onEvidencePath = True
                up, guard = procs.get(up.ppid), guard + 1
    return out


def _actions(run: S.RunRow) -> List[Tuple[str, str, str]]:
    """
    The decisions offered on a finished run: (decision, label, confirm text).
    """
    if run.state not in S.TERMINAL_STATES or run.verdict is None:
        return []
    out = []
    complete = differ.isComplete(run.result_status or "", run.events_dropped)
    if run.verdict not in ("baseline",) and run.decision != "promoted" and complete and run.package_name:
        out.append(("promoted", "Promote to baseline",
                    "Promote this run? Its behaviour becomes part of the baseline of %s." % (run.package_name,)))
    if run.verdict != "rejected":
        out.append(("rejected", "Reject", "Reject this run as malicious? It will never become baseline."))
    return out


def _jobSummary(job: str) -> Dict[str, Any]:
    try:
        j = json.loads(job)
    except ValueError:
        return {}
    sandbox = j.get("sandbox") or {}
    return {"image": sandbox.get("image", ""), "duration": j.get("duration") or 0,
            "watched": len(j.get("watched_paths") or ())}


def _table(rows: Optional[List[Dict[str, Any]]], hide: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """
    A generic table of store rows (for tables other engineers own): column
    names, and values with secrets left out and C{*_ns} as times.
    """
    if rows is None:
        return None
    columns = [c for c in (rows[0].keys() if rows else []) if c not in hide]
    out = []
    for r in rows:
        out.append([_cell(c, r[c]) for c in columns])
    return {"columns": [c[:-3] + "_at" if c.endswith("_ns") else c for c in columns], "rows": out}


def _cell(column: str, value: Any) -> str:
    if column.endswith("_ns") and isinstance(value, int):
        return absTime(value)
    if column == "url" and isinstance(value, str):
        # Webhook URLs often carry their secret in the path: show the host only.
        scheme, sep, rest = value.partition("://")
        return scheme + sep + rest.split("/", 1)[0] + ("/…" if "/" in rest.strip("/") else "")
    if isinstance(value, bytes):
        return "%d bytes" % (len(value),)
    return truncate(value, 120)
