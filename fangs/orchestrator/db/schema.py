"""
The store's schema, written once: versioned migrations applied in order at
start, each rendered for the engine it runs on.

A migration is L{migration}C{(version, name, *parts)}; a part is SQL text
(statements separated by C{;}) that both engines run, or L{only}C{(engine,
text)} for a statement one engine alone needs.  The text names its column
types through the engine's L{fangs.orchestrator.db.engines.Engine.types}:

  - C{{text}}: text, compared bytewise (C{TEXT}; PostgreSQL C{TEXT COLLATE "C"});
  - C{{i64}}: a 64-bit integer, timestamps and counters (C{INTEGER}; C{BIGINT});
  - C{{blob}}: bytes (C{BLOB}; C{BYTEA});
  - C{{id}}: an auto-numbered 64-bit primary key (C{INTEGER PRIMARY KEY}; C{BIGSERIAL PRIMARY KEY});
  - C{{norowid}}: SQLite's C{WITHOUT ROWID} after a table's closing parenthesis (nothing on PostgreSQL);
  - C{{queue_seq}}, C{{stream_cursor}}: the two columns numbered differently
    (SQLite's single writer numbers them itself; PostgreSQL takes them from
    a sequence and a counter row, so several orchestrators commit in order);
  - plain C{INTEGER} for small numbers and 0/1 flags, C{BIGINT} where both engines always said so.

C{{}} in the text is written C{{{}}} (it is a C{str.format} template).  A
new migration takes the next free version and is appended to L{MIGRATIONS},
for example::

    migration(
        61,
        "run labels",
        '''
        ALTER TABLE runs ADD COLUMN label {text} NOT NULL DEFAULT '';
        CREATE INDEX runs_by_label ON runs(label, created_ns)
        ''',
        only("postgresql", "CREATE INDEX ..."),  # only where one engine needs it
    ),

A version once released is never changed (databases that applied it keep
what it did; L{tests.orchestrator.test_store_compat} opens databases recorded
at versions 50 and 60 and compares their schema with a new database's).
"""

from __future__ import annotations

from typing import List, NamedTuple, Tuple, Union

from fangs.orchestrator import differ
from fangs.orchestrator.db import tenants as tenantdb


class Only(NamedTuple):
    """
    Statements run on one engine only (its C{Engine.name}).
    """

    engine: str
    text: str


class Migration(NamedTuple):
    version: int
    name: str
    parts: Tuple[Union[str, Only], ...]


def migration(version: int, name: str, *parts: Union[str, Only]) -> Migration:
    return Migration(version, name, tuple(parts))


def only(engine: str, text: str) -> Only:
    return Only(engine, text)


def render(m: Migration, engine: object) -> List[str]:
    """
    The statements of C{m} for C{engine}, in order.
    """
    name = getattr(engine, "name")
    types = getattr(engine, "types")
    out: List[str] = []
    for part in m.parts:
        if isinstance(part, Only):
            if part.engine != name:
                continue
            part = part.text
        out.extend(s for s in (s.strip() for s in part.format(**types).split(";")) if s)
    return out


# ---------------------------------------------------------------------------
# The differ's migration (baselines keyed by actor class, deviations naming
# their actor, release manifests and their deltas).  Existing baseline rows
# are kept, run by run (history and promoted decisions stay): each becomes
# an C{npm} row, and a C{script} and an C{other} row too unless it is a
# credential path (so "an install script read /root/.npmrc" is new even
# where the old baseline had npm's own read of it).
ACTORS_MIGRATION = 9


def _credCondition() -> str:
    parts = []
    for p in differ.DEFAULT_CRED_PATHS:
        if p.endswith("/"):
            parts.append("value LIKE '%s%%'" % (p.replace("'", "''"),))
        else:
            parts.append("value = '%s'" % (p.replace("'", "''"),))
    cond = "(category IN ('fs_new_path_read', 'fs_new_path_write') AND (%s))" % (" OR ".join(parts),)
    return cond.replace("{", "{{").replace("}", "}}")


