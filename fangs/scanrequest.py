"""
The scan request of one npm release, as the watcher submits it and as
C{fangs scan submit} / C{fangs package add} do (the same job, the same
idempotency key), so the CLI needs no orchestrator module to build one.
"""

from __future__ import annotations

from fangs import npm, wire

DEFAULT_SCAN_DURATION_NS = 120 * wire.SECOND


def idempotencyKey(package: str, version: str) -> str:
    return "watch:%s@%s" % (package, version)


def scanRequest(
    package: str, version: str, durationNs: int = DEFAULT_SCAN_DURATION_NS, targetRunner: str = ""
) -> wire.ScanRequest:
    """
    The scan of C{package@version} in the sandbox: the seed's install
    command, quoted, with install scripts forced on; image C{""} lets the
    orchestrator stamp its configured sandbox image.
    """
    return wire.ScanRequest(
        target_runner=targetRunner,
        job=wire.Job(
            kind="sandbox_scan",
            package_name=package,
            version=version,
            duration=durationNs,
            sandbox=wire.SandboxSpec(
                image="",
                command=npm.installCommand(package, version),
                user="0:0",
                network_mode="bridge",
                pull_policy="never",
                grace_period=2 * wire.SECOND,
            ),
        ),
    )
