BEGIN TRANSACTION;
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
INSERT INTO "allowlist" VALUES('oldal','global','','path','/etc/old','n','operator',1800000000000000000,'alice');
CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            scopes TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            revoked_ns INTEGER
        );
INSERT INTO "api_tokens" VALUES('oldtok','ci','orchestrator:admin','hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh',1800000000000000000,'alice',NULL);
CREATE TABLE artifacts (
        sha512 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        data BLOB,
        created_ns INTEGER NOT NULL,
        last_used_ns INTEGER NOT NULL
    );
CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at_ns INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        );
INSERT INTO "audit" VALUES(1,1800000000000000000,'alice','package.add','package:oldpkg','{}');
INSERT INTO "audit" VALUES(2,1800000000000000000,'alice','allow.add','allow:oldal','{"kind": "path", "value": "/etc/old", "scope": "global", "package": ""}');
INSERT INTO "audit" VALUES(3,1800000000000000000,'alice','token.create','token:oldtok','{"name": "ci", "scopes": "orchestrator:admin"}');
CREATE TABLE "baseline" (
            package_name TEXT NOT NULL,
            category TEXT NOT NULL,
            value TEXT NOT NULL,
            actor TEXT NOT NULL,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            count INTEGER NOT NULL,
            added_ns BIGINT NOT NULL,
            PRIMARY KEY (package_name, category, value, actor, run_id)
        ) WITHOUT ROWID;
CREATE TABLE batches (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            events INTEGER NOT NULL,
            received_ns INTEGER NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID;
INSERT INTO "batches" VALUES('old1',1,3,1800000000000000001);
CREATE TABLE dashboard_sessions (
            id_hash TEXT PRIMARY KEY,
            token_id TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            expires_ns INTEGER NOT NULL
        );
INSERT INTO "dashboard_sessions" VALUES('oldsess','oldtok',1800000000000000000,1800001000000000000);
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
        , actor TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}');
INSERT INTO "deviations" VALUES('6913c354740c39d7c88aa9262b7de096','old1','left-pad','fs_new_path_read','/root/.npmrc','high',3,'read of cred-tagged path; by other',1,1,1800000000000000003,'other','{"actors": ["other"], "argv": [], "class": "other", "detached": false, "label": "other", "package": "", "phase": "", "pid": 0, "version": ""}');
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
INSERT INTO "events" VALUES(1,'old1',1,0,1,1100,1800000000000000001,100,'{"Header":{"TsNs":1100,"PID":100,"PPID":1,"Type":1,"Tags":0},"PathName":"/root/.npmrc","Flags":0,"CommStr":"node"}');
INSERT INTO "events" VALUES(2,'old1',1,1,2,5,1800000000000000001,101,'{"Header":{"TsNs":5,"PID":101,"PPID":100,"Type":2},"BinaryPathStr":"/bin/sh","ArgvStrs":["/bin/sh"],"CommStr":"sh"}');
INSERT INTO "events" VALUES(3,'old1',1,2,1,1100,1800000000000000001,100,'{"Header":{"TsNs":1100,"PID":100,"PPID":1,"Type":1,"Tags":0},"PathName":"/x","Flags":0,"CommStr":"node"}');
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
CREATE TABLE packages (
            name TEXT PRIMARY KEY,
            added_ns INTEGER NOT NULL,
            added_by TEXT NOT NULL DEFAULT '',
            last_checked_ns INTEGER,
            last_seen_version TEXT,
            etag TEXT
        , last_error TEXT NOT NULL DEFAULT '', next_check_ns INTEGER);
INSERT INTO "packages" VALUES('oldpkg',1800000000000000000,'alice',NULL,NULL,NULL,'',NULL);
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
            last_error TEXT NOT NULL DEFAULT '', manifest TEXT NOT NULL DEFAULT '', deltas TEXT NOT NULL DEFAULT '[]',
            PRIMARY KEY (package_name, version)
        ) WITHOUT ROWID;