_CRED = _credCondition()
_ACTORS = (
    """
    CREATE TABLE baseline_actors (
        package_name {text} NOT NULL,
        category {text} NOT NULL,
        value {text} NOT NULL,
        actor {text} NOT NULL,
        run_id {text} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        count INTEGER NOT NULL,
        added_ns BIGINT NOT NULL,
        PRIMARY KEY (package_name, category, value, actor, run_id)
    ){norowid};
    INSERT INTO baseline_actors SELECT package_name, category, value, 'npm', run_id, count, added_ns FROM baseline;
    INSERT INTO baseline_actors SELECT package_name, category, value, 'script', run_id, count, added_ns FROM baseline WHERE NOT """
    + _CRED
    + """;
    INSERT INTO baseline_actors SELECT package_name, category, value, 'other', run_id, count, added_ns FROM baseline WHERE NOT """
    + _CRED
    + """;
    DROP TABLE baseline;
    ALTER TABLE baseline_actors RENAME TO baseline;
    CREATE INDEX baseline_by_run ON baseline(run_id);
    ALTER TABLE deviations ADD COLUMN actor {text} NOT NULL DEFAULT '';
    ALTER TABLE deviations ADD COLUMN detail {text} NOT NULL DEFAULT '{{}}';
    ALTER TABLE runs ADD COLUMN analysis_reason {text} NOT NULL DEFAULT '';
    ALTER TABLE releases ADD COLUMN manifest {text} NOT NULL DEFAULT '';
    ALTER TABLE releases ADD COLUMN deltas {text} NOT NULL DEFAULT '[]'
"""
)

POSTGRESQL = "postgresql"

