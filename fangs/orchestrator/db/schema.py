"""
The SQLite schema: versioned migrations, applied in order at start.
"""

from __future__ import annotations

from typing import List, Tuple

from fangs.orchestrator import differ
from fangs.orchestrator.db import artifacts as artifactdb, stream as streamdb, tenants as tenantdb


# ---------------------------------------------------------------------------
# Schema

#: The differ's migration (baselines keyed by actor class, deviations naming
#: their actor, release manifests and their deltas).  Existing baseline rows
#: are kept, run by run (history and promoted decisions stay): each becomes
#: an C{npm} row, and a C{script} and an C{other} row too unless it is a
#: credential path (so "an install script read /root/.npmrc" is new even
#: where the old baseline had npm's own read of it).
ACTORS_MIGRATION = 9


def _credCondition() -> str:
    parts = []
    for p in differ.DEFAULT_CRED_PATHS:
        if p.endswith("/"):
            parts.append("value LIKE '%s%%'" % (p.replace("'", "''"),))
        else:
            parts.append("value = '%s'" % (p.replace("'", "''"),))
    return "(category IN ('fs_new_path_read', 'fs_new_path_write') AND (%s))" % (" OR ".join(parts),)


def actorsMigration(text: str = "TEXT", withoutRowID: str = " WITHOUT ROWID") -> str:
    cred = _credCondition()
    return """
        CREATE TABLE baseline_actors (
            package_name {T} NOT NULL,
            category {T} NOT NULL,
            value {T} NOT NULL,
            actor {T} NOT NULL,
            run_id {T} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            count INTEGER NOT NULL,
            added_ns BIGINT NOT NULL,
            PRIMARY KEY (package_name, category, value, actor, run_id)
        ){W};
        INSERT INTO baseline_actors SELECT package_name, category, value, 'npm', run_id, count, added_ns FROM baseline;
        INSERT INTO baseline_actors SELECT package_name, category, value, 'script', run_id, count, added_ns FROM baseline WHERE NOT {C};
        INSERT INTO baseline_actors SELECT package_name, category, value, 'other', run_id, count, added_ns FROM baseline WHERE NOT {C};
        DROP TABLE baseline;
        ALTER TABLE baseline_actors RENAME TO baseline;
        CREATE INDEX baseline_by_run ON baseline(run_id);
        ALTER TABLE deviations ADD COLUMN actor {T} NOT NULL DEFAULT '';
        ALTER TABLE deviations ADD COLUMN detail {T} NOT NULL DEFAULT '{{}}';
        ALTER TABLE runs ADD COLUMN analysis_reason {T} NOT NULL DEFAULT '';
        ALTER TABLE releases ADD COLUMN manifest {T} NOT NULL DEFAULT '';
        ALTER TABLE releases ADD COLUMN deltas {T} NOT NULL DEFAULT '[]'
    """.format(T=text, W=withoutRowID, C=cred)

