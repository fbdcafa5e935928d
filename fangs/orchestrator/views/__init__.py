"""
Read-side views: what the API and the dashboard show of runs, deviations,
events, artifacts, packages and runners.

Each view is a frozen attrs type whose field names are the JSON keys, made
from the store's rows by its C{of} constructor and rendered by the one wire
converter (L{fangs.wire.dumps}); L{Views} reads the store for them, so a
handler asks for a view and returns it.  The JSON is the protocol's: field
order and values are those the API always sent.

 - L{runs}: runs, run detail, deviations, events.
 - L{catalog}: packages, baselines, releases, the allowlist.
 - L{admin}: runners, tokens, the audit trail.
 - L{dashboard}: the dashboard's own pages (fleet, review queue, package).
 - L{reader}: L{Views}, the reads that make them.
"""

from fangs.orchestrator.views.admin import (
    RunnersHealth,
    QueueHealth,
    DatabaseHealth,
    AdminHealth,
    AuditEntryView,
    AuditTrail,
    DeliveryHistory,
    DeliveryView,
    NotifierList,
    NotifierSaved,
    NotifierView,
    RunnerList,
    RunnerView,
    TokenList,
    TokenView,
)
from fangs.orchestrator.views.catalog import (
    AllowEntryView,
    AllowList,
    BaselineFingerprint,
    BaselineView,
    PackageAdded,
    PackageList,
    PackageView,
    ReleaseView,
    ReleasesView,
)
from fangs.orchestrator.views.dashboard import FleetRunner, Overview, PackagePage, PendingItem, ReviewQueue, RunRecord, TimelineEntry
from fangs.orchestrator.views.reader import Views
from fangs.orchestrator.views.runs import (
    ArtifactView,
    DeviationDetail,
    DeviationView,
    DeviationsPage,
    EventView,
    RunDetail,
    RunStepsView,
    RunView,
    RunsPage,
    StepView,
    eventLine,
    nsToTimestamp,
)

__all__ = [
    "Overview",
    "RunRecord",
    "RunnersHealth",
    "QueueHealth",
    "DatabaseHealth",
    "AdminHealth",
    "NotifierView",
    "NotifierSaved",
    "NotifierList",
    "DeliveryView",
    "DeliveryHistory",
    "RunStepsView",
    "StepView",
    "TimelineEntry",
    "ReviewQueue",
    "PendingItem",
    "PackagePage",
    "FleetRunner",
    "AllowEntryView",
    "AllowList",
    "ArtifactView",
    "AuditEntryView",
    "AuditTrail",
    "BaselineFingerprint",
    "BaselineView",
    "DeviationDetail",
    "DeviationView",
    "DeviationsPage",
    "EventView",
    "PackageAdded",
    "PackageList",
    "PackageView",
    "ReleaseView",
    "ReleasesView",
    "RunDetail",
    "RunView",
    "RunnerList",
    "RunnerView",
    "RunsPage",
    "TokenList",
    "TokenView",
    "Views",
    "eventLine",
    "nsToTimestamp",
]
