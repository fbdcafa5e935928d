"""
C{twistd fangs-orchestrator}: options and service composition.

    twistd -n fangs-orchestrator --addr 127.0.0.1:8443 --db var/fangs.db \\
        --config conf/orchestrator.yaml --id fangs-orchestrator --poll-wait 25
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

import fangs
from fangs.orchestrator.config import ConfigError, defaultConfigPath, loadConfig

log = Logger()

SWEEP_EVERY = 30.0


def _addrToEndpoint(addr: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise usage.UsageError("--addr must be HOST:PORT (got %r)" % (addr,))
    host = host.strip("[]") or "0.0.0.0"
    return "tcp:%s:interface=%s" % (port, host.replace(":", r"\:"))


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the FANGS orchestrator: the /v1 API for runners and operators, the job queue, "
        "event storage and the differ."
    )
    optParameters = [
        ["addr", None, "127.0.0.1:8443", "Listen address HOST:PORT (plain HTTP unless TLS options are given)."],
        ["listen", None, None, "Listen on a Twisted endpoint string instead of --addr (e.g. tcp:8443:interface=::1)."],
        ["db", None, os.environ.get("FANGS_PG_DSN") or "var/lib/fangs/fangs.db",
         "SQLite database path, or a postgresql:// URL (default: $FANGS_PG_DSN, else a SQLite file)."],
        ["retention-days", None, 90.0, "Delete raw events older than this many days (0 keeps them forever).", float],
        ["config", None, None, "YAML configuration (default: the shipped conf/orchestrator.yaml)."],
        ["id", None, "fangs-orchestrator", "Orchestrator id reported to runners."],
        ["poll-wait", None, 25.0, "Seconds a job long-poll waits before answering 204.", float],
        ["max-body", None, 64 * 1024, "Largest non-stream request body in bytes.", int],
        ["idle-timeout", None, 60.0, "Seconds an idle connection, or one still sending its request headers, stays open.", float],
        ["watch-interval", None, 300.0, "Seconds between npm registry polls of watched packages (0 disables).", float],
        ["registry-url", None, "https://registry.npmjs.org", "npm registry base URL the watcher polls."],
        ["tls-cert", None, None, "PEM server certificate (chain): serve HTTPS (TLS >= 1.2)."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-client-ca", None, None, "PEM CA bundle: require and verify a client certificate on every connection."],
        ["tls-crl", None, None, "PEM certificate revocation list checked for client certificates."],
        ["auth", None, "auto", "none | token | mtls | auto (mtls with --tls-client-ca; token with TLS or a non-loopback address; else none)."],
    ]
    optFlags = [
        ["init-admin-token", None, "Create an admin API token at start-up when none exists and print it once."],
    ]

    def postOptions(self) -> None:
        if self["poll-wait"] <= 0 or self["poll-wait"] > 300:
            raise usage.UsageError("--poll-wait must be between 0 and 300 seconds")
        if self["max-body"] < 1024:
            raise usage.UsageError("--max-body must be at least 1024 bytes")
        if self["idle-timeout"] <= 0:
            raise usage.UsageError("--idle-timeout must be a positive number of seconds")
        if self["retention-days"] < 0:
            raise usage.UsageError("--retention-days must be 0 (off) or a number of days")
        if self["watch-interval"] < 0:
            raise usage.UsageError("--watch-interval must be 0 (off) or a number of seconds")
        if not self["registry-url"].startswith(("http://", "https://")):
            raise usage.UsageError("--registry-url must be an http:// or https:// URL")
        self["endpoint"] = self["listen"] or _addrToEndpoint(self["addr"])
        self._checkTLS()
        if self["config"] is None:
            self["config"] = defaultConfigPath()
        elif not os.path.exists(self["config"]):
            raise usage.UsageError("--config %s does not exist" % (self["config"],))
        try:
            self["loaded-config"] = loadConfig(self["config"]).withRegistry(self["registry-url"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


    def _checkTLS(self) -> None:
        cert, key, ca, crl = self["tls-cert"], self["tls-key"], self["tls-client-ca"], self["tls-crl"]
        if bool(cert) != bool(key):
            raise usage.UsageError("--tls-cert and --tls-key go together (got only %s)" % ("--tls-cert" if cert else "--tls-key",))
        if (ca or crl) and not cert:
            raise usage.UsageError("--tls-client-ca and --tls-crl need --tls-cert and --tls-key")
        if crl and not ca:
            raise usage.UsageError("--tls-crl needs --tls-client-ca")
        self["tls"] = None
        if cert:
            from fangs.tls import ReloadableServerTLS, TLSConfigError

            try:
                self["tls"] = ReloadableServerTLS(cert, key, ca, crl)
            except TLSConfigError as e:
                raise usage.UsageError(str(e)) from None
        mode = self["auth"]
        if mode == "auto":
            if ca:
                mode = "mtls"
            elif cert or not _isLoopbackEndpoint(self["endpoint"]):
                mode = "token"
            else:
                mode = "none"
        if mode not in ("none", "token", "mtls"):
            raise usage.UsageError("--auth must be none, token, mtls or auto")
        if mode == "mtls" and not ca:
            raise usage.UsageError("--auth mtls needs --tls-client-ca")
        self["auth-mode"] = mode


def _isLoopbackEndpoint(endpoint: str) -> bool:
    """
    Whether a C{tcp:} endpoint string listens on a loopback address only.
    """
    at = endpoint.find("interface=")
    if at < 0:
        return False  # all interfaces
    host, i, rest = "", at + len("interface="), endpoint
    while i < len(rest) and rest[i] != ":":
        if rest[i] == "\\" and i + 1 < len(rest):
            i += 1
        host += rest[i]
        i += 1
    return host.startswith("127.") or host in ("::1", "localhost")


class OrchestratorService(service.MultiService):
    """
    Opens the store before anything else starts and closes it last.
    """

    def __init__(self, store: Any, core: Any) -> None:
        super().__init__()
        self.store = store
        self.core = core
        self._started: Optional[Deferred] = None

    def privilegedStartService(self) -> None:
        # Open and migrate the database before listening, so a bad database
        # stops start-up with its own error instead of half a server.
        self._started = Deferred.fromCoroutine(self._open())
        super().privilegedStartService()

    async def _open(self) -> None:
        await self.store.start()
        requeued = await self.store.requeueLeased()
        if requeued:
            log.info("{n} leased jobs went back to the queue", n=requeued)
        if self.initAdminToken:
            await self._initAdminToken()
        sync = await self.store.syncConfigAllow(self.core.config.allow, self.core.nowNs())
        log.info(
            "config allowlist synced: {added} added, {updated} updated, {removed} removed",
            added=len(sync.insert),
            updated=len(sync.update),
            removed=len(sync.delete),
        )

    initAdminToken = False

    async def _initAdminToken(self) -> None:
        import sys

        if await self.store.hasAdminToken():
            log.info("an admin token exists already; --init-admin-token created none")
            return
        created = await self.core.createToken("initial-admin", ["orchestrator:admin"], "twistd --init-admin-token")
        sys.stdout.write("FANGS admin token (shown once, store it now): %s\n" % (created["token"],))
        sys.stdout.flush()

    def startService(self) -> None:
        super().startService()

    def stopService(self) -> Deferred:
        self.core.dispatcher.cancelAll()
        d = super().stopService()

        def closeStore(r: Any) -> Any:
            self.store.stop()
            return r

        return d.addBoth(closeStore)


def makeService(options: Options, reactor: Any = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: only here, never at import time

    from fangs.orchestrator.analysis import RunAnalyzer
    from fangs.orchestrator.api import OrchestratorAPI
    from fangs.orchestrator.core import Orchestrator
    from fangs.orchestrator.dispatcher import Dispatcher
    from fangs.orchestrator.registry import PRUNE_EVERY, RunnerRegistry
    from fangs.orchestrator.site import FangsSite
    from fangs.orchestrator.store import SQLiteStore

    dbPath = options["db"]
    if dbPath.startswith(("postgresql://", "postgres://")):
        from fangs.orchestrator.pgstore import PostgresStore

        store: Any = PostgresStore(dbPath, reactor)
    else:
        if dbPath != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(dbPath)), exist_ok=True)
        store = SQLiteStore(dbPath, reactor)
    registry = RunnerRegistry(reactor, store=store)
    dispatcher = Dispatcher(reactor, store, pollWait=options["poll-wait"])
    # Jobs queued by other orchestrators on the same PostgreSQL database.
    getattr(store, "jobListeners", []).append(dispatcher.wake)
    from fangs.orchestrator.metrics import Metrics

    metrics = Metrics(fangs.__version__)
    if options["tls-cert"]:
        metrics.watchCertificate("server", options["tls-cert"])
    analyzer = RunAnalyzer(reactor, store, metrics=metrics)
    core = Orchestrator(
        reactor,
        store,
        registry,
        dispatcher,
        options["loaded-config"],
        orchestratorID=options["id"],
        version=fangs.__version__,
        analyzer=analyzer,
        metrics=metrics,
    )
    from fangs.orchestrator.auth import Authenticator

    api = OrchestratorAPI(core, Authenticator(options["auth-mode"], store, clock=reactor))
    top = OrchestratorService(store, core)

    sweeper = TimerService(min(SWEEP_EVERY, PRUNE_EVERY), lambda: Deferred.fromCoroutine(core.sweep()))
    sweeper.clock = reactor
    sweeper.setServiceParent(top)
    if options["retention-days"] > 0:
        from fangs.orchestrator.retention import retentionService

        retentionService(reactor, store, options["retention-days"]).setServiceParent(top)

    if options["watch-interval"] > 0:
        _addWatcher(top, reactor, core, options)
    _addNotifier(top, reactor, core, analyzer)

    top.initAdminToken = bool(options["init-admin-token"])
    site = FangsSite(api.resource(), maxBody=options["max-body"], timeout=options["idle-timeout"])
    from twisted.application.internet import StreamServerEndpointService

    from fangs.tls import installReloadOnSIGHUP, serverEndpoint

    tls = options["tls"]
    if tls is not None:
        installReloadOnSIGHUP(tls, reactor)
    listener = StreamServerEndpointService(serverEndpoint(reactor, options["endpoint"], tls), site)
    listener.setServiceParent(top)
    log.info(
        "listening on {endpoint} ({scheme}, auth {mode})",
        endpoint=options["endpoint"],
        scheme="https" if tls is not None else "http",
        mode=options["auth-mode"],
    )
    return top


def _addWatcher(parent: service.MultiService, reactor: Any, core: Any, options: Options) -> None:
    """
    The npm watcher's C{TimerService}: polls at start, then every
    C{--watch-interval} seconds.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from fangs.orchestrator.registryclient import RegistryClient
    from fangs.orchestrator.watcher import DEFAULT_CONCURRENCY, Watcher

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = DEFAULT_CONCURRENCY
    registry = RegistryClient(HTTPClient(Agent(reactor, pool=pool)), reactor, options["registry-url"])

    async def submit(request: Any, key: str) -> str:
        runID, _ = await core.submitScan(request, key, requireTarget=False)
        return runID

    watcher = Watcher(
        reactor,
        core.store,
        registry,
        submit,
        scanDurationNs=int(core.config.scanDurationSeconds * 1e9),
    )
    core.watcher = watcher
    timer = TimerService(options["watch-interval"], watcher.tick)
    timer.clock = reactor
    timer.setServiceParent(parent)


def _addNotifier(parent: service.MultiService, reactor: Any, core: Any, analyzer: Any) -> None:
    """
    The notification delivery loop, with its own connection pool; woken by
    every changed verdict and every few seconds for retries.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from fangs.orchestrator.notifier import NotifierService

    pool = HTTPConnectionPool(reactor, persistent=True)
    notifier = NotifierService(reactor, core.store, HTTPClient(Agent(reactor, pool=pool)), metrics=core.metrics, pool=pool)
    analyzer.listeners.append(notifier.wake)
    core.notifier = notifier
    notifier.setServiceParent(parent)
