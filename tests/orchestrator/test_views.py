"""
The read-side views render exactly the JSON the API has always sent: the
same keys, in the same order, with the same values.
"""

from __future__ import annotations

import json
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from fangs import wire
from fangs.orchestrator import store as S
from fangs.orchestrator import views as V

NS = 1_779_000_000_123_456_789


def keys(value: Any) -> List[str]:
    return [key for key, _ in json.loads(wire.dumps(value), object_pairs_hook=lambda pairs: pairs)]


def rendered(value: Any) -> Any:
    return json.loads(wire.dumps(value))


def aRun(**kw: Any) -> S.RunRow:
    values = dict(
        id="ab" * 16, package_name="left-pad", version="1.3.0", kind="sandbox_scan", state="finished",
        target_runner=None, runner_id="r1", job=json.dumps({"package_name": "left-pad", "duration": 5}),
        created_ns=NS, dispatched_ns=NS + 1, last_activity_ns=None, deadline_ns=None, finished_ns=None,
        cancel_requested=False, result_status="ok", failure_reason="", events_emitted=3, events_dropped=0,
        duration_ns=7, events_received=3, batches_received=1, verdict="deviations", decision=None,
        analyzed_ns=NS + 2, deviation_count=1, max_severity="high", install_exit_code=0, tenant="acme",
    )
    values.update(kw)
    return S.RunRow(**values)


def aDeviation(**kw: Any) -> S.DeviationRow:
    values = dict(
        id="cd" * 16, run_id="ab" * 16, package_name="left-pad", category="net_connect", value="127.0.0.1:9",
        severity="high", severity_rank=3, reason="new", evidence_event_id=4, count=2, detected_ns=NS,
        actor="script", detail=json.dumps({"label": "script:left-pad@1.3.0:postinstall", "pid": 7}),
    )
    values.update(kw)
    return S.DeviationRow(**values)


class RunViewTests(SynchronousTestCase):
    def test_keysAndValues(self) -> None:
        body = rendered(V.RunView.of(aRun()))
        self.assertEqual(
            keys(V.RunView.of(aRun())),
            ["run_id", "package_name", "version", "kind", "state", "verdict", "target_runner", "runner_id",
             "created_at", "dispatched_at", "finished_at", "result_status", "failure_reason", "cancel_requested",
             "events_emitted", "events_dropped", "events_received", "batches_received", "duration", "decision",
             "deviation_count", "max_severity", "analyzed_at", "install_exit_code", "install_finished_at",
             "observation_ended_at", "events_unresolved", "tenant"],
        )
        self.assertEqual(body["run_id"], "ab" * 16)
        self.assertEqual(body["created_at"], wire.formatTimestamp(wire.timestampFromNs(NS)))
        self.assertIsNone(body["finished_at"])  # absent times are null, not left out
        self.assertIsNone(body["target_runner"])
        self.assertEqual(body["duration"], 7)
        self.assertEqual(body["tenant"], "acme")

    def test_page(self) -> None:
        page = V.RunsPage.of(S.Page([aRun()], None))
        self.assertEqual(keys(page), ["runs", "next_page_token"])
        self.assertEqual(rendered(page)["next_page_token"], "")

    def test_detail(self) -> None:
        registry = aDeviation(id="ef" * 16, actor="registry", detail="{}")
        detail = V.RunDetail.build(aRun(), {2: 1, 1: 4}, [aDeviation(), registry], None)
        body = rendered(detail)
        self.assertEqual(keys(detail)[-8:], ["tenant", "job", "event_counts", "deviations", "notes",
                                             "manifest_deltas", "analysis_reason", "artifact"])
        self.assertEqual(body["job"], {"package_name": "left-pad", "duration": 5})
        self.assertEqual(list(body["event_counts"]), [wire.EVENT_TYPE_NAMES[1], wire.EVENT_TYPE_NAMES[2]])
        self.assertEqual([d["id"] for d in body["deviations"]], ["cd" * 16, "ef" * 16])
        self.assertEqual(body["notes"], [])
        self.assertEqual([d["actor"] for d in body["manifest_deltas"]], ["registry"])
        self.assertIsNone(body["artifact"])

    def test_cleanRunHasNotes(self) -> None:
        body = rendered(V.RunDetail.build(aRun(verdict="clean"), {}, [aDeviation(severity="low")], None))
        self.assertEqual(body["deviations"], [])
        self.assertEqual(len(body["notes"]), 1)


