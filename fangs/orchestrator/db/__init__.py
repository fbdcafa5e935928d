"""
The orchestrator's storage, one component per table group.

  - L{connector}: the connection, its thread, transactions and migrations;
  - L{schema}: the versioned migrations;
  - L{model}: states, row types and errors shared by every component;
  - L{runs} (runs and the queue), L{events}, L{analysis} (the differ's plan
    and review), L{packages} (watched packages, baselines, releases),
    L{allow} (the allowlist), L{dashboard} (read-side queries), L{tokens}
    (API tokens, dashboard sessions), L{runners}, L{outbox} (notifiers and
    deliveries), L{stream} (the run stream), L{artifacts}.

L{fangs.orchestrator.store.SQLiteStore} composes them over one SQLite
connection; L{fangs.orchestrator.pgstore.PostgresStore} over PostgreSQL.
"""
