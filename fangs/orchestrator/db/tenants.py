"""
Tenants in the store (migration 60): which tenant owns which row, and which
tenants a run is linked to.

Per tenant: watched packages and their releases' watch state, baselines,
deviations, per-tenant verdicts and decisions (C{run_tenants}), the
allowlist, notifiers with their outbox and deliveries, tokens and the audit
trail.  Shared: a run, its events, fingerprints and artifact (the evidence
of a scan is the same whichever tenant watches the release); a run is
visible to a tenant only when C{run_tenants} links them.  Existing rows go
to tenant C{default}; existing admin tokens become all-tenant (C{*}), as
they were the install's admins; configuration allowlist entries apply to
every tenant (C{*}).
"""

from __future__ import annotations

TENANTS_MIGRATION = 60

#: Both engines: the run links (existing runs linked to C{default}) and the
#: columns added in place.  A L{fangs.orchestrator.db.schema} template.
SHARED = """
        CREATE TABLE run_tenants (
            run_id {text} NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            tenant {text} NOT NULL,
            linked_ns BIGINT NOT NULL,
            verdict {text},
            decision {text},
            analyzed_ns BIGINT,
            deviation_count INTEGER NOT NULL DEFAULT 0,
            max_severity {text},
            severity_rank INTEGER NOT NULL DEFAULT 0,
            analysis_reason {text} NOT NULL DEFAULT '',
            PRIMARY KEY (run_id, tenant)
        ){norowid};
        CREATE INDEX run_tenants_by_tenant ON run_tenants(tenant, run_id);
        CREATE INDEX run_tenants_pending ON run_tenants(tenant, severity_rank) WHERE verdict = 'deviations' AND decision IS NULL;
        INSERT INTO run_tenants (run_id, tenant, linked_ns, verdict, decision, analyzed_ns, deviation_count, max_severity,
                                 severity_rank, analysis_reason)
            SELECT id, 'default', created_ns, verdict, decision, analyzed_ns, deviation_count, max_severity, severity_rank,
                   analysis_reason FROM runs;
        ALTER TABLE runs ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        ALTER TABLE deviations ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        CREATE INDEX deviations_by_tenant ON deviations(tenant, detected_ns, id);
        ALTER TABLE audit ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        ALTER TABLE api_tokens ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        UPDATE api_tokens SET tenant = '*' WHERE scopes LIKE '%orchestrator:admin%' OR scopes = 'runner';
"""

#: SQLite changes keys by rebuilding the tables.
SQLITE = """
        CREATE TABLE baseline_t (
            tenant TEXT NOT NULL DEFAULT 'default',
            package_name TEXT NOT NULL,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            actor TEXT NOT NULL,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            count INTEGER NOT NULL,
            added_ns INTEGER NOT NULL,
            PRIMARY KEY (tenant, package_name, category, value, actor, run_id)
        ) WITHOUT ROWID;
        INSERT INTO baseline_t SELECT 'default', package_name, category, value, actor, run_id, count, added_ns FROM baseline;
        DROP TABLE baseline;
        ALTER TABLE baseline_t RENAME TO baseline;
        CREATE INDEX baseline_by_run ON baseline(run_id);

        CREATE TABLE packages_t (
            tenant TEXT NOT NULL DEFAULT 'default',
            name TEXT NOT NULL,
            added_ns INTEGER NOT NULL,
            added_by TEXT NOT NULL DEFAULT '',
            last_checked_ns INTEGER,
            last_seen_version TEXT,
            etag TEXT,
            last_error TEXT NOT NULL DEFAULT '',
            next_check_ns INTEGER,
            PRIMARY KEY (tenant, name)
        );
        INSERT INTO packages_t SELECT 'default', name, added_ns, added_by, last_checked_ns, last_seen_version, etag,
            last_error, next_check_ns FROM packages;
        CREATE TABLE releases_t (
            tenant TEXT NOT NULL DEFAULT 'default',
            package_name TEXT NOT NULL,
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
            manifest TEXT NOT NULL DEFAULT '',
            deltas TEXT NOT NULL DEFAULT '[]',
            PRIMARY KEY (tenant, package_name, version),
            FOREIGN KEY (tenant, package_name) REFERENCES packages_t(tenant, name) ON DELETE CASCADE
        ) WITHOUT ROWID;
        INSERT INTO releases_t SELECT 'default', package_name, version, integrity, shasum, tarball, published_ns, dist_tags,
            discovered_ns, seeded, queued, queued_ns, run_id, attempts, last_error, manifest, deltas FROM releases;
        DROP TABLE releases;
        DROP TABLE packages;
        ALTER TABLE packages_t RENAME TO packages;
        ALTER TABLE releases_t RENAME TO releases;
        CREATE INDEX releases_waiting ON releases(tenant, package_name) WHERE queued = 0 AND seeded = 0;
        CREATE INDEX releases_by_release ON releases(package_name, version);

        CREATE TABLE allowlist_t (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL DEFAULT 'default',
            scope TEXT NOT NULL CHECK (scope IN ('global', 'package')),
            package_name TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT 'operator',
            created_ns INTEGER NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            UNIQUE (tenant, scope, package_name, kind, value)
        );
        INSERT INTO allowlist_t SELECT id, CASE WHEN source = 'operator' THEN 'default' ELSE '*' END, scope, package_name,
            kind, value, note, source, created_ns, created_by FROM allowlist;
        DROP TABLE allowlist;
        ALTER TABLE allowlist_t RENAME TO allowlist;

        CREATE TABLE notifiers_t (
            tenant TEXT NOT NULL DEFAULT 'default',
            name TEXT NOT NULL,
            url TEXT NOT NULL,
            template TEXT NOT NULL,
            secret_env TEXT,
            headers TEXT NOT NULL DEFAULT '{{}}',
            min_severity TEXT,
            packages TEXT NOT NULL DEFAULT '[]',
            enabled INTEGER NOT NULL DEFAULT 1,
            created_ns INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (tenant, name)
        );
        INSERT INTO notifiers_t SELECT 'default', name, url, template, secret_env, headers, min_severity, packages, enabled,
            created_ns, updated_ns FROM notifiers;
        DROP TABLE notifiers;
        ALTER TABLE notifiers_t RENAME TO notifiers;

        CREATE TABLE outbox_t (
            id INTEGER PRIMARY KEY,
            tenant TEXT NOT NULL DEFAULT 'default',
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
            UNIQUE (run_id, tenant, notifier_name)
        );
        INSERT INTO outbox_t SELECT id, 'default', run_id, notifier_name, template, state, attempts, next_attempt_ns,
            created_ns, updated_ns, last_error, body, content_type FROM outbox;
        CREATE TABLE deliveries_t (
            id INTEGER PRIMARY KEY,
            tenant TEXT NOT NULL DEFAULT 'default',
            outbox_id INTEGER NOT NULL REFERENCES outbox_t(id) ON DELETE CASCADE,
            notifier_name TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            at_ns INTEGER NOT NULL,
            status TEXT NOT NULL,
            http_status INTEGER,
            error TEXT NOT NULL DEFAULT '',
            response_excerpt TEXT NOT NULL DEFAULT '',
            UNIQUE (outbox_id, attempt)
        );
        INSERT INTO deliveries_t SELECT id, 'default', outbox_id, notifier_name, attempt, at_ns, status, http_status, error,
            response_excerpt FROM deliveries;
        DROP TABLE deliveries;
        DROP TABLE outbox;
        ALTER TABLE outbox_t RENAME TO outbox;
        ALTER TABLE deliveries_t RENAME TO deliveries;
        CREATE INDEX outbox_due ON outbox(next_attempt_ns) WHERE state = 'pending';
        CREATE INDEX deliveries_by_notifier ON deliveries(tenant, notifier_name, at_ns)
"""

