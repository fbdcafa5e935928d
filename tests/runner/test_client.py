"""
Tests for L{fangs.runner.client}: the real client against an in-memory
orchestrator resource.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS

from fangs import wire
from fangs.runner.client import (
    NotRegistered,
    OrchestratorClient,
    OrchestratorError,
    UnknownRun,
    makeHTTPClient,
    parseError,
    tlsPolicy,
)
from fangs.runner.streamer import SegmentProducer
from fangs.wire import (
    EventBatch,
    EventEnvelope,
    Heartbeat,
    Job,
    RunnerRegistration,
    ScanResult,
    WatchedPath,
)
from tests.runner.fakes import FakeOrchestrator, memoryHTTPClient, runID


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.orch = FakeOrchestrator()
        http, self.flush = memoryHTTPClient(self.orch)
        self.client = OrchestratorClient(http, "http://orch.example:8443/", self.clock)

    def call(self, coro):
        d = Deferred.fromCoroutine(coro)
        self.flush()
        return d

    def test_register(self) -> None:
        reg = RunnerRegistration(runner_id="r1", hostname="h", capabilities=["sensor"],
                                 kernel_version="6.1", proto_version=1)
        ack = self.successResultOf(self.call(self.client.register(reg)))
        self.assertEqual(ack.heartbeat_interval, 30 * wire.SECOND)
        method, path, headers, body = self.orch.requests[0]
        self.assertEqual((method, path), ("POST", "/v1/runners/register"))
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.assertEqual(json.loads(body)["runner_id"], "r1")

    def test_heartbeat(self) -> None:
        hb = Heartbeat(runner_id="r1", status="idle")
        ack = self.successResultOf(self.call(self.client.heartbeat("r1", hb)))
        self.assertEqual(ack.unknown_runner, True)
        self.orch.registered["r1"] = {}
        ack = self.successResultOf(self.call(self.client.heartbeat("r1", hb)))
        self.assertEqual((ack.ok, ack.unknown_runner, ack.cancel_runs), (True, False, []))
        self.assertEqual(self.orch.requests[-1][1], "/v1/runners/r1/heartbeat")
        self.assertEqual(json.loads(self.orch.requests[-1][3]),
                         {"runner_id": "r1", "status": "idle"})

    def test_pollJob(self) -> None:
        self.orch.registered["r/1"] = {}
        job = Job(run_id=runID(7), kind="sandbox_scan", watched_paths=[WatchedPath("/etc/")],
                  duration=5 * wire.SECOND)
        self.orch.jobs.append(job)
        got = self.successResultOf(self.call(self.client.poll("r/1")))
        self.assertEqual(got, job)
        self.assertEqual(self.orch.requests[0][:2], ("GET", "/v1/runners/r%2F1/jobs"))

    def test_poll204(self) -> None:
        self.orch.registered["r1"] = {}
        self.assertIsNone(self.successResultOf(self.call(self.client.poll("r1"))))

    def test_poll404(self) -> None:
        f = self.failureResultOf(self.call(self.client.poll("r1")), NotRegistered)
        self.assertEqual((f.value.status, f.value.message), (404, "runner not registered"))

    def test_pollTimeout(self) -> None:
        """
        A poll is given 30 s, more than the server's 25 s cap.
        """
        self.orch.registered["r1"] = {}
        self.orch.holdPolls = True
        d = self.call(self.client.poll("r1"))
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, TimeoutError)

    def test_postEventsStreams(self) -> None:
        """
        The body producer's lines reach the orchestrator chunked, as NDJSON;
        the answer comes once the producer ends.
        """
        producer = SegmentProducer()
        d = self.call(self.client.postEvents(runID(1), producer))
        batch = EventBatch(run_id=runID(1), seq=1, events=[EventEnvelope(1, {"a": 1})])
        producer.write(wire.dumps(batch) + b"\n")
        self.flush()
        self.assertNoResult(d)
        producer.write(wire.dumps(EventBatch(run_id=runID(1), seq=2, events=[])) + b"\n")
        producer.end()
        self.flush()
        ack = self.successResultOf(d)
        self.assertEqual((ack.received_batches, ack.received_events), (2, 1))
        method, path, headers, body = self.orch.requests[0]
        self.assertEqual(path, "/v1/runs/%s/events" % (runID(1).hex(),))
        self.assertEqual(headers[b"Content-Type"], [b"application/x-ndjson"])
        self.assertEqual(headers[b"Transfer-Encoding"], [b"chunked"])
        self.assertEqual(self.orch.batches[runID(1).hex()][0], batch)

    def test_postResult(self) -> None:
        result = ScanResult(status="ok", run_id=runID(2), events_emitted=3)
        ack = self.successResultOf(self.call(self.client.postResult(runID(2), result)))
        self.assertTrue(ack.recorded)
        self.assertEqual(self.orch.results[runID(2).hex()]["events_emitted"], 3)

    def test_postResultUnknownRun(self) -> None:
        path = "/v1/runs/%s/result" % (runID(2).hex(),)
        self.orch.answers[("POST", path)] = (404, b'{"error":"run not found"}')
        result = ScanResult(status="ok", run_id=runID(2))
        f = self.failureResultOf(self.call(self.client.postResult(runID(2), result)), UnknownRun)
        self.assertEqual(f.value.message, "run not found")

    def test_errorEnvelope(self) -> None:
        path = "/v1/runs/%s/result" % (runID(2).hex(),)
        self.orch.answers[("POST", path)] = (
            400, b'{"error":{"code":"bad_status","message":"bad status","trace_id":"t"}}')
        result = ScanResult(status="ok", run_id=runID(2))
        f = self.failureResultOf(self.call(self.client.postResult(runID(2), result)),
                                 OrchestratorError)
        self.assertEqual((f.value.status, f.value.code, f.value.message),
                         (400, "bad_status", "bad status"))
        self.assertTrue(f.value.isPermanent())

    def test_badResponseBody(self) -> None:
        self.orch.answers[("POST", "/v1/runners/register")] = (200, b"<html>")
        reg = RunnerRegistration(runner_id="r1")
        f = self.failureResultOf(self.call(self.client.register(reg)), OrchestratorError)
        self.assertEqual(f.value.code, "bad_response")


class ParseErrorTests(SynchronousTestCase):
    def test_forms(self) -> None:
        e = parseError(500, b'{"error": {"code": "db", "message": "down"}}')
        self.assertEqual((e.status, e.code, e.message), (500, "db", "down"))
        e = parseError(400, b'{"error": "missing runner_id"}\n')
        self.assertEqual((e.code, e.message), ("", "missing runner_id"))
        e = parseError(502, b"Bad Gateway")
        self.assertEqual(e.message, "Bad Gateway")
        e = parseError(503, b"")
        self.assertEqual(e.message, "(empty body)")

    def test_permanence(self) -> None:
        for status, permanent in [(400, True), (403, True), (404, False), (408, False),
                                  (429, False), (500, False), (503, False)]:
            self.assertEqual(OrchestratorError(status, "", "").isPermanent(), permanent, status)


class HTTPClientTests(SynchronousTestCase):
    def test_plain(self) -> None:
        clock = Clock()
        pool = HTTPConnectionPool(clock, persistent=True)
        client = makeHTTPClient(clock, pool=pool)
        self.assertTrue(hasattr(client, "request"))
        self.assertIsNone(tlsPolicy())

    def test_certWithoutKey(self) -> None:
        self.assertRaises(ValueError, tlsPolicy, tlsCert=b"x")

    def test_tlsPolicy(self) -> None:
        from twisted.internet.ssl import KeyPair, PrivateCertificate

        key = KeyPair.generate(size=2048)
        ca = key.selfSignedCert(1, CN="fangs-ca")
        pem = ca.dumpPEM()
        keyPEM = key.dump(1)  # FILETYPE_PEM
        policy = tlsPolicy(tlsCA=pem, tlsCert=pem, tlsKey=keyPEM)
        self.assertTrue(IPolicyForHTTPS.providedBy(policy))
        creator = policy.creatorForNetloc(b"orch.example", 8443)
        self.assertIsNotNone(creator)
        self.assertIsInstance(PrivateCertificate.loadPEM(pem + b"\n" + keyPEM), PrivateCertificate)
