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

Where the pieces live: L{fangs.orchestrator.categories} (categories,
severities), L{fangs.orchestrator.normalize} (the path rules),
L{fangs.orchestrator.fingerprints} (L{FingerprintSet}),
L{fangs.orchestrator.runview} (collapsing churn, actors joined to
fingerprints), L{fangs.orchestrator.severity} (flags and the rule table);
this module diffs a run against a baseline and plans the analysis.  Their
names are re-exported here, so callers keep using C{differ.X}.

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
    parseIP,
    providerFor,
    splitDestination,
)
from fangs.orchestrator.categories import *  # noqa: F401,F403 (re-exported: callers use differ.X)
from fangs.orchestrator.categories import (  # noqa: F401
    NET_DESTINATION,
    NET_DNS,
    NET_HTTPS_HOST,
    PROC_EXEC,
    FS_READ,
    FS_WRITE,
    NET_HTTP,
    NET_UDP,
    NET_EGRESS,
    CANARY,
    RUN_UNRESOLVED,
    CATEGORIES,
    FILE_CATEGORIES,
    OUTBOUND_CATEGORIES,
    DEFAULT_CRED_PATHS,
    Severity,
    severityRank,
)
from fangs.orchestrator.normalize import *  # noqa: F401,F403 (re-exported: callers use differ.X)
from fangs.orchestrator.normalize import normalizePath, normalizeDNS, normalizeSNI, normalizeExec, _applyRules
from fangs.orchestrator.fingerprints import *  # noqa: F401,F403 (re-exported: callers use differ.X)
from fangs.orchestrator.fingerprints import FingerprintRow, FingerprintSet, extract
from fangs.orchestrator.runview import *  # noqa: F401,F403 (re-exported: callers use differ.X)
from fangs.orchestrator.runview import (  # noqa: F401
    NPM_CONFIG_FILES,
    collapseValue,
    packageDirOf,
    isWritableExec,
    Fingerprint,
    RunView,
)
from fangs.orchestrator.severity import *  # noqa: F401,F403 (re-exported: callers use differ.X)
from fangs.orchestrator.severity import (  # noqa: F401
    FLAG_CRED,
    FLAG_NETWORK,
    FLAG_RAW_IP,
    FLAG_PROVIDER_RANGE,
    FLAG_SCRIPT,
    FLAG_NPM,
    FLAG_NPM_CONFIG,
    FLAG_OWN_PACKAGE,
    FLAG_WRITABLE_EXEC,
    FLAG_DETACHED,
    FLAG_TREE_OUTBOUND,
    FLAG_TREE_CRED,
    FLAG_TREE_WRITABLE_EXEC,
    FLAG_TREE_NETWORK,
    FLAG_PROC_CRED,
    FLAG_ACCOUNT_DB,
    FLAG_OUTSIDE_WRITE,
    FLAG_NAMING_PROCESS,
    ACCOUNT_DB_FILES,
    _persistencePath,
    SeverityRule,
    SEVERITY_RULES,
    classify,
)
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
