"""
The orchestrator's storage, one component per table group.

  - L{connector}: the connection, its thread, transactions and migrations;
  - L{engines}: what differs between SQLite and PostgreSQL, one engine
    object per backend (C{conn.engine} in every C{_thd_*} function);
  - L{schema}: the versioned migrations, written once, rendered per engine;
  - L{model}: states, row types and errors shared by every component;
  - L{runs} (runs and the queue), L{events}, L{analysis} (the differ's plan
    and review), L{packages} (watched packages, baselines, releases),
    L{allow} (the allowlist), L{dashboard} (read-side queries), L{tokens}
    (API tokens, dashboard sessions), L{runners}, L{outbox} (notifiers and
    deliveries), L{stream} (the run stream), L{artifacts}.

L{fangs.orchestrator.store.SQLiteStore} composes them
(L{fangs.orchestrator.store.COMPONENTS}) over one SQLite connection;
L{fangs.orchestrator.pgstore.PostgresStore} composes the same components
over a pool of PostgreSQL connections and adds only the queue leases several
orchestrators share.
"""
