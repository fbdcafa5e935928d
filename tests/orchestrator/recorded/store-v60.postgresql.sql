--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: allowlist; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.allowlist (
    id text NOT NULL COLLATE pg_catalog."C",
    scope text NOT NULL COLLATE pg_catalog."C",
    package_name text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    kind text NOT NULL COLLATE pg_catalog."C",
    value text NOT NULL COLLATE pg_catalog."C",
    note text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    source text DEFAULT 'operator'::text NOT NULL COLLATE pg_catalog."C",
    created_ns bigint NOT NULL,
    created_by text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C",
    CONSTRAINT allowlist_scope_check CHECK ((scope = ANY (ARRAY['global'::text, 'package'::text])))
);


--
-- Name: api_tokens; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_tokens (
    id text NOT NULL COLLATE pg_catalog."C",
    name text NOT NULL COLLATE pg_catalog."C",
    scopes text NOT NULL COLLATE pg_catalog."C",
    secret_hash text NOT NULL COLLATE pg_catalog."C",
    created_ns bigint NOT NULL,
    created_by text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    revoked_ns bigint,
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: artifacts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.artifacts (
    sha512 text NOT NULL COLLATE pg_catalog."C",
    size bigint NOT NULL,
    data bytea,
    created_ns bigint NOT NULL,
    last_used_ns bigint NOT NULL
);


--
-- Name: audit; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit (
    id bigint NOT NULL,
    at_ns bigint NOT NULL,
    actor text NOT NULL COLLATE pg_catalog."C",
    action text NOT NULL COLLATE pg_catalog."C",
    target text NOT NULL COLLATE pg_catalog."C",
    detail text DEFAULT '{}'::text NOT NULL COLLATE pg_catalog."C",
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: audit_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.audit_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: audit_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.audit_id_seq OWNED BY public.audit.id;


--
-- Name: baseline; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.baseline (
    package_name text NOT NULL COLLATE pg_catalog."C",
    category text NOT NULL COLLATE pg_catalog."C",
    value text NOT NULL COLLATE pg_catalog."C",
    actor text NOT NULL COLLATE pg_catalog."C",
    run_id text NOT NULL COLLATE pg_catalog."C",
    count integer NOT NULL,
    added_ns bigint NOT NULL,
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: batches; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.batches (
    run_id text NOT NULL COLLATE pg_catalog."C",
    seq bigint NOT NULL,
    events bigint NOT NULL,
    received_ns bigint NOT NULL
);


--
-- Name: dashboard_sessions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.dashboard_sessions (
    id_hash text NOT NULL COLLATE pg_catalog."C",
    token_id text NOT NULL COLLATE pg_catalog."C",
    created_ns bigint NOT NULL,
    expires_ns bigint NOT NULL
);


--
-- Name: deliveries; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.deliveries (
    id bigint NOT NULL,
    outbox_id bigint NOT NULL,
    notifier_name text NOT NULL COLLATE pg_catalog."C",
    attempt integer NOT NULL,
    at_ns bigint NOT NULL,
    status text NOT NULL COLLATE pg_catalog."C",
    http_status integer,
    error text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    response_excerpt text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: deliveries_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.deliveries_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: deliveries_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.deliveries_id_seq OWNED BY public.deliveries.id;


--
-- Name: deviations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.deviations (
    id text NOT NULL COLLATE pg_catalog."C",
    run_id text NOT NULL COLLATE pg_catalog."C",
    package_name text NOT NULL COLLATE pg_catalog."C",
    category text NOT NULL COLLATE pg_catalog."C",
    value text NOT NULL COLLATE pg_catalog."C",
    severity text NOT NULL COLLATE pg_catalog."C",
    severity_rank integer NOT NULL,
    reason text NOT NULL COLLATE pg_catalog."C",
    evidence_event_id bigint NOT NULL,
    count bigint NOT NULL,
    detected_ns bigint NOT NULL,
    actor text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    detail text DEFAULT '{}'::text NOT NULL COLLATE pg_catalog."C",
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events (
    id bigint NOT NULL,
    run_id text NOT NULL COLLATE pg_catalog."C",
    seq bigint NOT NULL,
    idx integer NOT NULL,
    type integer NOT NULL,
    ts_ns bigint NOT NULL,
    received_ns bigint NOT NULL,
    pid bigint NOT NULL,
    data text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: events_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: events_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.events_id_seq OWNED BY public.events.id;


--
-- Name: notifiers; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.notifiers (
    name text NOT NULL COLLATE pg_catalog."C",
    url text NOT NULL COLLATE pg_catalog."C",
    template text NOT NULL COLLATE pg_catalog."C",
    secret_env text COLLATE pg_catalog."C",
    headers text DEFAULT '{}'::text NOT NULL COLLATE pg_catalog."C",
    min_severity text COLLATE pg_catalog."C",
    packages text DEFAULT '[]'::text NOT NULL COLLATE pg_catalog."C",
    enabled integer DEFAULT 1 NOT NULL,
    created_ns bigint NOT NULL,
    updated_ns bigint NOT NULL,
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: outbox; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.outbox (
    id bigint NOT NULL,
    run_id text NOT NULL COLLATE pg_catalog."C",
    notifier_name text NOT NULL COLLATE pg_catalog."C",
    template text NOT NULL COLLATE pg_catalog."C",
    state text DEFAULT 'pending'::text NOT NULL COLLATE pg_catalog."C",
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_ns bigint NOT NULL,
    created_ns bigint NOT NULL,
    updated_ns bigint NOT NULL,
    last_error text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    body bytea NOT NULL,
    content_type text NOT NULL COLLATE pg_catalog."C",
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: outbox_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: outbox_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.outbox_id_seq OWNED BY public.outbox.id;


--
-- Name: packages; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.packages (
    name text NOT NULL COLLATE pg_catalog."C",
    added_ns bigint NOT NULL,
    added_by text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    last_checked_ns bigint,
    last_seen_version text COLLATE pg_catalog."C",
    etag text COLLATE pg_catalog."C",
    last_error text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    next_check_ns bigint,
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: releases; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.releases (
    package_name text NOT NULL COLLATE pg_catalog."C",
    version text NOT NULL COLLATE pg_catalog."C",
    integrity text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    shasum text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    tarball text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    published_ns bigint,
    dist_tags text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    discovered_ns bigint NOT NULL,
    seeded integer DEFAULT 0 NOT NULL,
    queued integer DEFAULT 0 NOT NULL,
    queued_ns bigint,
    run_id text COLLATE pg_catalog."C",
    attempts integer DEFAULT 0 NOT NULL,
    last_error text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    manifest text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    deltas text DEFAULT '[]'::text NOT NULL COLLATE pg_catalog."C",
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: run_artifacts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.run_artifacts (
    run_id text NOT NULL COLLATE pg_catalog."C",
    sha512 text COLLATE pg_catalog."C",
    status text NOT NULL COLLATE pg_catalog."C",
    detail text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    integrity text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    tarball_url text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    size bigint DEFAULT 0 NOT NULL,
    checked_ns bigint NOT NULL
);


--
-- Name: run_fingerprints; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.run_fingerprints (
    run_id text NOT NULL COLLATE pg_catalog."C",
    category text NOT NULL COLLATE pg_catalog."C",
    value text NOT NULL COLLATE pg_catalog."C",
    count bigint NOT NULL,
    first_event_id bigint NOT NULL,
    cred integer DEFAULT 0 NOT NULL,
    raw_ip integer DEFAULT 0 NOT NULL
);


--
-- Name: run_stream; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.run_stream (
    cursor bigint NOT NULL,
    ts_ns bigint NOT NULL,
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C",
    run_id text NOT NULL COLLATE pg_catalog."C",
    type text NOT NULL COLLATE pg_catalog."C",
    body text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: run_stream_head; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.run_stream_head (
    one integer NOT NULL,
    cursor bigint NOT NULL,
    CONSTRAINT run_stream_head_one_check CHECK ((one = 1))
);


--
-- Name: run_tenants; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.run_tenants (
    run_id text NOT NULL COLLATE pg_catalog."C",
    tenant text NOT NULL COLLATE pg_catalog."C",
    linked_ns bigint NOT NULL,
    verdict text COLLATE pg_catalog."C",
    decision text COLLATE pg_catalog."C",
    analyzed_ns bigint,
    deviation_count integer DEFAULT 0 NOT NULL,
    max_severity text COLLATE pg_catalog."C",
    severity_rank integer DEFAULT 0 NOT NULL,
    analysis_reason text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: runner_drop_counters; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.runner_drop_counters (
    runner_id text NOT NULL COLLATE pg_catalog."C",
    events_dropped bigint NOT NULL
);


--
-- Name: runners; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.runners (
    runner_id text NOT NULL COLLATE pg_catalog."C",
    registration text NOT NULL COLLATE pg_catalog."C",
    registered_ns bigint NOT NULL,
    last_seen_ns bigint NOT NULL,
    status text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    active_run_ids text DEFAULT '[]'::text NOT NULL COLLATE pg_catalog."C",
    events_queued bigint DEFAULT 0 NOT NULL
);


--
-- Name: runs_queue_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.runs_queue_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.runs (
    id text NOT NULL COLLATE pg_catalog."C",
    package_name text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    version text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    kind text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    state text NOT NULL COLLATE pg_catalog."C",
    target_runner text COLLATE pg_catalog."C",
    runner_id text COLLATE pg_catalog."C",
    job text NOT NULL COLLATE pg_catalog."C",
    queue_seq bigint DEFAULT nextval('public.runs_queue_seq'::regclass) NOT NULL,
    idempotency_key text COLLATE pg_catalog."C",
    created_ns bigint NOT NULL,
    dispatched_ns bigint,
    last_activity_ns bigint,
    deadline_ns bigint,
    finished_ns bigint,
    cancel_requested integer DEFAULT 0 NOT NULL,
    result_status text COLLATE pg_catalog."C",
    failure_reason text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    events_emitted bigint DEFAULT 0 NOT NULL,
    events_dropped bigint DEFAULT 0 NOT NULL,
    duration_ns bigint DEFAULT 0 NOT NULL,
    events_received bigint DEFAULT 0 NOT NULL,
    batches_received bigint DEFAULT 0 NOT NULL,
    verdict text COLLATE pg_catalog."C",
    decision text COLLATE pg_catalog."C",
    analyzed_ns bigint,
    deviation_count bigint DEFAULT 0 NOT NULL,
    max_severity text COLLATE pg_catalog."C",
    severity_rank integer DEFAULT 0 NOT NULL,
    leased_ns bigint,
    install_exit_code integer,
    install_finished_ns bigint,
    observation_ended_ns bigint,
    events_unresolved bigint DEFAULT 0 NOT NULL,
    analysis_reason text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    idempotency_digest text DEFAULT ''::text NOT NULL COLLATE pg_catalog."C",
    tenant text DEFAULT 'default'::text NOT NULL COLLATE pg_catalog."C"
);


--
-- Name: schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_ns bigint NOT NULL
);


--
-- Name: audit id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit ALTER COLUMN id SET DEFAULT nextval('public.audit_id_seq'::regclass);


--
-- Name: deliveries id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deliveries ALTER COLUMN id SET DEFAULT nextval('public.deliveries_id_seq'::regclass);


--
-- Name: events id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ALTER COLUMN id SET DEFAULT nextval('public.events_id_seq'::regclass);


--
-- Name: outbox id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox ALTER COLUMN id SET DEFAULT nextval('public.outbox_id_seq'::regclass);


--
-- Data for Name: allowlist; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.allowlist VALUES ('oldal', 'global', '', 'path', '/etc/old', 'n', 'operator', 1800000000000000000, 'alice', 'default');


--
-- Data for Name: api_tokens; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.api_tokens VALUES ('oldtok', 'ci', 'orchestrator:admin', 'hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh', 1800000000000000000, 'alice', NULL, '*');


--
-- Data for Name: artifacts; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: audit; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.audit VALUES (1, 1800000000000000000, 'alice', 'package.add', 'package:oldpkg', '{}', 'default');
INSERT INTO public.audit VALUES (2, 1800000000000000000, 'alice', 'allow.add', 'allow:oldal', '{"kind": "path", "value": "/etc/old", "scope": "global", "package": ""}', 'default');
INSERT INTO public.audit VALUES (3, 1800000000000000000, 'alice', 'token.create', 'token:oldtok', '{"name": "ci", "scopes": "orchestrator:admin"}', 'default');


--
-- Data for Name: baseline; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: batches; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.batches VALUES ('old1', 1, 3, 1800000000000000001);


--
-- Data for Name: dashboard_sessions; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.dashboard_sessions VALUES ('oldsess', 'oldtok', 1800000000000000000, 1800001000000000000);


--
-- Data for Name: deliveries; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: deviations; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.deviations VALUES ('6913c354740c39d7c88aa9262b7de096', 'old1', 'left-pad', 'fs_new_path_read', '/root/.npmrc', 'high', 3, 'read of cred-tagged path; by other', 1, 1, 1800000000000000003, 'other', '{"actors": ["other"], "argv": [], "class": "other", "detached": false, "label": "other", "package": "", "phase": "", "pid": 0, "version": ""}', 'default');


--
-- Data for Name: events; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.events VALUES (1, 'old1', 1, 0, 1, 1100, 1800000000000000001, 100, '{"Header":{"TsNs":1100,"PID":100,"PPID":1,"Type":1,"Tags":0},"PathName":"/root/.npmrc","Flags":0,"CommStr":"node"}');
INSERT INTO public.events VALUES (2, 'old1', 1, 1, 2, 5, 1800000000000000001, 101, '{"Header":{"TsNs":5,"PID":101,"PPID":100,"Type":2},"BinaryPathStr":"/bin/sh","ArgvStrs":["/bin/sh"],"CommStr":"sh"}');
INSERT INTO public.events VALUES (3, 'old1', 1, 2, 1, 1100, 1800000000000000001, 100, '{"Header":{"TsNs":1100,"PID":100,"PPID":1,"Type":1,"Tags":0},"PathName":"/x","Flags":0,"CommStr":"node"}');


--
-- Data for Name: notifiers; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: outbox; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: packages; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.packages VALUES ('oldpkg', 1800000000000000000, 'alice', NULL, NULL, NULL, '', NULL, 'default');


--
-- Data for Name: releases; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: run_artifacts; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: run_fingerprints; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.run_fingerprints VALUES ('old1', '_exec', '101/bin/sh100/bin/sh', 1, 2, 0, 0);
INSERT INTO public.run_fingerprints VALUES ('old1', '_exec_ts', '101/bin/sh100/bin/sh', 1, 5, 0, 0);
INSERT INTO public.run_fingerprints VALUES ('old1', 'fs_new_path_read', '100:1/root/.npmrc', 1, 1, 1, 0);
INSERT INTO public.run_fingerprints VALUES ('old1', 'fs_new_path_read', '100:1/x', 1, 3, 0, 0);


--
-- Data for Name: run_stream; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.run_stream VALUES (1, 1800000000000000000, 'default', 'old1', 'run.completed', '{"a": 1}');


--
-- Data for Name: run_stream_head; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.run_stream_head VALUES (1, 1);


--
-- Data for Name: run_tenants; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.run_tenants VALUES ('old1', 'default', 1800000000000000000, 'deviations', NULL, 1800000000000000003, 1, 'high', 3, 'first run of the package, held for review: 1 finding(s) of the kind that must not seed a baseline silently');


--
-- Data for Name: runner_drop_counters; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: runners; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.runners VALUES ('oldw', '{"runner_id": "x"}', 1800000000000000000, 1800000000000000000, '', '[]', 0);


--
-- Data for Name: runs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.runs VALUES ('old1', 'left-pad', '1.0.0', 'sandbox_scan', 'done', NULL, 'w', '{"duration": 1}', 1, 'oldk', 1800000000000000000, 1800000000000000000, 1800000000000000001, 1800000100000000000, 1800000000000000002, 0, 'ok', '', 3, 0, 1000000000, 3, 1, 'deviations', NULL, 1800000000000000003, 1, 'high', 3, 1796128705839045000, NULL, NULL, NULL, 0, 'first run of the package, held for review: 1 finding(s) of the kind that must not seed a baseline silently', '', 'default');


--
-- Data for Name: schema_migrations; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.schema_migrations VALUES (1, 'core', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (2, 'differ', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (3, 'watcher', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (4, 'notifier', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (5, 'auth', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (6, 'runners and retention', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (7, 'install lifecycle', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (9, 'actors and manifest deltas', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (20, 'run stream', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (21, 'artifacts', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (50, 'harden: server-side sessions, idempotency digests, runner drop counters', 1796128705729942000);
INSERT INTO public.schema_migrations VALUES (60, 'tenants', 1796132184314623000);


--
-- Name: audit_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.audit_id_seq', 3, true);


--
-- Name: deliveries_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.deliveries_id_seq', 1, false);


--
-- Name: events_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.events_id_seq', 3, true);


--
-- Name: outbox_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.outbox_id_seq', 1, false);


--
-- Name: runs_queue_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.runs_queue_seq', 1, true);


--
-- Name: allowlist allowlist_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.allowlist
    ADD CONSTRAINT allowlist_pkey PRIMARY KEY (id);


--
-- Name: allowlist allowlist_tenant_scope_package_name_kind_value_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.allowlist
    ADD CONSTRAINT allowlist_tenant_scope_package_name_kind_value_key UNIQUE (tenant, scope, package_name, kind, value);


--
-- Name: api_tokens api_tokens_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (id);


--
-- Name: artifacts artifacts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.artifacts
    ADD CONSTRAINT artifacts_pkey PRIMARY KEY (sha512);


--
-- Name: audit audit_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit
    ADD CONSTRAINT audit_pkey PRIMARY KEY (id);


--
-- Name: baseline baseline_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.baseline
    ADD CONSTRAINT baseline_pkey PRIMARY KEY (tenant, package_name, category, value, actor, run_id);


--
-- Name: batches batches_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.batches
    ADD CONSTRAINT batches_pkey PRIMARY KEY (run_id, seq);


--
-- Name: dashboard_sessions dashboard_sessions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.dashboard_sessions
    ADD CONSTRAINT dashboard_sessions_pkey PRIMARY KEY (id_hash);


--
-- Name: deliveries deliveries_outbox_id_attempt_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deliveries
    ADD CONSTRAINT deliveries_outbox_id_attempt_key UNIQUE (outbox_id, attempt);


--
-- Name: deliveries deliveries_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deliveries
    ADD CONSTRAINT deliveries_pkey PRIMARY KEY (id);


--
-- Name: deviations deviations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deviations
    ADD CONSTRAINT deviations_pkey PRIMARY KEY (id);


--
-- Name: events events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);


--
-- Name: notifiers notifiers_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.notifiers
    ADD CONSTRAINT notifiers_pkey PRIMARY KEY (tenant, name);


--
-- Name: outbox outbox_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);


--
-- Name: outbox outbox_run_id_tenant_notifier_name_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_run_id_tenant_notifier_name_key UNIQUE (run_id, tenant, notifier_name);


--
-- Name: packages packages_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.packages
    ADD CONSTRAINT packages_pkey PRIMARY KEY (tenant, name);


--
-- Name: releases releases_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.releases
    ADD CONSTRAINT releases_pkey PRIMARY KEY (tenant, package_name, version);


--
-- Name: run_artifacts run_artifacts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_artifacts
    ADD CONSTRAINT run_artifacts_pkey PRIMARY KEY (run_id);


--
-- Name: run_fingerprints run_fingerprints_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_fingerprints
    ADD CONSTRAINT run_fingerprints_pkey PRIMARY KEY (run_id, category, value);


--
-- Name: run_stream_head run_stream_head_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_stream_head
    ADD CONSTRAINT run_stream_head_pkey PRIMARY KEY (one);


--
-- Name: run_stream run_stream_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_stream
    ADD CONSTRAINT run_stream_pkey PRIMARY KEY (cursor);


--
-- Name: run_tenants run_tenants_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_tenants
    ADD CONSTRAINT run_tenants_pkey PRIMARY KEY (run_id, tenant);


--
-- Name: runner_drop_counters runner_drop_counters_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.runner_drop_counters
    ADD CONSTRAINT runner_drop_counters_pkey PRIMARY KEY (runner_id);


--
-- Name: runners runners_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.runners
    ADD CONSTRAINT runners_pkey PRIMARY KEY (runner_id);


--
-- Name: runs runs_idempotency_key_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.runs
    ADD CONSTRAINT runs_idempotency_key_key UNIQUE (idempotency_key);


--
-- Name: runs runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.runs
    ADD CONSTRAINT runs_pkey PRIMARY KEY (id);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: audit_by_target; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_by_target ON public.audit USING btree (target, at_ns);


--
-- Name: baseline_by_run; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX baseline_by_run ON public.baseline USING btree (run_id);


--
-- Name: dashboard_sessions_by_token; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX dashboard_sessions_by_token ON public.dashboard_sessions USING btree (token_id);


--
-- Name: deliveries_by_notifier; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deliveries_by_notifier ON public.deliveries USING btree (tenant, notifier_name, at_ns);


--
-- Name: deviations_by_detected; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deviations_by_detected ON public.deviations USING btree (detected_ns, id);


--
-- Name: deviations_by_evidence; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deviations_by_evidence ON public.deviations USING btree (evidence_event_id);


--
-- Name: deviations_by_package; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deviations_by_package ON public.deviations USING btree (package_name, detected_ns);


--
-- Name: deviations_by_rank; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deviations_by_rank ON public.deviations USING btree (severity_rank, detected_ns, id);


--
-- Name: deviations_by_run; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deviations_by_run ON public.deviations USING btree (run_id);


--
-- Name: deviations_by_tenant; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deviations_by_tenant ON public.deviations USING btree (tenant, detected_ns, id);


--
-- Name: events_by_received; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_by_received ON public.events USING btree (received_ns);


--
-- Name: events_by_run; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_by_run ON public.events USING btree (run_id, seq, idx);


--
-- Name: outbox_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX outbox_due ON public.outbox USING btree (next_attempt_ns) WHERE (state = 'pending'::text);


--
-- Name: releases_by_release; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX releases_by_release ON public.releases USING btree (package_name, version);


--
-- Name: releases_waiting; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX releases_waiting ON public.releases USING btree (tenant, package_name) WHERE ((queued = 0) AND (seeded = 0));


--
-- Name: run_tenants_by_tenant; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX run_tenants_by_tenant ON public.run_tenants USING btree (tenant, run_id);


--
-- Name: run_tenants_pending; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX run_tenants_pending ON public.run_tenants USING btree (tenant, severity_rank) WHERE ((verdict = 'deviations'::text) AND (decision IS NULL));


--
-- Name: runs_active; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX runs_active ON public.runs USING btree (state, deadline_ns) WHERE (state = ANY (ARRAY['leased'::text, 'dispatched'::text, 'running'::text]));


--
-- Name: runs_by_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX runs_by_created ON public.runs USING btree (created_ns, id);


--
-- Name: runs_by_package; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX runs_by_package ON public.runs USING btree (package_name, created_ns);


--
-- Name: runs_by_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX runs_by_state ON public.runs USING btree (state, created_ns, id);


--
-- Name: runs_by_verdict; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX runs_by_verdict ON public.runs USING btree (verdict, created_ns, id);


--
-- Name: runs_pending; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX runs_pending ON public.runs USING btree (severity_rank, finished_ns) WHERE ((verdict = 'deviations'::text) AND (decision IS NULL));


--
-- Name: runs_queue; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX runs_queue ON public.runs USING btree (queue_seq) WHERE (state = ANY (ARRAY['pending'::text, 'leased'::text]));


--
-- Name: baseline baseline_actors_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.baseline
    ADD CONSTRAINT baseline_actors_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.runs(id) ON DELETE CASCADE;


--
-- Name: batches batches_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.batches
    ADD CONSTRAINT batches_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.runs(id) ON DELETE CASCADE;


--
-- Name: deliveries deliveries_outbox_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deliveries
    ADD CONSTRAINT deliveries_outbox_id_fkey FOREIGN KEY (outbox_id) REFERENCES public.outbox(id) ON DELETE CASCADE;


--
-- Name: deviations deviations_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deviations
    ADD CONSTRAINT deviations_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.runs(id) ON DELETE CASCADE;


--
-- Name: events events_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.runs(id) ON DELETE CASCADE;


--
-- Name: outbox outbox_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.runs(id) ON DELETE CASCADE;


--
-- Name: releases releases_tenant_package_name_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.releases
    ADD CONSTRAINT releases_tenant_package_name_fkey FOREIGN KEY (tenant, package_name) REFERENCES public.packages(tenant, name) ON DELETE CASCADE;


--
-- Name: run_artifacts run_artifacts_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_artifacts
    ADD CONSTRAINT run_artifacts_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.runs(id) ON DELETE CASCADE;


--
-- Name: run_fingerprints run_fingerprints_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_fingerprints
    ADD CONSTRAINT run_fingerprints_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.runs(id) ON DELETE CASCADE;


--
-- Name: run_tenants run_tenants_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_tenants
    ADD CONSTRAINT run_tenants_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.runs(id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--


