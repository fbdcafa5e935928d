"""
Watched packages, their baselines, and releases seen by the watcher.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

from fangs.orchestrator.db.model import _jsonList
from fangs.orchestrator.db.connector import _transaction


class PackagesComponent:
    """
    Watched packages, their baselines, and releases seen by the watcher.

    Every one of them is a tenant's (migration 60): two tenants watching one
    package have a row each, with their own releases' watch state and
    baseline; the scans those releases queue are shared runs.
    """

    # -- packages and baselines -------------------------------------------------

    def addPackage(self, name: str, actor: str, nowNs: int, tenant: str = "default") -> "Deferred[bool]":
        return self._call(self._thd_addPackage, name, actor, nowNs, tenant)

    def _thd_addPackage(self, conn: Any, name: str, actor: str, nowNs: int, tenant: str = "default") -> bool:
        with _transaction(conn):
            cur = conn.execute(
                "INSERT INTO packages (tenant, name, added_ns, added_by) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (tenant, name, nowNs, actor),
            )
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO audit (tenant, at_ns, actor, action, target) VALUES (?, ?, ?, 'package.add', ?)",
                    (tenant, nowNs, actor, "package:" + name),
                )
            return cur.rowcount == 1

    def removePackage(self, name: str, actor: str, nowNs: int, tenant: str = "default") -> "Deferred[bool]":
        return self._call(self._thd_removePackage, name, actor, nowNs, tenant)

    def _thd_removePackage(self, conn: Any, name: str, actor: str, nowNs: int, tenant: str = "default") -> bool:
        with _transaction(conn):
            cur = conn.execute("DELETE FROM packages WHERE tenant = ? AND name = ?", (tenant, name))
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO audit (tenant, at_ns, actor, action, target) VALUES (?, ?, ?, 'package.remove', ?)",
                    (tenant, nowNs, actor, "package:" + name),
                )
            return cur.rowcount == 1

    def listPackages(self, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        return self._call(self._thd_listPackages, None, tenant)

    def _thd_listPackages(self, conn: Any, name: Optional[str] = None, tenant: str = "default") -> List[Dict[str, Any]]:
        runs = "SELECT COUNT(*) FROM runs r JOIN run_tenants rt ON rt.run_id = r.id AND rt.tenant = p.tenant WHERE r.package_name = p.name"
        sql = (
            "SELECT p.name, p.added_ns, p.last_checked_ns, p.last_seen_version,"
            " (" + runs + "),"
            " (" + runs + " AND rt.verdict IN ('baseline', 'clean')),"
            " (" + runs + " AND rt.verdict = 'deviations' AND rt.decision IS NULL),"
            " (SELECT COUNT(*) FROM (SELECT DISTINCT category, value FROM baseline b"
            " WHERE b.tenant = p.tenant AND b.package_name = p.name) d)"
            " FROM packages p WHERE p.tenant = ?"
        )
        args: Tuple[Any, ...] = (tenant,)
        if name is not None:
            sql += " AND p.name = ?"
            args = (tenant, name)
        sql += " ORDER BY p.name"
        return [
            {
                "name": r[0],
                "added_ns": r[1],
                "last_checked_ns": r[2],
                "last_seen_version": r[3],
                "runs": r[4],
                "baseline_runs": r[5],
                "pending_runs": r[6],
                "baseline_fingerprints": r[7],
            }
            for r in conn.execute(sql, args)
        ]

    def getPackage(self, name: str, tenant: str = "default") -> "Deferred[Optional[Dict[str, Any]]]":
        return self._call(lambda conn: (self._thd_listPackages(conn, name, tenant) or [None])[0])

    def baselineFor(self, package: str, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        """
        The package's baseline: each fingerprint with the number of runs that
        showed it and the first and last of them.
        """
        return self._call(
            lambda conn: [
                {
                    "category": r[0],
                    "value": r[1],
                    "actor": r[6],
                    "occurrences": r[2],
                    "events": r[3],
                    "first_seen_run_id": r[4],
                    "last_seen_run_id": r[5],
                }
                for r in conn.execute(
                    "SELECT category, value, COUNT(*), SUM(count), MIN(run_id), MAX(run_id), actor FROM baseline"
                    " WHERE tenant = ? AND package_name = ? GROUP BY category, value, actor ORDER BY category, value, actor",
                    (tenant, package),
                )
            ]
        )

    def packageHasRuns(self, package: str, tenant: str = "default") -> "Deferred[bool]":
        return self._call(
            lambda conn: conn.execute(
                "SELECT 1 FROM runs JOIN run_tenants rt ON rt.run_id = runs.id AND rt.tenant = ? WHERE runs.package_name = ? LIMIT 1",
                (tenant, package),
            ).fetchone()
            is not None
        )

    # -- releases (watcher) --

    def watchList(self, nowNs: int) -> "Deferred[List[Dict[str, Any]]]":
        """
        The watched packages due for a check (not held back by a registry
        C{Retry-After}), by name, each with its ETag, whether it has been
        seeded, and how many recorded releases still wait to be queued.
        """
        return self._call(self._thd_watchList, nowNs)

    def _thd_watchList(self, conn: Any, nowNs: int) -> List[Dict[str, Any]]:
        return [
            {"name": r[0], "etag": r[1], "last_seen_version": r[2], "seeded": bool(r[3]), "waiting": r[4], "tenant": r[5]}
            for r in conn.execute(
                "SELECT p.name, p.etag, p.last_seen_version,"
                " EXISTS (SELECT 1 FROM releases r WHERE r.tenant = p.tenant AND r.package_name = p.name),"
                " (SELECT COUNT(*) FROM releases r WHERE r.tenant = p.tenant AND r.package_name = p.name AND r.queued = 0 AND r.seeded = 0),"
                " p.tenant"
                " FROM packages p WHERE p.next_check_ns IS NULL OR p.next_check_ns <= ? ORDER BY p.name, p.tenant",
                (nowNs,),
            )
        ]

    def knownVersions(self, name: str, tenant: str = "default") -> "Deferred[Dict[str, bool]]":
        """
        Every recorded version of C{name} and whether it is settled (queued
        for a scan, or seen at seeding time).
        """
        return self._call(
            lambda conn: {
                r[0]: bool(r[1])
                for r in conn.execute(
                    "SELECT version, queued <> 0 OR seeded <> 0 FROM releases WHERE tenant = ? AND package_name = ?", (tenant, name)
                )
            }
        )

    def recordPackument(
        self,
        name: str,
        releases: Sequence[Dict[str, Any]],
        latest: Optional[str],
        etag: Optional[str],
        nowNs: int,
        tenant: str = "default",
    ) -> "Deferred[List[Dict[str, Any]]]":
        """
        In one transaction: insert the releases not recorded yet (each a dict
        with version, integrity, shasum, tarball, published_ns, dist_tags and
        seeded), refresh every recorded release's dist-tags, and stamp the
        package's check time, latest version and ETag.  A package that was
        removed meanwhile records nothing.

        @return: the releases still waiting to be queued (unsorted).
        """
        return self._call(self._thd_recordPackument, name, releases, latest, etag, nowNs, tenant)

    def _thd_recordPackument(
        self,
        conn: Any,
        name: str,
        releases: Sequence[Dict[str, Any]],
        latest: Optional[str],
        etag: Optional[str],
        nowNs: int,
        tenant: str = "default",
    ) -> List[Dict[str, Any]]:
        with _transaction(conn):
            cur = conn.execute(
                "UPDATE packages SET last_checked_ns = ?, last_seen_version = COALESCE(?, last_seen_version),"
                " etag = ?, last_error = '', next_check_ns = NULL WHERE tenant = ? AND name = ?",
                (nowNs, latest, etag, tenant, name),
            )
            if not cur.rowcount:
                return []
            conn.executemany(
                "INSERT INTO releases (tenant, package_name, version, integrity, shasum, tarball, published_ns, dist_tags,"
                " discovered_ns, seeded, manifest, deltas) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, package_name, version) DO UPDATE SET dist_tags = excluded.dist_tags,"
                " manifest = CASE WHEN releases.manifest = '' THEN excluded.manifest ELSE releases.manifest END"
                " WHERE releases.dist_tags != excluded.dist_tags OR (releases.manifest = '' AND excluded.manifest != '')",
                [
                    (
                        tenant,
                        name,
                        r["version"],
                        r.get("integrity") or "",
                        r.get("shasum") or "",
                        r.get("tarball") or "",
                        r.get("published_ns"),
                        json.dumps(sorted(r.get("dist_tags") or ())),
                        nowNs,
                        1 if r.get("seeded") else 0,
                        json.dumps(r.get("manifest") or {}, sort_keys=True) if r.get("manifest") else "",
                        json.dumps(r.get("deltas") or []),
                    )
                    for r in releases
                ],
            )
            return self._thd_waitingReleases(conn, name, tenant)

    def waitingReleases(self, name: str, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        return self._call(self._thd_waitingReleases, name, tenant)

    def _thd_waitingReleases(self, conn: Any, name: str, tenant: str = "default") -> List[Dict[str, Any]]:
        return [
            {"version": r[0], "published_ns": r[1], "attempts": r[2]}
            for r in conn.execute(
                "SELECT version, published_ns, attempts FROM releases"
                " WHERE tenant = ? AND package_name = ? AND queued = 0 AND seeded = 0",
                (tenant, name),
            )
        ]

    def markReleaseQueued(self, name: str, version: str, runID: str, nowNs: int, tenant: str = "default") -> "Deferred[bool]":
        def thd(conn: Any) -> bool:
            with _transaction(conn):
                return bool(
                    conn.execute(
                        "UPDATE releases SET queued = 1, queued_ns = ?, run_id = ?, last_error = ''"
                        " WHERE tenant = ? AND package_name = ? AND version = ?",
                        (nowNs, runID, tenant, name, version),
                    ).rowcount
                )

        return self._call(thd)

    def markReleaseFailed(self, name: str, version: str, error: str, tenant: str = "default") -> "Deferred[None]":
        def thd(conn: Any) -> None:
            with _transaction(conn):
                conn.execute(
                    "UPDATE releases SET attempts = attempts + 1, last_error = ? WHERE tenant = ? AND package_name = ? AND version = ?",
                    (error[:500], tenant, name, version),
                )

        return self._call(thd)

    def finishChecks(self, outcomes: Sequence[Tuple[Any, ...]], nowNs: int) -> "Deferred[None]":
        """
        Stamp many packages checked in one transaction: each outcome is
        C{(name, error, next_check_ns)} or C{(name, error, next_check_ns,
        tenant)} (error C{""} when all went well; default tenant).
        """

        def thd(conn: Any) -> None:
            with _transaction(conn):
                conn.executemany(
                    "UPDATE packages SET last_checked_ns = ?, last_error = ?, next_check_ns = ? WHERE tenant = ? AND name = ?",
                    [(nowNs, o[1][:500], o[2], o[3] if len(o) > 3 else "default", o[0]) for o in outcomes],
                )

        return self._call(thd)

    def watchStatus(self, name: str, tenant: str = "default") -> "Deferred[Optional[Dict[str, Any]]]":
        """
        The watcher's view of one package: last check, error, hold-off.
        """

        def thd(conn: Any) -> Optional[Dict[str, Any]]:
            r = conn.execute(
                "SELECT last_checked_ns, last_seen_version, etag, last_error, next_check_ns FROM packages WHERE tenant = ? AND name = ?",
                (tenant, name),
            ).fetchone()
            if r is None:
                return None
            return {
                "last_checked_ns": r[0],
                "last_seen_version": r[1],
                "etag": r[2],
                "last_error": r[3],
                "next_check_ns": r[4],
            }

        return self._call(thd)

    def listReleases(self, name: str, limit: int = 50, tenant: str = "default") -> "Deferred[List[Dict[str, Any]]]":
        """
        The package's recorded releases, newest discovered (then published)
        first.
        """
        return self._call(
            lambda conn: [
                {
                    "package_name": name,
                    "version": r[0],
                    "integrity": r[1],
                    "shasum": r[2],
                    "tarball": r[3],
                    "published_ns": r[4],
                    "dist_tags": json.loads(r[5] or "[]"),
                    "discovered_ns": r[6],
                    "seeded": bool(r[7]),
                    "queued": bool(r[8]),
                    "queued_ns": r[9],
                    "run_id": r[10],
                    "attempts": r[11],
                    "last_error": r[12],
                    # What the registry's manifest changed against the previous release.
                    "deltas": _jsonList(r[13]),
                }
                for r in conn.execute(
                    "SELECT version, integrity, shasum, tarball, published_ns, dist_tags, discovered_ns, seeded,"
                    " queued, queued_ns, run_id, attempts, last_error, deltas FROM releases WHERE tenant = ? AND package_name = ?"
                    " ORDER BY COALESCE(published_ns, discovered_ns) DESC, version DESC LIMIT ?",
                    (tenant, name, limit),
                )
            ]
        )