MIGRATIONS: List[Migration] = [
    migration(
        1,
        "core",
        only(POSTGRESQL, "CREATE SEQUENCE runs_queue_seq"),
        """
        CREATE TABLE runs (
            id {text} PRIMARY KEY,
            package_name {text} NOT NULL DEFAULT '',
            version {text} NOT NULL DEFAULT '',
            kind {text} NOT NULL DEFAULT '',
            state {text} NOT NULL,
            target_runner {text},
            runner_id {text},
            job {text} NOT NULL,
            queue_seq {i64} NOT NULL{queue_seq},
            idempotency_key {text} UNIQUE,
            created_ns {i64} NOT NULL,
            dispatched_ns {i64},
            last_activity_ns {i64},
            deadline_ns {i64},
            finished_ns {i64},
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            result_status {text},
            failure_reason {text} NOT NULL DEFAULT '',
            events_emitted {i64} NOT NULL DEFAULT 0,
            events_dropped {i64} NOT NULL DEFAULT 0,
            duration_ns {i64} NOT NULL DEFAULT 0,
            events_received {i64} NOT NULL DEFAULT 0,
            batches_received {i64} NOT NULL DEFAULT 0,
            verdict {text}
        );
        CREATE INDEX runs_queue ON runs(queue_seq) WHERE state IN ('pending', 'leased');
        CREATE INDEX runs_by_created ON runs(created_ns, id);
        CREATE INDEX runs_by_package ON runs(package_name, created_ns);
        CREATE INDEX runs_active ON runs(state, deadline_ns)
            WHERE state IN ('leased', 'dispatched', 'running');
        CREATE TABLE batches (
            run_id {text} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq {i64} NOT NULL,
            events {i64} NOT NULL,
            received_ns {i64} NOT NULL,
            PRIMARY KEY (run_id, seq)
        ){norowid};
        CREATE TABLE events (
            id {id},
            run_id {text} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq {i64} NOT NULL,
            idx INTEGER NOT NULL,
            type INTEGER NOT NULL,
            ts_ns {i64} NOT NULL,
            received_ns {i64} NOT NULL,
            pid {i64} NOT NULL,
            data {text} NOT NULL
        );
        CREATE INDEX events_by_run ON events(run_id, seq, idx)
        """,
    ),
    migration(
        2,
        "differ",
        """
        ALTER TABLE runs ADD COLUMN decision {text};
        ALTER TABLE runs ADD COLUMN analyzed_ns {i64};
        ALTER TABLE runs ADD COLUMN deviation_count {i64} NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN max_severity {text};
        ALTER TABLE runs ADD COLUMN severity_rank INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX runs_pending ON runs(severity_rank, finished_ns) WHERE verdict = 'deviations' AND decision IS NULL;
        CREATE TABLE run_fingerprints (
            run_id {text} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            category {text} NOT NULL,
            value {text} NOT NULL,
            count {i64} NOT NULL,
            first_event_id {i64} NOT NULL,
            cred INTEGER NOT NULL DEFAULT 0,
            raw_ip INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, category, value)
        ){norowid};
        CREATE TABLE baseline (
            package_name {text} NOT NULL,
            category {text} NOT NULL,
            value {text} NOT NULL,
            run_id {text} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            count {i64} NOT NULL,
            added_ns {i64} NOT NULL,
            PRIMARY KEY (package_name, category, value, run_id)
        ){norowid};
        CREATE INDEX baseline_by_run ON baseline(run_id);
        CREATE TABLE deviations (
            id {text} PRIMARY KEY,
            run_id {text} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            package_name {text} NOT NULL,
            category {text} NOT NULL,
            value {text} NOT NULL,
            severity {text} NOT NULL,
            severity_rank INTEGER NOT NULL,
            reason {text} NOT NULL,
            evidence_event_id {i64} NOT NULL,
            count {i64} NOT NULL,
            detected_ns {i64} NOT NULL
        );
        CREATE INDEX deviations_by_run ON deviations(run_id);
        CREATE INDEX deviations_by_detected ON deviations(detected_ns, id);
        CREATE INDEX deviations_by_package ON deviations(package_name, detected_ns);
        CREATE TABLE packages (
            name {text} PRIMARY KEY,
            added_ns {i64} NOT NULL,
            added_by {text} NOT NULL DEFAULT '',
            last_checked_ns {i64},
            last_seen_version {text},
            etag {text}
        );
        CREATE TABLE allowlist (
            id {text} PRIMARY KEY,
            scope {text} NOT NULL CHECK (scope IN ('global', 'package')),
            package_name {text} NOT NULL DEFAULT '',
            kind {text} NOT NULL,
            value {text} NOT NULL,
            note {text} NOT NULL DEFAULT '',
            source {text} NOT NULL DEFAULT 'operator',
            created_ns {i64} NOT NULL,
            created_by {text} NOT NULL DEFAULT '',
            UNIQUE (scope, package_name, kind, value)
        );
        CREATE TABLE audit (
            id {id},
            at_ns {i64} NOT NULL,
            actor {text} NOT NULL,
            action {text} NOT NULL,
            target {text} NOT NULL,
            detail {text} NOT NULL DEFAULT '{{}}'
        );
        CREATE INDEX audit_by_target ON audit(target, at_ns)
        """,
    ),
    migration(
        3,
        "watcher",
        """
        CREATE TABLE releases (
            package_name {text} NOT NULL REFERENCES packages(name) ON DELETE CASCADE,
            version {text} NOT NULL,
            integrity {text} NOT NULL DEFAULT '',
            shasum {text} NOT NULL DEFAULT '',
            tarball {text} NOT NULL DEFAULT '',
            published_ns {i64},
            dist_tags {text} NOT NULL DEFAULT '',
            discovered_ns {i64} NOT NULL,
            seeded INTEGER NOT NULL DEFAULT 0,
            queued INTEGER NOT NULL DEFAULT 0,
            queued_ns {i64},
            run_id {text},
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error {text} NOT NULL DEFAULT '',
            PRIMARY KEY (package_name, version)
        ){norowid};
        CREATE INDEX releases_waiting ON releases(package_name) WHERE queued = 0 AND seeded = 0;
        ALTER TABLE packages ADD COLUMN last_error {text} NOT NULL DEFAULT '';
        ALTER TABLE packages ADD COLUMN next_check_ns {i64}
        """,
    ),
    migration(
        4,
        "notifier",
        """
        CREATE TABLE notifiers (
            name {text} PRIMARY KEY,
            url {text} NOT NULL,
            template {text} NOT NULL,
            secret_env {text},
            headers {text} NOT NULL DEFAULT '{{}}',
            min_severity {text},
            packages {text} NOT NULL DEFAULT '[]',
            enabled INTEGER NOT NULL DEFAULT 1,
            created_ns {i64} NOT NULL,
            updated_ns {i64} NOT NULL
        );
        CREATE TABLE outbox (
            id {id},
            run_id {text} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            notifier_name {text} NOT NULL,
            template {text} NOT NULL,
            state {text} NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ns {i64} NOT NULL,
            created_ns {i64} NOT NULL,
            updated_ns {i64} NOT NULL,
            last_error {text} NOT NULL DEFAULT '',
            body {blob} NOT NULL,
            content_type {text} NOT NULL,
            UNIQUE (run_id, notifier_name)
        );
        CREATE INDEX outbox_due ON outbox(next_attempt_ns) WHERE state = 'pending';
        CREATE TABLE deliveries (
            id {id},
            outbox_id {i64} NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            notifier_name {text} NOT NULL,
            attempt INTEGER NOT NULL,
            at_ns {i64} NOT NULL,
            status {text} NOT NULL,
            http_status INTEGER,
            error {text} NOT NULL DEFAULT '',
            response_excerpt {text} NOT NULL DEFAULT '',
            UNIQUE (outbox_id, attempt)
        );
        CREATE INDEX deliveries_by_notifier ON deliveries(notifier_name, at_ns)
        """,
    ),
    migration(
        5,
        "auth",
        """
        CREATE TABLE api_tokens (
            id {text} PRIMARY KEY,
            name {text} NOT NULL,
            scopes {text} NOT NULL,
            secret_hash {text} NOT NULL,
            created_ns {i64} NOT NULL,
            created_by {text} NOT NULL DEFAULT '',
            revoked_ns {i64}
        )
        """,
    ),
    migration(
        6,
        "runners and retention",
        """
        CREATE TABLE runners (
            runner_id {text} PRIMARY KEY,
            registration {text} NOT NULL,
            registered_ns {i64} NOT NULL,
            last_seen_ns {i64} NOT NULL,
            status {text} NOT NULL DEFAULT '',
            active_run_ids {text} NOT NULL DEFAULT '[]',
            events_queued {i64} NOT NULL DEFAULT 0
        ){norowid};
        CREATE INDEX events_by_received ON events(received_ns);
        CREATE INDEX deviations_by_evidence ON deviations(evidence_event_id)
        """,
        # Leases of several orchestrators expire (PostgresStore's claim),
        # and the bigger listings it serves get their own indexes.
        only(
            POSTGRESQL,
            """
            ALTER TABLE runs ADD COLUMN leased_ns {i64};
            CREATE INDEX runs_by_state ON runs(state, created_ns, id);
            CREATE INDEX runs_by_verdict ON runs(verdict, created_ns, id);
            CREATE INDEX deviations_by_rank ON deviations(severity_rank, detected_ns, id)
            """,
        ),
    ),
    migration(
        7,
        "install lifecycle",
        """
        ALTER TABLE runs ADD COLUMN install_exit_code INTEGER;
        ALTER TABLE runs ADD COLUMN install_finished_ns {i64};
        ALTER TABLE runs ADD COLUMN observation_ended_ns {i64};
        ALTER TABLE runs ADD COLUMN events_unresolved {i64} NOT NULL DEFAULT 0
        """,
    ),
    migration(ACTORS_MIGRATION, "actors and manifest deltas", _ACTORS),
    migration(
        20,
        "run stream",
        # SQLite numbers lines itself (one writer: commit order); PostgreSQL
        # takes them from a counter row whose lock orders the commits.
        """
        CREATE TABLE run_stream (
            cursor {stream_cursor},
            ts_ns {i64} NOT NULL,
            tenant {text} NOT NULL DEFAULT 'default',
            run_id {text} NOT NULL,
            type {text} NOT NULL,
            body {text} NOT NULL
        )
        """,
        only(
            POSTGRESQL,
            """
            CREATE TABLE run_stream_head (one INTEGER PRIMARY KEY CHECK (one = 1), cursor BIGINT NOT NULL);
            INSERT INTO run_stream_head VALUES (1, 0)
            """,
        ),
    ),
    migration(
        21,
        "artifacts",
        """
        CREATE TABLE artifacts (
            sha512 {text} PRIMARY KEY,
            size {i64} NOT NULL,
            data {blob},
            created_ns {i64} NOT NULL,
            last_used_ns {i64} NOT NULL
        );
        CREATE TABLE run_artifacts (
            run_id {text} PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
            sha512 {text},
            status {text} NOT NULL,
            detail {text} NOT NULL DEFAULT '',
            integrity {text} NOT NULL DEFAULT '',
            tarball_url {text} NOT NULL DEFAULT '',
            size {i64} NOT NULL DEFAULT 0,
            checked_ns {i64} NOT NULL
        )
        """,
    ),
    migration(
        50,
        "harden: server-side sessions, idempotency digests, runner drop counters",
        """
        CREATE TABLE dashboard_sessions (
            id_hash {text} PRIMARY KEY,
            token_id {text} NOT NULL,
            created_ns {i64} NOT NULL,
            expires_ns {i64} NOT NULL
        );
        CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions(token_id);
        ALTER TABLE runs ADD COLUMN idempotency_digest {text} NOT NULL DEFAULT '';
        CREATE TABLE runner_drop_counters (
            runner_id {text} PRIMARY KEY,
            events_dropped {i64} NOT NULL
        )
        """,
    ),
    migration(
        tenantdb.TENANTS_MIGRATION,
        "tenants",
        tenantdb.SHARED,
        only("sqlite", tenantdb.SQLITE),
        only(POSTGRESQL, tenantdb.POSTGRESQL),
    ),
]