class DeviationViewTests(SynchronousTestCase):
    def test_keysAndActor(self) -> None:
        view = V.DeviationView.of(aDeviation())
        self.assertEqual(keys(view), ["id", "run_id", "package_name", "category", "value", "severity", "reason",
                                      "evidence_event_id", "count", "detected_at", "actor", "actor_detail"])
        body = rendered(view)
        self.assertEqual(body["actor"], "script:left-pad@1.3.0:postinstall")
        self.assertEqual(body["actor_detail"], {"label": "script:left-pad@1.3.0:postinstall", "pid": 7})
        self.assertEqual(rendered(V.DeviationView.of(aDeviation(actor="")))["actor"], "")

    def test_detailWithEvidence(self) -> None:
        event = S.StoredEvent(4, "ab" * 16, 1, 0, 2, NS, NS, 7, json.dumps({"DestPort": 9}))
        detail = V.DeviationDetail(**V.DeviationView.fields(aDeviation()), evidence_event=V.EventView.of(event))
        body = rendered(detail)
        self.assertEqual(keys(detail)[-1], "evidence_event")
        self.assertEqual(body["evidence_event"]["payload"], {"DestPort": 9})
        self.assertEqual(body["evidence_event"]["type_name"], wire.EVENT_TYPE_NAMES[2])
        self.assertEqual(list(body["evidence_event"]),
                         ["id", "run_id", "seq", "idx", "type", "type_name", "received_at", "payload"])


class PackageViewTests(SynchronousTestCase):
    row = {"name": "left-pad", "added_ns": NS, "last_checked_ns": None, "last_seen_version": "1.3.0",
           "runs": 2, "baseline_runs": 1, "pending_runs": 1, "baseline_fingerprints": 5}

    def test_keysAsTheStoreDictRenamed(self) -> None:
        view = V.PackageView.of(self.row)
        self.assertEqual(keys(view), ["name", "last_seen_version", "runs", "baseline_runs", "pending_runs",
                                      "baseline_fingerprints", "added_at", "last_checked_at"])
        body = rendered(view)
        self.assertIsNone(body["last_checked_at"])
        self.assertEqual(body["baseline_fingerprints"], 5)

    def test_added(self) -> None:
        import attrs

        view = V.PackageAdded(**attrs.asdict(V.PackageView.of(self.row), recurse=False), added=True)
        self.assertEqual(keys(view)[-1], "added")
        self.assertIs(rendered(view)["added"], True)


class AllowEntryViewTests(SynchronousTestCase):
    def test_keysAsTheStoreDictRenamed(self) -> None:
        row = {"id": "e1", "kind": "dns", "value": "example.test", "scope": "package", "package_name": "left-pad",
               "note": "", "source": "operator", "created_ns": NS, "created_by": "alice"}
        view = V.AllowEntryView.of(row)
        self.assertEqual(keys(view), ["id", "kind", "value", "scope", "package_name", "note", "source",
                                      "created_by", "created_at"])
        self.assertEqual(rendered(view)["created_at"], wire.formatTimestamp(wire.timestampFromNs(NS)))
        self.assertEqual(keys(V.AllowList([view])), ["entries"])


class ReleasesViewTests(SynchronousTestCase):
    def test_keysAsTheStoreDictsRenamed(self) -> None:
        row = {"package_name": "left-pad", "version": "1.3.0", "integrity": "sha512-x", "shasum": "ab",
               "tarball": "https://registry.test/left-pad-1.3.0.tgz", "published_ns": NS, "dist_tags": ["latest"],
               "discovered_ns": NS + 1, "seeded": False, "queued": True, "queued_ns": None, "run_id": "ab" * 16,
               "attempts": 1, "last_error": "", "deltas": [{"field": "scripts"}]}
        release = V.ReleaseView.of(row)
        self.assertEqual(keys(release), ["package_name", "version", "integrity", "shasum", "tarball", "dist_tags",
                                         "seeded", "queued", "run_id", "attempts", "last_error", "deltas",
                                         "published_at", "discovered_at", "queued_at"])
        body = rendered(release)
        self.assertIsNone(body["queued_at"])
        self.assertEqual(body["deltas"], [{"field": "scripts"}])
        view = V.ReleasesView("1.3.0", None, None, None, None, "left-pad", [release])
        self.assertEqual(keys(view), ["last_seen_version", "etag", "last_error", "last_checked_at", "next_check_at",
                                      "package_name", "releases"])

    def test_baseline(self) -> None:
        row = {"category": "proc_new_exec", "value": "/bin/sh", "actor": "script", "occurrences": 2, "events": 3,
               "first_seen_run_id": "ab" * 16, "last_seen_run_id": "cd" * 16}
        view = V.BaselineView("left-pad", [V.BaselineFingerprint.of(row)])
        self.assertEqual(rendered(view), {"package_name": "left-pad", "fingerprints": [row]})
        self.assertEqual(keys(V.BaselineFingerprint.of(row)), list(row))


