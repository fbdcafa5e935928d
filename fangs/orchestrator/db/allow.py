"""
The allowlist (entries from the API and from configuration) and its audit trail.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence

from twisted.internet.defer import Deferred

from fangs.orchestrator.allowlist import AllowEntry, ConfigSync, planConfigSync
from fangs.orchestrator.db.model import Conflict
from fangs.orchestrator.db.connector import _transaction


class AllowComponent:
    """
    The allowlist (entries from the API and from configuration) and its audit trail.
    """

    # -- allowlist ----------------------------------------------------------------

    def _thd_allowEntries(self, conn: Any) -> List[AllowEntry]:
        return [
            AllowEntry(id=r[0], kind=r[1], value=r[2], scope=r[3], package_name=r[4], note=r[5])
            for r in conn.execute(
                "SELECT id, kind, value, scope, package_name, note FROM allowlist ORDER BY scope, package_name, kind, value"
            )
        ]

    def listAllow(self) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [
                {
                    "id": r[0],
                    "kind": r[1],
                    "value": r[2],
                    "scope": r[3],
                    "package_name": r[4] or None,
                    "note": r[5],
                    "source": r[6],
                    "created_ns": r[7],
                    "created_by": r[8],
                }
                for r in conn.execute(
                    "SELECT id, kind, value, scope, package_name, note, source, created_ns, created_by FROM allowlist"
                    " ORDER BY scope, package_name, kind, value"
                )
            ]
        )

    def addAllow(self, entry: AllowEntry, actor: str, nowNs: int) -> "Deferred[str]":
        """
        @raise Conflict: the same entry exists already.
        """
        return self._call(self._thd_addAllow, entry, actor, nowNs)

    def _thd_addAllow(self, conn: Any, entry: AllowEntry, actor: str, nowNs: int) -> str:
        with _transaction(conn):
            try:
                conn.execute(
                    "INSERT INTO allowlist (id, scope, package_name, kind, value, note, source, created_ns, created_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'operator', ?, ?)",
                    (entry.id, entry.scope, entry.package_name, entry.kind, entry.value, entry.note, nowNs, actor),
                )
            except conn.engine.IntegrityError:
                raise Conflict("an identical %s allowlist entry exists already" % (entry.kind,)) from None
            conn.execute(
                "INSERT INTO audit (at_ns, actor, action, target, detail) VALUES (?, ?, 'allow.add', ?, ?)",
                (nowNs, actor, "allow:" + entry.id, json.dumps({"kind": entry.kind, "value": entry.value, "scope": entry.scope, "package": entry.package_name})),
            )
            return entry.id

    def removeAllow(self, entryID: str, actor: str, nowNs: int) -> "Deferred[bool]":
        return self._call(self._thd_removeAllow, entryID, actor, nowNs)

    def _thd_removeAllow(self, conn: Any, entryID: str, actor: str, nowNs: int) -> bool:
        with _transaction(conn):
            row = conn.execute("SELECT source FROM allowlist WHERE id = ?", (entryID,)).fetchone()
            if row is None:
                return False
            if row[0] == "config":
                raise Conflict("allowlist entry %s comes from the configuration file; remove it there" % (entryID,))
            conn.execute("DELETE FROM allowlist WHERE id = ?", (entryID,))
            conn.execute(
                "INSERT INTO audit (at_ns, actor, action, target) VALUES (?, ?, 'allow.remove', ?)",
                (nowNs, actor, "allow:" + entryID),
            )
            return True

    def syncConfigAllow(self, wanted: Sequence[AllowEntry], nowNs: int) -> "Deferred[ConfigSync]":
        """
        Make the config-managed entries equal the configuration file: new
        lines added, changed notes updated, removed lines deleted.
        """
        return self._call(self._thd_syncConfigAllow, wanted, nowNs)

    def _thd_syncConfigAllow(self, conn: Any, wanted: Sequence[AllowEntry], nowNs: int) -> ConfigSync:
        with _transaction(conn):
            existing = [
                AllowEntry(id=r[0], kind=r[1], value=r[2], scope=r[3], package_name=r[4], note=r[5])
                for r in conn.execute(
                    "SELECT id, kind, value, scope, package_name, note FROM allowlist WHERE source = 'config'"
                )
            ]
            plan = planConfigSync(existing, wanted)
            for e in plan.insert:
                # The new line replaces any row with its id or its (scope,
                # package, kind, value).
                conn.execute(
                    "DELETE FROM allowlist WHERE id = ? OR (scope = 'global' AND package_name = '' AND kind = ? AND value = ?)",
                    (e.id, e.kind, e.value),
                )
                conn.execute(
                    "INSERT INTO allowlist (id, scope, package_name, kind, value, note, source, created_ns, created_by)"
                    " VALUES (?, 'global', '', ?, ?, ?, 'config', ?, 'config')",
                    (e.id, e.kind, e.value, e.note, nowNs),
                )
            for e in plan.update:
                conn.execute("UPDATE allowlist SET note = ? WHERE id = ?", (e.note, e.id))
            for entryID in plan.delete:
                conn.execute("DELETE FROM allowlist WHERE id = ?", (entryID,))
            return plan

    def auditFor(self, target: str) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [
                {"at_ns": r[0], "actor": r[1], "action": r[2], "target": r[3], "detail": json.loads(r[4])}
                for r in conn.execute(
                    "SELECT at_ns, actor, action, target, detail FROM audit WHERE target = ? ORDER BY id", (target,)
                )
            ]
        )
