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
C{_call(f, *args)}.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import attrs

#: Lines kept for reconnecting clients.
HISTORY = 100_000
#: The history is trimmed once every this many lines.
TRIM_EVERY = 1_000
#: PostgreSQL channel that tells other orchestrators a line was appended.
STREAM_CHANNEL = "fangs_stream"

SQLITE_SCHEMA = """
    CREATE TABLE run_stream (
        cursor INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ns INTEGER NOT NULL,
        tenant TEXT NOT NULL DEFAULT 'default',
        run_id TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL
    )
"""

POSTGRES_SCHEMA = """
    CREATE TABLE run_stream (
        cursor BIGINT PRIMARY KEY,
        ts_ns BIGINT NOT NULL,
        tenant TEXT NOT NULL DEFAULT 'default',
        run_id TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE run_stream_head (one INTEGER PRIMARY KEY CHECK (one = 1), cursor BIGINT NOT NULL);
    INSERT INTO run_stream_head VALUES (1, 0)
"""


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


class SQLiteStreamStorage:
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
        from fangs.orchestrator.store import _transaction

        cursors = []
        with _transaction(conn):
            for line in lines:
                cursor = conn.execute(
                    "INSERT INTO run_stream (ts_ns, tenant, run_id, type, body) VALUES (?, ?, ?, ?, ?)", line
                ).lastrowid
                if cursor % TRIM_EVERY == 0:
                    conn.execute("DELETE FROM run_stream WHERE cursor <= ?", (cursor - HISTORY,))
                cursors.append(int(cursor))
        return cursors

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
        oldest, newest = conn.execute("SELECT MIN(cursor), MAX(cursor) FROM run_stream").fetchone()
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'run_stream'").fetchone()
        return oldest, int(seq[0]) if seq else int(newest or 0)


class PostgresStreamStorage(SQLiteStreamStorage):
    def _thd_appendStreamLines(self, conn: Any, lines: Sequence[Tuple[int, str, str, str, str]]) -> List[int]:
        from fangs.orchestrator.pgstore import _begin

        if not lines:
            return []
        with _begin(conn) as raw:
            # The counter row's lock is held until COMMIT, so cursors commit
            # in order; all of an orchestrator's waiting lines take it once.
            (last,) = raw.execute(
                "UPDATE run_stream_head SET cursor = cursor + %s RETURNING cursor", (len(lines),)
            ).fetchone()
            cursors = list(range(int(last) - len(lines) + 1, int(last) + 1))
            raw.cursor().executemany(
                "INSERT INTO run_stream (" + _COLUMNS + ") VALUES (%s, %s, %s, %s, %s, %s)",
                [(cursor,) + tuple(line) for cursor, line in zip(cursors, lines)],
            )
            trim = [c for c in cursors if c % TRIM_EVERY == 0]
            if trim:
                raw.execute("DELETE FROM run_stream WHERE cursor <= %s", (trim[-1] - HISTORY,))
            raw.execute("SELECT pg_notify(%s, %s)", (STREAM_CHANNEL, str(cursors[-1])))
            return cursors

    def _thd_streamSince(self, conn: Any, cursor: int, limit: int) -> List[StreamRow]:
        rows = conn.raw.execute(
            "SELECT " + _COLUMNS + " FROM run_stream WHERE cursor > %s ORDER BY cursor LIMIT %s", (cursor, limit)
        ).fetchall()
        return [StreamRow(*r) for r in rows]

    def _thd_streamBounds(self, conn: Any) -> Tuple[Optional[int], int]:
        (oldest,) = conn.raw.execute("SELECT MIN(cursor) FROM run_stream").fetchone()
        (head,) = conn.raw.execute("SELECT cursor FROM run_stream_head").fetchone()
        return oldest, int(head)
