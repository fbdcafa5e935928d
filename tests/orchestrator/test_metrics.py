"""
GET /metrics after a scenario like the end-to-end one: the series move as
they should.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator.auth import Authenticator
from fangs.orchestrator.api import OrchestratorAPI
from fangs.orchestrator.metrics import Metrics
from tests.orchestrator.helpers import InMemoryOrchestrator, batchLine, fileEvent, runScan
from tests.orchestrator.test_api import assertError
from tests.orchestrator.test_review import BENIGN, MALICIOUS


class MeteredOrchestrator(InMemoryOrchestrator):
    """
    The in-memory orchestrator (its analyzer reports to the core's metrics,
    wired as the daemon wires them) with a scrape of C{GET /metrics}.
    """

    def scrape(self):
        response = self.request("GET", "/metrics")
        self.test.assertEqual(response.code, 200)
        self.test.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version="))
        text = self.test.successResultOf(response.text())
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class ScenarioTests(SynchronousTestCase):
    def test_seriesMove(self):
        o = MeteredOrchestrator(self)
        before = o.scrape()
        self.assertEqual(value(before, "fangs_events_received_total", type="file_access"), 0)
        self.assertEqual(value(before, "fangs_baseline_promotions_total", trigger="manual"), 0)
        self.assertIn(("fangs_baseline_promotions_total", (("trigger", "auto"),)), before)  # present at zero
        self.assertEqual(value(before, "fangs_runners_registered"), 0)

        o.register()
        seed = runScan(o, BENIGN)  # baseline (auto)
        runScan(o, BENIGN)  # clean
        bad = runScan(o, MALICIOUS)  # deviations
        m = o.scrape()
        # The key reads and the outbound names are one process tree: a chain.
        self.assertEqual(value(m, "fangs_deviations", severity="critical"), 5)
        self.assertEqual(value(m, "fangs_deviations", severity="high"), 0)
        self.assertEqual(value(m, "fangs_deviations", severity="medium"), 1)
        code, _ = o.call("POST", "/v1/runs/%s/reanalyze" % (bad,))
        self.assertEqual(code, 200)
        m = o.scrape()
        self.assertEqual(value(m, "fangs_deviations", severity="critical"), 5)  # stored rows: re-analysis does not double count
        incomplete = runScan(o, BENIGN, dropped=3)  # incomplete, 3 events dropped
        # A resent batch is received again but not stored again.
        code, _ = o.call("POST", "/v1/runs/%s/events" % (seed,), raw=batchLine(1, [fileEvent("/etc/hostname")]))
        self.assertEqual(code, 200)
        code, _ = o.call("POST", "/v1/runs/%s/promote" % (bad,))
        self.assertEqual(code, 200)
        o.submit()  # stays queued
        pollD = o.start("GET", "/v1/runners/worker-2/jobs")  # 404: unregistered
        o.finish(pollD)
        o.register("worker-2")
        waiting = o.start("GET", "/v1/runners/worker-2/jobs")
        o.treq.flush()
        self.addCleanup(lambda: (o.clock.advance(30), o.treq.flush()))
        code, _ = o.call("GET", "/v1/runs/%s" % (incomplete,))

        m = o.scrape()
        files = sum(1 for e in BENIGN if e["type"] == 1)
        maliciousFiles = sum(1 for e in MALICIOUS if e["type"] == 1)
        self.assertEqual(value(m, "fangs_events_received_total", type="file_access"), files * 3 + maliciousFiles + 1)
        self.assertEqual(value(m, "fangs_events_received_total", type="exec"), 3 + 2)
        self.assertEqual(value(m, "fangs_events_persisted_total"), len(BENIGN) * 3 + len(MALICIOUS))
        self.assertEqual(value(m, "fangs_events_dropped_total"), 3)
        self.assertEqual(value(m, "fangs_scans_submitted_total"), 5)
        self.assertEqual(value(m, "fangs_run_duration_seconds_count", status="ok"), 4)
        self.assertEqual(value(m, "fangs_ingest_batch_seconds_count"), 5)
        self.assertEqual(value(m, "fangs_differ_duration_seconds_count"), 6)
        self.assertEqual(value(m, "fangs_differ_verdicts_total", verdict="baseline"), 2)  # seed, promoted
        self.assertEqual(value(m, "fangs_differ_verdicts_total", verdict="clean"), 1)
        self.assertEqual(value(m, "fangs_differ_verdicts_total", verdict="deviations"), 2)  # analysis and re-analysis
        self.assertEqual(value(m, "fangs_differ_verdicts_total", verdict="incomplete"), 1)
        self.assertEqual(value(m, "fangs_baseline_promotions_total", trigger="auto"), 1)
        self.assertEqual(value(m, "fangs_baseline_promotions_total", trigger="manual"), 1)
        # The incomplete run's deviations are stored; the promoted run's are gone.
        self.assertEqual(value(m, "fangs_deviations", severity="critical"), 0)
        self.assertEqual(value(m, "fangs_runs", state="done"), 4)
        self.assertEqual(value(m, "fangs_runs", state="pending"), 1)
        self.assertEqual(value(m, "fangs_queue_depth"), 1)
        self.assertEqual(value(m, "fangs_runners_registered"), 2)
        self.assertEqual(value(m, "fangs_long_poll_waiters"), 1)
        self.assertEqual(value(m, "fangs_orchestrator_info", version="dev"), 1)
        route = "/v1/runs/<runID>/events"
        self.assertEqual(value(m, "fangs_http_requests_total", method="POST", route=route, status="200"), 5)
        self.assertEqual(value(m, "fangs_http_requests_total", method="GET", route="/v1/runners/<runnerID>/jobs", status="404"), 1)
        self.assertEqual(value(m, "fangs_http_requests_total", method="GET", route="/v1/runs/<runID>", status="200"), 1)
        self.assertEqual(value(m, "fangs_http_requests_total", method="GET", route="/metrics", status="200"), 3)
        self.assertFalse(any(k[0] == "fangs_http_requests_total" and bad in str(k) for k in m))  # never the path


    def test_notificationsByTemplate(self):
        from tests.orchestrator.test_notifier import World

        w = World(self, script=[(500, {}), (200, {})])
        w.o.analyzer.metrics = w.o.core.metrics
        w.svc._metrics = w.o.core.metrics
        w.addTarget("my-teams-own-hook", template="generic")
        w.badScan()
        w.advance(1.1)
        m = MeteredOrchestrator.scrape(w.o)
        self.assertEqual(value(m, "fangs_notifications_total", template="generic", status="failed"), 1)
        self.assertEqual(value(m, "fangs_notifications_total", template="generic", status="sent"), 1)
        self.assertEqual(value(m, "fangs_notification_outbox", state="sent"), 1)
        self.assertFalse(any("my-teams" in str(k) for k in m))

    def test_operatorScopedWithAuth(self):
        o = MeteredOrchestrator(self)
        api = OrchestratorAPI(o.core, Authenticator("token", o.store))
        from treq.testing import StubTreq

        o.treq = StubTreq(api.resource())
        code, body = o.call("GET", "/metrics")
        assertError(self, code, body, 401)

    def test_certificateExpiry(self):
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fangs")])
        notAfter = datetime.datetime(2030, 1, 2, tzinfo=datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(notAfter).sign(key, hashes.SHA256())
        )
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        o = MeteredOrchestrator(self)
        o.core.metrics.watchCertificate("server", path)
        m = o.scrape()
        self.assertEqual(value(m, "fangs_tls_certificate_expiry_timestamp_seconds", certificate="server"), notAfter.timestamp())

    def test_registriesAreSeparate(self):
        a, b = Metrics(), Metrics()
        a.scansSubmitted.inc()
        self.assertEqual(b.registry.get_sample_value("fangs_scans_submitted_total"), 0)
        self.assertEqual(a.registry.get_sample_value("fangs_scans_submitted_total"), 1)
        names = {m.name for m in a.registry.collect()}
        self.assertIn("python_info", names)  # the platform collector; process_* where /proc exists