MIGRATIONS: List[Tuple[int, str, str]] = [
    (
        1,
        "core",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            package_name TEXT NOT NULL DEFAULT '',
            version TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            target_runner TEXT,
            runner_id TEXT,
            job TEXT NOT NULL,
            queue_seq INTEGER NOT NULL,
            idempotency_key TEXT UNIQUE,
            created_ns INTEGER NOT NULL,
            dispatched_ns INTEGER,
            last_activity_ns INTEGER,
            deadline_ns INTEGER,
            finished_ns INTEGER,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            result_status TEXT,
            failure_reason TEXT NOT NULL DEFAULT '',
            events_emitted INTEGER NOT NULL DEFAULT 0,
            events_dropped INTEGER NOT NULL DEFAULT 0,
            duration_ns INTEGER NOT NULL DEFAULT 0,
            events_received INTEGER NOT NULL DEFAULT 0,
            batches_received INTEGER NOT NULL DEFAULT 0,
            verdict TEXT
        );
        CREATE INDEX runs_queue ON runs(queue_seq) WHERE state IN ('pending', 'leased');
        CREATE INDEX runs_by_created ON runs(created_ns, id);
        CREATE INDEX runs_by_package ON runs(package_name, created_ns);
        CREATE INDEX runs_active ON runs(state, deadline_ns)
            WHERE state IN ('leased', 'dispatched', 'running');
        CREATE TABLE batches (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            events INTEGER NOT NULL,
            received_ns INTEGER NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            type INTEGER NOT NULL,
            ts_ns INTEGER NOT NULL,
            received_ns INTEGER NOT NULL,
            pid INTEGER NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX events_by_run ON events(run_id, seq, idx);
        """,
    ),
    (
        2,
        "differ",
        """
        ALTER TABLE runs ADD COLUMN decision TEXT;
        ALTER TABLE runs ADD COLUMN analyzed_ns INTEGER;
        ALTER TABLE runs ADD COLUMN deviation_count INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN max_severity TEXT;
        ALTER TABLE runs ADD COLUMN severity_rank INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX runs_pending ON runs(severity_rank, finished_ns) WHERE verdict = 'deviations' AND decision IS NULL;
        CREATE TABLE run_fingerprints (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            count INTEGER NOT NULL,
            first_event_id INTEGER NOT NULL,
            cred INTEGER NOT NULL DEFAULT 0,
            raw_ip INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, category, value)
        ) WITHOUT ROWID;
        CREATE TABLE baseline (
            package_name TEXT NOT NULL,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            count INTEGER NOT NULL,
            added_ns INTEGER NOT NULL,
            PRIMARY KEY (package_name, category, value, run_id)
        ) WITHOUT ROWID;
        CREATE INDEX baseline_by_run ON baseline(run_id);
        CREATE TABLE deviations (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            package_name TEXT NOT NULL,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            severity TEXT NOT NULL,
            severity_rank INTEGER NOT NULL,
            reason TEXT NOT NULL,
            evidence_event_id INTEGER NOT NULL,
            count INTEGER NOT NULL,
            detected_ns INTEGER NOT NULL
        );
        CREATE INDEX deviations_by_run ON deviations(run_id);
        CREATE INDEX deviations_by_detected ON deviations(detected_ns, id);
        CREATE INDEX deviations_by_package ON deviations(package_name, detected_ns);
        CREATE TABLE packages (
            name TEXT PRIMARY KEY,
            added_ns INTEGER NOT NULL,
            added_by TEXT NOT NULL DEFAULT '',
            last_checked_ns INTEGER,
            last_seen_version TEXT,
            etag TEXT
        );
        CREATE TABLE allowlist (
            id TEXT PRIMARY KEY,
            scope TEXT NOT NULL CHECK (scope IN ('global', 'package')),
            package_name TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT 'operator',
            created_ns INTEGER NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            UNIQUE (scope, package_name, kind, value)
        );
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at_ns INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX audit_by_target ON audit(target, at_ns);
        """,
    ),
    (
        3,
        "watcher",
        """
        CREATE TABLE releases (
            package_name TEXT NOT NULL REFERENCES packages(name) ON DELETE CASCADE,
            version TEXT NOT NULL,
            integrity TEXT NOT NULL DEFAULT '',
            shasum TEXT NOT NULL DEFAULT '',
            tarball TEXT NOT NULL DEFAULT '',
            published_ns INTEGER,
            dist_tags TEXT NOT NULL DEFAULT '',
            discovered_ns INTEGER NOT NULL,
            seeded INTEGER NOT NULL DEFAULT 0,
            queued INTEGER NOT NULL DEFAULT 0,
            queued_ns INTEGER,
            run_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (package_name, version)
        ) WITHOUT ROWID;
        CREATE INDEX releases_waiting ON releases(package_name) WHERE queued = 0 AND seeded = 0;
        ALTER TABLE packages ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
        ALTER TABLE packages ADD COLUMN next_check_ns INTEGER
        """,
    ),
    (
        4,
        "notifier",
        """
        CREATE TABLE notifiers (
            name TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            template TEXT NOT NULL,
            secret_env TEXT,
            headers TEXT NOT NULL DEFAULT '{}',
            min_severity TEXT,
            packages TEXT NOT NULL DEFAULT '[]',
            enabled INTEGER NOT NULL DEFAULT 1,
            created_ns INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL
        );
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            notifier_name TEXT NOT NULL,
            template TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ns INTEGER NOT NULL,
            created_ns INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            body BLOB NOT NULL,
            content_type TEXT NOT NULL,
            UNIQUE (run_id, notifier_name)
        );
        CREATE INDEX outbox_due ON outbox(next_attempt_ns) WHERE state = 'pending';
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            notifier_name TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            at_ns INTEGER NOT NULL,
            status TEXT NOT NULL,
            http_status INTEGER,
            error TEXT NOT NULL DEFAULT '',
            response_excerpt TEXT NOT NULL DEFAULT '',
            UNIQUE (outbox_id, attempt)
        );
        CREATE INDEX deliveries_by_notifier ON deliveries(notifier_name, at_ns)
        """,
    ),
    (
        5,
        "auth",
        """
        CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            scopes TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            revoked_ns INTEGER
        );
        """,
    ),
    (
        6,
        "runners and retention",
        """
        CREATE TABLE runners (
            runner_id TEXT PRIMARY KEY,
            registration TEXT NOT NULL,
            registered_ns INTEGER NOT NULL,
            last_seen_ns INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT '',
            active_run_ids TEXT NOT NULL DEFAULT '[]',
            events_queued INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE INDEX events_by_received ON events(received_ns);
        CREATE INDEX deviations_by_evidence ON deviations(evidence_event_id)
        """,
    ),
    (
        7,
        "install lifecycle",
        """
        ALTER TABLE runs ADD COLUMN install_exit_code INTEGER;
        ALTER TABLE runs ADD COLUMN install_finished_ns INTEGER;
        ALTER TABLE runs ADD COLUMN observation_ended_ns INTEGER;
        ALTER TABLE runs ADD COLUMN events_unresolved INTEGER NOT NULL DEFAULT 0
        """,
    ),
    (20, "run stream", streamdb.SQLITE_SCHEMA),
    (21, "artifacts", artifactdb.SQLITE_SCHEMA),
    (
        50,
        "harden: server-side sessions, idempotency digests, runner drop counters",
        """
        CREATE TABLE dashboard_sessions (
            id_hash TEXT PRIMARY KEY,
            token_id TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            expires_ns INTEGER NOT NULL
        );
        CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions(token_id);
        ALTER TABLE runs ADD COLUMN idempotency_digest TEXT NOT NULL DEFAULT '';
        CREATE TABLE runner_drop_counters (
            runner_id TEXT PRIMARY KEY,
            events_dropped INTEGER NOT NULL
        )
        """,
    ),
    (ACTORS_MIGRATION, "actors and manifest deltas", actorsMigration()),
    (tenantdb.TENANTS_MIGRATION, "tenants", tenantdb.SQLITE_SCHEMA),
]
