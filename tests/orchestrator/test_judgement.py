"""
Tests for L{fangs.orchestrator.judgement}: the analysis decisions, with a
fake transaction instead of a database.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import attrs
from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator import differ
from fangs.orchestrator.actors import RunContext
from fangs.orchestrator.allowlist import Allowlist
from fangs.orchestrator.db.model import AnalysisOutcome, Conflict, NotFound, RunRow
from fangs.orchestrator.judgement import AnalyseRun, AnalyseRunTenants, Decide, notificationsFor

RUN = "a" * 32


def runRow(**kw: Any) -> RunRow:
    fields: Dict[str, Any] = dict(
        id=RUN, package_name="left-pad", version="1.3.1", kind="sandbox_scan", state="done", target_runner=None,
        runner_id="r1", job="{}", created_ns=1, dispatched_ns=2, last_activity_ns=3, deadline_ns=None, finished_ns=4,
        cancel_requested=False, result_status="ok", failure_reason="", events_emitted=1, events_dropped=0,
        duration_ns=5, events_received=1, batches_received=1, verdict=None,
    )
    fields.update(kw)
    return RunRow(**fields)


@attrs.define
class FakeTransaction:
    """
    What the store's transaction offers a unit, in memory; it records writes.
    """

    runs: Dict[Optional[str], RunRow]
    fingerprintRows: List[Tuple[Any, ...]] = attrs.Factory(list)
    baseline: set = attrs.Factory(set)
    baselined: bool = False
    targets: List[Dict[str, Any]] = attrs.Factory(list)
    tenants: List[str] = attrs.Factory(list)
    recorded: List[Tuple[str, str, int]] = attrs.Factory(list)
    queued: List[Tuple[str, str]] = attrs.Factory(list)
    decisions: List[Tuple[str, str]] = attrs.Factory(list)
    audited: List[str] = attrs.Factory(list)

    def run(self, runID: str, tenant: Optional[str] = None) -> RunRow:
        if tenant not in self.runs:
            raise NotFound(runID)
        return self.runs[tenant]

    def tenantsOf(self, runID: str) -> List[str]:
        return self.tenants

    def fingerprints(self, runID: str, credPaths: Any) -> differ.FingerprintSet:
        return differ.FingerprintSet.fromTuples(self.fingerprintRows, credPaths)

    def allowlist(self, tenant: str, package: str) -> Allowlist:
        return Allowlist([], package)

    def baselineKeys(self, tenant: str, package: str, exceptRun: str) -> set:
        return self.baseline

    def hasBaseline(self, tenant: str, package: str, exceptRun: str) -> bool:
        return self.baselined

    def runContext(self, run: RunRow) -> Any:
        return RunContext(run.package_name, run.version, {}), []

    def recordAnalysis(self, run: RunRow, tenant: str, plan: Any, blocking: int, maxSeverity: Any, nowNs: int,
                       owner: bool) -> None:
        self.recorded.append((tenant, plan.verdict, blocking))
        self.runs[tenant] = attrs.evolve(self.runs[tenant], verdict=plan.verdict, deviation_count=blocking,
                                         max_severity=maxSeverity)

    def setDecision(self, runID: str, tenant: str, decision: str) -> None:
        self.decisions.append((tenant, decision))
        self.runs[tenant] = attrs.evolve(self.runs[tenant], decision=decision)

    def audit(self, tenant: str, atNs: int, actor: str, action: str, target: str, detail: str) -> None:
        self.audited.append(action)

    def notifiers(self, tenant: str) -> List[Dict[str, Any]]:
        return self.targets

    def deviationsToNotify(self, runID: str, tenant: str) -> List[Dict[str, Any]]:
        return [{"id": "d1", "category": differ.FS_READ, "value": "/root/.npmrc", "severity": "critical",
                 "reason": "x", "evidence_event_id": 7, "detected_at": "2026-12-01T00:00:00Z", "actor": "npm"}]

    def enqueue(self, tenant: str, runID: str, message: Any, nowNs: int) -> int:
        self.queued.append((tenant, message.notifier))
        return 1


SLACK = {"name": "team", "template": "slack", "min_severity": "low", "packages": []}


class AnalyseRunTests(SynchronousTestCase):
    def test_firstRunWithNothingSuspiciousSeedsAndNotifiesNobody(self) -> None:
        tx = FakeTransaction({None: runRow(), "default": runRow()}, targets=[SLACK])
        outcome = AnalyseRun(RUN, 10)(tx)
        self.assertEqual(outcome.verdict, differ.VERDICT_BASELINE)
        self.assertEqual(tx.recorded, [("default", differ.VERDICT_BASELINE, 0)])
        self.assertEqual(tx.queued, [])

    def test_eachLinkedTenantJudgedOwnerFirst(self) -> None:
        """
        A shared run is judged once per linked tenant, the owner first;
        each gets its own verdict.
        """
        rows = [(differ.PROC_EXEC, "/usr/local/bin/node", 1, 1, 0, 0)]
        tx = FakeTransaction({None: runRow(tenant="a"), "a": runRow(tenant="a"), "b": runRow(tenant="b")},
                             fingerprintRows=rows, tenants=["a", "b"])
        outcomes = AnalyseRunTenants(RUN, 10)(tx)
        self.assertEqual([o.tenant for o in outcomes], ["a", "b"])
        self.assertEqual([t for t, _, _ in tx.recorded], ["a", "b"])

    def test_noEventsNeverClean(self) -> None:
        tx = FakeTransaction({None: runRow(events_received=0), "default": runRow(events_received=0)}, baselined=True)
        self.assertEqual(AnalyseRun(RUN, 10)(tx).verdict, differ.VERDICT_INCOMPLETE)


class DecideTests(SynchronousTestCase):
    def test_unfinishedRunRefused(self) -> None:
        tx = FakeTransaction({None: runRow(state="running", result_status=None),
                              "default": runRow(state="running", result_status=None)})
        self.assertRaises(Conflict, Decide(RUN, "promoted", "alice", 10), tx)
        self.assertEqual((tx.decisions, tx.recorded, tx.audited), ([], [], []))

    def test_incompleteRunCannotBePromoted(self) -> None:
        tx = FakeTransaction({None: runRow(events_dropped=3), "default": runRow(events_dropped=3)})
        self.assertRaises(Conflict, Decide(RUN, "promoted", "alice", 10), tx)

    def test_otherTenantsRunIsNotFound(self) -> None:
        tx = FakeTransaction({None: runRow(tenant="a"), "a": runRow(tenant="a")})
        self.assertRaises(NotFound, Decide(RUN, "rejected", "bob", 10, tenant="b"), tx)

    def test_rejectRecordsDecisionVerdictAndAudit(self) -> None:
        tx = FakeTransaction({None: runRow(), "default": runRow()})
        Decide(RUN, "rejected", "alice", 10)(tx)
        self.assertEqual(tx.decisions, [("default", "rejected")])
        self.assertEqual(tx.audited, ["reject"])
        self.assertEqual(len(tx.recorded), 1)


class NotificationsTests(SynchronousTestCase):
    def outcome(self, **kw: Any) -> AnalysisOutcome:
        fields: Dict[str, Any] = dict(run_id=RUN, package_name="left-pad", verdict="deviations", deviations=1,
                                      max_severity="critical", changed=True, tenant="default")
        fields.update(kw)
        return AnalysisOutcome(**fields)

    def test_rules(self) -> None:
        devs = FakeTransaction({}).deviationsToNotify(RUN, "default")
        run = runRow()
        self.assertEqual([m.notifier for m in notificationsFor(self.outcome(), run, [SLACK], devs)], ["team"])
        # Unchanged, nothing blocking, a clean verdict, or a target that does
        # not want the package or severity: no message.
        self.assertEqual(notificationsFor(self.outcome(changed=False), run, [SLACK], devs), [])
        self.assertEqual(notificationsFor(self.outcome(deviations=0), run, [SLACK], devs), [])
        self.assertEqual(notificationsFor(self.outcome(verdict="clean"), run, [SLACK], devs), [])
        self.assertEqual(notificationsFor(self.outcome(), run, [dict(SLACK, packages=["other"])], devs), [])
        self.assertEqual(notificationsFor(self.outcome(max_severity="low"), run, [dict(SLACK, min_severity="high")], devs), [])

    def test_messageRendersTheRunAndItsDeviations(self) -> None:
        devs = FakeTransaction({}).deviationsToNotify(RUN, "default")
        (message,) = notificationsFor(self.outcome(), runRow(), [dict(SLACK, template="generic")], devs)
        self.assertEqual(message.content_type, "application/json")
        self.assertIn(b"/root/.npmrc", message.body)
        self.assertIn(b"left-pad", message.body)
