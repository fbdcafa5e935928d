"""
Durable storage of the orchestrator.

L{SQLiteStore} is the default backend, composed of one component per table
group (L{fangs.orchestrator.db}): runs and the queue, events, analysis and
review, packages and releases, the allowlist, dashboard queries, tokens and
sessions, runners, the notifier outbox, the run stream and artifacts.  Every
component does its work in C{_thd_*} functions that the shared connector
(L{fangs.orchestrator.db.connector.SQLiteConnector}) runs on the store's own
thread, so nothing blocks the reactor.  Tests pass a synchronous
C{runInThread} and use the same code on an in-memory database.

Timestamps are integer nanoseconds since the epoch, so ordering is exact.

This module is the store's public face: the vocabulary (states, row types,
errors) is re-exported from L{fangs.orchestrator.db.model}.
"""

from __future__ import annotations

from fangs.orchestrator.db.allow import AllowComponent
from fangs.orchestrator.db.analysis import AnalysisComponent
from fangs.orchestrator.db.artifacts import ArtifactStorage
from fangs.orchestrator.db.connector import SQLiteConnector, _transaction, synchronousRunner  # noqa: F401
from fangs.orchestrator.db.dashboard import DashboardComponent
from fangs.orchestrator.db.events import EventsComponent
from fangs.orchestrator.db.model import *  # noqa: F401,F403 (the store's vocabulary)
from fangs.orchestrator.db.model import (  # noqa: F401 (private helpers other backends use)
    _DEVIATION_SELECT,
    _RUN_COLUMNS,
    _RUN_SELECT,
    _actorLabel,
    _encodable,
    _jsonList,
    _runRow,
)
from fangs.orchestrator.db.outbox import OutboxComponent
from fangs.orchestrator.db.packages import PackagesComponent
from fangs.orchestrator.db.runners import RunnersComponent
from fangs.orchestrator.db.runs import RunsComponent
from fangs.orchestrator.db.schema import ACTORS_MIGRATION, MIGRATIONS, Migration, migration, only  # noqa: F401
from fangs.orchestrator.db.stream import SQLiteStreamStorage
from fangs.orchestrator.db.tokens import TokensComponent

__all__ = ["SQLiteStore", "synchronousRunner"]


#: The components of every store, whatever its engine (the SQL in them is
#: the same for both; what differs is asked of C{conn.engine}).
COMPONENTS = (
    RunsComponent,
    EventsComponent,
    AnalysisComponent,
    PackagesComponent,
    AllowComponent,
    DashboardComponent,
    TokensComponent,
    RunnersComponent,
    OutboxComponent,
    ArtifactStorage,
)


class SQLiteStore(*COMPONENTS, SQLiteStreamStorage, SQLiteConnector):  # type: ignore[misc]
    """
    The SQLite store: every component over one connection on one thread.
    """
