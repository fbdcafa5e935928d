"""
The web dashboard under C{/ui/}.

 - L{pages}: the pages (L{DashboardUI}, a Klein app mounted at C{/ui/}).
 - L{render}: the Jinja2 environment, page headers, and what turns stored
   runs and events into what templates show (the process tree, summaries).
 - L{session}: sign-in and sign-out (C{templates/login.html}), the CSRF
   token, and the dashboard's mount on the API app (L{DashboardRoutes}).
"""

from fangs.orchestrator.ui.pages import DashboardUI
from fangs.orchestrator.ui.render import (
    EVENTS_PER_PAGE,
    STATIC,
    TEMPLATES,
    Process,
    _cell,
    absTime,
    duration,
    processTree,
    relTime,
    shortID,
    truncate,
)
from fangs.orchestrator.ui.session import CSRF, DashboardRoutes, canWrite

__all__ = [
    "CSRF",
    "DashboardRoutes",
    "DashboardUI",
    "EVENTS_PER_PAGE",
    "Process",
    "STATIC",
    "TEMPLATES",
    "_cell",
    "absTime",
    "canWrite",
    "duration",
    "processTree",
    "relTime",
    "shortID",
    "truncate",
]
