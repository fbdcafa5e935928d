"""
The orchestrator's YAML configuration (C{conf/orchestrator.yaml}).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import attrs
import yaml

from fangs.orchestrator.allowlist import AllowEntry, AllowlistError, configEntries
from fangs.wire import WatchedPath

DEFAULT_WATCHED_PATHS: Tuple[WatchedPath, ...] = (
    WatchedPath("/etc/"),
    WatchedPath("/etc/shadow", True),
    WatchedPath("/etc/passwd", True),
    WatchedPath("/root/"),
    WatchedPath("/root/.ssh/", True),
    WatchedPath("/root/.aws/", True),
    WatchedPath("/root/.npmrc", True),
    WatchedPath("/root/.docker/", True),
    WatchedPath("/root/.kube/", True),
    WatchedPath("/root/.gnupg/", True),
    WatchedPath("/proc/self/environ", True),
    WatchedPath("/tmp/"),
    WatchedPath("/usr/"),
    WatchedPath("/dev/"),
)

DEFAULT_SANDBOX_IMAGE = "fangs-sandbox/node:20"
DEFAULT_MAX_MEMORY = 4 * 1024**3
DEFAULT_MAX_NANO_CPUS = 4_000_000_000
DEFAULT_MAX_PIDS = 4096
EGRESS_POLICIES = ("contain", "registry-only", "open")


class ConfigError(ValueError):
    """
    The configuration file cannot be used; the message says where and why.
    """


@attrs.frozen
class OrchestratorConfig:
    path: Optional[str] = None
    raw: str = ""
    watchedPaths: Tuple[WatchedPath, ...] = DEFAULT_WATCHED_PATHS
    #: Global allowlist entries from the C{allow:} section, validated.
    allow: Tuple[AllowEntry, ...] = ()
    sandboxImage: str = DEFAULT_SANDBOX_IMAGE
    scanDurationSeconds: float = 120.0
    graceSeconds: float = 2.0
    #: Images (fnmatch patterns) a scan may name; empty: the sandbox image only.
    images: Tuple[str, ...] = ()
    maxMemoryBytes: int = DEFAULT_MAX_MEMORY
    maxNanoCpus: int = DEFAULT_MAX_NANO_CPUS
    maxPids: int = DEFAULT_MAX_PIDS
    #: Pull policies a scan may ask for ("never": images come from the
    #: runner's own store; a pull could fetch a squatted image of an allowed name).
    pullPolicies: Tuple[str, ...] = ("never",)
    #: Docker networks a scan may join (besides the default).
    networkModes: Tuple[str, ...] = ("none", "bridge")
    #: Notifier targets in loopback/private/link-local ranges that an
    #: operator allowed (CIDRs); everything else of those ranges is refused.
    notifierAllowPrivate: Tuple[str, ...] = ()
    #: Environment variables notifier headers, URLs and secrets may name.
    notifierEnv: Tuple[str, ...] = ()
    #: Operator certificate scopes by operator name (overrides the SAN URI).
    operatorScopes: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    #: Operator certificate tenants by operator name (overrides the
    #: certificate's C{urn:fangs:tenant:} SAN URI); C{*} is all tenants.
    operatorTenants: Tuple[Tuple[str, str], ...] = ()

    def allowedImages(self) -> Tuple[str, ...]:
        return self.images or (self.sandboxImage,)
    #: Egress policy stamped on scans that name none (docs/egress.md).
    egressPolicy: str = "contain"
    #: Hosts a contained sandbox may reach; empty: the registry's host
    #: (filled in by L{withRegistry}).
    egressAllowedHosts: Tuple[str, ...] = ()

    def withRegistry(self, registryURL: str) -> "OrchestratorConfig":
        """
        This configuration with the allowed egress hosts defaulted to the
        host of the registry the orchestrator uses.
        """
        if self.egressAllowedHosts:
            return self
        from urllib.parse import urlsplit

        url = urlsplit(registryURL)
        if not url.hostname:
            return self
        default = {"https": 443, "http": 80}.get(url.scheme)
        host = url.hostname if url.port in (None, default) else "%s:%d" % (url.hostname, url.port)
        return attrs.evolve(self, egressAllowedHosts=(host,))


def defaultConfigPath() -> Optional[str]:
    """
    The shipped C{conf/orchestrator.yaml}: the repository's copy when running
    from a checkout, else the installed data file.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(here, "..", "..", "conf", "orchestrator.yaml"),
        os.path.join(sys.prefix, "share", "fangs", "conf", "orchestrator.yaml"),
    ]
    for c in candidates:
        if os.path.exists(c):
            return os.path.normpath(c)
    return None


