from twisted.application.service import ServiceMaker

fangsOrchestrator = ServiceMaker(
    "FANGS orchestrator",  # name
    "fangs.orchestrator.tap",  # module with Options and makeService
    "The FANGS orchestrator: /v1 API, job queue, event storage, differ.",  # description
    "fangs-orchestrator",  # tapname
)
