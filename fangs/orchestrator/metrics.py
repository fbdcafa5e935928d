"""
Prometheus metrics of the orchestrator, on a registry of its own (never the
process-global default, so two orchestrators in one test process do not
collide).

Three kinds of series:

  - counters and histograms incremented where things happen (ingest, scans,
    results, analyses, deliveries, HTTP requests);
  - gauges read from live objects when scraped (runners, long-poll
    waiters) through C{set_function};
  - gauges refreshed from the database by L{Metrics.render} just before a
    scrape (runs by state, queue depth, stored deviations by severity,
    outbox by state), so they are exact and survive restarts.

Label values are bounded: event types, severities, verdicts, templates (not
the operator's free-text notifier names), route templates (not paths).
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Iterable, Optional

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.logger import Logger
from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException

from fangs import wire

log = Logger()

CONTENT_TYPE = CONTENT_TYPE_LATEST
RUN_STATES = ("pending", "leased", "dispatched", "running", "done", "failed", "timeout", "cancelled")
SEVERITIES = ("low", "medium", "high", "critical")
VERDICTS = ("baseline", "clean", "deviations", "incomplete", "rejected")
TEMPLATES = ("slack", "discord", "generic", "siem")
DELIVERY_STATUSES = ("sent", "failed", "permanent")
OUTBOX_STATES = ("pending", "sent", "permanent", "dead")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_RUN_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)


class Metrics:
    def __init__(self, version: str = "dev", processMetrics: bool = True) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        if processMetrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.version = version
        Gauge("fangs_orchestrator_info", "Orchestrator version.", ["version"], registry=r).labels(version).set(1)
        self.tenantRuns = Gauge("fangs_tenant_runs", "Runs by tenant and state (a shared run counts for each of its tenants).",
                                ["tenant", "state"], registry=r)
        self.tenantDeviations = Gauge("fangs_tenant_deviations", "Stored deviations by tenant and severity.",
                                      ["tenant", "severity"], registry=r)

        self.runnersRegistered = Gauge("fangs_runners_registered", "Runners in the registry.", registry=r)
        self.runnersActive = Gauge("fangs_runners_active", "Registered runners reporting at least one active run.", registry=r)
        self.longPollWaiters = Gauge("fangs_long_poll_waiters", "Job long-polls waiting.", registry=r)
        self.runs = Gauge("fangs_runs", "Runs (jobs) by state, from the database.", ["state"], registry=r)
        self.queueDepth = Gauge("fangs_queue_depth", "Jobs waiting for a runner (state pending).", registry=r)
        self.scansSubmitted = Counter("fangs_scans_submitted", "Scans queued (idempotent repeats not counted).", registry=r)
        self.runDuration = Histogram(
            "fangs_run_duration_seconds", "Run durations reported by runners.", ["status"], buckets=_RUN_BUCKETS, registry=r
        )
        self.eventsReceived = Counter("fangs_events_received", "Events received, by type.", ["type"], registry=r)
        self.eventsPersisted = Counter("fangs_events_persisted", "Events stored (resent batches not counted).", registry=r)
        self.eventsDropped = Counter(
            "fangs_events_dropped", "Events runners' sensors dropped (each run's final figure, once).", registry=r
        )
        self.ingestLatency = Histogram(
            "fangs_ingest_batch_seconds", "Time to store one event batch.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.differDuration = Histogram(
            "fangs_differ_duration_seconds", "Time to analyse one run.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.verdicts = Counter("fangs_differ_verdicts", "Analyses by resulting verdict.", ["verdict"], registry=r)
        self.deviations = Gauge("fangs_deviations", "Stored deviations by severity, from the database.", ["severity"], registry=r)
        self.promotions = Counter(
            "fangs_baseline_promotions", "Runs that became baseline: auto (first run) or manual (promoted).", ["trigger"], registry=r
        )
        self.notifications = Counter(
            "fangs_notifications", "Notification delivery attempts by template and status.", ["template", "status"], registry=r
        )
        self.outbox = Gauge("fangs_notification_outbox", "Notification messages by state, from the database.", ["state"], registry=r)
        self.httpRequests = Counter(
            "fangs_http_requests", "HTTP requests by method, route template and status.", ["method", "route", "status"], registry=r
        )
        self.tlsExpiry = Gauge(
            "fangs_tls_certificate_expiry_timestamp_seconds", "Expiry (notAfter) of a certificate in use.", ["certificate"], registry=r
        )
        # Series exist from the start, at zero, so rate() and absence alerts work.
        for name in list(wire.EVENT_TYPE_NAMES.values()) + ["unknown"]:
            self.eventsReceived.labels(name)
        for v in VERDICTS:
            self.verdicts.labels(v)
        for t in ("auto", "manual"):
            self.promotions.labels(t)
        for t in TEMPLATES:
            for s in DELIVERY_STATUSES:
                self.notifications.labels(t, s)
        self._zeroDatabaseGauges()
        self._certificates: Dict[str, str] = {}

    def _zeroDatabaseGauges(self) -> None:
        for s in RUN_STATES:
            self.runs.labels(s).set(0)
        for s in SEVERITIES:
            self.deviations.labels(s).set(0)
        for s in OUTBOX_STATES:
            self.outbox.labels(s).set(0)

    # -- wiring ----------------------------------------------------------------

    def watch(self, registry: Any, dispatcher: Any) -> None:
        """
        Read the runner registry and the dispatcher at scrape time.
        """
        self.runnersRegistered.set_function(lambda: len(registry.all()))
        self.runnersActive.set_function(lambda: sum(1 for r in registry.all() if r.active_run_ids or r.active_run_id))
        self.longPollWaiters.set_function(dispatcher.waiterCount)

    # -- observations ------------------------------------------------------------

    def eventsIn(self, types: Iterable[int]) -> None:
        for t, n in collections.Counter(types).items():
            self.eventsReceived.labels(wire.EVENT_TYPE_NAMES.get(t, "unknown")).inc(n)

    def resultRecorded(self, status: str, durationNs: int, dropped: int) -> None:
        self.runDuration.labels(status).observe(durationNs / 1e9)
        if dropped:
            self.eventsDropped.inc(dropped)

    def analysed(self, outcome: Any, decision: Optional[str], seconds: float) -> None:
        self.differDuration.observe(seconds)
        self.verdicts.labels(outcome.verdict).inc()
        if outcome.verdict == "baseline":
            if decision == "promoted":
                self.promotions.labels("manual").inc()
            elif outcome.changed and decision != "rejected":
                self.promotions.labels("auto").inc()

    def watchCertificate(self, name: str, path: str) -> None:
        """
        Re-read C{path} at every scrape (it may be rotated on SIGHUP).
        """
        self._certificates[name] = path

    def certificate(self, name: str, pem: bytes) -> None:
        """
        Export the expiry of a PEM certificate (the first one in C{pem}).
        """
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(pem)
        self.tlsExpiry.labels(name).set(cert.not_valid_after_utc.timestamp())

    # -- exposition ------------------------------------------------------------

    async def render(self, store: Any, tenant: Optional[str] = None) -> bytes:
        """
        Refresh the database gauges, then the text exposition format.

        With C{tenant} (a tenant's principal), only what is that tenant's:
        its runs by state, its queue depth, its deviations and outbox, in a
        registry of their own (process-wide series such as verdict counters
        or HTTP requests mix every tenant's work and are left out).  Without
        (an all-tenant admin), everything, plus C{fangs_tenant_*} series
        with a C{tenant} label.
        """
        if tenant is not None:
            return generate_latest(self._tenantRegistry(tenant, await store.metricCounts(tenant=tenant)))
        counts = await store.metricCounts()
        self._zeroDatabaseGauges()
        for state, n in counts["runs"].items():
            self.runs.labels(state).set(n)
        self.queueDepth.set(counts["runs"].get("pending", 0))
        for sev, n in counts["deviations"].items():
            self.deviations.labels(sev).set(n)
        for state, n in counts["outbox"].items():
            self.outbox.labels(state).set(n)
        self.tenantRuns.clear()
        self.tenantDeviations.clear()
        for (name, state), n in counts.get("tenant_runs", {}).items():
            self.tenantRuns.labels(name, state).set(n)
        for (name, sev), n in counts.get("tenant_deviations", {}).items():
            self.tenantDeviations.labels(name, sev).set(n)
        for name, path in self._certificates.items():
            try:
                with open(path, "rb") as f:
                    self.certificate(name, f.read())
            except (OSError, ValueError):
                log.failure("reading certificate {path} for its expiry", path=path)
        return generate_latest(self.registry)

    def _tenantRegistry(self, tenant: str, counts: Dict[str, Dict[str, int]]) -> CollectorRegistry:
        r = CollectorRegistry(auto_describe=True)
        Gauge("fangs_orchestrator_info", "Orchestrator version.", ["version"], registry=r).labels(self.version).set(1)
        runs = Gauge("fangs_runs", "Runs (jobs) by state, from the database.", ["state"], registry=r)
        queue = Gauge("fangs_queue_depth", "Jobs waiting for a runner (state pending).", registry=r)
        deviations = Gauge("fangs_deviations", "Stored deviations by severity, from the database.", ["severity"], registry=r)
        outbox = Gauge("fangs_notification_outbox", "Notification messages by state, from the database.", ["state"], registry=r)
        for s in RUN_STATES:
            runs.labels(s).set(counts["runs"].get(s, 0))
        for s in SEVERITIES:
            deviations.labels(s).set(counts["deviations"].get(s, 0))
        for s in OUTBOX_STATES:
            outbox.labels(s).set(counts["outbox"].get(s, 0))
        queue.set(counts["runs"].get("pending", 0))
        return r

    def instrument(self, resource: Any, urlMap: Any) -> "InstrumentedResource":
        return InstrumentedResource(resource, urlMap, self)


class InstrumentedResource(Resource):
    """
    Counts every request of the wrapped Klein resource by method, route
    template (C{/v1/runs/<runID>}, never the path itself) and status.
    """

    isLeaf = True

    def __init__(self, inner: Any, urlMap: Any, metrics: Metrics) -> None:
        super().__init__()
        self._inner = inner
        self._map = urlMap
        self._metrics = metrics

    def render(self, request: Any) -> Any:
        method = request.method.decode("latin-1")
        route = self.routeOf(request)
        if method not in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"):
            method = "other"

        def count(_: Any) -> None:
            self._metrics.httpRequests.labels(method, route, str(request.code)).inc()

        request.notifyFinish().addBoth(count)
        return self._inner.render(request)

    def routeOf(self, request: Any) -> str:
        try:
            path = request.path.decode("utf-8")
            rule, _ = self._map.bind("fangs", "/").match(path, method=request.method.decode("latin-1"), return_rule=True)
            return rule.rule
        except (HTTPException, UnicodeDecodeError):
            return "unmatched"