def loadConfig(path: Optional[str]) -> OrchestratorConfig:
    """
    Read the YAML file at C{path}.  A missing C{path} (None) gives the
    defaults; a file that cannot be read or parsed raises L{ConfigError}.
    """
    if path is None:
        return OrchestratorConfig()
    try:
        with open(path, "rb") as f:
            raw = f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError("cannot read config %s: %s" % (path, e.strerror)) from None
    except UnicodeDecodeError:
        raise ConfigError("config %s is not UTF-8" % (path,)) from None
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as e:
        raise ConfigError("config %s is not valid YAML: %s" % (path, e)) from None
    if not isinstance(data, dict):
        raise ConfigError("config %s: top level must be a mapping" % (path,))

    watched = DEFAULT_WATCHED_PATHS
    items = data.get("watched_paths")
    if items:
        if not isinstance(items, list):
            raise ConfigError("config %s: watched_paths must be a list" % (path,))
        parsed: List[WatchedPath] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("prefix"), str):
                raise ConfigError("config %s: watched_paths[%d] needs a string prefix" % (path, i))
            prefix = item["prefix"]
            if not prefix.startswith("/") or not 1 <= len(prefix.encode()) <= 256:
                raise ConfigError(
                    "config %s: watched_paths[%d] prefix %r must be absolute and at most 256 bytes"
                    % (path, i, prefix)
                )
            parsed.append(WatchedPath(prefix, bool(item.get("cred") or item.get("cred_tagged"))))
        watched = tuple(parsed)

    allowSection = data.get("allow") or {}
    try:
        allow = tuple(configEntries(allowSection))
    except AllowlistError as e:
        raise ConfigError("config %s: %s" % (path, e)) from None

    sandbox = data.get("sandbox") or {}
    if not isinstance(sandbox, dict):
        raise ConfigError("config %s: sandbox must be a mapping" % (path,))
    image = sandbox.get("image", DEFAULT_SANDBOX_IMAGE)
    if not isinstance(image, str) or not image:
        raise ConfigError("config %s: sandbox.image must be a non-empty string" % (path,))

    def seconds(key: str, default: float) -> float:
        value = sandbox.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError("config %s: sandbox.%s must be a positive number" % (path, key))
        return float(value)

    def count(section: Dict[str, Any], key: str, default: int, where: str) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError("config %s: %s.%s must be a positive integer" % (path, where, key))
        return value

    def names(section: Dict[str, Any], key: str, where: str) -> Tuple[str, ...]:
        value = section.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError("config %s: %s.%s must be a list of strings" % (path, where, key))
        return tuple(value)

    images = names(sandbox, "images", "sandbox")
    notifiers = data.get("notifiers") or {}
    if not isinstance(notifiers, dict):
        raise ConfigError("config %s: notifiers must be a mapping" % (path,))
    allowPrivate = names(notifiers, "allow_private", "notifiers")
    import ipaddress

    for cidr in allowPrivate:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError("config %s: notifiers.allow_private entry %r is not an address or CIDR" % (path, cidr)) from None
    env = names(notifiers, "env", "notifiers")
    operators = data.get("operators") or {}
    if not isinstance(operators, dict):
        raise ConfigError("config %s: operators must map operator names to scope lists" % (path,))
    from fangs.tls import parseScopes

    opScopes = []
    for name, scopes in operators.items():
        if not isinstance(name, str) or not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes):
            raise ConfigError("config %s: operators.%s must be a list of scopes (read, write, admin)" % (path, name))
        try:
            opScopes.append((name, parseScopes(scopes)))
        except ValueError as e:
            raise ConfigError("config %s: operators.%s: %s" % (path, name, e)) from None

    tenantsOf = data.get("operator_tenants") or {}
    if not isinstance(tenantsOf, dict):
        raise ConfigError("config %s: operator_tenants must map operator names to tenant names" % (path,))
    from fangs.tenants import TenantError, checkTenant

    opTenants = []
    for name, tenant in tenantsOf.items():
        try:
            opTenants.append((str(name), checkTenant(tenant, allowAll=True)))
        except TenantError as e:
            raise ConfigError("config %s: operator_tenants.%s: %s" % (path, name, e)) from None

    egress = data.get("egress") or {}
    if not isinstance(egress, dict):
        raise ConfigError("config %s: egress must be a mapping" % (path,))
    policy = egress.get("policy", "contain")
    if policy not in EGRESS_POLICIES:
        raise ConfigError("config %s: egress.policy must be one of %s" % (path, ", ".join(EGRESS_POLICIES)))
    hosts = egress.get("allowed_hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h.strip() for h in hosts):
        raise ConfigError("config %s: egress.allowed_hosts must be a list of host names" % (path,))
    from fangs.egresspolicy import PolicyError, parseAllowedHosts

    try:
        parseAllowedHosts(hosts)
    except PolicyError as e:
        raise ConfigError("config %s: egress.allowed_hosts: %s" % (path, e)) from None

    return OrchestratorConfig(
        images=images,
        maxMemoryBytes=count(sandbox, "max_memory_bytes", DEFAULT_MAX_MEMORY, "sandbox"),
        maxNanoCpus=count(sandbox, "max_nano_cpus", DEFAULT_MAX_NANO_CPUS, "sandbox"),
        maxPids=count(sandbox, "max_pids", DEFAULT_MAX_PIDS, "sandbox"),
        pullPolicies=names(sandbox, "pull_policies", "sandbox") or ("never",),
        networkModes=names(sandbox, "network_modes", "sandbox") or ("none", "bridge"),
        notifierAllowPrivate=allowPrivate,
        notifierEnv=env,
        operatorScopes=tuple(opScopes),
        operatorTenants=tuple(opTenants),
        egressPolicy=policy,
        egressAllowedHosts=tuple(h.strip() for h in hosts),
        path=path,
        raw=raw,
        watchedPaths=watched,
        allow=tuple(allow),
        sandboxImage=image,
        scanDurationSeconds=seconds("duration_seconds", 120.0),
        graceSeconds=seconds("grace_seconds", 2.0),
    )
