"""
A run seen whole: benign churn collapsed (npm extracting a package's own
files), fingerprints joined to the actors of the process tree.
"""

from __future__ import annotations

import re
from typing import AbstractSet, Any, Dict, FrozenSet, List, Optional, Tuple

import attrs

from fangs.orchestrator import actors as A
from fangs.orchestrator.allowlist import PathPrefixes
from fangs.orchestrator.categories import (
    NET_DNS,
    NET_HTTPS_HOST,
    PROC_EXEC,
    FS_READ,
    NET_HTTP,
    PROC_DETACHED,
    CATEGORIES,
    FILE_CATEGORIES,
    OUTBOUND_CATEGORIES,
    FACT_NETWORK,
    FACT_EXEC,
    FACT_EXEC_TS,
    FACT_FORK,
    FACT_EXIT,
    FACT_PPID,
    FACT_SOCK,
    FACT_UNRESOLVED,
    SEP,
    _FS,
    _NETWORK_VALUE,
)
from fangs.orchestrator.normalize import normalizeExec
from fangs.orchestrator.fingerprints import _Record, FingerprintSet


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
