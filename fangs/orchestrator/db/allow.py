"""
The allowlist (entries from the API and from configuration) and its audit trail.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from twisted.internet.defer import Deferred

from fangs.orchestrator.allowlist import AllowEntry, ConfigSync, planConfigSync
from fangs.orchestrator.db.model import Conflict
from fangs.orchestrator.db.connector import _transaction


class AllowComponent:
    """
    The allowlist (entries from the API and from configuration) and its audit trail.
    """

    # -- allowlist ----------------------------------------------------------------

    # Entries are a tenant's own, or the configuration's (tenant C{*}), which
    # apply to every tenant.

    def _thd_allowEntries(self, conn: Any, tenant: str = "default") -> List[AllowEntry]:
        return [
            AllowEntry(id=r[0], kind=r[1], value=r[2], scope=r[3], package_name=r[4], note=r[5])
            for r in conn.execute(
                "SELECT id, kind, value, scope, package_name, note FROM allowlist WHERE tenant IN (?, '*')"
                " ORDER BY scope, package_name, kind, value",
                (tenant,),
            )
        ]

    def listAllow(self, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
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
                    " WHERE tenant IN (?, '*') ORDER BY scope, package_name, kind, value",
                    (tenant,),
                )
            ]
        )

    def addAllow(self, entry: AllowEntry, actor: str, nowNs: int, tenant: str = "default") -> "Deferred[str]":
        """
        @raise Conflict: the same entry exists already.
        """
        return self._call(self._thd_addAllow, entry, actor, nowNs, tenant)

    def _thd_addAllow(self, conn: Any, entry: AllowEntry, actor: str, nowNs: int, tenant: str = "default") -> str:
        with _transaction(conn):
            try:
                conn.execute(
                    "INSERT INTO allowlist (id, tenant, scope, package_name, kind, value, note, source, created_ns, created_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 'operator', ?, ?)",
                    (entry.id, tenant, entry.scope, entry.package_name, entry.kind, entry.value, entry.note, nowNs, actor),
                )
            except conn.engine.IntegrityError:
                raise Conflict("an identical %s allowlist entry exists already" % (entry.kind,)) from None
            conn.execute(
                "INSERT INTO audit (tenant, at_ns, actor, action, target, detail) VALUES (?, ?, ?, 'allow.add', ?, ?)",
                (tenant, nowNs, actor, "allow:" + entry.id, json.dumps({"kind": entry.kind, "value": entry.value, "scope": entry.scope, "package": entry.package_name})),
            )
            return entry.id

    def removeAllow(self, entryID: str, actor: str, nowNs: int, tenant: str = "default") -> "Deferred[bool]":
        return self._call(self._thd_removeAllow, entryID, actor, nowNs, tenant)

    def _thd_removeAllow(self, conn: Any, entryID: str, actor: str, nowNs: int, tenant: str = "default") -> bool:
        with _transaction(conn):
            row = conn.execute("SELECT source FROM allowlist WHERE id = ? AND tenant IN (?, '*')", (entryID, tenant)).fetchone()
            if row is None:
                return False
            if row[0] == "config":
                raise Conflict("allowlist entry %s comes from the configuration file; remove it there" % (entryID,))
            conn.execute("DELETE FROM allowlist WHERE id = ?", (entryID,))
            conn.execute(
                "INSERT INTO audit (tenant, at_ns, actor, action, target) VALUES (?, ?, ?, 'allow.remove', ?)",
                (tenant, nowNs, actor, "allow:" + entryID),
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
                # The new line replaces any row with its id or its (tenant,
                # scope, package, kind, value).
                conn.execute(
                    "DELETE FROM allowlist WHERE id = ? OR (tenant = '*' AND scope = 'global' AND package_name = ''"
                    " AND kind = ? AND value = ?)",
                    (e.id, e.kind, e.value),
                )
                conn.execute(
                    "INSERT INTO allowlist (id, tenant, scope, package_name, kind, value, note, source, created_ns, created_by)"
                    " VALUES (?, '*', 'global', '', ?, ?, ?, 'config', ?, 'config')",
                    (e.id, e.kind, e.value, e.note, nowNs),
                )
            for e in plan.update:
                conn.execute("UPDATE allowlist SET note = ? WHERE id = ?", (e.note, e.id))
            for entryID in plan.delete:
                conn.execute("DELETE FROM allowlist WHERE id = ?", (entryID,))
            return plan

    def auditLog(self, tenant: str, limit: int = 100, target: Optional[str] = None) -> "Deferred[List[Dict[str, Any]]]":
        """
        C{tenant}'s audit trail (of C{target} only, when given), newest first.
        """
        where, args = ("tenant = ?", [tenant]) if target is None else ("tenant = ? AND target = ?", [tenant, target])
        return self._call(
            lambda conn: [
                {"at_ns": r[0], "actor": r[1], "action": r[2], "target": r[3], "detail": json.loads(r[4] or "{}")}
                for r in conn.execute(
                    "SELECT at_ns, actor, action, target, detail FROM audit WHERE " + where + " ORDER BY id DESC LIMIT ?",
                    args + [limit],
                )
            ]
        )

    def auditFor(self, target: str, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        """
        C{tenant}'s audit trail of C{target}.
        """
        return self._call(
            lambda conn: [
                {"at_ns": r[0], "actor": r[1], "action": r[2], "target": r[3], "detail": json.loads(r[4])}
                for r in conn.execute(
                    "SELECT at_ns, actor, action, target, detail FROM audit WHERE target = ? AND tenant = ? ORDER BY id",
                    (target, tenant),
                )
            ]
        )
