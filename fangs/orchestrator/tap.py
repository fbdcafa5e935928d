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
        ["public-url", None, None,
         "Comma-separated URL(s) browsers and clients reach this orchestrator by (e.g. https://fangs.example:8443): "
         "the only Origin accepted on state-changing requests, and its host an accepted Host "
         "(default: derived from --addr)."],
        ["allowed-host", None, "", "Comma-separated extra Host names to answer (besides the public URL's, IP literals and localhost)."],
        ["session-key-file", None, None,
         "File of the dashboard session signing key(s), created 0600 at first start (default: session.key beside the SQLite database, or var/lib/fangs/session.key)."],
        ["init-admin-token-file", None, None,
         "Where --init-admin-token writes the new token, mode 0600 (default: initial-admin-token beside the session key file). Never logged."],
        ["max-stream-body", None, 256 * 1024 * 1024, "Largest event stream (POST /v1/runs/<id>/events) body in bytes.", int],
        ["max-line", None, 1024 * 1024, "Largest line of an event stream in bytes.", int],
        ["tls-reload-interval", None, 30.0,
         "Seconds between checks of the TLS files (a new CRL is loaded) and of established client certificates (revoked or expired ones are disconnected); 0 disables.", float],
    ]
    optFlags = [
        ["init-admin-token", None, "Create an admin API token at start-up when none exists and write it (once) to --init-admin-token-file."],
        ["i-know-this-is-unauthenticated", None, "Allow --auth none on a non-loopback address."],
        ["accept-cn-identity", None, "Accept a client certificate without a FANGS SAN URI, taking its subject CN as a runner id."],
        ["rotate-session-key", None, "Put a new key first in the session key file at start-up (the previous key still verifies existing sessions)."],
        ["no-artifacts", None, "Do not fetch and keep the tarball of each scanned release from --registry-url."],
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
        if self["max-stream-body"] < 1024 or self["max-line"] < 1024:
            raise usage.UsageError("--max-stream-body and --max-line must be at least 1024 bytes")
        if self["max-line"] > self["max-stream-body"]:
            raise usage.UsageError("--max-line cannot exceed --max-stream-body")
        if self["tls-reload-interval"] < 0:
            raise usage.UsageError("--tls-reload-interval must be 0 (off) or a number of seconds")
        self["endpoint"] = self["listen"] or _addrToEndpoint(self["addr"])
        self._checkTLS()
        local = _isLoopbackEndpoint(self["endpoint"]) or self["endpoint"].startswith("unix:")
        if self["auth-mode"] == "none" and not local and not self["i-know-this-is-unauthenticated"]:
            raise usage.UsageError(
                "--auth none on a non-loopback address lets anyone on the network run scans and create admin tokens; "
                "use --auth token or mtls, or add --i-know-this-is-unauthenticated"
            )
        self["public-urls"] = _publicURLs(self["public-url"], self["endpoint"], bool(self["tls-cert"]))
        self["allowed-hosts"] = [h.strip() for h in self["allowed-host"].split(",") if h.strip()]
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


def _endpointPort(endpoint: str) -> Optional[int]:
    parts = endpoint.split(":")
    for part in parts[1:2]:
        if part.isdigit():
            return int(part)
    for part in parts:
        if part.startswith("port=") and part[5:].isdigit():
            return int(part[5:])
    return None


def _endpointHost(endpoint: str) -> str:
    at = endpoint.find("interface=")
    if at < 0:
        return ""
    host, i = "", at + len("interface=")
    while i < len(endpoint) and endpoint[i] != ":":
        if endpoint[i] == "\\" and i + 1 < len(endpoint):
            i += 1
        host += endpoint[i]
        i += 1
    return host


def _publicURLs(given: Optional[str], endpoint: str, tls: bool) -> List[str]:
    """
    The URLs the orchestrator is reached by: C{--public-url}, else what the
    listening address implies (for loopback: 127.0.0.1, ::1 and localhost;
    for all interfaces: the machine's host names).
    """
    if given:
        urls = [u.strip().rstrip("/") for u in given.split(",") if u.strip()]
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise usage.UsageError("--public-url must be http:// or https:// URLs (got %r)" % (u,))
        return urls
    scheme = "https" if tls else "http"
    port = _endpointPort(endpoint)
    host = _endpointHost(endpoint)
    if _isLoopbackEndpoint(endpoint):
        hosts = ["127.0.0.1", "localhost", "[::1]"] if host != "::1" else ["[::1]", "localhost", "127.0.0.1"]
    elif host and host not in ("0.0.0.0", "::"):
        hosts = ["[%s]" % (host,) if ":" in host else host]
    else:
        import socket

        hosts = sorted({socket.gethostname(), "localhost", "127.0.0.1"})
    return ["%s://%s%s" % (scheme, h, ":%d" % (port,) if port else "") for h in hosts]


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

    def __init__(self, store: Any, core: Any, stream: Any = None) -> None:
        super().__init__()
        self.store = store
        self.core = core
        self.stream = stream
        self._started: Optional[Deferred] = None

    def privilegedStartService(self) -> None:
        # Open and migrate the database before listening, so a bad database
        # stops start-up with its own error instead of half a server.
        self._started = Deferred.fromCoroutine(self._open())
        super().privilegedStartService()

    async def _open(self) -> None:
        await self.store.start()
        if self.stream is not None:
            await self.stream.start()
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
    initAdminTokenFile = ""

    async def _initAdminToken(self) -> None:
        if await self.store.hasAdminToken():
            log.info("an admin token exists already; --init-admin-token created none")
            return
        path = self.initAdminTokenFile
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            log.error("--init-admin-token: {path} exists already; remove it (after reading it) to create another token", path=path)
            return
        created = await self.core.createToken("initial-admin", ["orchestrator:admin"], "twistd --init-admin-token")
        with os.fdopen(fd, "w") as f:
            f.write(created["token"] + "\n")
        # The secret itself never goes to the log (twistd's stdout is the log).
        log.info(
            "initial admin token {token_id} written to {path} (mode 0600); read it, store it, then delete the file",
            token_id=created["id"],
            path=path,
        )

    def startService(self) -> None:
        super().startService()

    def stopService(self) -> Deferred:
        self.core.dispatcher.cancelAll()
        if self.stream is not None:
            self.stream.stop()
        d = super().stopService()

        def closeStore(r: Any) -> Any:
            self.store.stop()
            return r

        return d.addBoth(closeStore)


def _privateFile(path: str) -> None:
    """
    Create C{path} (and its directory) private to this user before SQLite
    opens it; SQLite gives its WAL and shared-memory files the database
    file's mode.  An existing file that others can read is made private.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for p in (path, path + "-wal", path + "-shm"):
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


def makeService(options: Options, reactor: Any = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: only here, never at import time

    from fangs.orchestrator.compose import composeOrchestrator
    from fangs.orchestrator.registry import PRUNE_EVERY
    from fangs.orchestrator.site import FangsSite
    from fangs.orchestrator.store import SQLiteStore

    # Everything the orchestrator creates (database, WAL, key files, logs,
    # which twistd opens after this) is private to its user.
    os.umask(0o077)
    dbPath = options["db"]
    if dbPath.startswith(("postgresql://", "postgres://")):
        from fangs.orchestrator.pgstore import PostgresStore

        store: Any = PostgresStore(dbPath, reactor)
        stateDir = os.path.abspath(os.path.join("var", "lib", "fangs"))
    else:
        stateDir = os.path.dirname(os.path.abspath(dbPath)) if dbPath != ":memory:" else os.path.abspath(os.path.join("var", "lib", "fangs"))
        if dbPath != ":memory:":
            _privateFile(dbPath)
        store = SQLiteStore(dbPath, reactor)
    from fangs.orchestrator.auth import SessionKeyError, SessionKeys, rotateSessionKey

    keyPath = options["session-key-file"] or os.path.join(stateDir, "session.key")
    os.makedirs(os.path.dirname(os.path.abspath(keyPath)), mode=0o700, exist_ok=True)
    try:
        if options["rotate-session-key"]:
            rotateSessionKey(keyPath)
        sessionKeys = SessionKeys(keyPath)
    except (SessionKeyError, OSError) as e:
        raise usage.UsageError(str(e)) from None
    from fangs.orchestrator.metrics import Metrics

    metrics = Metrics(fangs.__version__)
    if options["tls-cert"]:
        metrics.watchCertificate("server", options["tls-cert"])
    import functools

    from fangs.orchestrator.api import policyFor
    from fangs.orchestrator.auth import Authenticator
    from fangs.tls import peerIdentity

    identify = functools.partial(
        peerIdentity,
        acceptCN=bool(options["accept-cn-identity"]),
        operatorScopes=dict(options["loaded-config"].operatorScopes) or None,
        operatorTenants=dict(options["loaded-config"].operatorTenants) or None,
    )
    parts = composeOrchestrator(
        reactor,
        store,
        options["loaded-config"],
        orchestratorID=options["id"],
        version=fangs.__version__,
        pollWait=options["poll-wait"],
        metrics=metrics,
        auth=Authenticator(options["auth-mode"], store, peerIdentity=identify, clock=reactor, sessionKeys=sessionKeys),
        policy=policyFor(options["public-urls"], options["allowed-hosts"]),
    )
    core, api, analyzer = parts.core, parts.api, parts.analyzer
    top = OrchestratorService(store, core, parts.stream)

    sweeper = TimerService(min(SWEEP_EVERY, PRUNE_EVERY), lambda: Deferred.fromCoroutine(core.sweep()))
    sweeper.clock = reactor
    sweeper.setServiceParent(top)
    if options["retention-days"] > 0:
        from fangs.orchestrator.retention import retentionService

        retentionService(reactor, store, options["retention-days"]).setServiceParent(top)

    if not options["no-artifacts"]:
        _addArtifacts(top, reactor, core, options)
    if options["watch-interval"] > 0:
        _addWatcher(top, reactor, core, options)
    _addNotifier(top, reactor, core, analyzer)

    top.initAdminToken = bool(options["init-admin-token"])
    top.initAdminTokenFile = options["init-admin-token-file"] or os.path.join(os.path.dirname(os.path.abspath(keyPath)), "initial-admin-token")
    site = FangsSite(
        api.resource(),
        maxBody=options["max-body"],
        timeout=options["idle-timeout"],
        gate=lambda request: Deferred.fromCoroutine(api.gate(request)),
        maxStream=options["max-stream-body"],
        maxLine=options["max-line"],
    )
    from twisted.application.internet import StreamServerEndpointService

    from fangs.tls import installReloadOnSIGHUP, serverEndpoint

    tls = options["tls"]
    installReloadOnSIGHUP(tls, reactor, also=[sessionKeys.reload])
    if tls is not None:
        if options["tls-reload-interval"] > 0:
            checker = TimerService(options["tls-reload-interval"], tls.reloadIfChanged)
            checker.clock = reactor
            checker.setServiceParent(top)
    listener = StreamServerEndpointService(serverEndpoint(reactor, options["endpoint"], tls), site)
    listener.setServiceParent(top)
    log.info(
        "listening on {endpoint} ({scheme}, auth {mode})",
        endpoint=options["endpoint"],
        scheme="https" if tls is not None else "http",
        mode=options["auth-mode"],
    )
    return top


def _registryClient(reactor: Any, options: Options, persistent: int) -> Any:
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from fangs.orchestrator.registryclient import RegistryClient

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = persistent
    http = HTTPClient(Agent(reactor, pool=pool))
    return RegistryClient(http, reactor, options["registry-url"]), http, pool


class _ArtifactService(service.Service):
    def __init__(self, fetcher: Any, pool: Any) -> None:
        self.fetcher = fetcher
        self.pool = pool

    def stopService(self) -> Any:
        super().stopService()
        self.fetcher.stop()
        return self.pool.closeCachedConnections()


def _addArtifacts(parent: service.MultiService, reactor: Any, core: Any, options: Options) -> None:
    """
    The tarball of each scanned release, fetched from the registry and kept by hash.
    """
    from fangs.orchestrator.artifacts import ArtifactFetcher

    registry, http, pool = _registryClient(reactor, options, 4)
    core.artifacts = ArtifactFetcher(reactor, registry, http, core.store)
    core.artifacts.listeners.append(core.artifactChecked)
    _ArtifactService(core.artifacts, pool).setServiceParent(parent)


def _addWatcher(parent: service.MultiService, reactor: Any, core: Any, options: Options) -> None:
    """
    The npm watcher's C{TimerService}: polls at start, then every
    C{--watch-interval} seconds.
    """
    from fangs.orchestrator.compose import watcherSubmit
    from fangs.orchestrator.watcher import DEFAULT_CONCURRENCY, Watcher

    registry, _, _ = _registryClient(reactor, options, DEFAULT_CONCURRENCY)
    watcher = Watcher(
        reactor,
        core.store,
        registry,
        watcherSubmit(core),
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

    from fangs.orchestrator.notifier import NotifierService, TargetPolicy, pinnedClients, threadResolver

    pool = HTTPConnectionPool(reactor, persistent=True)
    cfg = core.config
    notifier = NotifierService(
        reactor,
        core.store,
        HTTPClient(Agent(reactor, pool=pool)),
        metrics=core.metrics,
        pool=pool,
        policy=TargetPolicy.fromConfig(cfg.notifierAllowPrivate, cfg.notifierEnv),
        resolver=threadResolver(reactor),
        httpFor=pinnedClients(reactor, pool),
    )
    analyzer.listeners.append(notifier.wake)
    core.notifier = notifier
    notifier.setServiceParent(parent)
