"""
The orchestrator API's routes, one module per area.

Each module holds one mixin class of handlers (L{runners.RunnerRoutes},
L{runs.RunRoutes}, ...) whose methods are marked with
L{base.route}C{(path, access, methods=...)}.
L{fangs.orchestrator.api.OrchestratorAPI} inherits every area and registers
each marked handler on its one Klein app through
L{fangs.orchestrator.api.authorizedRoute}, so a route's path, methods and
access are declared once, beside its handler.
"""
