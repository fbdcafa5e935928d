"""
Notifiers, the notification outbox and delivery history, metric counts.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from twisted.internet.defer import Deferred

from fangs.orchestrator.db.model import _DEVIATION_SELECT, _actorLabel
from fangs.orchestrator.db.connector import _transaction


class OutboxComponent:
    """
    Notifiers, the notification outbox and delivery history, metric counts.
    """

    # -- notifier outbox --
    #
    # Targets live in C{notifiers} (secrets are named by environment
    # variable, never stored).  An analysis whose verdict changed writes one
    # C{outbox} row per matching target in its own transaction
    # (L{_thd_enqueue}, as the analysis decides); UNIQUE(run_id, notifier_name) keeps a
    # re-analysis from sending twice.  Each attempt adds one C{deliveries}
    # row.  Removing a target keeps its history: its rows stay (pending ones
    # become C{dead}), and they still count against a re-created target of
    # the same name, so old runs are not announced again.

    # Which verdict notifies whom is decided by the analysis
    # (L{fangs.orchestrator.judgement.notificationsFor}); these read what it
    # needs and queue what it decided, in its transaction.

    def _thd_enabledNotifiers(self, conn: Any, tenant: str) -> List[Dict[str, Any]]:
        return [
            {"name": r[0], "template": r[1], "min_severity": r[2], "packages": json.loads(r[3] or "[]")}
            for r in conn.execute("SELECT name, template, min_severity, packages FROM notifiers WHERE enabled = 1 AND tenant = ?",
                                  (tenant,))
        ]

    def _thd_deviationsToNotify(self, conn: Any, runID: str, tenant: str) -> List[Dict[str, Any]]:
        from fangs import wire

        return [
            {
                "id": r[0],
                "category": r[3],
                "value": r[4],
                "severity": r[5],
                "reason": r[7],
                "evidence_event_id": r[8],
                "detected_at": wire.formatTimestamp(wire.timestampFromNs(r[10])),
                "actor": _actorLabel(r[11], r[12]),
            }
            for r in conn.execute(
                _DEVIATION_SELECT + " WHERE run_id = ? AND tenant = ? ORDER BY severity_rank DESC, category, value",
                (runID, tenant),
            )
        ]

    def _thd_enqueue(self, conn: Any, tenant: str, runID: str, message: Any, nowNs: int) -> int:
        """
        Queue one message; a second one for the same run and target (a
        re-analysis) is dropped.  @return: 1 if queued.
        """
        return conn.execute(
            "INSERT INTO outbox (tenant, run_id, notifier_name, template, state, attempts, next_attempt_ns,"
            " created_ns, updated_ns, body, content_type) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (tenant, runID, message.notifier, message.template, nowNs, nowNs, nowNs, message.body, message.content_type),
        ).rowcount

    @staticmethod
    def _notifierDict(r: Sequence[Any]) -> Dict[str, Any]:
        return {
            "name": r[0],
            "url": r[1],
            "template": r[2],
            "secret_env": r[3],
            "headers": json.loads(r[4] or "{}"),
            "min_severity": r[5],
            "packages": json.loads(r[6] or "[]"),
            "enabled": bool(r[7]),
            "created_ns": r[8],
            "updated_ns": r[9],
        }

    _NOTIFIER_SELECT = (
        "SELECT name, url, template, secret_env, headers, min_severity, packages, enabled, created_ns, updated_ns"
        " FROM notifiers"
    )

    # Notifiers, their outbox and deliveries are a tenant's (migration 60).

    def upsertNotifier(self, target: Dict[str, Any], actor: str, nowNs: int, tenant: str = "default") -> "Deferred[bool]":
        """
        Create or replace a target (validated by
        L{fangs.orchestrator.notifier.parseNotifier}).  Returns True when
        it was created.
        """

        def thd(conn: Any) -> bool:
            with _transaction(conn):
                created = conn.execute("SELECT 1 FROM notifiers WHERE tenant = ? AND name = ?",
                                       (tenant, target["name"])).fetchone() is None
                conn.execute(
                    "INSERT INTO notifiers (tenant, name, url, template, secret_env, headers, min_severity, packages, enabled,"
                    " created_ns, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, name) DO UPDATE SET url = excluded.url, template = excluded.template,"
                    " secret_env = excluded.secret_env, headers = excluded.headers, min_severity = excluded.min_severity,"
                    " packages = excluded.packages, enabled = excluded.enabled, updated_ns = excluded.updated_ns",
                    (
                        tenant,
                        target["name"],
                        target["url"],
                        target["template"],
                        target["secret_env"],
                        json.dumps(target["headers"], sort_keys=True),
                        target["min_severity"],
                        json.dumps(target["packages"]),
                        int(target["enabled"]),
                        nowNs,
                        nowNs,
                    ),
                )
                conn.execute(
                    "INSERT INTO audit (tenant, at_ns, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        tenant,
                        nowNs,
                        actor,
                        "notifier.add" if created else "notifier.update",
                        "notifier:" + target["name"],
                        json.dumps({k: target[k] for k in ("url", "template", "min_severity", "enabled")}),
                    ),
                )
                return created

        return self._call(thd)

    def listNotifiers(self, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [self._notifierDict(r) for r in conn.execute(self._NOTIFIER_SELECT + " WHERE tenant = ? ORDER BY name", (tenant,))]
        )

    def getNotifier(self, name: str, tenant: str = "default") -> "Deferred[Optional[Dict[str, Any]]]":
        def thd(conn: Any) -> Optional[Dict[str, Any]]:
            r = conn.execute(self._NOTIFIER_SELECT + " WHERE tenant = ? AND name = ?", (tenant, name)).fetchone()
            return None if r is None else self._notifierDict(r)

        return self._call(thd)

    def deleteNotifier(self, name: str, actor: str, nowNs: int, tenant: str = "default") -> "Deferred[bool]":
        """
        Remove a target; its pending messages become C{dead}, its history
        stays.
        """

        def thd(conn: Any) -> bool:
            with _transaction(conn):
                if not conn.execute("DELETE FROM notifiers WHERE tenant = ? AND name = ?", (tenant, name)).rowcount:
                    return False
                conn.execute(
                    "UPDATE outbox SET state = 'dead', last_error = 'notifier removed', updated_ns = ?"
                    " WHERE tenant = ? AND notifier_name = ? AND state = 'pending'",
                    (nowNs, tenant, name),
                )
                conn.execute(
                    "INSERT INTO audit (tenant, at_ns, actor, action, target) VALUES (?, ?, ?, 'notifier.remove', ?)",
                    (tenant, nowNs, actor, "notifier:" + name),
                )
                return True

        return self._call(thd)

    def dueNotifications(self, nowNs: int, limit: int) -> "Deferred[List[Dict[str, Any]]]":
        """
        Pending messages due by C{nowNs} of enabled targets, oldest due
        first, each with its target's current settings.
        """
        return self._call(
            lambda conn: [
                {
                    "id": r[0],
                    "run_id": r[1],
                    "notifier_name": r[2],
                    "name": r[2],
                    "template": r[3],
                    "attempts": r[4],
                    "body": bytes(r[5]),
                    "content_type": r[6],
                    "url": r[7],
                    "secret_env": r[8],
                    "headers": json.loads(r[9] or "{}"),
                }
                for r in conn.execute(
                    "SELECT o.id, o.run_id, o.notifier_name, o.template, o.attempts, o.body, o.content_type,"
                    " n.url, n.secret_env, n.headers FROM outbox o JOIN notifiers n ON n.tenant = o.tenant AND n.name = o.notifier_name"
                    " WHERE o.state = 'pending' AND o.next_attempt_ns <= ? AND n.enabled = 1"
                    " ORDER BY o.next_attempt_ns, o.id LIMIT ?",
                    (nowNs, limit),
                )
            ]
        )

    def nextNotificationDue(self) -> "Deferred[Optional[int]]":
        return self._call(
            lambda conn: conn.execute(
                "SELECT MIN(o.next_attempt_ns) FROM outbox o JOIN notifiers n ON n.tenant = o.tenant AND n.name = o.notifier_name"
                " WHERE o.state = 'pending' AND n.enabled = 1"
            ).fetchone()[0]
        )

    def recordDelivery(
        self,
        outboxID: int,
        attempt: int,
        nowNs: int,
        status: str,
        httpStatus: Optional[int],
        error: str,
        excerpt: str,
        state: str,
        nextAttemptNs: Optional[int],
    ) -> "Deferred[bool]":
        """
        One attempt's row and the message's new state, in one transaction.
        False (nothing written) when the message is no longer pending at
        C{attempt - 1} attempts.
        """

        def thd(conn: Any) -> bool:
            with _transaction(conn):
                cur = conn.execute(
                    "UPDATE outbox SET state = ?, attempts = ?, next_attempt_ns = COALESCE(?, next_attempt_ns),"
                    " last_error = ?, updated_ns = ? WHERE id = ? AND state = 'pending' AND attempts = ?",
                    (state, attempt, nextAttemptNs, error[:500], nowNs, outboxID, attempt - 1),
                )
                if not cur.rowcount:
                    return False
                conn.execute(
                    "INSERT INTO deliveries (tenant, outbox_id, notifier_name, attempt, at_ns, status, http_status, error,"
                    " response_excerpt) SELECT tenant, id, notifier_name, ?, ?, ?, ?, ?, ? FROM outbox WHERE id = ?",
                    (attempt, nowNs, status, httpStatus, error[:500], excerpt[:2048], outboxID),
                )
                return True

        return self._call(thd)

    def deliveries(self, name: str, limit: int = 100, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        """
        A target's attempts, newest first (also after it was removed).
        """
        return self._call(
            lambda conn: [
                {
                    "outbox_id": r[0],
                    "run_id": r[1],
                    "attempt": r[2],
                    "at_ns": r[3],
                    "status": r[4],
                    "http_status": r[5],
                    "error": r[6],
                    "response_excerpt": r[7],
                    "message_state": r[8],
                    "next_attempt_ns": r[9] if r[8] == "pending" else None,
                }
                for r in conn.execute(
                    "SELECT d.outbox_id, o.run_id, d.attempt, d.at_ns, d.status, d.http_status, d.error,"
                    " d.response_excerpt, o.state, o.next_attempt_ns FROM deliveries d JOIN outbox o ON o.id = d.outbox_id"
                    " WHERE d.tenant = ? AND d.notifier_name = ? ORDER BY d.at_ns DESC, d.id DESC LIMIT ?",
                    (tenant, name, limit),
                )
            ]
        )

    def outboxFor(self, runID: str, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [
                {"id": r[0], "notifier_name": r[1], "template": r[2], "state": r[3], "attempts": r[4], "last_error": r[5],
                 "created_ns": r[6], "updated_ns": r[7]}
                for r in conn.execute(
                    "SELECT id, notifier_name, template, state, attempts, last_error, created_ns, updated_ns"
                    " FROM outbox WHERE run_id = ? AND tenant = ?"
                    " ORDER BY notifier_name",
                    (runID, tenant),
                )
            ]
        )

    def metricCounts(self, tenant: Optional[str] = None) -> "Deferred[Dict[str, Any]]":
        """
        For a metrics scrape: runs by state, stored deviations by severity,
        outbox messages by state; with C{tenant}, that tenant's only (its
        linked runs), else everything plus C{tenant_runs} and
        C{tenant_deviations} keyed C{(tenant, state|severity)}.
        """

        def thd(conn: Any) -> Dict[str, Any]:
            if tenant is not None:
                return {
                    "runs": dict(conn.execute(
                        "SELECT runs.state, COUNT(*) FROM runs JOIN run_tenants rt ON rt.run_id = runs.id AND rt.tenant = ?"
                        " GROUP BY runs.state", (tenant,)).fetchall()),
                    "deviations": dict(conn.execute(
                        "SELECT severity, COUNT(*) FROM deviations WHERE tenant = ? GROUP BY severity", (tenant,)).fetchall()),
                    "outbox": dict(conn.execute(
                        "SELECT state, COUNT(*) FROM outbox WHERE tenant = ? GROUP BY state", (tenant,)).fetchall()),
                }
            return {
                "runs": dict(conn.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall()),
                "deviations": dict(conn.execute("SELECT severity, COUNT(*) FROM deviations GROUP BY severity").fetchall()),
                "outbox": dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()),
                "tenant_runs": {(r[0], r[1]): r[2] for r in conn.execute(
                    "SELECT rt.tenant, runs.state, COUNT(*) FROM runs JOIN run_tenants rt ON rt.run_id = runs.id"
                    " GROUP BY rt.tenant, runs.state")},
                "tenant_deviations": {(r[0], r[1]): r[2] for r in conn.execute(
                    "SELECT tenant, severity, COUNT(*) FROM deviations GROUP BY tenant, severity")},
            }

        return self._call(thd)