# PostgreSQL changes keys in place (the constraint names are PostgreSQL's
# defaults; baseline's is its table's name before the actors migration
# renamed it).
POSTGRESQL = """
        ALTER TABLE baseline ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        ALTER TABLE baseline DROP CONSTRAINT IF EXISTS baseline_actors_pkey;
        ALTER TABLE baseline DROP CONSTRAINT IF EXISTS baseline_pkey;
        ALTER TABLE baseline ADD PRIMARY KEY (tenant, package_name, category, value, actor, run_id);
        ALTER TABLE packages ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        ALTER TABLE releases ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        ALTER TABLE releases DROP CONSTRAINT IF EXISTS releases_package_name_fkey;
        ALTER TABLE releases DROP CONSTRAINT IF EXISTS releases_pkey;
        ALTER TABLE packages DROP CONSTRAINT IF EXISTS packages_pkey;
        ALTER TABLE packages ADD PRIMARY KEY (tenant, name);
        ALTER TABLE releases ADD PRIMARY KEY (tenant, package_name, version);
        ALTER TABLE releases ADD FOREIGN KEY (tenant, package_name) REFERENCES packages(tenant, name) ON DELETE CASCADE;
        DROP INDEX IF EXISTS releases_waiting;
        CREATE INDEX releases_waiting ON releases(tenant, package_name) WHERE queued = 0 AND seeded = 0;
        CREATE INDEX releases_by_release ON releases(package_name, version);
        ALTER TABLE allowlist ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        UPDATE allowlist SET tenant = '*' WHERE source <> 'operator';
        ALTER TABLE allowlist DROP CONSTRAINT IF EXISTS allowlist_scope_package_name_kind_value_key;
        ALTER TABLE allowlist ADD UNIQUE (tenant, scope, package_name, kind, value);
        ALTER TABLE notifiers ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        ALTER TABLE notifiers DROP CONSTRAINT IF EXISTS notifiers_pkey;
        ALTER TABLE notifiers ADD PRIMARY KEY (tenant, name);
        ALTER TABLE outbox ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_run_id_notifier_name_key;
        ALTER TABLE outbox ADD UNIQUE (run_id, tenant, notifier_name);
        ALTER TABLE deliveries ADD COLUMN tenant {text} NOT NULL DEFAULT 'default';
        DROP INDEX IF EXISTS deliveries_by_notifier;
        CREATE INDEX deliveries_by_notifier ON deliveries(tenant, notifier_name, at_ns)
"""
