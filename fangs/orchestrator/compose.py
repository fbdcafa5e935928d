"""
How one orchestrator's parts fit together: L{composeOrchestrator} builds the
object graph from the store to the HTTP API (runner registry, dispatcher,
metrics, analyzer, run stream, core, API), once, for
L{fangs.orchestrator.tap.makeService} (which adds the services, timers and
listener around it) and for tests and benchmarks that build an orchestrator
in-process (L{tests.orchestrator.helpers.InMemoryOrchestrator}).
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.internet.interfaces import IReactorTime

from fangs.orchestrator.analysis import RunAnalyzer
from fangs.orchestrator.api import OrchestratorAPI
from fangs.orchestrator.config import OrchestratorConfig
from fangs.orchestrator.core import Orchestrator
from fangs.orchestrator.dispatcher import Dispatcher
from fangs.orchestrator.metrics import Metrics
from fangs.orchestrator.registry import RunnerRegistry
from fangs.orchestrator.stream import RunStream, RunStreamPublisher
from fangs.orchestrator.watcher import Submit
from fangs.tenants import DEFAULT_TENANT

DEFAULT_POLL_WAIT = 25.0


@attrs.frozen
class OrchestratorParts:
    """
    One orchestrator, wired: what L{composeOrchestrator} built.
    """

    store: Any
    registry: RunnerRegistry
    dispatcher: Dispatcher
    metrics: Metrics
    analyzer: RunAnalyzer
    stream: RunStream
    runEvents: RunStreamPublisher
    core: Orchestrator
    api: OrchestratorAPI


def composeOrchestrator(
    clock: IReactorTime,
    store: Any,
    config: OrchestratorConfig,
    *,
    orchestratorID: str = "fangs-orchestrator",
    version: str = "dev",
    pollWait: float = DEFAULT_POLL_WAIT,
    metrics: Optional[Metrics] = None,
    auth: Any = None,
    policy: Any = None,
) -> OrchestratorParts:
    """
    Wire an orchestrator around C{store} (not started: the caller opens it,
    L{fangs.orchestrator.tap.OrchestratorService} in a daemon).

    @param version: what C{/v1/health} and the metrics report (the daemon
        passes C{fangs.__version__}).
    @param metrics: the daemon's (process metrics, certificate expiry);
        default: a registry of its own without process metrics.
    @param auth: the API's L{fangs.orchestrator.auth.Authenticator};
        default C{none} mode.
    @param policy: the API's browser policy; default: the API's.
    """
    registry = RunnerRegistry(clock, store=store)
    dispatcher = Dispatcher(clock, store, pollWait=pollWait)
    # Jobs queued by other orchestrators on the same PostgreSQL database.
    getattr(store, "jobListeners", []).append(dispatcher.wake)
    if metrics is None:
        metrics = Metrics(version, processMetrics=False)
    analyzer = RunAnalyzer(clock, store, metrics=metrics)
    stream = RunStream(clock, store)
    runEvents = RunStreamPublisher(stream, store)
    analyzer.listeners.append(runEvents.verdict)
    core = Orchestrator(
        clock,
        store,
        registry,
        dispatcher,
        config,
        orchestratorID=orchestratorID,
        version=version,
        analyzer=analyzer,
        metrics=metrics,
        runEvents=runEvents,
    )
    api = OrchestratorAPI(core, auth, policy, stream=stream)
    return OrchestratorParts(store, registry, dispatcher, metrics, analyzer, stream, runEvents, core, api)


def watcherSubmit(core: Orchestrator) -> Submit:
    """
    What the npm watcher calls to queue a release's scan: the core's own
    submission, on the shared queue (no target runner required).
    """

    async def submit(request: Any, key: str, tenant: str = DEFAULT_TENANT) -> str:
        runID, _ = await core.submitScan(request, key, requireTarget=False, tenant=tenant)
        return runID

    return submit
