"""
When a run ends, analyse it: the store executes the differ's plan in one
transaction and this tells whoever listens (the notifier) about verdicts that
changed.  Analysis runs once per finished run; a repeated analysis of the
same data changes nothing and tells nobody.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fangs.orchestrator.store import AnalysisOutcome, RunRow
from fangs.tenants import DEFAULT_TENANT

log = Logger()


def jobOf(run: RunRow) -> Dict[str, Any]:
    """
    The run's stored job as a JSON object (empty when it is not one).
    """
    try:
        job = orjson.loads(run.job)
    except orjson.JSONDecodeError:
        return {}
    return job if isinstance(job, dict) else {}


def credPathsOf(run: RunRow, job: Optional[Mapping[str, Any]] = None) -> Tuple[str, ...]:
    """
    The cred-tagged watched prefixes of the run's job (C{job}: already
    parsed with L{jobOf}).
    """
    job = jobOf(run) if job is None else job
    return tuple(w.get("prefix", "") for w in job.get("watched_paths") or () if w.get("cred_tagged"))


class RunAnalyzer:
    def __init__(self, clock: IReactorTime, store: Any, metrics: Any = None) -> None:
        self._clock = clock
        self._store = store
        self.metrics = metrics
        self.listeners: List[Callable[[AnalysisOutcome], Any]] = []

    def runFinished(self, runID: str) -> None:
        d = Deferred.fromCoroutine(self.analyze(runID))
        d.addErrback(lambda f: log.failure("analysis of run {run_id} failed", f, run_id=runID))

    async def analyze(self, runID: str, decision: Optional[str] = None, actor: str = "system",
                      tenant: Optional[str] = None) -> AnalysisOutcome:
        """
        Judge a run: for C{tenant}, or (without one, when the run finished)
        for every tenant it is linked to, each against its own baseline and
        allowlist.  A decision is one tenant's (C{tenant}, else the default).

        @return: C{tenant}'s outcome, else the run's owner's.
        """
        run = await self._store.getRun(runID)
        if run is None:
            raise LookupError(runID)
        started = self._clock.seconds()
        now = int(started * 1_000_000_000)
        if decision is None and tenant is None:
            outcomes = await self._store.analyzeRunTenants(runID, now, credPathsOf(run))
        elif decision is None:
            outcomes = [await self._store.analyzeRun(runID, now, credPathsOf(run), tenant=tenant)]
        else:
            outcomes = [await self._store.decide(runID, decision, actor, now, credPathsOf(run), tenant=tenant or DEFAULT_TENANT)]
        elapsed = self._clock.seconds() - started
        for outcome in outcomes:
            if self.metrics is not None:
                self.metrics.analysed(outcome, decision, elapsed)
            log.info(
                "run {run_id} ({package}) verdict {verdict} for tenant {tenant}: {deviations} deviations, max severity {severity}",
                run_id=runID,
                package=outcome.package_name,
                verdict=outcome.verdict,
                tenant=outcome.tenant,
                deviations=outcome.deviations,
                severity=outcome.max_severity or "-",
            )
            if outcome.changed:
                for listener in self.listeners:
                    try:
                        listener(outcome)
                    except Exception:
                        log.failure("verdict listener failed for run {run_id}", run_id=runID)
        return outcomes[0]
