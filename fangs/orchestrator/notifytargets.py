"""
Notifier targets: names, templates and limits, URL and address policy (no
loopback, link-local or private targets unless allowed), and which runs a
target wants.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import attrs

from fangs.errors import BadRequest
from fangs.orchestrator import differ


TEMPLATES = ("slack", "discord", "generic", "siem")
SIGNED_TEMPLATES = ("generic", "siem")
#: Verdicts that notify (when the run has at least one deviation).
NOTIFY_VERDICTS = ("deviations", "incomplete")

TIMEOUT = 10.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 600.0
RETRY_AFTER_CAP = 3600.0
MAX_ATTEMPTS = 8
POLL_INTERVAL = 5.0
CONCURRENCY = 4
EXCERPT = 2048
USER_AGENT = "fangs-orchestrator"
SLACK_HEADER_MAX = 150
MAX_LINES = 12

SENT = "sent"
FAILED = "failed"  # this attempt failed, a later one may succeed
PERMANENT = "permanent"
DEAD = "dead"
PENDING = "pending"
DELIVERY_STATUSES = (SENT, FAILED, PERMANENT)
OUTBOX_STATES = (PENDING, SENT, PERMANENT, DEAD)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]{0,127})\}$")
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "x-fangs-timestamp",
     "x-fangs-signature", "x-fangs-delivery", "x-fangs-attempt"}
)
MAX_HEADERS = 20
MAX_PACKAGES = 200


class DeliveryError(Exception):
    """
    A message cannot be sent because of its target's configuration (bad URL,
    missing secret): a permanent failure, not a retry.
    """


# ---------------------------------------------------------------------------
# Targets: validation and selection


def checkName(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest("notifier name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def isLoopbackHost(host: str) -> bool:
    """
    C{localhost}, 127.0.0.0/8 and ::1 (the host as L{urlsplit} gives it:
    without the brackets of an IPv6 literal).
    """
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Cloud metadata services that sit on otherwise ordinary-looking addresses.
_METADATA = tuple(ipaddress.ip_network(n) for n in ("169.254.169.254/32", "100.100.100.200/32", "fd00:ec2::254/128", "192.0.0.192/32"))


@attrs.frozen
class TargetPolicy:
    """
    Where notifications may go.  Loopback, private, link-local, shared,
    reserved and metadata addresses (anything not globally routable) are
    refused unless one of C{allowPrivate} (the config's
    C{notifiers.allow_private}) holds them; C{${NAME}} may only name the
    variables in C{env} (C{notifiers.env}).
    """

    allowPrivate: Tuple[Any, ...] = ()
    env: FrozenSet[str] = frozenset()

    @classmethod
    def fromConfig(cls, allowPrivate: Sequence[str] = (), env: Sequence[str] = ()) -> "TargetPolicy":
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in allowPrivate), frozenset(env))

    def refusal(self, address: str) -> Optional[str]:
        """
        Why a target address is refused, or None.
        """
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "%r is not an IP address" % (address,)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowPrivate):
            return None
        if any(ip in net for net in _METADATA):
            return "%s is a cloud metadata address" % (ip,)
        if ip.is_loopback:
            return "%s is a loopback address" % (ip,)
        if ip.is_link_local:
            return "%s is a link-local address" % (ip,)
        if ip.is_private:
            return "%s is a private address" % (ip,)
        if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            return "%s is not a public address" % (ip,)
        return None

    def allowlisted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allowPrivate)

    def checkEnv(self, name: str, what: str) -> None:
        if name not in self.env:
            raise BadRequest(
                "%s names environment variable %s, which the config does not list in notifiers.env" % (what, name)
            )


OPEN_POLICY = TargetPolicy(allowPrivate=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")), env=frozenset())


def checkURL(url: Any, policy: Optional[TargetPolicy] = None) -> str:
    """
    An C{https} URL (or C{http} to an address the policy's allowlist holds)
    whose host, when it is an IP literal or C{localhost}, the policy
    accepts.  Host names are checked again after DNS at every delivery.
    L{BadRequest} otherwise.
    """
    if not isinstance(url, str) or not 1 <= len(url) <= 2048:
        raise BadRequest("url must be a string of 1-2048 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise BadRequest("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as e:
        raise BadRequest("url is not valid: %s" % (e,)) from None
    if parts.scheme not in ("http", "https"):
        raise BadRequest("url must be http:// or https://")
    if not host:
        raise BadRequest("url has no host")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("url must not carry credentials; use headers with ${ENV} values")
    policy = policy if policy is not None else TargetPolicy()
    addresses = literalAddresses(host)
    for a in addresses:
        why = policy.refusal(a)
        if why is not None:
            raise BadRequest("url host %s refused: %s (allow it in the config's notifiers.allow_private)" % (host, why))
    if parts.scheme == "http" and not (addresses or policy.allowPrivate):
        raise BadRequest("plain http:// is only allowed to an allowlisted address (notifiers.allow_private); use https://")
    return url


def literalAddresses(host: str) -> List[str]:
    """
    The addresses a host names without DNS: an IP literal, or localhost's.
    """
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return ["127.0.0.1", "::1"]
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return []


def parseNotifier(name: str, body: Mapping[str, Any], policy: Optional[TargetPolicy] = None) -> Dict[str, Any]:
    """
    Validate a target as the API receives it.  Header values may be literal
    or a whole C{${ENV_NAME}} (a name the config lists in C{notifiers.env}),
    read from the environment at send time, so credentials need not be
    stored either.

    @raise BadRequest: anything invalid.
    """
    policy = policy if policy is not None else TargetPolicy()
    checkName(name)
    known = {"name", "url", "template", "secret_env", "min_severity", "headers", "packages", "enabled"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest("unknown field(s): %s" % (", ".join(unknown),))
    if body.get("name", name) != name:
        raise BadRequest("name in the body differs from the name in the path")
    url = body.get("url")
    ref = _ENV_REF.match(url) if isinstance(url, str) else None
    if ref:  # "${SLACK_WEBHOOK_URL}": the URL itself is checked at send time
        policy.checkEnv(ref.group(1), "url")
    else:
        url = checkURL(url, policy)
    template = body.get("template", "generic")
    if template not in TEMPLATES:
        raise BadRequest("template must be one of %s" % (", ".join(TEMPLATES),))
    secretEnv = body.get("secret_env") or None
    if secretEnv is not None:
        if not isinstance(secretEnv, str) or not _ENV_NAME.match(secretEnv):
            raise BadRequest("secret_env must be the name of an environment variable, like FANGS_WEBHOOK_SECRET")
        if template not in SIGNED_TEMPLATES:
            raise BadRequest("secret_env (signing) applies to the generic and siem templates only")
        policy.checkEnv(secretEnv, "secret_env")
    minSeverity = body.get("min_severity") or None
    if minSeverity is not None:
        if not isinstance(minSeverity, str) or minSeverity not in differ.SEVERITY_LABELS:
            raise BadRequest("min_severity must be one of %s" % (", ".join(differ.SEVERITY_LABELS),))
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise BadRequest("headers must be an object of at most %d string values" % (MAX_HEADERS,))
    for k, v in headers.items():
        if not _HEADER_NAME.match(k):
            raise BadRequest("header name %r is not a valid HTTP header name" % (k,))
        if k.lower() in _RESERVED_HEADERS:
            raise BadRequest("header %s is set by the orchestrator" % (k,))
        if not isinstance(v, str) or len(v) > 4096 or any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in v):
            raise BadRequest("header %s must be a string without control characters" % (k,))
        ref = _ENV_REF.match(v)
        if ref:
            policy.checkEnv(ref.group(1), "header %s" % (k,))
        elif "${" in v:
            raise BadRequest("header %s: ${NAME} must be the whole value" % (k,))
    packages = body.get("packages") or []
    if not isinstance(packages, list) or len(packages) > MAX_PACKAGES:
        raise BadRequest("packages must be a list of at most %d package names or patterns" % (MAX_PACKAGES,))
    for p in packages:
        if not isinstance(p, str) or not 1 <= len(p) <= 214 or any(c.isspace() for c in p):
            raise BadRequest("packages must hold package names or patterns like @scope/*")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise BadRequest("enabled must be true or false")
    return {
        "name": name,
        "url": url,
        "template": template,
        "secret_env": secretEnv,
        "min_severity": minSeverity,
        "headers": dict(headers),
        "packages": list(packages),
        "enabled": enabled,
    }


def wants(target: Mapping[str, Any], packageName: str, maxSeverity: Optional[str]) -> bool:
    """
    Whether a target asked for a run of C{packageName} whose worst deviation
    is C{maxSeverity}.
    """
    minimum = target.get("min_severity")
    if minimum and differ.severityRank(maxSeverity or "") < differ.severityRank(minimum):
        return False
    packages = target.get("packages") or ()
    return not packages or any(fnmatch.fnmatchcase(packageName, p) for p in packages)
