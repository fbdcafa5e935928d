"""
Tests for L{fangs.orchestrator.steps} and C{GET /v1/runs/{id}/steps}.
"""

import attrs
from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator.steps import STEP_NAMES, runSteps
from fangs.orchestrator.store import RunRow
from tests.orchestrator.helpers import InMemoryOrchestrator, batchLine, runScan
from tests.orchestrator.test_review import BENIGN

S = 1_000_000_000
RUN = RunRow(id="ab" * 16, package_name="left-pad", version="1.3.0", kind="sandbox_scan", state="pending",
             target_runner=None, runner_id=None, job="{}", created_ns=100 * S, dispatched_ns=None,
             last_activity_ns=None, deadline_ns=None, finished_ns=None, cancel_requested=False, result_status=None,
             failure_reason="", events_emitted=0, events_dropped=0, duration_ns=0, events_received=0,
             batches_received=0, verdict=None)


def states(steps):
    return [(s.name, s.state) for s in steps]


class RunStepsTests(SynchronousTestCase):
    def test_queued(self):
        steps = runSteps(RUN)
        self.assertEqual([s.name for s in steps], list(STEP_NAMES))
        self.assertEqual(states(steps)[:2], [("queued", "running"), ("dispatched", "waiting")])
        self.assertEqual(steps[0].outcome, "waiting for any runner")

    def test_cancelledBeforeDispatch(self):
        steps = runSteps(attrs.evolve(RUN, state="cancelled", finished_ns=105 * S))
        self.assertEqual(states(steps), [("queued", "failed"), ("dispatched", "skipped"), ("install", "skipped"),
                                         ("observe", "skipped"), ("analyse", "skipped"), ("notify", "skipped")])

    def test_running(self):
        run = attrs.evolve(RUN, state="running", runner_id="w1", dispatched_ns=101 * S, events_received=42)
        steps = runSteps(run)
        self.assertEqual(states(steps)[:3], [("queued", "done"), ("dispatched", "done"), ("install", "running")])
        self.assertEqual((steps[0].started_ns, steps[0].ended_ns, steps[0].outcome), (100 * S, 101 * S, "taken by w1"))
        self.assertIn("42 events", steps[2].outcome)

    def test_doneWithLifecycleAndNotifier(self):
        run = attrs.evolve(RUN, state="done", runner_id="w1", dispatched_ns=101 * S, finished_ns=130 * S,
                           result_status="ok", verdict="deviations", analyzed_ns=131 * S, deviation_count=3,
                           max_severity="critical")
        outbox = [{"notifier_name": "slack", "state": "delivered", "attempts": 2, "created_ns": 131 * S,
                   "updated_ns": 140 * S, "last_error": ""},
                  {"notifier_name": "siem", "state": "failed", "attempts": 5, "created_ns": 131 * S,
                   "updated_ns": 150 * S, "last_error": "HTTP 400"}]
        steps = {s.name: s for s in runSteps(run, outbox)}
        self.assertEqual((steps["analyse"].state, steps["analyse"].outcome), ("done", "deviations"))
        self.assertEqual(steps["analyse"].detail, "3 deviations, max critical")
        self.assertEqual((steps["notify"].state, steps["notify"].attempts), ("failed", 7))
        self.assertEqual((steps["notify"].started_ns, steps["notify"].ended_ns), (131 * S, 150 * S))
        self.assertIn("siem: HTTP 400", steps["notify"].detail)

    def test_installAndObservationReported(self):
        """
        A runner that reports when the install exited and when observation
        of its processes ended splits install from observe.
        """
        run = attrs.evolve(RUN, state="done", runner_id="w1", dispatched_ns=101 * S, finished_ns=130 * S,
                           result_status="ok", verdict="clean", analyzed_ns=131 * S, install_exit_code=0,
                           install_finished_ns=110 * S, observation_ended_ns=125 * S)
        steps = {s.name: s for s in runSteps(run)}
        self.assertEqual((steps["install"].state, steps["install"].ended_ns, steps["install"].outcome),
                         ("done", 110 * S, "npm exited 0"))
        self.assertEqual((steps["observe"].state, steps["observe"].started_ns, steps["observe"].ended_ns),
                         ("done", 110 * S, 125 * S))
        failed = attrs.evolve(run, install_exit_code=1, state="failed", result_status="failed",
                              failure_reason="npm error code E404")
        steps = {s.name: s for s in runSteps(failed)}
        self.assertEqual((steps["install"].state, steps["install"].outcome), ("failed", "npm exited 1"))
        self.assertEqual(steps["install"].detail, "npm error code E404")

    def test_failedInstall(self):
        run = attrs.evolve(RUN, state="failed", dispatched_ns=101 * S, finished_ns=110 * S, result_status="failed",
                           failure_reason="npm ERR! 404", verdict="incomplete", analyzed_ns=111 * S)
        steps = {s.name: s for s in runSteps(run)}
        self.assertEqual((steps["install"].state, steps["install"].detail), ("failed", "npm ERR! 404"))
        self.assertEqual(steps["analyse"].outcome, "incomplete")
        self.assertEqual(steps["notify"].state, "skipped")


class StepsRouteTests(SynchronousTestCase):
    def test_route(self):
        o = InMemoryOrchestrator(self)
        o.register()
        runID = runScan(o, BENIGN)
        code, body = o.call("GET", "/v1/runs/%s/steps" % (runID,))
        self.assertEqual(code, 200, body)
        self.assertEqual([s["name"] for s in body["steps"]], list(STEP_NAMES))
        self.assertEqual(body["steps"][0]["state"], "done")
        self.assertEqual(body["steps"][4]["outcome"], "baseline")
        self.assertTrue(body["steps"][0]["started_at"].endswith("Z"))
        for key in ("started_at", "ended_at", "attempts", "outcome", "detail", "state"):
            self.assertIn(key, body["steps"][0])
        code, body = o.call("GET", "/v1/runs/%s/steps" % ("cd" * 16,))
        self.assertEqual(code, 404)
        code, body = o.call("GET", "/v1/runs/xyz/steps")
        self.assertEqual(code, 400)


class AdminHealthTests(SynchronousTestCase):
    def test_health(self):
        o = InMemoryOrchestrator(self)
        o.register()
        o.submit()
        o.submit()
        code, body = o.call("GET", "/v1/admin/health")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["status"], "ok")
        self.assertEqual(body["queue"], {"depth": 2, "by_tenant": {"default": 2}})
        self.assertEqual(body["runners"], {"registered": 1, "busy": 0})
        self.assertEqual(body["database"]["backend"], "sqlite")
        self.assertTrue(body["database"]["ok"])
        self.assertEqual(sorted(body["database"]), ["backend", "latency_ms", "ok"])
        self.assertEqual(list(body), ["status", "orchestrator_id", "version", "database", "queue", "runners",
                                      "long_polls_waiting", "stream_subscribers"])

    def test_databaseDown(self):
        o = InMemoryOrchestrator(self)

        def broken():
            raise RuntimeError("disk gone")

        o.store.queueDepth = broken
        code, body = o.call("GET", "/v1/admin/health")
        self.assertEqual(code, 503)
        self.assertEqual((body["status"], body["database"]["ok"]), ("unavailable", False))
        self.assertEqual(body["database"], {"backend": "sqlite", "ok": False, "error": "RuntimeError"})
        self.assertEqual(body["queue"], {"depth": None, "by_tenant": {}})
