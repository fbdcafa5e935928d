"""
Judging a finished run: the decisions, as units of work the store runs in
one transaction.

A unit is a callable that takes the store's L{AnalysisTransaction
<fangs.orchestrator.db.analysis.AnalysisTransaction>} (typed reads and
writes over one open transaction, no rules of its own) and decides:

  - L{AnalyseRun}: the run's fingerprints against one tenant's baseline and
    allowlist (L{fangs.orchestrator.differ.planAnalysis}), the verdict,
    deviations and baseline rows written, and the notifications the verdict
    calls for queued in the same transaction (they commit with it);
  - L{AnalyseRunTenants}: L{AnalyseRun} for every tenant linked to the run;
  - L{Decide}: an operator's promote / reject / reanalyse, with the rules of
    who may become baseline, the re-analysis and the audit row.

The store runs them (C{store.runInTransaction(unit)}; C{analyzeRun},
C{analyzeRunTenants} and C{decide} are those calls), so every decision here
is tested without a database by giving a unit a fake transaction.
"""

from __future__ import annotations

import json
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import attrs

from fangs.orchestrator import differ
from fangs.orchestrator.db.model import FAILED, TERMINAL_STATES, AnalysisOutcome, Conflict, RunRow

@attrs.frozen
class Message:
    """
    One notification to queue: a target's rendering of a verdict.
    """

    notifier: str
    template: str
    body: bytes
    content_type: str


def notificationsFor(
    outcome: AnalysisOutcome,
    run: RunRow,
    targets: Sequence[Mapping[str, Any]],
    deviations: Sequence[Mapping[str, Any]],
) -> List[Message]:
    """
    The messages a verdict calls for: only a changed verdict with blocking
    deviations (C{deviations}, C{incomplete}) notifies, each target that
    wants the package at that severity once, in its template.
    """
    from fangs.orchestrator import notifier as N

    if not outcome.changed or not outcome.deviations or outcome.verdict not in N.NOTIFY_VERDICTS:
        return []
    wanted = [t for t in targets if N.wants(t, outcome.package_name, outcome.max_severity)]
    if not wanted:
        return []
    info = {
        "run_id": run.id,
        "package_name": run.package_name,
        "version": run.version,
        "state": run.state,
        "verdict": outcome.verdict,
        "max_severity": outcome.max_severity,
    }
    messages = []
    for t in wanted:
        body, ctype = N.render(t["template"], info, deviations)
        messages.append(Message(t["name"], t["template"], body, ctype))
    return messages


@attrs.frozen
class AnalyseRun:
    """
    Judge one run for one tenant (default: the tenant that queued it).
    Idempotent: the plan depends only on the run's events, the tenant's
    other runs' baseline rows, its allowlist and its decision on this run.
    """

    run_id: str
    now_ns: int
    cred_paths: Tuple[str, ...] = ()
    tenant: Optional[str] = None

    def __call__(self, tx: Any) -> AnalysisOutcome:
        owner = tx.run(self.run_id).tenant
        tenant = self.tenant or owner
        run = tx.run(self.run_id, tenant)  # as this tenant judged it so far
        before = (run.verdict, run.deviation_count, run.max_severity)
        context, deltas = tx.runContext(run)
        plan = differ.planAnalysis(
            tx.fingerprints(self.run_id, self.cred_paths or differ.DEFAULT_CRED_PATHS),
            tx.baselineKeys(tenant, run.package_name, self.run_id),
            tx.allowlist(tenant, run.package_name),
            # A run that finished "ok" without a single event means the
            # sensor saw nothing: never a clean verdict, never a baseline.
            runState=(run.result_status or "") if run.events_received else "no-events",
            # Unresolved file accesses are lost evidence, like drops.
            eventsDropped=run.events_dropped + run.events_unresolved,
            hasBaseline=tx.hasBaseline(tenant, run.package_name, self.run_id),
            rejected=run.decision == "rejected",
            promoted=run.decision == "promoted",
            context=context,
            manifestDeltas=deltas,
        )
        blocking = len(plan.blocking) if plan.verdict != differ.VERDICT_CLEAN else 0
        maxSeverity = plan.max_severity.label if plan.max_severity is not None else None
        tx.recordAnalysis(run, tenant, plan, blocking, maxSeverity, self.now_ns, owner=tenant == owner)
        outcome = AnalysisOutcome(self.run_id, run.package_name, plan.verdict, blocking, maxSeverity,
                                  (plan.verdict, blocking, maxSeverity) != before, tenant)
        messages = notificationsFor(outcome, run, tx.notifiers(tenant) if outcome.changed else (),
                                    tx.deviationsToNotify(self.run_id, tenant) if outcome.changed else ())
        for m in messages:
            tx.enqueue(tenant, self.run_id, m, self.now_ns)  # commits with the verdict
        return outcome


@attrs.frozen
class AnalyseRunTenants:
    """
    L{AnalyseRun} for every tenant the run is linked to, the one that queued
    it first.
    """

    run_id: str
    now_ns: int
    cred_paths: Tuple[str, ...] = ()

    def __call__(self, tx: Any) -> List[AnalysisOutcome]:
        tenants = tx.tenantsOf(self.run_id) or [None]
        return [AnalyseRun(self.run_id, self.now_ns, self.cred_paths, t)(tx) for t in tenants]


@attrs.frozen
class Decide:
    """
    An operator's decision on a finished run, for one tenant: C{promoted}
    (its behaviour joins the baseline), C{rejected} (its findings stay, it
    never becomes baseline) or C{reanalyze} (judge it again, e.g. after an
    allowlist change); with its audit row.

    @raise NotFound: no such run for the tenant.
    @raise Conflict: the run has not finished, or cannot become baseline.
    """

    run_id: str
    decision: str
    actor: str
    now_ns: int
    cred_paths: Tuple[str, ...] = ()
    tenant: str = "default"

    def __call__(self, tx: Any) -> AnalysisOutcome:
        run = tx.run(self.run_id, self.tenant)
        if run.state not in TERMINAL_STATES or run.result_status is None and run.state != FAILED:
            raise Conflict("run %s is still %s; decide once it has finished" % (self.run_id, run.state))
        if self.decision == "promoted":
            if not differ.isComplete(run.result_status or "", run.events_dropped + run.events_unresolved):
                raise Conflict(
                    "run %s is incomplete (%s%s); an incomplete run cannot become baseline"
                    % (self.run_id, run.state,
                       ", %d events dropped" % (run.events_dropped,) if run.events_dropped else "")
                )
            if not run.package_name:
                raise Conflict("run %s has no package to baseline" % (self.run_id,))
        if self.decision in ("promoted", "rejected"):
            tx.setDecision(self.run_id, self.tenant, self.decision)
        outcome = AnalyseRun(self.run_id, self.now_ns, self.cred_paths, self.tenant)(tx)
        tx.audit(
            self.tenant, self.now_ns, self.actor,
            {"promoted": "promote", "rejected": "reject"}.get(self.decision, self.decision),
            "run:" + self.run_id,
            json.dumps({"verdict": outcome.verdict, "deviations": outcome.deviations, "previous_decision": run.decision}),
        )
        return outcome

