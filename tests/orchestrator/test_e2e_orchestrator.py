"""
The orchestrator as users run it: the twistd plugin's service on a real
loopback socket, and a restart on the same database.
"""

import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer
from twisted.trial.unittest import TestCase

from fangs.orchestrator import tap
from tests.orchestrator.helpers import batchLine, fileEvent
from tests.procs import OrchestratorProcess, freePort, httpClient


@implementer(IBodyProducer)
class ChunkedBody:
    """
    A body of unknown length, so it is sent chunked.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, chunks):
        self.chunks = chunks

    def startProducing(self, consumer):
        for c in self.chunks:
            consumer.write(c)
        return succeed(None)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass


async def jsonCall(client, method, url, body=None, raw=None, headers=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None and headers is None:
        headers = {"Content-Type": "application/json"}
    r = await client.request(method, url, data=data, headers=headers)
    content = await r.content()
    try:
        return r.code, json.loads(content) if content else None
    except ValueError:
        return r.code, content


class PluginServiceTests(TestCase):
    timeout = 60

    def test_realSocket(self):
        return Deferred.fromCoroutine(self._realSocket())

    async def _realSocket(self):
        port = freePort()
        options = tap.Options()
        options.parseOptions(["--addr", "127.0.0.1:%d" % (port,), "--db", self.mktemp() + ".db", "--poll-wait", "1",
                             "--no-artifacts"])
        svc = tap.makeService(options)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        client = httpClient(self)
        url = "http://127.0.0.1:%d" % (port,)

        self.assertEqual((await jsonCall(client, "GET", url + "/v1/health"))[0], 200)
        code, body = await jsonCall(client, "POST", url + "/v1/runners/register", {"runner_id": "w1", "proto_version": 1})
        self.assertEqual(code, 200)
        code, body = await jsonCall(client, "GET", url + "/v1/runners/w1/jobs")
        self.assertEqual(code, 204)
        code, body = await jsonCall(client, "POST", url + "/v1/scans", {"target_runner": "w1", "Job": {"kind": "sandbox_scan", "package_name": "is-number", "version": "7.0.0", "sandbox": {}}})
        self.assertEqual(code, 202)
        runID = body["run_id"]
        code, job = await jsonCall(client, "GET", url + "/v1/runners/w1/jobs")
        self.assertEqual((code, bytes(job["run_id"]).hex()), (200, runID))
        code, ack = await jsonCall(client, "POST", url + "/v1/runs/%s/events" % runID, raw=batchLine(1, [fileEvent("/etc/passwd")]) + batchLine(2, [fileEvent("/etc/hosts")]), headers={"Content-Type": "application/x-ndjson"})
        self.assertEqual(ack, {"received_batches": 2, "received_events": 2, "persisted": 2})
        code, ack = await jsonCall(client, "POST", url + "/v1/runs/%s/result" % runID, {"status": "ok", "events_emitted": 2})
        self.assertEqual(ack, {"recorded": True})
        code, run = await jsonCall(client, "GET", url + "/v1/runs/" + runID)
        self.assertEqual((run["state"], run["events_received"]), ("done", 2))

        # Body limits hold on the real site: 413 in the envelope, not a 500.
        code, body = await jsonCall(client, "POST", url + "/v1/scans", raw=b"x" * (65 * 1024))
        self.assertEqual(code, 413)
        self.assertEqual(body["error"]["code"], "payload_too_large")
        r = await client.post(url + "/v1/runners/register", data=ChunkedBody([b"x" * 4096] * 17), headers={"Content-Type": "application/json"})
        self.assertEqual(r.code, 413)
        self.assertEqual(json.loads(await r.content())["error"]["code"], "payload_too_large")
        # A long event stream is not bound by the small-body limit (a new
        # run: events after a run's result are refused).
        code, body = await jsonCall(client, "POST", url + "/v1/scans", {"target_runner": "w1", "Job": {"kind": "sandbox_scan", "package_name": "is-number", "version": "7.0.1", "sandbox": {}}})
        runID = body["run_id"]
        self.assertEqual((await jsonCall(client, "GET", url + "/v1/runners/w1/jobs"))[0], 200)
        lines = b"".join(batchLine(i, [fileEvent("/usr/lib/x%d" % i)] * 20) for i in range(3, 300))
        self.assertGreater(len(lines), 64 * 1024)
        code, ack = await jsonCall(client, "POST", url + "/v1/runs/%s/events" % runID, raw=lines, headers={"Content-Type": "application/x-ndjson"})
        self.assertEqual((code, ack["persisted"]), (200, 297 * 20))


class RestartTests(TestCase):
    timeout = 120

    def test_queueSurvivesRestart(self):
        return Deferred.fromCoroutine(self._restart())

    async def _restart(self):
        client = httpClient(self)
        orch = OrchestratorProcess(self)
        await orch.startAndWait(client)
        await jsonCall(client, "POST", orch.url + "/v1/runners/register", {"runner_id": "w1", "proto_version": 1})
        queued = []
        for i in range(3):
            code, body = await jsonCall(client, "POST", orch.url + "/v1/scans", {"target_runner": "w1", "Job": {"kind": "sandbox_scan", "package_name": "p%d" % i, "sandbox": {}}})
            self.assertEqual(code, 202, body)
            queued.append(body["run_id"])
        orch.stop()

        again = OrchestratorProcess(self, db=orch.db, port=orch.port)
        await again.startAndWait(client)
        # Registrations are stored: a runner seen recently needs no new one
        # (a re-registration, as after a 404, changes nothing either).
        await jsonCall(client, "POST", again.url + "/v1/runners/register", {"runner_id": "w1", "proto_version": 1})
        got = []
        for _ in range(3):
            code, job = await jsonCall(client, "GET", again.url + "/v1/runners/w1/jobs")
            self.assertEqual(code, 200)
            got.append(bytes(job["run_id"]).hex())
        self.assertEqual(got, queued)