CREATE TABLE run_artifacts (
        run_id TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        sha512 TEXT,
        status TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        integrity TEXT NOT NULL DEFAULT '',
        tarball_url TEXT NOT NULL DEFAULT '',
        size INTEGER NOT NULL DEFAULT 0,
        checked_ns INTEGER NOT NULL
    );
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
INSERT INTO "run_fingerprints" VALUES('old1','_exec','101/bin/sh100/bin/sh',1,2,0,0);
INSERT INTO "run_fingerprints" VALUES('old1','_exec_ts','101/bin/sh100/bin/sh',1,5,0,0);
INSERT INTO "run_fingerprints" VALUES('old1','fs_new_path_read','100:1/root/.npmrc',1,1,1,0);
INSERT INTO "run_fingerprints" VALUES('old1','fs_new_path_read','100:1/x',1,3,0,0);
CREATE TABLE run_stream (
        cursor INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ns INTEGER NOT NULL,
        tenant TEXT NOT NULL DEFAULT 'default',
        run_id TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL
    );
INSERT INTO "run_stream" VALUES(1,1800000000000000000,'default','old1','run.completed','{"a": 1}');
CREATE TABLE runner_drop_counters (
            runner_id TEXT PRIMARY KEY,
            events_dropped INTEGER NOT NULL
        );
CREATE TABLE runners (
            runner_id TEXT PRIMARY KEY,
            registration TEXT NOT NULL,
            registered_ns INTEGER NOT NULL,
            last_seen_ns INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT '',
            active_run_ids TEXT NOT NULL DEFAULT '[]',
            events_queued INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
INSERT INTO "runners" VALUES('oldw','{"runner_id": "x"}',1800000000000000000,1800000000000000000,'','[]',0);
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
        , decision TEXT, analyzed_ns INTEGER, deviation_count INTEGER NOT NULL DEFAULT 0, max_severity TEXT, severity_rank INTEGER NOT NULL DEFAULT 0, install_exit_code INTEGER, install_finished_ns INTEGER, observation_ended_ns INTEGER, events_unresolved INTEGER NOT NULL DEFAULT 0, analysis_reason TEXT NOT NULL DEFAULT '', idempotency_digest TEXT NOT NULL DEFAULT '');
INSERT INTO "runs" VALUES('old1','left-pad','1.0.0','sandbox_scan','done',NULL,'w','{"duration": 1}',1,'oldk',1800000000000000000,1800000000000000000,1800000000000000001,1800000100000000000,1800000000000000002,0,'ok','',3,0,1000000000,3,1,'deviations',NULL,1800000000000000003,1,'high',3,NULL,NULL,NULL,0,'first run of the package, held for review: 1 finding(s) of the kind that must not seed a baseline silently','');
CREATE TABLE schema_migrations ( version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns INTEGER NOT NULL);
INSERT INTO "schema_migrations" VALUES(1,'core',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(2,'differ',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(3,'watcher',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(4,'notifier',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(5,'auth',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(6,'runners and retention',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(7,'install lifecycle',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(9,'actors and manifest deltas',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(20,'run stream',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(21,'artifacts',1796128705000000000);
INSERT INTO "schema_migrations" VALUES(50,'harden: server-side sessions, idempotency digests, runner drop counters',1796128705000000000);
CREATE INDEX runs_queue ON runs(queue_seq) WHERE state IN ('pending', 'leased');
CREATE INDEX runs_by_created ON runs(created_ns, id);
CREATE INDEX runs_by_package ON runs(package_name, created_ns);
CREATE INDEX runs_active ON runs(state, deadline_ns)
            WHERE state IN ('leased', 'dispatched', 'running');
CREATE INDEX events_by_run ON events(run_id, seq, idx);
CREATE INDEX runs_pending ON runs(severity_rank, finished_ns) WHERE verdict = 'deviations' AND decision IS NULL;
CREATE INDEX deviations_by_run ON deviations(run_id);
CREATE INDEX deviations_by_detected ON deviations(detected_ns, id);
CREATE INDEX deviations_by_package ON deviations(package_name, detected_ns);
CREATE INDEX audit_by_target ON audit(target, at_ns);
CREATE INDEX releases_waiting ON releases(package_name) WHERE queued = 0 AND seeded = 0;
CREATE INDEX outbox_due ON outbox(next_attempt_ns) WHERE state = 'pending';
CREATE INDEX deliveries_by_notifier ON deliveries(notifier_name, at_ns)
        ;
CREATE INDEX events_by_received ON events(received_ns);
CREATE INDEX deviations_by_evidence ON deviations(evidence_event_id)
        ;
CREATE INDEX baseline_by_run ON baseline(run_id);
CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions(token_id);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('run_stream',1);
COMMIT;
