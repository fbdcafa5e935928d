"""
The /v1 API, in memory: the real Klein resource, core, dispatcher and SQLite
store driven by StubTreq with a Clock.
"""

import json

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from fangs import wire
from fangs.orchestrator.config import OrchestratorConfig
from tests.orchestrator.helpers import InMemoryOrchestrator, batchLine, fileEvent


def assertError(test, status, body, expectedStatus, code=None, inMessage=None):
    test.assertEqual(status, expectedStatus, body)
    test.assertEqual(set(body), {"error"})
    test.assertEqual(set(body["error"]), {"code", "message", "trace_id"})
    test.assertEqual(len(body["error"]["trace_id"]), 32)
    if code is not None:
        test.assertEqual(body["error"]["code"], code)
    if inMessage is not None:
        test.assertIn(inMessage, body["error"]["message"])


class HealthAndRoutingTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)

    def test_health(self):
        status, body = self.o.call("GET", "/v1/health")
        self.assertEqual((status, body), (200, {"status": "ok", "orchestrator_id": "fangs-orchestrator", "version": "dev"}))

    def test_unknownRoute404Envelope(self):
        status, body = self.o.call("GET", "/v1/nothing-here")
        assertError(self, status, body, 404, "not_found")

    def test_wrongMethod405Envelope(self):
        status, body = self.o.call("DELETE", "/v1/health")
        assertError(self, status, body, 405, "method_not_allowed")

    def test_traceparentUsed(self):
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        status, body = self.o.call("GET", "/v1/nope", headers={"traceparent": tp})
        self.assertEqual(body["error"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736")

    def test_badTraceparentIgnored(self):
        status, body = self.o.call("GET", "/v1/nope", headers={"traceparent": "garbage"})
        self.assertEqual(len(body["error"]["trace_id"]), 32)


class RegisterTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)

    def test_register(self):
        status, body = self.o.call("POST", "/v1/runners/register", {
            "runner_id": "worker-1", "hostname": "h", "capabilities": ["sensor"], "kernel_version": "6.18", "proto_version": 1,
        })
        self.assertEqual(status, 200)
        self.assertEqual(body, {"ok": True, "orchestrator_id": "fangs-orchestrator", "job_poll_interval": 5000000000, "heartbeat_interval": 30000000000})
        self.assertIn("worker-1", self.o.registry)

    def test_reRegisterReplaces(self):
        self.o.register()
        self.o.register()
        self.assertEqual(len(self.o.registry.all()), 1)

    def test_protoMismatch(self):
        status, body = self.o.call("POST", "/v1/runners/register", {"runner_id": "w", "proto_version": 2})
        assertError(self, status, body, 400, "proto_version_mismatch", "proto_version 2 != orchestrator 1")

    def test_missingRunnerID(self):
        status, body = self.o.call("POST", "/v1/runners/register", {"proto_version": 1})
        assertError(self, status, body, 400, inMessage="runner_id")

    def test_badRunnerID(self):
        status, body = self.o.call("POST", "/v1/runners/register", {"runner_id": "a/b", "proto_version": 1})
        assertError(self, status, body, 400, inMessage="runner id")

    def test_malformed(self):
        for raw in [b"{", b"[]", b"\xff", b'{"runner_id": 5, "proto_version": 1}', b'{"runner_id": "w", "proto_version": "1"}']:
            status, body = self.o.call("POST", "/v1/runners/register", raw=raw)
            assertError(self, status, body, 400)

    def test_oversizeBody(self):
        status, body = self.o.call("POST", "/v1/runners/register", raw=b" " * (70 * 1024))
        # StubTreq's in-memory site has no body limit, so the API sees the
        # body; the FangsSite limit is covered over a real socket.
        self.assertEqual(status, 400)


class HeartbeatTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)

    def test_unknownRunner(self):
        status, body = self.o.call("POST", "/v1/runners/ghost/heartbeat", {"runner_id": "ghost"})
        self.assertEqual((status, body), (200, {"ok": False, "unknown_runner": True}))

    def test_known(self):
        self.o.register()
        self.o.clock.advance(10)
        status, body = self.o.call("POST", "/v1/runners/worker-1/heartbeat", {"status": "running", "active_run_id": "ab", "events_queued": 5})
        self.assertEqual((status, body), (200, {"ok": True}))
        rec = self.o.registry.get("worker-1")
        self.assertEqual((rec.status, rec.active_run_id, rec.events_queued), ("running", "ab", 5))
        self.assertEqual(rec.last_seen, self.o.clock.seconds())

    def test_emptyBody(self):
        self.o.register()
        status, body = self.o.call("POST", "/v1/runners/worker-1/heartbeat")
        self.assertEqual((status, body), (200, {"ok": True}))

    def test_malformed(self):
        self.o.register()
        status, body = self.o.call("POST", "/v1/runners/worker-1/heartbeat", raw=b'{"events_queued": "x"}')
        assertError(self, status, body, 400, inMessage="events_queued")

    def test_pruned(self):
        self.o.register()
        self.o.clock.advance(91)
        self.o.registry.prune()
        status, body = self.o.call("POST", "/v1/runners/worker-1/heartbeat", {})
        self.assertEqual(body, {"ok": False, "unknown_runner": True})


class ScanTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)
        self.o.register()

    def test_queuedWithDefaults(self):
        status, body = self.o.call("POST", "/v1/scans", {"target_runner": "worker-1", "Job": {"package_name": "lodash", "version": "4.17.21", "cgroup_path": "/sys/fs/cgroup/unified/fangs/x"}})
        self.assertEqual(status, 202)
        self.assertEqual(body["queued"], True)
        self.assertRegex(body["run_id"], "^[0-9a-f]{32}$")
        status, job = self.o.poll()
        self.assertEqual(status, 200)
        self.assertEqual(job["kind"], "sensor_only")
        self.assertEqual(job["duration"], 10 * wire.SECOND)
        self.assertEqual(job["run_id"], list(bytes.fromhex(body["run_id"])))
        self.assertEqual(job["watched_paths"][1], {"prefix": "/etc/shadow", "cred_tagged": True})
        self.assertTrue(job["dispatched_at"].endswith("Z"))
        status, run = self.o.call("GET", "/v1/runs/" + body["run_id"])
        self.assertEqual(run["package_name"], "lodash")

    def test_pendingRow(self):
        runID = self.o.submit()
        status, run = self.o.call("GET", "/v1/runs/" + runID)
        self.assertEqual((status, run["state"]), (200, "pending"))

    def test_explicitWatchedPathsKept(self):
        self.o.submit(watched_paths=[{"prefix": "/opt/"}])
        status, job = self.o.poll()
        self.assertEqual(job["watched_paths"], [{"prefix": "/opt/"}])

    def test_configWatchedPaths(self):
        o = InMemoryOrchestrator(self, config=OrchestratorConfig(watchedPaths=(wire.WatchedPath("/srv/", True),)))
        o.register()
        o.submit()
        self.assertEqual(o.poll()[1]["watched_paths"], [{"prefix": "/srv/", "cred_tagged": True}])

    def test_defaultImageFromConfig(self):
        self.o.submit(sandbox={"image": ""})
        self.assertEqual(self.o.poll()[1]["sandbox"]["image"], "fangs-sandbox/node:20")

    def test_callerRunIDKept(self):
        rid = "0123456789abcdef0123456789abcdef"
        self.assertEqual(self.o.submit(run_id=list(bytes.fromhex(rid))), rid)

    def test_duplicateRunID409(self):
        rid = list(bytes.fromhex("0123456789abcdef0123456789abcdef"))
        self.o.submit(run_id=rid)
        status, body = self.o.call("POST", "/v1/scans", {"target_runner": "worker-1", "job": {"kind": "sandbox_scan", "run_id": rid, "sandbox": {"image": "fangs-sandbox/node:20"}}})
        assertError(self, status, body, 409, "conflict")

    def test_missingTargetGoesToSharedQueue(self):
        status, body = self.o.call("POST", "/v1/scans", {"Job": {"package_name": "x", "cgroup_path": "/fangs/x"}})
        self.assertEqual(status, 202)
        self.o.register("worker-2")
        status, job = self.o.poll("worker-2")
        self.assertEqual(bytes(job["run_id"]).hex(), body["run_id"])

    def test_runnersListed(self):
        self.o.submit()
        status, body = self.o.call("GET", "/v1/runners")
        self.assertEqual([r["runner_id"] for r in body["runners"]], ["worker-1"])
        self.assertEqual(body["queue_depth"], 1)

    def test_unregisteredTarget(self):
        status, body = self.o.call("POST", "/v1/scans", {"target_runner": "nobody", "Job": {"cgroup_path": "/fangs/x"}})
        assertError(self, status, body, 404, "unknown_runner", "nobody")

    def test_badInput(self):
        cases = [
            (b"{", "malformed JSON"),
            (b'{"target_runner": "worker-1"}', "$.job"),
            (b'{"target_runner": "worker-1", "Job": {"duration": "10s", "cgroup_path": "/fangs/x"}}', "$.job.duration"),
            (b'{"target_runner": "worker-1", "Job": {"kind": "bake", "cgroup_path": "/fangs/x"}}', "kind"),
            (b'{"target_runner": "worker-1", "Job": {"kind": "sandbox_scan"}}', "sandbox"),
            (b'{"target_runner": "worker-1", "Job": {"duration": -5, "cgroup_path": "/fangs/x"}}', "duration"),
            (b'{"target_runner": "worker-1", "Job": {"cgroup_path": "/x", "watched_paths": [{"prefix": "etc"}]}}', "watched_paths[0]"),
            (b'{"target_runner": "worker-1", "Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20", "network_mode": "HOST"}}}', "host"),
        ]
        for raw, text in cases:
            status, body = self.o.call("POST", "/v1/scans", raw=raw)
            assertError(self, status, body, 400, inMessage=text)
        status, runs = self.o.call("GET", "/v1/runs")
        self.assertEqual(runs["runs"], [])

    def test_idempotencyKey(self):
        body = {"target_runner": "worker-1", "Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20"}}}
        s1, r1 = self.o.call("POST", "/v1/scans", body, headers={"Idempotency-Key": "abc"})
        s2, r2 = self.o.call("POST", "/v1/scans", body, headers={"Idempotency-Key": "abc"})
        s3, r3 = self.o.call("POST", "/v1/scans", body, headers={"Idempotency-Key": "def"})
        self.assertEqual((s1, s2, s3), (202, 202, 202))
        self.assertEqual(r1["run_id"], r2["run_id"])
        self.assertNotEqual(r1["run_id"], r3["run_id"])
        status, runs = self.o.call("GET", "/v1/runs")
        self.assertEqual(len(runs["runs"]), 2)


class LongPollTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)
        self.o.register()

    def test_unregistered404(self):
        status, body = self.o.call("GET", "/v1/runners/ghost/jobs")
        assertError(self, status, body, 404, "unknown_runner", "register")

    def test_timeout204(self):
        d = self.o.start("GET", "/v1/runners/worker-1/jobs")
        self.o.treq.flush()
        self.assertNoResult(d)
        self.o.clock.advance(24.9)
        self.o.treq.flush()
        self.assertNoResult(d)
        self.o.clock.advance(0.2)
        status, body = self.o.finish(d)
        self.assertEqual((status, body), (204, b""))
        self.assertEqual(self.o.dispatcher.waiterCount(), 0)

    def test_wokenBySubmit(self):
        d = self.o.start("GET", "/v1/runners/worker-1/jobs")
        self.o.treq.flush()
        self.assertNoResult(d)
        runID = self.o.submit()
        status, job = self.o.finish(d)
        self.assertEqual(status, 200)
        self.assertEqual(bytes(job["run_id"]).hex(), runID)
        status, run = self.o.call("GET", "/v1/runs/" + runID)
        self.assertEqual((run["state"], run["runner_id"]), ("dispatched", "worker-1"))

    def test_fifoOrder(self):
        ids = [self.o.submit(package_name="p%d" % i) for i in range(3)]
        got = [bytes(self.o.poll()[1]["run_id"]).hex() for _ in ids]
        self.assertEqual(got, ids)
        self.assertEqual(self.o.poll()[0], 204)

    def test_otherRunnersJobNotTaken(self):
        self.o.register("worker-2")
        self.o.submit("worker-2")
        self.assertEqual(self.o.poll("worker-1")[0], 204)
        self.assertEqual(self.o.poll("worker-2")[0], 200)

    def test_sharedQueueAnyRunner(self):
        d = self.o.start("GET", "/v1/runners/worker-1/jobs")
        self.o.treq.flush()
        runID, _ = self.successResultOf(Deferred.fromCoroutine(
            self.o.core.submitScan(wire.structure({"Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20"}}}, wire.ScanRequest), requireTarget=False)))
        status, job = self.o.finish(d)
        self.assertEqual(bytes(job["run_id"]).hex(), runID)

    def test_disconnectLosesNoJob(self):
        """
        A runner that goes away while its long poll waits leaves no waiter
        behind and takes no job with it.
        """
        d = self.o.start("GET", "/v1/runners/worker-1/jobs")
        self.o.treq.flush()
        d.cancel()
        self.failureResultOf(d)
        self.o.treq.flush()
        self.assertEqual(self.o.dispatcher.waiterCount(), 0)
        runID = self.o.submit()
        status, job = self.o.poll()
        self.assertEqual(bytes(job["run_id"]).hex(), runID)

    def test_leaseReleasedWhenResponseNotWritten(self):
        """
        A job leased to a poll whose response could not be written goes back
        to the head of the queue.
        """
        first = self.o.submit(package_name="a")
        second = self.o.submit(package_name="b")
        lease = self.successResultOf(self.o.dispatcher.poll("worker-1"))
        self.assertEqual(lease[0], first)
        self.successResultOf(self.o.dispatcher.release(first, "worker-1"))
        got = [bytes(self.o.poll()[1]["run_id"]).hex() for _ in range(2)]
        self.assertEqual(got, [first, second])


class EventsTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)
        self.o.register()
        self.runID = self.o.submit()
        self.o.poll()

    def post(self, raw):
        return self.o.call("POST", "/v1/runs/%s/events" % (self.runID,), raw=raw)

    def test_stream(self):
        body = batchLine(1, [fileEvent("/etc/passwd"), fileEvent("/root/.ssh/id_rsa", tags=3)], self.runID) + batchLine(2, [fileEvent("/tmp/x", flags=65)])
        status, ack = self.post(body)
        self.assertEqual((status, ack), (200, {"received_batches": 2, "received_events": 3, "persisted": 3}))
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual((run["state"], run["events_received"], run["event_counts"]), ("running", 3, {"file_access": 3}))

    def test_duplicateSeqStoredOnce(self):
        line = batchLine(1, [fileEvent("/etc/passwd")])
        self.post(line)
        status, ack = self.post(line + batchLine(2, [fileEvent("/etc/hosts")]))
        self.assertEqual(ack, {"received_batches": 2, "received_events": 2, "persisted": 1})
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["events_received"], 2)

    def test_malformedLineKeepsEarlierBatches(self):
        body = batchLine(1, [fileEvent("/a")]) + batchLine(2, [fileEvent("/b")]) + b'{"seq": 3, "events": [{"type": 1}]}\n' + batchLine(4, [fileEvent("/c")])
        status, err = self.post(body)
        assertError(self, status, err, 400, inMessage="line 3")
        self.assertIn("payload", err["error"]["message"])
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["events_received"], 2)

    def test_badLines(self):
        for raw, text in [
            (b"not json\n", "malformed JSON"),
            (b"[1]\n", "object"),
            (b'{"seq": 0, "events": []}\n', "seq"),
            (b'{"seq": "1", "events": []}\n', "seq"),
            (b'{"seq": 1, "events": {}}\n', "events"),
            (b'{"seq": 1, "events": [{"type": "file", "payload": {}}]}\n', "type"),
            (b'{"seq": 1, "run_id": [1,2,3], "events": []}\n', "run_id"),
            (b'{"seq": 1, "run_id": "00000000000000000000000000000001", "events": []}\n', "does not match"),
            (b"[" * 50000 + b"\n", "nested"),
        ]:
            status, err = self.post(raw)
            assertError(self, status, err, 400, inMessage=text)

    def test_unknownRun404(self):
        status, err = self.o.call("POST", "/v1/runs/%s/events" % ("ab" * 16,), raw=batchLine(1, []))
        assertError(self, status, err, 404, "unknown_run")

    def test_badRunID400(self):
        status, err = self.o.call("POST", "/v1/runs/XYZ/events", raw=batchLine(1, []))
        assertError(self, status, err, 400, inMessage="32 lower-case hex")

    def test_oversizeLine(self):
        big = b'{"seq": 1, "events": [], "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}\n'
        status, err = self.post(batchLine(1, [fileEvent("/a")]) + big)
        assertError(self, status, err, 413, "payload_too_large", "line 2")
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["events_received"], 1)

    def test_export(self):
        self.post(batchLine(2, [fileEvent("/b")]) + batchLine(1, [fileEvent("/a"), {"type": 2, "payload": {"BinaryPathStr": "/bin/sh"}}]))
        status, body = self.o.call("GET", "/v1/runs/%s/events" % (self.runID,))
        self.assertEqual(status, 200)
        lines = [json.loads(l) for l in body.splitlines()]
        self.assertEqual([(l["seq"], l["idx"]) for l in lines], [(1, 0), (1, 1), (2, 0)])
        self.assertEqual(lines[0]["payload"]["PathName"], "/a")
        self.assertEqual(lines[1]["type_name"], "exec")
        status, body = self.o.call("GET", "/v1/runs/%s/events?type=exec" % (self.runID,))
        self.assertEqual(len(body.splitlines()), 1)
        status, err = self.o.call("GET", "/v1/runs/%s/events?type=bogus" % (self.runID,))
        assertError(self, status, err, 400)


class ResultTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)
        self.o.register()
        self.runID = self.o.submit()
        self.o.poll()

    def result(self, **kw):
        body = {"run_id": list(bytes.fromhex(self.runID)), "status": "ok", "events_emitted": 3, "events_dropped": 0, "duration": 4500000000}
        body.update(kw)
        return self.o.call("POST", "/v1/runs/%s/result" % (self.runID,), body)

    def test_ok(self):
        self.o.clock.advance(5)
        status, body = self.result()
        self.assertEqual((status, body), (200, {"recorded": True}))
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual((run["state"], run["result_status"], run["events_emitted"], run["duration"]), ("done", "ok", 3, 4500000000))
        self.assertTrue(run["finished_at"].endswith("Z"))

    def test_installLifecycleStored(self):
        status, body = self.result(install_exit_code=0, install_finished_at="2026-12-01T10:00:01.5Z",
                                   observation_ended_at="2026-12-01T10:00:05Z", events_unresolved=2)
        self.assertEqual((status, body), (200, {"recorded": True}))
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual((run["install_exit_code"], run["install_finished_at"], run["observation_ended_at"],
                          run["events_unresolved"]), (0, "2026-12-01T10:00:01.5Z", "2026-12-01T10:00:05Z", 2))

    def test_resultWithoutLifecycle(self):
        self.result()
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual((run["install_exit_code"], run["install_finished_at"], run["observation_ended_at"],
                          run["events_unresolved"]), (None, None, None, 0))

    def test_badLifecycle(self):
        for bad in ({"install_exit_code": "0"}, {"install_finished_at": "yesterday"}, {"events_unresolved": -1},
                    {"install_exit_code": 2 ** 40}):
            status, body = self.result(**bad)
            assertError(self, status, body, 400)

    def test_timeoutStaysTimeout(self):
        self.result(status="timeout", reason="job duration exceeded")
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual((run["state"], run["failure_reason"]), ("timeout", "job duration exceeded"))

    def test_failed(self):
        self.result(status="failed", reason="exit code 1")
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["state"], "failed")

    def test_badStatus(self):
        status, body = self.result(status="great")
        assertError(self, status, body, 400, inMessage="status must be one of")

    def test_malformed(self):
        for raw in [b"{", b'{"status": "ok", "events_dropped": -1}', b'{"status": "ok", "duration": "4s"}']:
            status, body = self.o.call("POST", "/v1/runs/%s/result" % (self.runID,), raw=raw)
            assertError(self, status, body, 400)

    def test_unknownRun(self):
        status, body = self.o.call("POST", "/v1/runs/%s/result" % ("cd" * 16,), {"status": "ok"})
        assertError(self, status, body, 404, "unknown_run")

    def test_firstResultWins(self):
        self.result(status="ok")
        self.result(status="failed", reason="late")
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["state"], "done")

    def test_runnerLost(self):
        # duration 10 s default + grace 0 + 60 s margin
        self.o.clock.advance(69)
        self.successResultOf(Deferred.fromCoroutine(self.o.core.sweep()))
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["state"], "dispatched")
        self.o.clock.advance(2)
        self.successResultOf(Deferred.fromCoroutine(self.o.core.sweep()))
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual((run["state"], run["failure_reason"]), ("failed", "runner lost"))
        # A late real result still wins over the guess.
        self.result(status="ok")
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["state"], "done")

    def test_runnerLostWhenHeartbeatNoLongerListsRun(self):
        """
        A restarted runner heartbeats without the run it was working on: the
        run fails as lost at once, not at its deadline.
        """
        self.o.clock.advance(10)
        status, ack = self.o.call("POST", "/v1/runners/worker-1/heartbeat", {"active_run_ids": []})
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["state"], "dispatched")  # too soon: the job may still be on its way
        self.o.call("POST", "/v1/runners/worker-1/heartbeat", {"active_run_ids": [self.runID]})
        self.o.clock.advance(10)
        self.o.call("POST", "/v1/runners/worker-1/heartbeat", {"active_run_id": self.runID})
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["state"], "dispatched")  # listed: still alive
        self.o.call("POST", "/v1/runners/worker-1/heartbeat", {"status": "idle"})
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual((run["state"], run["failure_reason"], run["verdict"]), ("failed", "runner lost", "incomplete"))

    def test_eventsPushDeadline(self):
        self.o.clock.advance(60)
        self.o.call("POST", "/v1/runs/%s/events" % (self.runID,), raw=batchLine(1, [fileEvent("/a")]))
        self.o.clock.advance(60)
        self.successResultOf(Deferred.fromCoroutine(self.o.core.sweep()))
        status, run = self.o.call("GET", "/v1/runs/" + self.runID)
        self.assertEqual(run["state"], "running")


class CancelTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)
        self.o.register()

    def test_queuedWithdrawn(self):
        runID = self.o.submit()
        status, body = self.o.call("POST", "/v1/runs/%s/cancel" % (runID,))
        self.assertEqual((status, body["state"]), (200, "cancelled"))
        self.assertEqual(self.o.poll()[0], 204)
        status, body = self.o.call("POST", "/v1/runs/%s/cancel" % (runID,))
        self.assertEqual((status, body["state"]), (200, "cancelled"))

    def test_runningToldThroughHeartbeat(self):
        runID = self.o.submit()
        self.o.poll()
        status, body = self.o.call("POST", "/v1/runs/%s/cancel" % (runID,))
        self.assertEqual((body["state"], body["cancel_requested"]), ("dispatched", True))
        status, ack = self.o.call("POST", "/v1/runners/worker-1/heartbeat", {})
        self.assertEqual(ack, {"ok": True, "cancel_runs": [runID]})
        self.o.call("POST", "/v1/runs/%s/result" % (runID,), {"status": "failed", "reason": "cancelled by operator"})
        status, run = self.o.call("GET", "/v1/runs/" + runID)
        self.assertEqual(run["state"], "cancelled")
        status, ack = self.o.call("POST", "/v1/runners/worker-1/heartbeat", {})
        self.assertEqual(ack, {"ok": True})

    def test_unknown(self):
        status, body = self.o.call("POST", "/v1/runs/%s/cancel" % ("ef" * 16,))
        assertError(self, status, body, 404)


class ListRunsTests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self)
        self.o.register()
        self.ids = []
        for i in range(5):
            self.o.clock.advance(1)
            self.ids.append(self.o.submit(package_name="a" if i % 2 else "b"))

    def test_newestFirstPaginated(self):
        seen = []
        token = ""
        while True:
            status, page = self.o.call("GET", "/v1/runs?page_size=2" + ("&page_token=" + token if token else ""))
            self.assertEqual(status, 200)
            seen += [r["run_id"] for r in page["runs"]]
            token = page["next_page_token"]
            if not token:
                break
        self.assertEqual(seen, list(reversed(self.ids)))

    def test_filters(self):
        status, page = self.o.call("GET", "/v1/runs?package=a")
        self.assertEqual([r["run_id"] for r in page["runs"]], [self.ids[3], self.ids[1]])
        status, page = self.o.call("GET", "/v1/runs?state=pending&package=b")
        self.assertEqual(len(page["runs"]), 3)
        status, page = self.o.call("GET", "/v1/runs?state=done")
        self.assertEqual(page["runs"], [])
        t = wire.formatTimestamp(wire.timestampFromNs(int((self.o.clock.seconds() - 1.5) * 1e9)))
        status, page = self.o.call("GET", "/v1/runs?since=" + t)
        self.assertEqual([r["run_id"] for r in page["runs"]], [self.ids[4], self.ids[3]])
        status, page = self.o.call("GET", "/v1/runs?until=" + t)
        self.assertEqual(len(page["runs"]), 3)

    def test_badArgs(self):
        for q in ["page_size=0", "page_size=x", "page_size=501", "state=weird", "since=yesterday", "page_token=%%%", "page_token=WzFd"]:
            status, body = self.o.call("GET", "/v1/runs?" + q)
            assertError(self, status, body, 400)

    def test_getRunUnknownAndBad(self):
        status, body = self.o.call("GET", "/v1/runs/" + "0" * 32)
        assertError(self, status, body, 404)
        status, body = self.o.call("GET", "/v1/runs/short")
        assertError(self, status, body, 400)