class AdminViewTests(SynchronousTestCase):
    def test_token(self) -> None:
        row = {"id": "t1", "name": "ci", "scopes": "orchestrator:read orchestrator:write", "created_ns": NS,
               "created_by": "admin", "revoked_ns": None, "tenant": "acme"}
        view = V.TokenView.of(row)
        self.assertEqual(keys(view), ["id", "name", "scopes", "created_by", "tenant", "created_at", "revoked_at"])
        self.assertEqual(rendered(view)["scopes"], ["orchestrator:read", "orchestrator:write"])
        self.assertIsNone(rendered(view)["revoked_at"])

    def test_audit(self) -> None:
        row = {"at_ns": NS, "actor": "alice", "action": "promote", "target": "run:" + "ab" * 16, "detail": {"v": 1}}
        trail = V.AuditTrail("acme", [V.AuditEntryView.of(row)])
        self.assertEqual(keys(trail), ["tenant", "entries"])
        self.assertEqual(list(rendered(trail)["entries"][0]), ["actor", "action", "target", "detail", "at"])


class DashboardViewTests(SynchronousTestCase):
    def test_timelineMergesReleasesAndRuns(self) -> None:
        from fangs.orchestrator.views.dashboard import timeline

        queued = aRun(id="01" * 16, version="1.3.0", created_ns=NS)
        older = aRun(id="02" * 16, version="1.3.0", created_ns=NS - 5)
        unlisted = aRun(id="03" * 16, version="0.9.0", created_ns=NS - 100)
        releases = [
            {"version": "1.3.0", "published_ns": NS - 10, "discovered_ns": NS, "run_id": "01" * 16, "seeded": False, "last_error": None},
            {"version": "1.4.0", "published_ns": None, "discovered_ns": NS + 10, "run_id": None, "seeded": True, "last_error": "boom"},
        ]
        entries = timeline(releases, [older, queued, unlisted])
        self.assertEqual([(t.version, t.when) for t in entries], [("1.4.0", NS + 10), ("1.3.0", NS - 10), ("0.9.0", NS - 100)])
        self.assertIsNone(entries[0].run)
        self.assertEqual((entries[0].seeded, entries[0].error), (True, "boom"))
        self.assertEqual(entries[1].run.id, "01" * 16)  # the run queued for the release, not the version's other run
        self.assertEqual(entries[1].error, "")
        self.assertEqual(entries[2].run.id, "03" * 16)

    def test_fleetRunnerStaleAndVisible(self) -> None:
        from fangs.orchestrator.registry import RunnerRecord
        from fangs.orchestrator.views.dashboard import FleetRunner

        reg = wire.RunnerRegistration(runner_id="r1", hostname="h", kernel_version="6.1")
        record = RunnerRecord(reg, registered_at=100.0, last_seen=100.0, status="busy", active_run_ids=["a", "b"])
        fresh = FleetRunner.of(record, {"a"}, int(130 * 1e9))
        self.assertEqual((fresh.status, fresh.active, fresh.last_seen_ns), ("busy", ["a"], int(100 * 1e9)))
        self.assertEqual(FleetRunner.of(record, set(), int(161 * 1e9)).status, "stale")


class StepViewTests(SynchronousTestCase):
    def test_keysAndTimes(self) -> None:
        from fangs.orchestrator.steps import Step

        view = V.RunStepsView("ab" * 16, [V.StepView.of(Step("queued", "done", NS, 0, 1, "taken by r1", ""))])
        body = rendered(view)
        self.assertEqual(keys(view), ["run_id", "steps"])
        self.assertEqual(list(body["steps"][0]), ["name", "state", "started_at", "ended_at", "attempts", "outcome", "detail"])
        self.assertEqual(body["steps"][0]["started_at"], wire.formatTimestamp(wire.timestampFromNs(NS)))
        self.assertIsNone(body["steps"][0]["ended_at"])  # no time recorded: null


class NotifierViewTests(SynchronousTestCase):
    def test_keysAsTheStoreDictsRenamed(self) -> None:
        row = {"name": "ops", "url": "https://hooks.test/x", "template": "slack", "secret_env": None, "headers": {},
               "min_severity": "high", "packages": [], "enabled": True, "created_ns": NS, "updated_ns": NS}
        self.assertEqual(keys(V.NotifierView.of(row)), ["name", "url", "template", "secret_env", "headers",
                                                       "min_severity", "packages", "enabled", "created_at", "updated_at"])
        saved = V.NotifierSaved(**V.NotifierView.fields(row), created=False)
        self.assertEqual(keys(saved)[-1], "created")

    def test_deliveryKeepsItsKeys(self) -> None:
        row = {"outbox_id": 1, "run_id": "ab" * 16, "attempt": 1, "at_ns": NS, "status": "failed", "http_status": 500,
               "error": "HTTP 500", "response_excerpt": "", "message_state": "pending", "next_attempt_ns": NS + 1}
        body = rendered(V.DeliveryHistory("ops", [V.DeliveryView.of(row)]))
        self.assertEqual(list(body), ["name", "deliveries"])
        self.assertEqual(sorted(body["deliveries"][0]), sorted(
            ["outbox_id", "run_id", "attempt", "status", "http_status", "error", "response_excerpt", "message_state",
             "at_at", "next_attempt_at"]))  # at_at: what fangs notifier deliveries reads
        self.assertEqual(body["deliveries"][0]["at_at"], wire.formatTimestamp(wire.timestampFromNs(NS)))
