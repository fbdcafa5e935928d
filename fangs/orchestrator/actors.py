"""
Actors: who in a run's process tree did something.  Pure logic, no I/O.

Every process of a run belongs to one actor class:

- C{npm}: the npm CLI (a process whose exec names npm) and every helper it
  runs for itself (git, node-gyp spawned by npm, ...);
- C{script}: a lifecycle script npm spawned for a package (npm runs it as
  C{sh -c <script>}) and all its descendants, detached ones included;
  labelled C{script:<package>@<version>:<phase>} (C{?} where a part is not
  known);
- C{other}: everything else, and every process whose lineage is unknown.

The tree is built from what the sensor reports, none of which needs to
arrive in order or complete:

- exec events (C{Header.PID}/C{PPID}, C{ArgvStrs}, C{BinaryPathStr},
  C{Ancestors} with each ancestor's C{PID}/C{PPID});
- the C{PPID} in every event's header;
- C{PROCESS_FORK} (C{Header.PID} = parent, C{ChildPID}) and C{PROCESS_EXIT}:
  a fork names the parent at fork time, so a detached child that was
  reparented to init before it exec'd is still attributed; an exit followed
  by a fork of the same pid starts a new process instance (pid reuse).

Cycles, missing parents and pid reuse never raise: a walk up the tree stops
at a pid it has seen, and a process whose chain ends before reaching npm or a
script is C{other}.

Package of a script: npm prefixes C{PATH} with C{<pkgdir>/node_modules/.bin},
so the shell's first PATH-search exec attempt names C{<pkgdir>}
(C{/tmp/t/node_modules/core-js/node_modules/.bin/sh}); a C{Cwd} field, when
the sensor sends one, is used first.  Version and phase come from the run's
own manifest when the package is the one being scanned (the phase by matching
the script's text against the manifest's scripts), or from an
C{npm_lifecycle_event} in an C{Env} field when the sensor sends one.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import attrs

ACTOR_NPM = "npm"
ACTOR_SCRIPT = "script"
ACTOR_OTHER = "other"
ACTOR_CLASSES = (ACTOR_NPM, ACTOR_SCRIPT, ACTOR_OTHER)

LIFECYCLE_PHASES = ("preinstall", "install", "postinstall", "prepare")

_SHELLS = frozenset(("sh", "bash", "dash", "zsh", "ash", "busybox"))
_PKG_FROM_BIN = re.compile(r"^(.*/node_modules/((?:@[^/]+/)?[^/]+))/node_modules/\.bin/[^/]+$")
_PKG_FROM_DIR = re.compile(r"/node_modules/((?:@[^/]+/)?[^/]+)/?$")
_MAX_DEPTH = 256


@attrs.frozen
class Actor:
    """
    The actor of one process instance.  C{pid}/C{argv} are those of the
    process that defines the actor: the script's shell for a script, the
    process itself otherwise.
    """

    cls: str
    package: str = ""
    version: str = ""
    phase: str = ""
    pid: int = 0
    argv: Tuple[str, ...] = ()
    detached: bool = False

    @property
    def label(self) -> str:
        if self.cls == ACTOR_SCRIPT:
            return "script:%s@%s:%s" % (self.package or "?", self.version or "?", self.phase or "?")
        return self.cls

    def asDict(self) -> Dict[str, Any]:
        return {
            "class": self.cls,
            "label": self.label,
            "package": self.package,
            "version": self.version,
            "phase": self.phase,
            "pid": self.pid,
            "argv": list(self.argv),
            "detached": self.detached,
        }


OTHER = Actor(ACTOR_OTHER)


@attrs.frozen
class ExecRecord:
    pid: int
    ppid: int
    ts: int
    event_id: int
    binary: str
    argv: Tuple[str, ...]
    ancestors: Tuple[Tuple[int, int], ...] = ()
    cwd: str = ""
    lifecycle: str = ""
    #: Whether the exec failed, when the sensor says (C{Ret}/C{Errno}/C{Failed}).
    failed: Optional[bool] = None


@attrs.frozen
class RunContext:
    """
    What the differ knows about the run besides its events: the package and
    version scanned and its manifest's scripts (phase -> command).
    """

    package: str = ""
    version: str = ""
    scripts: Mapping[str, str] = attrs.field(factory=dict)


class _Instance:
    __slots__ = ("pid", "start", "end", "parent", "execs", "ppids", "detached", "actor", "_npm")

    def __init__(self, pid: int, start: int) -> None:
        self.pid = pid
        self.start = start
        self.end: Optional[int] = None
        self.parent: Optional[Tuple[int, int]] = None  # (pid, ts) to resolve
        self.execs: List[ExecRecord] = []
        self.ppids: Set[int] = set()
        self.detached = False
        self.actor: Optional[Actor] = None
        self._npm: Optional[bool] = None

    def isNpm(self) -> bool:
        if self._npm is None:
            self._npm = any(isNpmExec(e) for e in self.execs)
        return self._npm


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def isNpmExec(record: ExecRecord) -> bool:
    """
    The npm CLI: C{/usr/bin/npm}, C{node /usr/bin/npm ...},
    C{node .../npm-cli.js}, C{npx}.
    """
    names = [_base(record.binary)] + [_base(a) for a in record.argv[:2]]
    return any(n in ("npm", "npm-cli.js", "npx", "npx-cli.js") for n in names)


def isShellScript(record: ExecRecord) -> bool:
    """
    C{sh -c <script>} (any common shell).
    """
    argv = record.argv
    return (
        len(argv) >= 3
        and (_base(argv[0]) in _SHELLS or _base(record.binary) in _SHELLS)
        and argv[1] == "-c"
    )


class ProcessTree:
    """
    Build with L{add*}, then L{actorsOf}.  Adding never raises.
    """

    def __init__(self, context: RunContext = RunContext()) -> None:
        self.context = context
        self._execs: List[ExecRecord] = []
        self._forks: List[Tuple[int, int, int]] = []  # parent, child, ts
        self._exits: List[Tuple[int, int]] = []  # pid, ts
        self._ppids: Dict[int, Set[int]] = {}
        self._detached: Set[int] = set()
        #: pid -> the installed package whose files the process opened
        #: first (a fallback for a script's package when no exec says it).
        self._hints: Dict[int, str] = {}
        self._built: Optional[Dict[int, List[_Instance]]] = None

    # -- feeding ---------------------------------------------------------------

    def addExec(self, record: ExecRecord) -> None:
        self._execs.append(record)
        self._built = None

    def addFork(self, parent: int, child: int, ts: int) -> None:
        if child > 0 and child != parent:
            self._forks.append((parent, child, ts))
            self._built = None

    def addExit(self, pid: int, ts: int) -> None:
        if pid > 0:
            self._exits.append((pid, ts))
            self._built = None

    def addParent(self, pid: int, ppid: int) -> None:
        if pid > 0 and ppid >= 0 and pid != ppid:
            self._ppids.setdefault(pid, set()).add(ppid)
            self._built = None

    def hintPackage(self, pid: int, package: str) -> None:
        """
        The process opened files of the installed C{package}; used to name
        a script's package when neither a C{Cwd} nor npm's PATH search does.
        """
        if pid > 0 and package and pid not in self._hints:
            self._hints[pid] = package
            self._built = None

    def markDetached(self, pid: int) -> None:
        self._detached.add(pid)
        self._built = None

    # -- building ----------------------------------------------------------------

    def _instances(self) -> Dict[int, List[_Instance]]:
        if self._built is not None:
            return self._built
        byPid: Dict[int, List[_Instance]] = {}
        # Births (forks) and deaths (exits) per pid, in time order: an exit
        # followed by a later fork of the same pid is a new instance.
        births: Dict[int, List[Tuple[int, int]]] = {}
        for parent, child, ts in self._forks:
            births.setdefault(child, []).append((ts, parent))
        deaths: Dict[int, List[int]] = {}
        for pid, ts in self._exits:
            deaths.setdefault(pid, []).append(ts)
        pids = set(births) | set(deaths) | set(self._ppids) | {e.pid for e in self._execs} | self._detached
        for pid in pids:
            if pid <= 0:
                continue
            instances: List[_Instance] = []
            bs = sorted(births.get(pid, ()))
            ds = sorted(deaths.get(pid, ()))
            if not bs:
                inst = _Instance(pid, -1)
                inst.end = ds[-1] if ds else None
                instances.append(inst)
            else:
                for i, (ts, parent) in enumerate(bs):
                    # A second fork of the same pid without an exit between
                    # them is the same process seen twice (duplicate event).
                    if instances and not any(instances[-1].start <= d < ts for d in ds):
                        continue
                    inst = _Instance(pid, ts)
                    inst.parent = (parent, ts)
                    ends = [d for d in ds if d >= ts]
                    nextBirth = bs[i + 1][0] if i + 1 < len(bs) else None
                    ends = [d for d in ends if nextBirth is None or d <= nextBirth]
                    inst.end = ends[0] if ends else None
                    instances.append(inst)
                # Events from before the first fork (it arrived late or the
                # process existed before the sensor started) go to the first.
                instances[0].start = -1
            for inst in instances:
                inst.detached = pid in self._detached
                inst.ppids = set(self._ppids.get(pid, ()))
            byPid[pid] = instances
        for record in sorted(self._execs, key=lambda e: (e.ts, e.event_id)):
            inst = _at(byPid.get(record.pid, ()), record.ts)
            if inst is None:
                continue
            inst.execs.append(record)
            if record.ppid > 0:
                inst.ppids.add(record.ppid)
            # Ancestors name the chain above the parent at exec time.
            for apid, appid in record.ancestors:
                if apid > 0 and appid >= 0 and apid != appid:
                    for ainst in byPid.setdefault(apid, [_Instance(apid, -1)]):
                        if not ainst.ppids and ainst.parent is None:
                            ainst.ppids.add(appid)
        self._built = byPid
        return byPid

    def _parentOf(self, inst: _Instance, byPid: Dict[int, List[_Instance]]) -> Optional[_Instance]:
        if inst.parent is not None:
            ppid, ts = inst.parent
            found = _at(byPid.get(ppid, ()), ts)
            if found is not None:
                return found
        # No fork event: the PPID at exec time, else any PPID a header named.
        # Prefer a parent that is npm or a script over init or a reaper.
        candidates = []
        for record in inst.execs:
            if record.ppid > 0:
                candidates.append(record.ppid)
        candidates.extend(sorted(inst.ppids))
        best: Optional[_Instance] = None
        for ppid in candidates:
            if ppid <= 1:
                continue
            parents = byPid.get(ppid)
            if not parents:
                continue
            found = _at(parents, inst.start if inst.start >= 0 else (inst.execs[0].ts if inst.execs else -1)) or parents[-1]
            if best is None:
                best = found
            elif found.isNpm() or any(isShellScript(e) for e in found.execs):
                best = found
                break
        return best

    def actorsOf(self, pid: int) -> List[Actor]:
        """
        The actor of every instance of C{pid} (more than one after pid
        reuse); C{[OTHER]} for a pid the tree knows nothing about.
        """
        byPid = self._instances()
        instances = byPid.get(pid)
        if not instances:
            return [OTHER]
        out: List[Actor] = []
        for inst in instances:
            actor = self._resolve(inst, byPid)
            if actor not in out:
                out.append(actor)
        return out

    def actorOf(self, pid: int) -> Actor:
        """
        The most suspicious actor of C{pid} (script over other over npm).
        """
        actors = self.actorsOf(pid)
        rank = {ACTOR_SCRIPT: 0, ACTOR_OTHER: 1, ACTOR_NPM: 2}
        return sorted(actors, key=lambda a: rank.get(a.cls, 1))[0]

    def _resolve(self, inst: _Instance, byPid: Dict[int, List[_Instance]]) -> Actor:
        if inst.actor is not None:
            return inst.actor
        chain: List[_Instance] = []
        seen: Set[int] = set()
        node: Optional[_Instance] = inst
        actor: Optional[Actor] = None
        while node is not None and id(node) not in seen and len(chain) < _MAX_DEPTH:
            if node.actor is not None:
                actor = node.actor
                break
            seen.add(id(node))
            chain.append(node)
            parent = self._parentOf(node, byPid)
            script = self._scriptOf(node, parent)
            if script is not None:
                actor = script
                chain.pop()
                node.actor = script
                break
            if node.isNpm():
                actor = Actor(ACTOR_NPM, pid=node.pid, argv=node.execs[-1].argv)
                chain.pop()
                node.actor = actor
                break
            node = parent
        if actor is None:
            actor = OTHER
        # Top down: a process at or below a detached one is detached (a
        # script's descendants stay the script's, flagged).
        detached = actor.detached
        for member in reversed(chain):
            detached = detached or member.detached or self._reparented(member)
            member.actor = attrs.evolve(actor, detached=True) if detached and actor.cls == ACTOR_SCRIPT else actor
        return inst.actor if inst.actor is not None else actor

    def _reparented(self, inst: _Instance) -> bool:
        """
        Forked by one process, but reported with another parent (init or a
        subreaper) when it exec'd: it outlived its parent.
        """
        if inst.parent is None:
            return False
        parents = {e.ppid for e in inst.execs if e.ppid > 0}
        return bool(parents) and inst.parent[0] not in parents

    def _scriptOf(self, node: _Instance, parent: Optional[_Instance]) -> Optional[Actor]:
        shell = next((e for e in node.execs if isShellScript(e)), None)
        if shell is None or parent is None or not parent.isNpm():
            return None
        if node.isNpm():
            return None
        package = ""
        for record in node.execs:
            if record.cwd:
                m = _PKG_FROM_DIR.search(record.cwd)
                if m:
                    package = m.group(1)
                    break
        if not package:
            for record in node.execs:
                m = _PKG_FROM_BIN.match(record.binary)
                if m:
                    package = m.group(2)
                    break
        if not package:
            # The shell, or a process it started, opened a package's files.
            package = self._hints.get(node.pid, "")
            if not package:
                for pid, hinted in sorted(self._hints.items()):
                    for child in self._built.get(pid, ()) if self._built else ():
                        if child.parent is not None and child.parent[0] == node.pid or node.pid in child.ppids:
                            package = hinted
                            break
                    if package:
                        break
        script = shell.argv[2] if len(shell.argv) > 2 else ""
        phase = next((e.lifecycle for e in node.execs if e.lifecycle), "")
        version = ""
        ctx = self.context
        if package and package == ctx.package:
            version = ctx.version
            if not phase:
                matches = [p for p, text in ctx.scripts.items() if text.strip() == script.strip()]
                if len(matches) == 1:
                    phase = matches[0]
                elif matches:
                    phase = "|".join(sorted(matches))
        return Actor(ACTOR_SCRIPT, package, version, phase, node.pid, tuple(shell.argv))


def _at(instances: Sequence[_Instance], ts: int) -> Optional[_Instance]:
    """
    The instance alive at C{ts}: the last one that started at or before it.
    """
    found = None
    for inst in instances:
        if inst.start <= ts:
            found = inst
    if found is None and instances:
        found = instances[0]
    return found


def execRecord(pid: int, ts: int, eventID: int, payload: Mapping[str, Any]) -> Optional[ExecRecord]:
    """
    An L{ExecRecord} from an exec event's payload; C{None} when unusable.
    Never raises.
    """
    try:
        header = payload.get("Header")
        ppid = header.get("PPID") if isinstance(header, dict) else 0
        if not isinstance(ppid, int) or isinstance(ppid, bool):
            ppid = 0
        binary = payload.get("BinaryPathStr")
        binary = binary.replace("\x00", "").strip() if isinstance(binary, str) else ""
        argv = payload.get("ArgvStrs")
        argv = tuple(a for a in argv if isinstance(a, str))[:16] if isinstance(argv, list) else ()
        ancestors: List[Tuple[int, int]] = []
        for a in payload.get("Ancestors") or ():
            if isinstance(a, dict):
                apid, appid = a.get("PID"), a.get("PPID")
                if isinstance(apid, int) and isinstance(appid, int) and apid > 0:
                    ancestors.append((apid, appid))
        cwd = payload.get("Cwd") or payload.get("CwdStr") or ""
        lifecycle = ""
        env = payload.get("Env") or payload.get("EnvStrs")
        if isinstance(env, dict):
            lifecycle = env.get("npm_lifecycle_event") or ""
        elif isinstance(env, list):
            for item in env:
                if isinstance(item, str) and item.startswith("npm_lifecycle_event="):
                    lifecycle = item.split("=", 1)[1]
        failed: Optional[bool] = None
        ret, errno, flag = payload.get("Ret"), payload.get("Errno"), payload.get("Failed")
        if isinstance(flag, bool):
            failed = flag
        elif isinstance(ret, int) and not isinstance(ret, bool):
            failed = ret < 0
        elif isinstance(errno, int) and not isinstance(errno, bool):
            failed = errno != 0
        return ExecRecord(
            pid, ppid, ts, eventID, binary, argv, tuple(ancestors),
            cwd if isinstance(cwd, str) else "", lifecycle if isinstance(lifecycle, str) else "", failed,
        )
    except (AttributeError, TypeError):
        return None


def pathSearchMisses(execs: Iterable[ExecRecord]) -> Set[Tuple[int, int, str]]:
    """
    Exec attempts of a PATH search that failed: within one process, a run of
    consecutive execs of the same argv whose binaries share a basename in
    different directories; every one but the last failed (the kernel only
    moves on when an attempt fails).  Returns C{(pid, ts, binary)} keys.
    """
    byPid: Dict[int, List[ExecRecord]] = {}
    for e in execs:
        byPid.setdefault(e.pid, []).append(e)
    misses: Set[Tuple[int, int, str]] = set()
    for records in byPid.values():
        records.sort(key=lambda e: (e.ts, e.event_id))
        for i in range(len(records) - 1):
            a, b = records[i], records[i + 1]
            if (
                a.argv == b.argv
                and "/" in a.binary
                and _base(a.binary) == _base(b.binary)
                and a.binary != b.binary
            ):
                if a.failed is not False:
                    misses.add((a.pid, a.ts, a.binary))
                # The sensor says the last attempt failed too: the command
                # was not found anywhere on PATH.
                if b.failed is True:
                    misses.add((b.pid, b.ts, b.binary))
    return misses
