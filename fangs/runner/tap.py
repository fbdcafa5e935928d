# -*- test-case-name: tests.runner.test_tap -*-
"""
C{twistd fangs-runner}: command-line options and the service tree.

The sensor (BCC) and the Docker sandbox (docker SDK) are imported inside
L{makeService}, so twistd's plugin scan never loads them.
"""

from __future__ import annotations

import socket
from typing import Any, Optional
from urllib.parse import urlsplit

from twisted.application.service import MultiService, Service
from twisted.python import usage

from fangs.runner.client import OrchestratorClient, makeHTTPClient
from fangs.runner.service import RunnerService

DEFAULT_ORCHESTRATOR = "http://127.0.0.1:8443"
DEFAULT_IMAGE = "fangs-sandbox/node:20"
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup/unified"


def _positiveInt(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


_positiveInt.coerceDoc = "Must be an integer of at least 1."  # type: ignore[attr-defined]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a FANGS runner: register with the orchestrator, long-poll for scan jobs, run each "
        "npm install in a Docker sandbox watched by the eBPF sensor, and stream the events "
        "back.  Needs root (BPF, cgroups, the Docker socket)."
    )

    optParameters = [
        ["orchestrator", None, DEFAULT_ORCHESTRATOR, "Base URL of the orchestrator."],
        ["runner-id", None, None, "This runner's id (default: the hostname)."],
        ["tls-ca", None, None, "PEM CA certificate that signed the orchestrator's certificate."],
        ["tls-cert", None, None, "PEM client certificate for mTLS (with --tls-key)."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["token-file", None, None, "File holding a runner-scoped API token (orchestrators in token auth mode)."],
        ["max-concurrent", None, 1, "How many jobs to run at once.", _positiveInt],
        ["docker-image", None, DEFAULT_IMAGE, "Sandbox image for jobs that name none."],
        ["bpf-source", None, None, "Path of the sensor's BPF C source (default: installed copy)."],
        ["cgroup-root", None, DEFAULT_CGROUP_ROOT, "Mount point of the cgroup v2 hierarchy."],
        ["egress-policy", None, "contain",
         "Egress of jobs that name none: contain (sinkhole and record), registry-only (refuse), "
         "open (the default bridge: unrecorded, reaches everything)."],
        ["egress-allowed-hosts", None, "registry.npmjs.org",
         "Comma-separated hosts (or host:port) a contained sandbox may reach, for jobs that name none."],
    ]

    compData = usage.Completions(
        optActions={
            "tls-ca": usage.CompleteFiles("*.pem"),
            "tls-cert": usage.CompleteFiles("*.pem"),
            "tls-key": usage.CompleteFiles("*.pem"),
            "bpf-source": usage.CompleteFiles("*.c"),
            "cgroup-root": usage.CompleteDirs(),
        }
    )

    def postOptions(self) -> None:
        url = urlsplit(self["orchestrator"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise usage.UsageError("--orchestrator must be an http:// or https:// URL")
        if (self["tls-cert"] is None) != (self["tls-key"] is None):
            raise usage.UsageError("--tls-cert and --tls-key must be given together")
        if url.scheme == "http" and (self["tls-ca"] or self["tls-cert"]):
            raise usage.UsageError("TLS options need an https:// --orchestrator URL")
        if not self["runner-id"]:
            self["runner-id"] = socket.gethostname()
        from fangs.runner.gateway import POLICIES, PolicyError, parseAllowedHosts

        if self["egress-policy"] not in POLICIES:
            raise usage.UsageError("--egress-policy must be one of " + ", ".join(POLICIES))
        hosts = [h.strip() for h in self["egress-allowed-hosts"].split(",") if h.strip()]
        try:
            parseAllowedHosts(hosts)
        except PolicyError as e:
            raise usage.UsageError("--egress-allowed-hosts: %s" % (e,))
        self["egress-allowed-hosts"] = hosts


def kernelVersion(path: str = "/proc/sys/kernel/osrelease") -> str:
    try:
        with open(path) as f:
            return f.read().strip() or "linux-unknown"
    except OSError:
        return "linux-unknown"


def _readPEM(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class _PoolService(Service):
    """
    Closes the HTTP connection pool once everything above it has stopped.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def stopService(self) -> Any:
        Service.stopService(self)
        return self._pool.closeCachedConnections()


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    from fangs.runner.cgroups import CgroupManager
    from fangs.runner.egress import EgressManager
    from fangs.runner.sandbox import DockerSandbox
    from fangs.runner.sensor import Sensor

    pool = HTTPConnectionPool(reactor, persistent=True)
    http = makeHTTPClient(
        reactor,
        tlsCA=_readPEM(options["tls-ca"]),
        tlsCert=_readPEM(options["tls-cert"]),
        tlsKey=_readPEM(options["tls-key"]),
        pool=pool,
    )
    token = None
    if options["token-file"]:
        with open(options["token-file"]) as f:
            token = f.read().strip()
    client = OrchestratorClient(http, options["orchestrator"], reactor, token=token)
    sensor = Sensor(reactor, sourcePath=options["bpf-source"], cgroupRoot=options["cgroup-root"])
    sandbox = DockerSandbox(reactor, defaultImage=options["docker-image"], cgroupRoot=options["cgroup-root"])
    cgroups = CgroupManager(root=options["cgroup-root"])
    egress = EgressManager(reactor, defaultPolicy=options["egress-policy"],
                           allowedHosts=options["egress-allowed-hosts"])

    top = MultiService()
    # A MultiService stops its children in reverse order: the runner drains
    # first, then the sandbox, then the connection pool.
    _PoolService(pool).setServiceParent(top)
    if hasattr(sandbox, "setServiceParent"):
        sandbox.setServiceParent(top)
    RunnerService(
        reactor, client, sensor, sandbox, cgroups,
        runnerID=options["runner-id"],
        hostname=socket.gethostname(),
        kernelVersion=kernelVersion(),
        maxConcurrent=options["max-concurrent"],
        egress=egress,
    ).setServiceParent(top)
    return top
