"""
Wire types round-trip the seeds' JSON exactly.
"""

import datetime
import json

from twisted.trial.unittest import SynchronousTestCase

from fangs import wire

SEED_JOB = {
    "run_id": [24, 178, 8, 156, 202, 190, 201, 128, 0, 0, 0, 0, 0, 0, 0, 0],
    "kind": "sandbox_scan",
    "package_name": "axios",
    "version": "1.7.7",
    "watched_paths": [{"prefix": "/etc/"}, {"prefix": "/etc/shadow", "cred_tagged": True}],
    "duration": 60000000000,
    "dispatched_at": "2026-05-22T01:23:45.678Z",
    "sandbox": {
        "image": "node:20-slim",
        "command": ["sh", "-c", "cd /tmp && mkdir -p t && cd t && npm init -y >/dev/null && npm install axios@1.7.7 2>&1 | tail; sleep 2"],
        "user": "0:0",
        "network_mode": "bridge",
        "pull_policy": "missing",
        "grace_period": 2000000000,
        "cgroup_parent": "/fangs/<runid>",
    },
}


def roundTrip(test, cls, seed):
    obj = wire.structure(seed, cls)
    test.assertEqual(wire.unstructure(obj), seed)
    test.assertEqual(json.loads(wire.dumps(obj)), seed)
    return obj


class RoundTripTests(SynchronousTestCase):
    def test_job(self):
        job = roundTrip(self, wire.Job, SEED_JOB)
        self.assertEqual(job.run_id.hex(), "18b2089ccabec9800000000000000000")
        self.assertEqual(job.duration, 60 * wire.SECOND)
        self.assertEqual(job.dispatched_at, datetime.datetime(2026, 5, 22, 1, 23, 45, 678000, tzinfo=datetime.timezone.utc))
        self.assertTrue(job.watched_paths[1].cred_tagged)

    def test_registration(self):
        roundTrip(self, wire.RunnerRegistration, {
            "runner_id": "worker-1", "hostname": "fangs-runner-01",
            "capabilities": ["sensor", "sandbox.docker"], "kernel_version": "6.17.0-azure", "proto_version": 1,
        })

    def test_acks(self):
        roundTrip(self, wire.RegistrationAck, {"ok": True, "orchestrator_id": "fangs-orchestrator", "job_poll_interval": 5000000000, "heartbeat_interval": 30000000000})
        roundTrip(self, wire.HeartbeatAck, {"ok": True})
        roundTrip(self, wire.HeartbeatAck, {"ok": False, "unknown_runner": True})
        roundTrip(self, wire.HealthResponse, {"status": "ok", "orchestrator_id": "fangs-orchestrator", "version": "dev"})
        roundTrip(self, wire.ScanQueued, {"queued": True, "run_id": "18b2089cca6d11860000000000000000"})
        roundTrip(self, wire.IngestAck, {"received_batches": 3, "received_events": 38, "persisted": 38})
        roundTrip(self, wire.ResultAck, {"recorded": True})

    def test_heartbeat(self):
        roundTrip(self, wire.Heartbeat, {"runner_id": "worker-1", "active_run_id": "18b2089cca6d1186", "status": "running", "events_queued": 5})
        self.assertEqual(wire.dumps(wire.Heartbeat()), b"{}")

    def test_result(self):
        seed = {"run_id": list(range(16)), "status": "ok", "events_emitted": 312, "events_dropped": 0, "duration": 4500000000}
        roundTrip(self, wire.ScanResult, seed)
        roundTrip(self, wire.ScanResult, dict(seed, status="failed", reason="exit code 1"))

    def test_batch(self):
        seed = {"run_id": list(range(16)), "seq": 1, "events": [{"type": 1, "payload": {"Header": {"PID": 1}, "PathName": "/etc/passwd"}}]}
        roundTrip(self, wire.EventBatch, seed)

    def test_scanRequestJobKeyEitherCase(self):
        for key in ("Job", "job", "JOB"):
            req = wire.structure({"target_runner": "w", key: SEED_JOB}, wire.ScanRequest)
            self.assertEqual(req.job.package_name, "axios")

    def test_unknownKeysIgnored(self):
        job = wire.structure(dict(SEED_JOB, surprise=[1, 2]), wire.Job)
        self.assertEqual(job.kind, "sandbox_scan")

    def test_nullMeansZero(self):
        job = wire.structure({"kind": "sandbox_scan", "sandbox": None, "watched_paths": None}, wire.Job)
        self.assertIsNone(job.sandbox)

    def test_strictTypes(self):
        for bad, where in [
            ({"duration": "5"}, "$.duration"),
            ({"duration": 5.5}, "$.duration"),
            ({"duration": True}, "$.duration"),
            ({"run_id": [1, 2]}, "$.run_id"),
            ({"run_id": [256] * 16}, "$.run_id"),
            ({"watched_paths": [{"prefix": 5}]}, "$.watched_paths[0].prefix"),
            ({"sandbox": {"env": {"A": 1}}}, "$.sandbox.env"),
            ({"dispatched_at": "yesterday"}, "$.dispatched_at"),
        ]:
            e = self.assertRaises(wire.WireError, wire.structure, bad, wire.Job)
            self.assertIn(where, str(e))

    def test_notAnObject(self):
        e = self.assertRaises(wire.WireError, wire.loads, b"[1]", wire.Job)
        self.assertIn("object", str(e))

    def test_badBytes(self):
        self.assertRaises(wire.WireError, wire.loads, b"\xff\xfe", wire.Job)
        self.assertRaises(wire.WireError, wire.loads, b"{", wire.Job)
        self.assertRaises(wire.WireError, wire.loads, b"[" * 100000, wire.Job)


class RunIDTests(SynchronousTestCase):
    def test_hex(self):
        r = wire.RunID.fromHex("18b2089ccabec9800000000000000000")
        self.assertEqual(list(r.raw[:4]), [24, 178, 8, 156])
        self.assertEqual(r.hex(), "18b2089ccabec9800000000000000000")
        self.assertRaises(wire.WireError, wire.RunID.fromHex, "18B2089CCABEC9800000000000000000")
        self.assertRaises(wire.WireError, wire.RunID.fromHex, "xyz")

    def test_generateOrderedAndUnique(self):
        a = wire.RunID.generate(1000)
        b = wire.RunID.generate(1000)
        c = wire.RunID.generate(1001)
        self.assertNotEqual(a, b)
        self.assertLess(max(a.hex(), b.hex()), c.hex())
        self.assertFalse(a.is_zero())


class TimestampTests(SynchronousTestCase):
    def test_format(self):
        when = datetime.datetime(2026, 5, 22, 1, 23, 45, 678000, tzinfo=datetime.timezone.utc)
        self.assertEqual(wire.formatTimestamp(when), "2026-05-22T01:23:45.678Z")
        self.assertEqual(wire.formatTimestamp(when.replace(microsecond=0)), "2026-05-22T01:23:45Z")

    def test_parseGoNanoseconds(self):
        when = wire.parseTimestamp("2026-05-22T03:23:45.678901234+02:00")
        self.assertEqual(wire.formatTimestamp(when), "2026-05-22T01:23:45.678901Z")
