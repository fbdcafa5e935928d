"""
Storage of scanned tarballs: each stored once by its SHA-512 (content
addressed, shared by every run of the same bytes), and a link from each run
to the tarball it scanned with the outcome of the integrity check.

Tarballs live in the database, so every orchestrator on one PostgreSQL
database can serve them.  Composed into the SQLite and PostgreSQL stores like
L{fangs.orchestrator.db.stream}.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

from fangs.orchestrator.db.connector import _transaction
from fangs.orchestrator.db.engines import READ_COMMITTED

@attrs.frozen
class RunArtifact:
    run_id: str
    #: Hex SHA-512 of the bytes downloaded (None when nothing was downloaded).
    sha512: Optional[str]
    #: C{verified}, C{integrity_mismatch}, C{fetch_failed} or C{skipped}.
    status: str
    detail: str
    integrity: str
    tarball_url: str
    size: int
    checked_ns: int
    #: Whether the bytes are still kept (retention may drop old tarballs).
    stored: bool = False


_LINK_COLUMNS = "r.run_id, r.sha512, r.status, r.detail, r.integrity, r.tarball_url, r.size, r.checked_ns"


class ArtifactStorage:
    def putArtifact(self, sha512: str, data: bytes, nowNs: int) -> Any:
        """
        Keep C{data} under its hash (once; a second put only marks it used).
        """
        return self._call(self._thd_putArtifact, sha512, data, nowNs)  # type: ignore[attr-defined]

    def _thd_putArtifact(self, conn: Any, sha512: str, data: bytes, nowNs: int) -> None:
        with _transaction(conn, READ_COMMITTED):
            conn.execute(
                "INSERT INTO artifacts (sha512, size, data, created_ns, last_used_ns) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (sha512) DO UPDATE SET last_used_ns = excluded.last_used_ns,"
                " data = COALESCE(artifacts.data, excluded.data)",
                (sha512, len(data), data, nowNs, nowNs),
            )

    def linkArtifact(self, link: RunArtifact) -> Any:
        return self._call(self._thd_linkArtifact, link)  # type: ignore[attr-defined]

    def _thd_linkArtifact(self, conn: Any, link: RunArtifact) -> None:
        with _transaction(conn, READ_COMMITTED):
            conn.execute(
                "INSERT INTO run_artifacts (run_id, sha512, status, detail, integrity, tarball_url, size, checked_ns)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET sha512 = excluded.sha512,"
                " status = excluded.status, detail = excluded.detail, integrity = excluded.integrity,"
                " tarball_url = excluded.tarball_url, size = excluded.size, checked_ns = excluded.checked_ns",
                (link.run_id, link.sha512, link.status, link.detail, link.integrity, link.tarball_url, link.size,
                 link.checked_ns),
            )

    def artifactFor(self, runID: str) -> Any:
        """
        The run's L{RunArtifact}, or None before its tarball was checked.
        """
        return self._call(self._thd_artifactFor, runID)  # type: ignore[attr-defined]

    def _thd_artifactFor(self, conn: Any, runID: str) -> Optional[RunArtifact]:
        row = conn.execute(
            "SELECT " + _LINK_COLUMNS + ", a.data IS NOT NULL FROM run_artifacts r"
            " LEFT JOIN artifacts a ON a.sha512 = r.sha512 WHERE r.run_id = ?",
            (runID,),
        ).fetchone()
        return None if row is None else RunArtifact(*row[:8], stored=bool(row[8]))

    def getArtifact(self, sha512: str) -> Any:
        """
        C{(size, data)}; C{data} is None when retention dropped the bytes;
        None when the hash was never stored.
        """
        return self._call(self._thd_getArtifact, sha512)  # type: ignore[attr-defined]

    def _thd_getArtifact(self, conn: Any, sha512: str) -> Optional[tuple]:
        row = conn.execute("SELECT size, data FROM artifacts WHERE sha512 = ?", (sha512,)).fetchone()
        if row is None:
            return None
        return row[0], (bytes(row[1]) if row[1] is not None else None)

    def pruneArtifacts(self, unusedSinceNs: int) -> Any:
        """
        Drop the bytes of tarballs no run used since C{unusedSinceNs} (the
        hash, size and every run's record of its check stay).
        """
        return self._call(self._thd_pruneArtifacts, unusedSinceNs)  # type: ignore[attr-defined]

    def _thd_pruneArtifacts(self, conn: Any, unusedSinceNs: int) -> int:
        with _transaction(conn, READ_COMMITTED):
            return conn.execute(
                "UPDATE artifacts SET data = NULL WHERE data IS NOT NULL AND last_used_ns < ?", (unusedSinceNs,)
            ).rowcount
