"""
What differs between the store's two database engines, owned by one engine
object per backend (as synapse's C{storage/engines/{sqlite,postgres}.py}).

The store's SQL is written once, portably where the two agree (C{INSERT ...
ON CONFLICT DO NOTHING}, upserts naming the table, C{RETURNING}, C{?}
placeholders), and asks the engine for the rest:

  - L{Engine.sql}: the driver's placeholder style.  psycopg wants C{%s}
    where the shared SQL writes C{?}: the PostgreSQL engine converts
    placeholders (and escapes a literal C{%}) in this one place; nothing
    else in the SQL text is ever changed.
  - L{Engine.types}: the schema's column types (L{fangs.orchestrator.db.schema}
    is one list rendered per engine).
  - L{Engine.greatest}/L{Engine.least}, L{Engine.nextQueueSeq},
    L{Engine.skipLocked}, L{Engine.nowNs}: the expressions and clauses
    spelled differently.
  - L{Engine.begin}: how a transaction starts at the isolation it needs.
  - L{Engine.classify}: a driver error turned into the store's own error
    classes (L{StorageBusy}, L{StorageFull}, L{ConstraintViolation}), so the
    HTTP edge maps a storage fault to the same status on both engines.
  - L{Engine.insertEvents}: a batch of events stored the fastest way the
    engine has (SQLite C{executemany}; PostgreSQL one C{COPY}).
  - L{Engine.lockMigrations}: migrating orchestrators wait for each other.
  - L{Engine.notify}: the hook that tells other orchestrators on the same
    database (PostgreSQL C{NOTIFY}; nothing to tell on SQLite, which has one
    orchestrator).
  - L{Engine.tableNames}/L{Engine.tableRows}: catalogue introspection for
    the dashboard's table view.

Every connection a C{_thd_*} function receives carries its engine as
C{conn.engine}.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fangs.orchestrator.db.model import ConstraintViolation, StorageBusy, StorageFull, StoreError

#: Isolation a transaction asks for.  C{SERIALIZABLE}: read-then-write logic
#: that must hold across orchestrators (first result wins, one analysis per
#: run).  C{READ_COMMITTED}: single-statement writes and the hot paths, safe
#: without it.  SQLite has one writer: both are C{BEGIN IMMEDIATE} there.
SERIALIZABLE = "serializable"
READ_COMMITTED = "read committed"

#: Channels of L{Engine.notify}: a job was queued or released (payload: the
#: runner it is for, or L{SHARED_QUEUE}); a runner registered (its id).
JOBS_CHANNEL = "fangs_jobs"
RUNNERS_CHANNEL = "fangs_runners"
SHARED_QUEUE = "*"

_BUSY_MESSAGE = "the database is locked by another writer or unavailable; the failed write was rolled back, retry shortly"
_FULL_MESSAGE = "the database disk is full; the failed write was rolled back, retry once space is freed"


class Engine:
    """
    The differences of one database engine; see the module docstring.
    """

    #: C{store.backend}: C{"sqlite"} or C{"postgresql"}.
    name = ""
    #: Column types the schema's templates name: C{{text}} text compared
    #: bytewise, C{{i64}} a 64-bit integer, C{{blob}} bytes, C{{id}} an
    #: auto-numbered 64-bit primary key, C{{norowid}} SQLite's
    #: C{WITHOUT ROWID} table option, C{{queue_seq}} the queue order
    #: column's default, C{{stream_cursor}} the run stream's cursor column.
    types: Mapping[str, str] = {}
    #: The driver's exception for a violated constraint (unique, foreign
    #: key, check): C{except conn.engine.IntegrityError}.
    IntegrityError: Any = ()
    #: C{SELECT ... LIMIT n} followed by this takes rows no concurrent
    #: transaction holds, and locks them.
    skipLocked = ""
    #: The current time in nanoseconds since the epoch, as SQL.
    nowNs = ""
    #: The next position at the queue's tail, as SQL.
    nextQueueSeq = ""

    def sql(self, text: str) -> str:
        return text

    def greatest(self, a: str, b: str) -> str:
        raise NotImplementedError

    def least(self, a: str, b: str) -> str:
        raise NotImplementedError

    def begin(self, isolation: str = SERIALIZABLE) -> str:
        raise NotImplementedError

    def insertEvents(self, conn: Any, runID: str, rows: Sequence[Any], nowNs: int) -> Sequence[int]:
        """
        Inside the ingest transaction: store a batch's events (L{EventRow}s)
        the fastest way the engine has; their ids, in order.
        """
        raise NotImplementedError

    def notify(self, conn: Any, channel: str, payload: str) -> None:
        """
        Tell every other orchestrator on the database, at commit.
        """

    def lockMigrations(self, conn: Any) -> None:
        """
        Inside the transaction: wait until no other orchestrator migrates.
        """

    def classify(self, error: BaseException) -> Optional[StoreError]:
        """
        The store's error for a driver error, or None when it is not a
        storage fault (a bug: it stays what it is).
        """
        raise NotImplementedError

    def tableNames(self, conn: Any) -> List[str]:
        raise NotImplementedError

    def tableRows(self, conn: Any, table: str, limit: int, tenant: Optional[str] = None) -> Optional[List[Dict[str, Any]]]:
        raise NotImplementedError


def _tenantWhere(tenant: Optional[str], hasTenant: bool, limit: int) -> Tuple[str, Tuple[Any, ...]]:
    """
    The condition (and arguments) of a table's rows query: only C{tenant}'s
    rows when it is given and the table has a C{tenant} column.
    """
    if tenant is not None and hasTenant:
        return " WHERE tenant = ?", (tenant, limit)
    return "", (limit,)


class SQLiteEngine(Engine):
    name = "sqlite"
    types = {
        "text": "TEXT",
        "i64": "INTEGER",
        "blob": "BLOB",
        "id": "INTEGER PRIMARY KEY",
        "norowid": " WITHOUT ROWID",
        "queue_seq": "",
        "stream_cursor": "INTEGER PRIMARY KEY AUTOINCREMENT",
    }
    IntegrityError = sqlite3.IntegrityError
    nowNs = "CAST(strftime('%s', 'now') AS INTEGER) * 1000000000"
    # One writer: the head is read in the same transaction that appends.
    nextQueueSeq = "(SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs)"

    def greatest(self, a: str, b: str) -> str:
        return "MAX(%s, %s)" % (a, b)

    def insertEvents(self, conn: Any, runID: str, rows: Sequence[Any], nowNs: int) -> Sequence[int]:
        conn.executemany(
            "INSERT INTO events (run_id, seq, idx, type, ts_ns, received_ns, pid, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(runID, r.seq, r.idx, r.type, r.ts_ns, nowNs, r.pid, r.data) for r in rows],
        )
        # One writer, one transaction: the ids just assigned are consecutive
        # and end at last_insert_rowid().
        last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        return range(last - len(rows) + 1, last + 1)

    def least(self, a: str, b: str) -> str:
        return "MIN(%s, %s)" % (a, b)

    def begin(self, isolation: str = SERIALIZABLE) -> str:
        # The write lock at BEGIN: a transaction that reads then writes
        # never finds the database changed under it (and never deadlocks).
        return "BEGIN IMMEDIATE"

    def classify(self, error: BaseException) -> Optional[StoreError]:
        if isinstance(error, StoreError) or not isinstance(error, sqlite3.Error):
            return None
        if isinstance(error, sqlite3.IntegrityError):
            return ConstraintViolation(str(error))
        code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
        text = str(error)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text or "busy" in text:
            return StorageBusy(_BUSY_MESSAGE, text)
        if code == sqlite3.SQLITE_FULL or "disk is full" in text:
            return StorageFull(_FULL_MESSAGE, text)
        return None

    def tableNames(self, conn: Any) -> List[str]:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]

    def tableRows(self, conn: Any, table: str, limit: int, tenant: Optional[str] = None) -> Optional[List[Dict[str, Any]]]:
        known = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if known is None:
            return None
        columns = {r[1] for r in conn.execute('PRAGMA table_info("%s")' % (known[0],))}
        where, args = _tenantWhere(tenant, "tenant" in columns, limit)
        try:
            cur = conn.execute('SELECT * FROM "%s"%s ORDER BY rowid DESC LIMIT ?' % (known[0], where), args)
        except sqlite3.OperationalError:  # a WITHOUT ROWID table
            cur = conn.execute('SELECT * FROM "%s"%s LIMIT ?' % (known[0], where), args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]


class SQLiteConnection(sqlite3.Connection):
    """
    C{sqlite3.Connection} knowing its engine (C{sqlite3.connect(...,
    factory=SQLiteConnection)}); its C{execute} is the driver's own, so the
    hot paths pay nothing for it.
    """

    engine: Engine = SQLiteEngine()


@functools.lru_cache(maxsize=2048)
def _pyformat(sql: str) -> str:
    """
    C{?} placeholders outside quoted literals and identifiers become C{%s};
    a literal C{%} becomes C{%%}.  Character by character: the rest of the
    text is left exactly as written.
    """
    out = []
    quote: Optional[str] = None
    for ch in sql:
        if ch == "%":
            out.append("%%")
            continue
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append(ch)
    return "".join(out)


#: SQLSTATE classes a retry waits out: connection exceptions, insufficient
#: resources (but disk full, 53100), operator intervention (shutdown,
#: statement timeout), transaction rollback (serialization failures and
#: deadlocks left after the store's own retries).
_PG_BUSY_CLASSES = ("08", "53", "57", "40")
#: lock_not_available (a lock timeout).
_PG_BUSY_STATES = ("55P03",)


class PostgresEngine(Engine):
    name = "postgresql"
    types = {
        # Bytewise comparison, so text sorts as in SQLite whatever the
        # database's locale.
        "text": 'TEXT COLLATE "C"',
        "i64": "BIGINT",
        "blob": "BYTEA",
        "id": "BIGSERIAL PRIMARY KEY",
        "norowid": "",
        # Many orchestrators append at once: a sequence, not MAX() + 1.
        "queue_seq": " DEFAULT nextval('runs_queue_seq')",
        "stream_cursor": "BIGINT PRIMARY KEY",
    }
    skipLocked = " FOR UPDATE SKIP LOCKED"
    nowNs = "(extract(epoch FROM clock_timestamp()) * 1e9)::bigint"
    nextQueueSeq = "nextval('runs_queue_seq')"

    #: Advisory lock key held while migrating.
    MIGRATION_LOCK = 4242000001

    def __init__(self) -> None:
        import psycopg

        self._psycopg = psycopg
        self.IntegrityError = psycopg.errors.IntegrityError

    def sql(self, text: str) -> str:
        return _pyformat(text)

    def greatest(self, a: str, b: str) -> str:
        return "GREATEST(%s, %s)" % (a, b)

    def insertEvents(self, conn: Any, runID: str, rows: Sequence[Any], nowNs: int) -> Sequence[int]:
        # Ids taken from the sequence first, then one COPY: many times faster
        # than row-by-row INSERTs, and the ids are known for the fingerprints.
        ids = [r[0] for r in conn.execute("SELECT nextval('events_id_seq') FROM generate_series(1, ?)", (len(rows),))]
        with conn.raw.cursor().copy(
            "COPY events (id, run_id, seq, idx, type, ts_ns, received_ns, pid, data) FROM STDIN"
        ) as copy:
            for eid, r in zip(ids, rows):
                copy.write_row((eid, runID, r.seq, r.idx, r.type, r.ts_ns, nowNs, r.pid, r.data))
        return ids

    def least(self, a: str, b: str) -> str:
        return "LEAST(%s, %s)" % (a, b)

    def begin(self, isolation: str = SERIALIZABLE) -> str:
        return "BEGIN ISOLATION LEVEL SERIALIZABLE" if isolation == SERIALIZABLE else "BEGIN"

    def notify(self, conn: Any, channel: str, payload: str) -> None:
        conn.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def lockMigrations(self, conn: Any) -> None:
        # A migration may take long on a big database: the others wait for
        # it however long (the connection's lock_timeout is for requests).
        conn.execute("SET LOCAL lock_timeout = 0")
        conn.execute("SELECT pg_advisory_xact_lock(?)", (self.MIGRATION_LOCK,))

    def classify(self, error: BaseException) -> Optional[StoreError]:
        psycopg = self._psycopg
        if isinstance(error, StoreError) or not isinstance(error, psycopg.Error):
            return None
        if isinstance(error, psycopg.errors.IntegrityError):
            return ConstraintViolation(str(error))
        state = getattr(error, "sqlstate", None) or ""
        if state == "53100":  # disk_full
            return StorageFull(_FULL_MESSAGE, str(error))
        # Insufficient resources (memory, connections), a lock or statement
        # timeout, serialization failures left after the retries, a server
        # shutting down or unreachable: all waited out by a retry.
        if state[:2] in _PG_BUSY_CLASSES or state in _PG_BUSY_STATES or (not state and isinstance(error, psycopg.OperationalError)):
            return StorageBusy(_BUSY_MESSAGE, str(error))
        return None

    def tableNames(self, conn: Any) -> List[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                " AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
        ]

    def tableRows(self, conn: Any, table: str, limit: int, tenant: Optional[str] = None) -> Optional[List[Dict[str, Any]]]:
        known = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchone()
        if known is None:
            return None
        # Newest first where the table is numbered (SQLite's rowid order).
        hasID = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = ? AND column_name = 'id' AND data_type = 'bigint'",
            (table,),
        ).fetchone()
        hasTenant = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = ? AND column_name = 'tenant'",
            (table,),
        ).fetchone()
        where, args = _tenantWhere(tenant, hasTenant is not None, limit)
        cur = conn.execute('SELECT * FROM "%s"%s%s LIMIT ?' % (known[0], where, " ORDER BY id DESC" if hasID else ""), args)
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur]
