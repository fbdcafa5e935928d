"""
Actors, chains, first-run rules, noise rules and the new event types of the
differ, on event sets recorded from real installs (tests/orchestrator/recorded:
the real runner, sensor and npm; headers trimmed) and on built trees.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator import actors as A
from fangs.orchestrator import differ
from fangs.orchestrator.allowlist import Allowlist, configEntries
from fangs.orchestrator.differ import (
    CANARY,
    FS_READ,
    FS_WRITE,
    NET_DESTINATION,
    NET_EGRESS,
    NET_HTTP,
    NET_UDP,
    PROC_DETACHED,
    PROC_EXEC,
    PROC_IO_URING,
    RUN_UNRESOLVED,
    Severity,
    extract,
    planAnalysis,
)

RECORDED = os.path.join(os.path.dirname(__file__), "recorded")
ALLOW = Allowlist(configEntries({"paths": ["/usr/lib/", "/usr/lib64/", "/usr/share/zoneinfo/", "/usr/share/locale/",
                                           "/usr/local/lib/"]}), "x")


def recorded(name: str) -> Tuple[Dict[str, Any], List[Tuple[int, int, Dict[str, Any]]]]:
    with gzip.open(os.path.join(RECORDED, name + ".json.gz"), "rt") as f:
        doc = json.load(f)
    return doc["run"], [(i, t, p) for i, t, p in doc["events"]]


def context(run: Dict[str, Any], scripts: Optional[Dict[str, str]] = None) -> A.RunContext:
    return A.RunContext(run["package_name"], run["version"], scripts or {})


def seed(name: str, scripts: Optional[Dict[str, str]] = None) -> differ.AnalysisPlan:
    run, events = recorded(name)
    return planAnalysis(extract(events), frozenset(), ALLOW, runState="ok", eventsDropped=0, hasBaseline=False,
                        context=context(run, scripts))


def against(base: differ.AnalysisPlan, name: str, scripts: Optional[Dict[str, str]] = None) -> differ.AnalysisPlan:
    run, events = recorded(name)
    keys = frozenset(f.key for f in base.baseline_add)
    return planAnalysis(extract(events), keys, ALLOW, runState="ok", eventsDropped=0, hasBaseline=True,
                        context=context(run, scripts))


# -- builders for synthetic trees ----------------------------------------------------


class Run:
    """
    Events of a made-up run, numbered in the order they are added.
    """

    def __init__(self) -> None:
        self.events: List[Tuple[int, int, Dict[str, Any]]] = []
        self.ts = 1000

    def _add(self, kind: int, pid: int, ppid: int, **fields: Any) -> "Run":
        self.ts += 10
        header = {"TsNs": fields.pop("ts", self.ts), "PID": pid, "TID": pid, "PPID": ppid,
                  "Tags": fields.pop("tags", 0), "Type": kind}
        self.events.append((len(self.events) + 1, kind, dict(fields, Header=header)))
        return self

    def exec(self, pid: int, ppid: int, binary: str, *argv: str, **kw: Any) -> "Run":
        return self._add(2, pid, ppid, BinaryPathStr=binary, ArgvStrs=list(argv) or [binary], **kw)

    def npm(self, pid: int = 100, ppid: int = 50) -> "Run":
        return self.exec(pid, ppid, "/usr/bin/node", "node", "/usr/bin/npm", "install", "pkg")

    def script(self, pid: int, npm: int, package: str, command: str) -> "Run":
        # npm's PATH search for sh starts in <pkgdir>/node_modules/.bin.
        self.exec(pid, npm, "/tmp/t/node_modules/%s/node_modules/.bin/sh" % (package,), "sh", "-c", command)
        return self.exec(pid, npm, "/usr/bin/sh", "sh", "-c", command)

    def read(self, pid: int, path: str, ppid: int = 0, tags: int = 0) -> "Run":
        return self._add(1, pid, ppid, PathName=path, Flags=0, tags=tags)

    def write(self, pid: int, path: str, ppid: int = 0) -> "Run":
        return self._add(1, pid, ppid, PathName=path, Flags=0o101)

    def connect(self, pid: int, ip: str, port: int, ppid: int = 0) -> "Run":
        return self._add(3, pid, ppid, DestIP=ip, DestPort=port, Family=2)

    def fork(self, parent: int, child: int, **kw: Any) -> "Run":
        return self._add(13, parent, 0, ChildPID=child, **kw)

    def exit(self, pid: int, **kw: Any) -> "Run":
        return self._add(14, pid, 0, ExitCode=0, **kw)

    def add(self, kind: int, pid: int, **fields: Any) -> "Run":
        return self._add(kind, pid, 0, **fields)

    def fps(self, order: Optional[random.Random] = None) -> differ.FingerprintSet:
        events = list(self.events)
        if order is not None:
            order.shuffle(events)
        return extract(events)

    def tree(self) -> A.ProcessTree:
        view = self.fps().view(A.RunContext("pkg", "1.0.0", {"postinstall": "node evil.js"}))
        return view.tree


def labels(fps: differ.FingerprintSet, ctx: A.RunContext = A.RunContext()) -> Dict[Tuple[str, str], List[str]]:
    out: Dict[Tuple[str, str], List[str]] = {}
    for f in fps.fingerprints(ctx):
        out.setdefault((f.category, f.value), []).extend(f.actors)
    return {k: sorted(v) for k, v in out.items()}


def one(deviations, category, value, actor=None):
    found = [d for d in deviations if d.category == category and d.value == value and (actor is None or d.actor == actor)]
    assert len(found) == 1, (category, value, actor, [(d.category, d.value, d.actor) for d in deviations])
    return found[0]


# ---------------------------------------------------------------------------


class RecordedTreeTests(SynchronousTestCase):
    """
    The process trees of real installs, as the sensor reported them.
    """

    def test_npmScriptAndOther(self) -> None:
        run, events = recorded("actor-evil")
        view = extract(events).view(context(run, {"postinstall": "node build.js && node collect.js"}))
        tree = view.tree
        # docker-init and the harness's shell: other
        self.assertEqual(tree.actorOf(19510).cls, A.ACTOR_OTHER)
        self.assertEqual(tree.actorOf(19539).cls, A.ACTOR_OTHER)
        # npm init and npm install: npm
        self.assertEqual(tree.actorOf(19541).cls, A.ACTOR_NPM)
        self.assertEqual(tree.actorOf(19552).cls, A.ACTOR_NPM)
        # the postinstall's shell and both node processes under it
        for pid in (19567, 19568, 19575):
            actor = tree.actorOf(pid)
            self.assertEqual(actor.label, "script:actor-release@1.2.0-next:postinstall", pid)
            self.assertEqual((actor.pid, actor.argv), (19567, ("sh", "-c", "node build.js && node collect.js")))

    def test_postinstallNpmrcDeviatesNpmsOwnReadDoesNot(self) -> None:
        base = seed("actor-v1")
        self.assertEqual(base.verdict, "baseline")
        # npm read ~/.npmrc in the first run: in the baseline as npm's.
        self.assertIn((FS_READ, "/root/.npmrc", "npm"), {f.key for f in base.baseline_add})
        plan = against(base, "actor-evil")
        self.assertEqual(plan.verdict, "deviations")
        npmrc = one(plan.deviations, FS_READ, "/root/.npmrc")
        self.assertEqual(npmrc.actor, A.ACTOR_SCRIPT)
        self.assertGreaterEqual(npmrc.severity, Severity.HIGH)
        self.assertEqual(npmrc.severity, Severity.CRITICAL)  # ... with the connect out: a chain
        self.assertEqual(npmrc.detail["package"], "actor-release")
        self.assertEqual(npmrc.detail["pid"], 19567)
        self.assertIn("script:actor-release@1.2.0-next:?", npmrc.reason)
        self.assertEqual(one(plan.deviations, NET_DESTINATION, "127.0.0.1:41414").severity, Severity.CRITICAL)
        # Nothing else of the release waits for a person.
        self.assertEqual(len(plan.blocking), 2, [(d.category, d.value) for d in plan.blocking])

    def test_secondBenignReleaseIsClean(self) -> None:
        plan = against(seed("actor-v1"), "actor-v2")
        self.assertEqual(plan.verdict, "clean")
        # The new lib/ directory npm extracted is a note, not a review item.
        self.assertEqual([(d.severity, d.value) for d in plan.deviations],
                         [(Severity.LOW, "/tmp/t/node_modules/actor-release/lib/**")])
        self.assertIsNone(plan.max_severity)

    def test_consecutiveRealReleasesAreClean(self) -> None:
        for earlier, later in (("core-js-3.50.0", "core-js-3.51.0"), ("es5-ext-0.10.63", "es5-ext-0.10.64")):
            base = seed(earlier)
            self.assertEqual((base.verdict, base.deviations), ("baseline", ()), earlier)
            plan = against(base, later)
            self.assertEqual(plan.verdict, "clean", [(d.severity.label, d.category, d.value) for d in plan.deviations])

    def test_pathSearchMissesAreNoFingerprints(self) -> None:
        run, events = recorded("core-js-3.50.0")
        found = labels(extract(events), context(run))
        execs = {v for c, v in found if c == PROC_EXEC}
        self.assertIn("/usr/bin/node", execs)
        self.assertIn("/usr/bin/sh", execs)
        for miss in ("/usr/local/sbin/node", "/usr/local/bin/node", "/usr/sbin/node",
                     "/tmp/t/node_modules/core-js/node_modules/.bin/sh", "/usr/local/sbin/sh"):
            self.assertNotIn(miss, execs)
        # core-js's postinstall is attributed to core-js at the run's version.
        self.assertIn("script:core-js@3.50.0:?", found[(PROC_EXEC, "/usr/bin/node")])

    def test_failedExecOutsideAPathSearchIsKept(self) -> None:
        r = Run().npm().script(200, 100, "pkg", "node x.js")
        r.exec(201, 200, "/tmp/payload", "/tmp/payload")  # failed or not: evidence
        self.assertIn((PROC_EXEC, "/tmp/payload"), labels(r.fps()))

    def test_orderAndBatchesDoNotMatter(self) -> None:
        run, events = recorded("actor-evil")
        ctx = context(run)
        whole = labels(extract(events), ctx)
        rng = random.Random(4)
        shuffled = list(events)
        rng.shuffle(shuffled)
        merged = differ.FingerprintSet()
        for i in range(0, len(shuffled), 37):
            merged.merge(extract(shuffled[i : i + 37]))
        self.assertEqual(labels(merged, ctx), whole)


class BuiltTreeTests(SynchronousTestCase):
    def test_nestedScripts(self) -> None:
        """
        A postinstall that runs npm install, whose dependency runs its own
        script: the inner script's descendants are the inner script's.
        """
        r = Run().npm(100)
        r.script(200, 100, "outer", "npm install inner")
        r.exec(201, 200, "/usr/bin/node", "node", "/usr/bin/npm", "install", "inner")
        r.script(300, 201, "inner", "node evil.js")
        r.exec(301, 300, "/usr/bin/node", "node", "evil.js")
        r.read(301, "/root/.npmrc", tags=3)
        tree = r.tree()
        self.assertEqual(tree.actorOf(200).label, "script:outer@?:?")
        self.assertEqual(tree.actorOf(201).cls, A.ACTOR_NPM)
        self.assertEqual(tree.actorOf(301).label, "script:inner@?:?")
        self.assertEqual(tree.actorOf(300).pid, 300)

    def test_ownPackageVersionAndPhase(self) -> None:
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
        self.assertEqual(r.tree().actorOf(200).label, "script:pkg@1.0.0:postinstall")

    def test_cwdAndLifecycleFieldsWinWhenSent(self) -> None:
        r = Run().npm(100)
        r.exec(200, 100, "/bin/sh", "sh", "-c", "x", Cwd="/tmp/t/node_modules/@scope/dep",
               Env=["npm_lifecycle_event=preinstall"])
        self.assertEqual(r.tree().actorOf(200).label, "script:@scope/dep@?:preinstall")

    def test_detachedChildOnlyThroughForks(self) -> None:
        """
        A postinstall double-forks; the grandchild is reparented to init
        before it execs.  Its exec's PPID is 1: without fork events it is
        other; with them, the script's (and detached).
        """
        def build(withForks: bool) -> Run:
            r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
            if withForks:
                r.fork(200, 201).fork(201, 202).exit(201)
            r.exec(202, 1, "/usr/bin/node", "node", "daemon.js")
            r.connect(202, "198.51.100.7", 443, ppid=1)
            r.add(10, 202, ArgvStrs=["node", "daemon.js"], BinaryPathStr="/usr/bin/node")
            return r

        self.assertEqual(build(False).tree().actorOf(202).cls, A.ACTOR_OTHER)
        actor = build(True).tree().actorOf(202)
        self.assertEqual((actor.label, actor.detached), ("script:pkg@1.0.0:postinstall", True))
        found = differ.diff(build(True).fps(), frozenset(), ALLOW, A.RunContext("pkg", "1.0.0", {"postinstall": "node evil.js"}))
        self.assertEqual(one(found, PROC_DETACHED, "/usr/bin/node").severity, Severity.HIGH)
        self.assertEqual(one(found, NET_DESTINATION, "198.51.100.7:443").severity, Severity.HIGH)
        self.assertIn("detached", one(found, NET_DESTINATION, "198.51.100.7:443").reason)

    def test_reparentedChildIsDetachedWithoutADetachedEvent(self) -> None:
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
        r.fork(200, 201).fork(201, 202).exit(201)
        r.exec(202, 1, "/usr/bin/node", "node", "daemon.js").fork(202, 203)
        r.exec(203, 202, "/usr/bin/curl", "curl").connect(203, "198.51.100.7", 80)
        tree = r.tree()
        # resolved child first, then parent: both detached, the script's
        self.assertTrue(tree.actorOf(203).detached)
        self.assertTrue(tree.actorOf(202).detached)
        self.assertFalse(tree.actorOf(200).detached)
        self.assertEqual(tree.actorOf(203).label, "script:pkg@1.0.0:postinstall")

    def test_pidReuse(self) -> None:
        """
        pid 300 is a script's child, exits, and comes back as a child of
        the harness: two processes, two actors.
        """
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
        r.fork(200, 300).exec(300, 200, "/usr/bin/node", "node", "evil.js").exit(300)
        r.exec(50, 1, "/bin/sh", "sh", "-c", "harness")
        r.fork(50, 300).exec(300, 50, "/usr/bin/tail", "tail")
        actors = r.tree().actorsOf(300)
        self.assertEqual(sorted(a.cls for a in actors), [A.ACTOR_OTHER, A.ACTOR_SCRIPT])

    def test_cyclesAndMissingParentsNeverCrash(self) -> None:
        r = Run()
        r.exec(10, 11, "/bin/a", "a").exec(11, 12, "/bin/b", "b").exec(12, 10, "/bin/c", "c")  # a cycle
        r.fork(20, 21).fork(21, 20)  # a fork cycle
        r.read(10, "/etc/x").read(21, "/etc/y").read(999, "/etc/z", ppid=998)  # 998 never seen
        r.exec(30, 30, "/bin/self", "self")  # its own parent
        tree = r.tree()
        for pid in (10, 11, 12, 20, 21, 30, 999, 12345):
            self.assertEqual(tree.actorOf(pid).cls, A.ACTOR_OTHER, pid)
        found = labels(r.fps())
        self.assertEqual(found[(FS_READ, "/etc/z")], ["other"])

    def test_outOfOrderEventsSameActors(self) -> None:
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
        r.fork(200, 201).exec(201, 200, "/usr/bin/node", "node", "evil.js")
        r.read(201, "/root/.npmrc", tags=3).connect(201, "127.0.0.1", 9999)
        expected = labels(r.fps())
        for seed in range(5):
            self.assertEqual(labels(r.fps(random.Random(seed))), expected)

    def test_malformedProcessEventsNeverRaise(self) -> None:
        fps = extract([
            (1, 13, {"Header": {"PID": "x"}, "ChildPID": 5}),
            (2, 13, {"Header": {"PID": 4}, "ChildPID": -1}),
            (3, 14, {"Header": None}),
            (4, 2, {"Header": {"PID": 7, "PPID": "q"}, "BinaryPathStr": "/bin/x", "ArgvStrs": "nope",
                    "Ancestors": [{"PID": "a"}, 3, {"PID": 5, "PPID": 4}]}),
            (5, 2, {"Header": {"PID": 8}, "BinaryPathStr": "/bin/\x1fy", "ArgvStrs": ["\x1f"]}),
        ])
        self.assertTrue(labels(fps))


class ChainTests(SynchronousTestCase):
    CTX = A.RunContext("pkg", "1.0.0", {"postinstall": "node evil.js"})

    def diff(self, r: Run, baseline=frozenset()) -> List[differ.Deviation]:
        return differ.diff(r.fps(), baseline, ALLOW, self.CTX)

    def test_credPlusOutboundInOneScriptTreeIsCritical(self) -> None:
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
        r.exec(201, 200, "/usr/bin/node", "node", "evil.js").read(201, "/root/.ssh/id_rsa", tags=3)
        r.exec(202, 200, "/usr/bin/curl", "curl").connect(202, "127.0.0.1", 8080)
        found = self.diff(r)
        self.assertEqual(one(found, FS_READ, "/root/.ssh/id_rsa").severity, Severity.CRITICAL)
        self.assertEqual(one(found, NET_DESTINATION, "127.0.0.1:8080").severity, Severity.CRITICAL)

    def test_credAndOutboundInDifferentTreesAreNotAChain(self) -> None:
        r = Run().npm(100)
        r.script(200, 100, "a", "node a.js").exec(201, 200, "/usr/bin/node", "node", "a.js").read(201, "/root/.ssh/id_rsa", tags=3)
        r.script(300, 100, "b", "node b.js").exec(301, 300, "/usr/bin/node", "node", "b.js").connect(301, "127.0.0.1", 8080)
        found = self.diff(r)
        self.assertEqual(one(found, FS_READ, "/root/.ssh/id_rsa").severity, Severity.HIGH)
        self.assertEqual(one(found, NET_DESTINATION, "127.0.0.1:8080").severity, Severity.HIGH)

    def test_writableExecPlusOutboundIsHigh(self) -> None:
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
        r.exec(201, 200, "/tmp/x/run", "/tmp/x/run").exec(202, 200, "/usr/bin/node", "node")
        r.add(5, 202, SNI="c2.example", DestIP="127.0.0.1", DestPort=443)
        found = self.diff(r)
        self.assertEqual(one(found, PROC_EXEC, "/tmp/x/run").severity, Severity.HIGH)
        self.assertEqual(one(found, differ.NET_HTTPS_HOST, "c2.example").severity, Severity.HIGH)
        # Alone it is medium, and an exec inside node_modules is no writable-dir exec.
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
        r.exec(201, 200, "/tmp/x/run", "/tmp/x/run").exec(202, 200, "/tmp/t/node_modules/.bin/tsc", "tsc")
        found = self.diff(r)
        self.assertEqual(one(found, PROC_EXEC, "/tmp/x/run").severity, Severity.MEDIUM)
        self.assertFalse(differ.isWritableExec("/tmp/t/node_modules/.bin/tsc"))

    def test_buildOutputInOwnPackageIsLow(self) -> None:
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js")
        r.exec(201, 200, "/usr/bin/node", "node").write(201, "/tmp/t/node_modules/pkg/build/Release/addon.node")
        r.write(201, "/tmp/t/node_modules/other/index.js")
        found = self.diff(r)
        own = one(found, FS_WRITE, "/tmp/t/node_modules/pkg/build/**")
        self.assertEqual(own.severity, Severity.LOW)
        self.assertIn("own package", own.reason)
        self.assertIn("new path written", one(found, FS_WRITE, "/tmp/t/node_modules/other/*").reason)

    def test_ruleTableReadsAsATable(self) -> None:
        for rule in differ.SEVERITY_RULES:
            self.assertTrue(rule.requires <= differ.FLAGS and rule.unless <= differ.FLAGS, rule)
        self.assertEqual(differ.classify(CANARY, frozenset())[0], Severity.CRITICAL)


class NewEventTypeTests(SynchronousTestCase):
    def plan(self, r: Run, baseline=None) -> differ.AnalysisPlan:
        return planAnalysis(r.fps(), baseline or frozenset(), ALLOW, runState="ok", eventsDropped=0,
                            hasBaseline=baseline is not None)

    def test_fingerprinted(self) -> None:
        r = Run()
        r.add(6, 5, Method="post", Host="Paste.Example:8080", Path="/x", DestIP="127.0.0.1", DestPort=8080)
        r.add(7, 5, DestIP="127.0.0.1", DestPort=5353, Family=2, Len=40)
        r.add(8, 5, Refused=True, Errno=1)
        r.add(9, 5, Bait=["npm_token"], Channel="dns", DestName="x.exfil.example")
        r.add(12, 5, Protocol="tls", Action="sinkholed", DestName="c2.example", DestIP="10.0.0.1", DestPort=443,
              Canaries=["aws_key"])
        r.add(12, 5, Protocol="tcp", Action="refused", DestIP="192.0.2.1", DestPort=4444)
        found = {(d.category, d.value): d.severity for d in differ.diff(r.fps(), frozenset())}
        self.assertEqual(found[(NET_HTTP, "POST paste.example:8080")], Severity.CRITICAL)  # same tree as a canary
        self.assertIn((NET_UDP, "127.0.0.1:5353"), found)
        self.assertEqual(found[(PROC_IO_URING, "refused")], Severity.HIGH)
        self.assertEqual(found[(CANARY, "npm_token via dns to x.exfil.example")], Severity.CRITICAL)
        self.assertEqual(found[(CANARY, "aws_key via tls to c2.example")], Severity.CRITICAL)
        self.assertIn((NET_EGRESS, "tls c2.example:443"), found)
        self.assertIn((NET_EGRESS, "tcp 192.0.2.1:4444"), found)

    def test_ioUringAloneIsHigh(self) -> None:
        [d] = differ.diff(Run().add(8, 5, Refused=False).fps(), frozenset())
        self.assertEqual((d.category, d.value, d.severity), (PROC_IO_URING, "used", Severity.HIGH))

    def test_detachedWithoutNetworkIsMedium(self) -> None:
        [d] = differ.diff(Run().add(10, 5, ArgvStrs=["sleep", "100"]).fps(), frozenset())
        self.assertEqual((d.category, d.value, d.severity), (PROC_DETACHED, "sleep", Severity.MEDIUM))

    def test_unresolvedMakesTheRunIncomplete(self) -> None:
        r = Run().read(5, "/etc/hosts").add(11, 5, RawPath="id_rsa", DFD=7, Reason="dfd unknown")
        plan = self.plan(r, baseline=frozenset())
        self.assertEqual(plan.verdict, "incomplete")
        self.assertIn("could not resolve", plan.reason)
        self.assertEqual([d.category for d in plan.deviations][:1], [RUN_UNRESOLVED])
        self.assertFalse(plan.in_baseline)
        # An absolute raw path is judged as that path: provably harmless here.
        r = Run().read(5, "/etc/hosts").add(11, 5, RawPath="/etc/hosts", DFD=-100, Reason="race")
        self.assertEqual(self.plan(r, baseline={(FS_READ, "/etc/hosts", "other")}).verdict, "clean")


class FirstRunTests(SynchronousTestCase):
    CTX = A.RunContext("pkg", "1.0.0", {"postinstall": "node evil.js"})

    def plan(self, r: Run, **kw: Any) -> differ.AnalysisPlan:
        return planAnalysis(r.fps(), frozenset(), ALLOW, runState="ok", eventsDropped=0, hasBaseline=False,
                            context=self.CTX, **kw)

    def script(self) -> Run:
        return Run().npm(100).script(200, 100, "pkg", "node evil.js").exec(201, 200, "/usr/bin/node", "node", "evil.js")

    def test_benignFirstRunSeeds(self) -> None:
        r = self.script().read(201, "/tmp/t/node_modules/pkg/package.json").read(100, "/root/.npmrc", tags=3)
        plan = self.plan(r)
        self.assertEqual((plan.verdict, plan.deviations, plan.in_baseline), ("baseline", (), True))

    def test_heldFirstRuns(self) -> None:
        cases = {
            "credential read by a script": self.script().read(201, "/root/.npmrc", tags=3),
            "canary": self.script().add(9, 201, Bait=["npm_token"], Channel="http"),
            "raw-IP destination": self.script().connect(201, "198.51.100.9", 443),
            "exec from a writable directory": self.script().exec(202, 201, "/dev/shm/x", "/dev/shm/x"),
            "io_uring (high)": self.script().add(8, 201, Refused=True),
        }
        for what, r in cases.items():
            plan = self.plan(r)
            self.assertEqual(plan.verdict, "deviations", what)
            self.assertFalse(plan.in_baseline, what)
            self.assertEqual(plan.baseline_add, (), what)
            self.assertTrue(plan.deviations, what)
            self.assertIn("first run", plan.reason, what)
            # A person promotes it: then it seeds the baseline.
            promoted = self.plan(r, promoted=True)
            self.assertEqual((promoted.verdict, promoted.in_baseline), ("baseline", True), what)

    def test_rawIPIntoACDNIsHeldUnlessTheProcessNamedAHost(self) -> None:
        # medium (a CloudFront range), but no name anywhere: held
        plan = self.plan(self.script().connect(201, "54.230.1.1", 443))
        self.assertEqual(plan.verdict, "deviations")
        self.assertEqual([(d.value, d.severity) for d in plan.deviations], [("54.230.1.1:443", Severity.MEDIUM)])
        # the process resolved a name first (its socket named none): seeds
        r = self.script().add(4, 201, QName="cdn.example", DestIP="127.0.0.11", DestPort=53).connect(201, "54.230.1.1", 443)
        self.assertEqual(self.plan(r).verdict, "baseline")

    def test_namedRegistryConnectionIsNoRawIP(self) -> None:
        r = self.script()
        r.add(4, 100, QName="registry.npmjs.org", DestIP="10.255.255.53", DestPort=53)
        r.connect(100, "10.255.255.53", 53).connect(100, "203.0.113.80", 443)
        r.add(5, 100, SNI="registry.npmjs.org", DestIP="203.0.113.80", DestPort=443)
        self.assertEqual(self.plan(r).verdict, "baseline")


class NoiseTests(SynchronousTestCase):
    def test_collapse(self) -> None:
        c = differ.collapseValue
        self.assertEqual(c(FS_WRITE, "/tmp/t/node_modules/core-js/modules/es.array.at.js"),
                         "/tmp/t/node_modules/core-js/modules/**")
        self.assertEqual(c(FS_WRITE, "/tmp/t/node_modules/@babel/core/package.json"), "/tmp/t/node_modules/@babel/core/*")
        self.assertEqual(c(FS_WRITE, "/tmp/t/node_modules/a/node_modules/b/lib/x.js"),
                         "/tmp/t/node_modules/a/node_modules/b/lib/**")
        self.assertEqual(c(FS_READ, "/root/.cache/pkg-3.51.0/x", "3.51.0"), "/root/.cache/pkg-<VERSION>/x")
        self.assertEqual(c(FS_READ, "/root/.npm/_cacache/tmp/<HEX>/collect.js"), "/root/.npm/_cacache/tmp/<HEX>/**")
        self.assertEqual(c(PROC_EXEC, "/tmp/t/node_modules/x/y"), "/tmp/t/node_modules/x/y")

    def test_lowNeverBlocks(self) -> None:
        r = Run().read(5, "/etc/a")
        plan = planAnalysis(r.fps(), {(FS_READ, "/etc/b", "other")}, ALLOW, runState="ok", eventsDropped=0,
                            hasBaseline=True)
        self.assertEqual(plan.verdict, "clean")
        self.assertEqual([(d.value, d.severity) for d in plan.deviations], [("/etc/a", Severity.LOW)])
        self.assertEqual(plan.blocking, ())
        self.assertEqual(len(plan.baseline_add), 1)


class ManifestDeltaPlanTests(SynchronousTestCase):
    def test_deltasAreDeviationsOfTheRun(self) -> None:
        r = Run().read(5, "/etc/a")
        deltas = [differ.ManifestDelta("pkg_new_install_script", "preinstall: node x.js", Severity.HIGH, "new script")]
        plan = planAnalysis(r.fps(), {(FS_READ, "/etc/a", "other")}, ALLOW, runState="ok", eventsDropped=0,
                            hasBaseline=True, manifestDeltas=deltas)
        self.assertEqual(plan.verdict, "deviations")
        [d] = plan.deviations
        self.assertEqual((d.category, d.actor, d.severity), ("pkg_new_install_script", "registry", Severity.HIGH))
        low = [differ.ManifestDelta("pkg_new_dependency", "x@1 (direct)", Severity.LOW, "new dependency")]
        plan = planAnalysis(r.fps(), {(FS_READ, "/etc/a", "other")}, ALLOW, runState="ok", eventsDropped=0,
                            hasBaseline=True, manifestDeltas=low)
        self.assertEqual(plan.verdict, "clean")


class PersistenceTests(SynchronousTestCase):
    def test_scriptWritesIntoHomeOrSystemDirs(self) -> None:
        r = Run().npm(100).script(200, 100, "pkg", "node evil.js").exec(201, 200, "/usr/bin/node", "node")
        r.write(201, "/root/.bashrc").write(201, "/etc/profile.d/x.sh").write(201, "/tmp/core-js-banners")
        r.write(201, "/root/.npm/_cacache/x").write(100, "/root/.bash_history")
        found = differ.diff(r.fps(), frozenset(), ALLOW, A.RunContext("pkg", "1.0.0"))
        self.assertEqual(one(found, FS_WRITE, "/root/.bashrc").severity, Severity.MEDIUM)
        self.assertEqual(one(found, FS_WRITE, "/etc/profile.d/x.sh").severity, Severity.MEDIUM)
        self.assertEqual(one(found, FS_WRITE, "/tmp/core-js-banners").severity, Severity.LOW)
        self.assertEqual(one(found, FS_WRITE, "/root/.npm/_cacache/x").severity, Severity.LOW)
        self.assertEqual(one(found, FS_WRITE, "/root/.bash_history", actor="npm").severity, Severity.LOW)


class PackageHintTests(SynchronousTestCase):
    def test_packageFromTheFilesTheScriptOpened(self) -> None:
        """
        No PATH search and no Cwd (the shell exec'd by absolute path): the
        script's package is the one whose files its child opened first.
        """
        r = Run().npm(100)
        r.exec(200, 100, "/bin/sh", "sh", "-c", "node setup.js")
        r.exec(201, 200, "/usr/bin/node", "node", "setup.js")
        r.read(201, "/tmp/t/node_modules/@scope/thing/setup.js", ppid=200)
        r.read(201, "/tmp/t/node_modules/other/index.js", ppid=200)
        self.assertEqual(r.tree().actorOf(201).label, "script:@scope/thing@?:?")


class EgressAllowlistTests(SynchronousTestCase):
    def test_allowlistedEgressNamesAndCIDRs(self) -> None:
        from fangs.orchestrator.allowlist import AllowEntry

        allow = Allowlist([AllowEntry("1", "sni", "registry.npmjs.org"), AllowEntry("2", "cidr", "192.0.2.0/24")])
        r = Run()
        r.add(12, 5, Protocol="tls", Action="forwarded", DestName="registry.npmjs.org", DestIP="203.0.113.80", DestPort=443)
        r.add(12, 5, Protocol="tcp", Action="refused", DestIP="192.0.2.9", DestPort=22)
        r.add(12, 5, Protocol="tls", Action="sinkholed", DestName="evil.example", DestPort=443)
        found = [(d.category, d.value) for d in differ.diff(r.fps(), frozenset(), allow)]
        self.assertEqual(found, [(NET_EGRESS, "tls evil.example:443")])


class ExecResultTests(SynchronousTestCase):
    def test_sensorSaysWhichAttemptsFailed(self) -> None:
        r = Run()
        # command not found: every attempt failed, none is a fingerprint
        r.exec(5, 1, "/usr/local/bin/nope", "nope", Ret=-2).exec(5, 1, "/usr/bin/nope", "nope", Ret=-2)
        # a failed exec that is no PATH search stays evidence
        r.exec(6, 1, "/tmp/x", "/tmp/x", Errno=13)
        # a PATH search whose first attempt worked (the later one is another exec)
        r.exec(7, 1, "/usr/local/bin/tool", "tool", Failed=False).exec(7, 1, "/usr/bin/tool", "tool", Failed=False)
        execs = {v for c, v in labels(r.fps()) if c == PROC_EXEC}
        self.assertEqual(execs, {"/tmp/x", "/usr/local/bin/tool", "/usr/bin/tool"})
