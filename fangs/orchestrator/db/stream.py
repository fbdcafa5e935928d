"""
Storage of the run stream (C{GET /v1/runs/stream}): one row per line, in
cursor order, shared by every orchestrator on the database.

The table keeps a bounded history (L{HISTORY} lines): a client that
reconnects with C{since=<cursor>} is sent every line after its cursor, and
one whose cursor fell out of the history is told so.  Cursors are allocated
in commit order on both engines, so a reader that has seen cursor N never
later finds a line below N: SQLite has one writer; on PostgreSQL each append
takes the one counter row's lock until it commits.

The mixins are composed into L{fangs.orchestrator.store.SQLiteStore} and
L{fangs.orchestrator.pgstore.PostgresStore}; they use the store's
C{_call(f, *args)}.  The table is in L{fangs.orchestrator.db.schema}
(migration 20).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import attrs

from fangs.orchestrator.db.connector import _transaction
from fangs.orchestrator.db.engines import READ_COMMITTED

#: Lines kept for reconnecting clients.
HISTORY = 100_000
#: The history is trimmed once every this many lines.
TRIM_EVERY = 1_000
#: PostgreSQL channel that tells other orchestrators a line was appended.
STREAM_CHANNEL = "fangs_stream"


@attrs.frozen
class StreamRow:
    cursor: int
    ts_ns: int
    tenant: str
    run_id: str
    type: str
    #: The line's JSON object without its cursor, as text.
    body: str


_COLUMNS = "cursor, ts_ns, tenant, run_id, type, body"


class StreamStorage:
    """
    The run stream on either engine; a subclass numbers the lines
    (L{_thd_insertLines}) and knows the head (L{_thd_streamBounds}).
    """

    def appendStream(self, tsNs: int, tenant: str, runID: str, type: str, body: str) -> Any:
        """
        Append one line. @return: a Deferred firing with its cursor.
        """
        return self.appendStreamLines([(tsNs, tenant, runID, type, body)]).addCallback(lambda cursors: cursors[0])

    def appendStreamLines(self, lines: Sequence[Tuple[int, str, str, str, str]]) -> Any:
        """
        Append C{(ts_ns, tenant, run_id, type, body)} lines in one
        transaction, in order. @return: a Deferred firing with their cursors.
        """
        return self._call(self._thd_appendStreamLines, list(lines))  # type: ignore[attr-defined]

    def _thd_appendStreamLines(self, conn: Any, lines: Sequence[Tuple[int, str, str, str, str]]) -> List[int]:
        if not lines:
            return []
        with _transaction(conn, READ_COMMITTED):
            cursors = self._thd_insertLines(conn, lines)
            trim = [c for c in cursors if c % TRIM_EVERY == 0]
            if trim:
                conn.execute("DELETE FROM run_stream WHERE cursor <= ?", (trim[-1] - HISTORY,))
            conn.engine.notify(conn, STREAM_CHANNEL, str(cursors[-1]))
            return cursors

    def _thd_insertLines(self, conn: Any, lines: Sequence[Tuple[Any, ...]]) -> List[int]:
        raise NotImplementedError

    def streamSince(self, cursor: int, limit: int = 1000) -> Any:
        """
        Lines after C{cursor}, oldest first, at most C{limit}.
        """
        return self._call(self._thd_streamSince, cursor, limit)  # type: ignore[attr-defined]

    def _thd_streamSince(self, conn: Any, cursor: int, limit: int) -> List[StreamRow]:
        rows = conn.execute(
            "SELECT " + _COLUMNS + " FROM run_stream WHERE cursor > ? ORDER BY cursor LIMIT ?", (cursor, limit)
        ).fetchall()
        return [StreamRow(*r) for r in rows]

    def streamBounds(self) -> Any:
        """
        C{(oldest, head)}: the first cursor still kept (None when empty) and
        the last one handed out (0 before the first line).
        """
        return self._call(self._thd_streamBounds)  # type: ignore[attr-defined]

    def _thd_streamBounds(self, conn: Any) -> Tuple[Optional[int], int]:
        raise NotImplementedError


class SQLiteStreamStorage(StreamStorage):
    """
    SQLite numbers the lines itself (C{AUTOINCREMENT}); one writer commits
    them in order.
    """

    def _thd_insertLines(self, conn: Any, lines: Sequence[Tuple[Any, ...]]) -> List[int]:
        return [
            int(conn.execute("INSERT INTO run_stream (ts_ns, tenant, run_id, type, body) VALUES (?, ?, ?, ?, ?)", line).lastrowid)
            for line in lines
        ]

    def _thd_streamBounds(self, conn: Any) -> Tuple[Optional[int], int]:
        oldest, newest = conn.execute("SELECT MIN(cursor), MAX(cursor) FROM run_stream").fetchone()
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'run_stream'").fetchone()
        return oldest, int(seq[0]) if seq else int(newest or 0)


class PostgresStreamStorage(StreamStorage):
    """
    PostgreSQL takes cursors from the one counter row: its lock is held
    until COMMIT, so lines of several orchestrators commit in cursor order;
    all of an orchestrator's waiting lines take it once.
    """

    def _thd_insertLines(self, conn: Any, lines: Sequence[Tuple[Any, ...]]) -> List[int]:
        (last,) = conn.execute("UPDATE run_stream_head SET cursor = cursor + ? RETURNING cursor", (len(lines),)).fetchone()
        cursors = list(range(int(last) - len(lines) + 1, int(last) + 1))
        conn.executemany(
            "INSERT INTO run_stream (" + _COLUMNS + ") VALUES (?, ?, ?, ?, ?, ?)",
            [(cursor,) + tuple(line) for cursor, line in zip(cursors, lines)],
        )
        return cursors

    def _thd_streamBounds(self, conn: Any) -> Tuple[Optional[int], int]:
        (oldest,) = conn.execute("SELECT MIN(cursor) FROM run_stream").fetchone()
        (head,) = conn.execute("SELECT cursor FROM run_stream_head").fetchone()
        return oldest, int(head)
