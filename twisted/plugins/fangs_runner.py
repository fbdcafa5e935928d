from twisted.application.service import ServiceMaker

fangsRunner = ServiceMaker(
    "FANGS runner",  # name
    "fangs.runner.tap",  # module with Options and makeService
    "Run npm installs in an eBPF-watched Docker sandbox for a FANGS orchestrator.",
    "fangs-runner",  # twistd subcommand
)
