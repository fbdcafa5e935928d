"""
Notifications about runs with deviations: targets, message templates,
signatures, and the delivery loop over the durable outbox.

How a notification travels:

  1. The store analyses a finished run.  In the same transaction, when the
     verdict changed to C{deviations} (or C{incomplete} with deviations: a
     package that crashes or stalls its own install must not hide), every
     enabled target whose C{min_severity} and package filter match gets one
     C{outbox} row with the rendered body (L{wants}, L{render}).  The row is
     unique per run and target, so a re-analysis never sends twice.
  2. L{NotifierService} wakes when an analysis changed a verdict and on a
     timer, sends the rows that are due, and records one C{deliveries} row
     per attempt together with the row's new state, in one transaction.  A
     row still C{pending} when the orchestrator stops is sent after it
     starts again.

Outbox states: C{pending} (waiting for its first or next attempt), C{sent},
C{permanent} (the receiver or the configuration refused it; retrying would
not help), C{dead} (retries exhausted, or its target was removed).
Delivery statuses (one per attempt): C{sent}, C{failed} (retryable),
C{permanent}.

Signatures (templates C{generic} and C{siem}, when the target names a
C{secret_env}): C{X-Fangs-Timestamp: <unix seconds>} and
C{X-Fangs-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>}.
See C{docs/webhooks.md} for the receiver's side.
"""

from __future__ import annotations

import fnmatch
import hashlib
import socket
import hmac
import ipaddress
import json
import os
import random as _random
import re
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import attrs
import treq
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http import stringToDatetime

from fangs.errors import BadRequest
from fangs.orchestrator import differ

log = Logger()

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


# ---------------------------------------------------------------------------
# Templates


def _cut(text: str, limit: int) -> str:
    """
    At most C{limit} characters (never a split UTF-8 sequence), with an
    ellipsis when cut.
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finding(n: int) -> str:
    return "%d finding%s" % (n, "" if n == 1 else "s")


_ZWSP = "\u200b"
_MENTION = re.compile(r"@(?=[A-Za-z0-9!&#])")


def _breakMentions(text: str) -> str:
    """
    C{@everyone}, C{@here}, C{@channel}, C{@user}: a zero-width space after
    the C{@} keeps them from notifying anybody.
    """
    return _MENTION.sub("@" + _ZWSP, text)


def _breakLinks(text: str) -> str:
    return text.replace("://", ":" + _ZWSP + "//").replace("www.", "www" + _ZWSP + ".")


def slackText(text: Any) -> str:
    """
    Package-controlled text for Slack mrkdwn: C{&}, C{<}, C{>} escaped (no
    C{<!channel>}, C{<@U123>}, C{<http://x|masked>} links), mentions and
    bare links broken, markup characters and backticks neutralised.
    """
    text = str(text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("`", "\u02cb")
    for ch in "*_~|":
        text = text.replace(ch, ch + _ZWSP)
    return _breakLinks(_breakMentions(text))


def slackCode(text: Any) -> str:
    """
    Package-controlled text inside a Slack code span: no backtick can end
    the span, and C{&<>} are escaped (Slack parses them even in code).
    """
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "\u02cb")
    for ch in "*~":
        text = text.replace(ch, ch + _ZWSP)
    return _breakLinks(_breakMentions(text))


_DISCORD_MARKUP = re.compile(r"([\\*_~|`>\[\]])")


def discordText(text: Any) -> str:
    """
    Package-controlled text for Discord markdown: every markup character
    backslash-escaped (no masked links, no formatting), mentions and links
    broken.  (Messages also carry C{allowed_mentions: {parse: []}}.)
    """
    text = _DISCORD_MARKUP.sub(r"\\\1", str(text))
    text = text.replace("<", "\\<")
    return _breakLinks(_breakMentions(text))


def discordCode(text: Any) -> str:
    text = str(text).replace("`", "\u02cb").replace("<", "\u2039").replace(">", "\u203a")
    for ch in "*~|":
        text = text.replace(ch, ch + _ZWSP)
    return _breakLinks(_breakMentions(text))


def plainText(text: Any) -> str:
    """
    Package-controlled text for the generic JSON body (often forwarded to
    chat or shown in HTML by receivers): mentions and links broken, angle
    brackets and square brackets replaced by look-alikes.
    """
    text = str(text)
    for a, b in (("<", "\u2039"), (">", "\u203a"), ("[", "\u2045"), ("]", "\u2046"), ("`", "\u02cb"),
                 ("*", "*" + _ZWSP), ("~", "~" + _ZWSP)):
        text = text.replace(a, b)
    return _breakLinks(_breakMentions(text))


_DISCORD_COLOURS = {"critical": 0xE3635D, "high": 0xD3A851, "medium": 0xD3A851, "low": 0x6DA3D8}


def _by(d: Mapping[str, Any], code: Callable[[Any], str]) -> str:
    """
    " by <actor>" for a deviation that names its actor (an install script,
    npm, other; "registry" for a manifest delta), in a code span escaped by
    C{code} (the actor names a package: package-controlled text).
    """
    actor = d.get("actor") or ""
    return " by `%s`" % (code(_cut(actor, 80)),) if actor else ""


def render(template: str, run: Mapping[str, Any], deviations: Sequence[Mapping[str, Any]]) -> Tuple[bytes, str]:
    """
    The body and content type of the message about C{run} (a mapping with
    run_id, package_name, version, state, verdict, max_severity) and its
    C{deviations} (mappings with id, category, value, severity, reason,
    evidence_event_id, detected_at), worst first.
    """
    pkg, ver = run.get("package_name") or "?", run.get("version") or "?"
    maxSev = run.get("max_severity") or "none"
    n = len(deviations)
    if template == "generic":
        body = {
            "source": "fangs-orchestrator",
            "schema_version": "v1",
            "run_id": run["run_id"],
            "package_name": plainText(run.get("package_name", "")),
            "version": plainText(run.get("version", "")),
            "state": run.get("state", ""),
            "verdict": run.get("verdict", ""),
            "is_baseline": run.get("verdict") == "baseline",
            "max_severity": run.get("max_severity"),
            "deviations": [
                {
                    "id": d["id"],
                    "category": d["category"],
                    "value": plainText(d["value"]),
                    "severity": d["severity"],
                    "reason": plainText(d.get("reason", "")),
                    "actor": plainText(d.get("actor", "")),
                    "evidence_event_id": d.get("evidence_event_id"),
                }
                for d in deviations
            ],
            "deviation_count": n,
        }
        return _json(body), "application/json"
    if template == "siem":
        lines = [
            _json(
                {
                    "source": "fangs-orchestrator",
                    "schema_version": "v1",
                    "run_id": run["run_id"],
                    "package_name": run.get("package_name", ""),
                    "version": run.get("version", ""),
                    "verdict": run.get("verdict", ""),
                    "severity": d["severity"],
                    "category": d["category"],
                    "value": d["value"],
                    "reason": d.get("reason", ""),
                    "actor": d.get("actor", ""),
                    "evidence_event_id": d.get("evidence_event_id"),
                    "detected_at": d.get("detected_at"),
                }
            )
            + b"\n"
            for d in deviations
        ]
        return b"".join(lines), "application/x-ndjson"
    shown, more = deviations[:MAX_LINES], max(0, n - MAX_LINES)
    if template == "slack":
        spkg, sver = slackText(pkg), slackText(ver)
        text = "🚨 FANGS deviation: %s@%s — %s (max: %s)" % (spkg, sver, _finding(n), maxSev)
        lines = ["• *%s* `%s` — %s%s" % (d["severity"], slackCode(_cut(d["value"], 80)), d["category"], _by(d, slackCode))
                 for d in shown]
        if more:
            lines.append("_… and %d more_" % (more,))
        body = {
            "text": text,
            "blocks": [
                {
                    "type": "header",
                    "text": {"type": "plain_text", "text": _cut("🚨 FANGS deviation: %s@%s — %s (max: %s)" % (_breakLinks(_breakMentions(pkg)), _breakLinks(_breakMentions(ver)), _finding(n), maxSev), SLACK_HEADER_MAX), "emoji": True},
                },
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": "Run `%s` · package `%s` · version `%s`" % (run["run_id"][:12], slackCode(pkg), slackCode(ver)),
                    },
                },
                {"type": "section", "text": {"type": "mrkdwn", "text": _cut("\n".join(lines), 3000)}},
            ],
            "unfurl_links": False,
            "unfurl_media": False,
        }
        return _json(body), "application/json"
    if template == "discord":
        fields = [
            {"name": "%s · %s" % (d["severity"], d["category"]), "value": "`%s`%s" % (discordCode(_cut(d["value"], 100)), _by(d, discordCode)), "inline": False}
            for d in shown
        ]
        if more:
            fields.append({"name": "…", "value": "and %d more" % (more,), "inline": False})
        embed = {
            "title": _cut("FANGS deviation: %s@%s" % (discordText(pkg), discordText(ver)), 256),
            "description": "**%s** (max severity: **%s**)\nRun `%s`" % (_finding(n), maxSev, run["run_id"][:12]),
            "color": _DISCORD_COLOURS.get(maxSev, 0x808080),
            "fields": fields,
        }
        return _json({"username": "FANGS", "embeds": [embed], "allowed_mentions": {"parse": []}}), "application/json"
    raise ValueError("unknown template %r" % (template,))


def renderTest(template: str, name: str) -> Tuple[bytes, str]:
    """
    The body of C{fangs notifier test NAME}.
    """
    if template == "slack":
        return _json({"text": "FANGS notifier test — if you see this, your Slack webhook is wired correctly."}), "application/json"
    if template == "discord":
        return _json(
            {
                "username": "FANGS",
                "embeds": [
                    {
                        "title": "FANGS notifier test",
                        "description": "If you see this, your Discord webhook is wired correctly.",
                        "color": 6266213,
                    }
                ],
            }
        ), "application/json"
    body = _json(
        {"source": "fangs-orchestrator", "schema_version": "v1", "test": True, "notifier": name,
         "message": "notifier test from the fangs orchestrator"}
    )
    if template == "siem":
        return body + b"\n", "application/x-ndjson"
    return body, "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------
# Signatures


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """
    The C{X-Fangs-Signature} value: C{v1=} and the hex HMAC-SHA256 of
    C{"<timestamp>." + body}.
    """
    mac = hmac.new(secret, str(int(timestamp)).encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """
    The receiver's check (see C{docs/webhooks.md}): a fresh timestamp and a
    matching C{v1} signature, compared in constant time.
    """
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, int(timestamp), body)
    return any(hmac.compare_digest(expected, s.strip()) for s in signature.split(","))


# ---------------------------------------------------------------------------
# Delivery policy


def classify(code: Optional[int]) -> str:
    """
    One attempt's status from its HTTP status (None: transport error).
    Redirects are not followed, so a 3xx is permanent like other 4xx.
    """
    if code is None:
        return FAILED
    if 200 <= code < 300:
        return SENT
    if code in (408, 429) or code >= 500:
        return FAILED
    return PERMANENT


def backoff(attempt: int, rand: Callable[[], float] = _random.random) -> float:
    """
    Seconds to wait after failed attempt C{attempt} (1-based): 1 s x
    2^(attempt-1), +/-25% jitter, capped.
    """
    base = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    return min(BACKOFF_CAP, base * (0.75 + 0.5 * rand()))


def parseRetryAfter(value: Optional[bytes], now: float) -> Optional[float]:
    """
    C{Retry-After} as seconds from C{now}: delta-seconds or an HTTP date.
    None when absent or unreadable.
    """
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return min(RETRY_AFTER_CAP, float(text))
    try:
        when = stringToDatetime(text.encode("latin-1"))
    except (ValueError, IndexError, KeyError):
        return None
    return min(RETRY_AFTER_CAP, max(0.0, when - now))


def resolveURL(url: str, environ: Mapping[str, str], policy: Optional[TargetPolicy] = None) -> str:
    """
    The target's URL, read from the environment when it is a C{${NAME}}
    (a Slack or Discord webhook URL is itself a secret), and checked.

    @raise DeliveryError: the variable is missing.
    @raise BadRequest: the URL is not acceptable.
    """
    policy = policy if policy is not None else TargetPolicy()
    ref = _ENV_REF.match(url)
    if ref:
        if ref.group(1) not in policy.env:
            raise DeliveryError("url: environment variable %s is not listed in the config's notifiers.env" % (ref.group(1),))
        url = environ.get(ref.group(1), "")
        if not url:
            raise DeliveryError("url: environment variable %s is not set" % (ref.group(1),))
    return checkURL(url, policy)


def requestHeaders(
    target: Mapping[str, Any], body: bytes, contentType: str, now: float, environ: Mapping[str, str],
    policy: Optional[TargetPolicy] = None,
) -> Dict[str, List[str]]:
    """
    The headers of one attempt.  Custom headers first (a C{${NAME}} value is
    read from the environment), then ours, which they cannot override.

    @raise DeliveryError: a named environment variable is missing.
    """
    headers: Dict[str, List[str]] = {"User-Agent": [USER_AGENT]}
    for k, v in (target.get("headers") or {}).items():
        ref = _ENV_REF.match(v)
        if ref:
            if policy is not None and ref.group(1) not in policy.env:
                raise DeliveryError("header %s: environment variable %s is not listed in the config's notifiers.env" % (k, ref.group(1)))
            v = environ.get(ref.group(1), "")
            if not v:
                raise DeliveryError("header %s: environment variable %s is not set" % (k, ref.group(1)))
        headers[k] = [v]
    headers["Content-Type"] = [contentType]
    secretEnv = target.get("secret_env")
    if secretEnv and target.get("template") in SIGNED_TEMPLATES:
        if policy is not None and secretEnv not in policy.env:
            raise DeliveryError("signing secret: environment variable %s is not listed in the config's notifiers.env" % (secretEnv,))
        secret = environ.get(secretEnv, "")
        if not secret:
            raise DeliveryError("signing secret: environment variable %s is not set" % (secretEnv,))
        ts = int(now)
        headers["X-Fangs-Timestamp"] = [str(ts)]
        headers["X-Fangs-Signature"] = [sign(secret.encode("utf-8"), ts, body)]
    return headers


# ---------------------------------------------------------------------------
# The delivery loop


class NotifierService(service.Service):
    """
    Sends due outbox rows; one attempt, one C{deliveries} row.

    @param http: a treq-like client (C{request(method, url, data=,
        headers=, timeout=, reactor=, allow_redirects=)}); the orchestrator
        gives it its own connection pool.
    """

    name = "notifier"

    def __init__(
        self,
        clock: IReactorTime,
        store: Any,
        http: Any,
        environ: Optional[Mapping[str, str]] = None,
        metrics: Any = None,
        rand: Callable[[], float] = _random.random,
        interval: float = POLL_INTERVAL,
        maxAttempts: int = MAX_ATTEMPTS,
        concurrency: int = CONCURRENCY,
        timeout: float = TIMEOUT,
        pool: Any = None,
        policy: Optional[TargetPolicy] = None,
        resolver: Optional[Callable[[str], Any]] = None,
        httpFor: Optional[Callable[[str], Any]] = None,
    ) -> None:
        self._pool = pool  # closed at stop
        #: Where messages may go; the default refuses every non-public address.
        self.policy = policy if policy is not None else TargetPolicy()
        #: C{resolver(host)}: a Deferred of the host's addresses (DNS at
        #: delivery time, so a name rebound to a private address is refused).
        self._resolver = resolver
        #: C{httpFor(address)}: a client that connects to exactly that
        #: checked address (no second DNS lookup); None: use C{http}.
        self._httpFor = httpFor
        self._clock = clock
        self._store = store
        self._http = http
        self._environ = os.environ if environ is None else environ
        self._metrics = metrics
        self._rand = rand
        self.interval = interval
        self.maxAttempts = maxAttempts
        self.concurrency = concurrency
        self.timeout = timeout
        self._loop: Optional[LoopingCall] = None
        self._pass: Optional[Deferred] = None
        self._again = False
        self._soon: Optional[IDelayedCall] = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.wake)
        self._loop.clock = self._clock
        # Rows left pending by a previous process are sent by the first pass.
        self._loop.start(self.interval, now=True).addErrback(lambda f: log.failure("notifier timer stopped", f))

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        # Let an attempt in flight finish and be recorded (bounded by the
        # request timeout) before the store closes.
        done: Deferred = Deferred()
        if self._pass is None:
            done.callback(None)
        else:
            self._pass.addBoth(lambda r: done.callback(None))
        if self._pool is not None:
            done.addCallback(lambda _: self._pool.closeCachedConnections())
        return done

    def wake(self, *_: Any) -> None:
        """
        Send whatever is due now.  Safe to call any time (an analysis
        listener, the timer): one pass runs at a time, a wake during a pass
        runs another after it.
        """
        if not self.running:
            return
        if self._pass is not None:
            self._again = True
            return
        self._again = False
        d = Deferred.fromCoroutine(self._sendDue())
        self._pass = d
        d.addErrback(lambda f: log.failure("notification pass failed", f))
        d.addBoth(self._passDone)

    def _passDone(self, _: Any) -> None:
        self._pass = None
        if self._again:
            self.wake()

    def nowNs(self) -> int:
        return int(self._clock.seconds() * 1_000_000_000)

    async def _sendDue(self) -> None:
        while self.running:
            rows = await self._store.dueNotifications(self.nowNs(), self.concurrency)
            if not rows:
                break
            await DeferredList([Deferred.fromCoroutine(self._attempt(row)) for row in rows], consumeErrors=True)
            if len(rows) < self.concurrency:
                break
        nextNs = await self._store.nextNotificationDue()
        if nextNs is not None and self.running:
            delay = max(0.0, (nextNs - self.nowNs()) / 1e9)
            if delay < self.interval:
                if self._soon is not None and self._soon.active():
                    self._soon.cancel()
                self._soon = self._clock.callLater(delay, self.wake)

    async def _attempt(self, row: Mapping[str, Any]) -> None:
        """
        One attempt at one row.  Never raises.
        """
        attempt = row["attempts"] + 1
        try:
            status, code, error, excerpt, retryAfter = await self._send(
                row, row["body"], row["content_type"], {"X-Fangs-Delivery": [str(row["id"])], "X-Fangs-Attempt": [str(attempt)]}
            )
            state, nextNs = status, None
            if status == FAILED:
                if attempt >= self.maxAttempts:
                    state = DEAD
                    error = (error + "; " if error else "") + "giving up after %d attempts" % (attempt,)
                else:
                    state = PENDING
                    delay = max(backoff(attempt, self._rand), retryAfter or 0.0)
                    nextNs = self.nowNs() + int(delay * 1e9)
            recorded = await self._store.recordDelivery(
                row["id"], attempt, self.nowNs(), status, code, error, excerpt, state, nextNs
            )
            if self._metrics is not None:
                self._metrics.notifications.labels(row["template"], status).inc()
            log.info(
                "notification {outbox_id} ({notifier}, run {run_id}) attempt {attempt}: {status} {code} {error}",
                outbox_id=row["id"],
                notifier=row["notifier_name"],
                run_id=row["run_id"],
                attempt=attempt,
                status=status,
                code=code or "-",
                error=error,
            )
            if not recorded:
                log.warn("notification {outbox_id} changed meanwhile; attempt not recorded", outbox_id=row["id"])
        except Exception:
            log.failure("notification {outbox_id} attempt {attempt} failed", outbox_id=row.get("id"), attempt=attempt)

    async def _send(
        self, target: Mapping[str, Any], body: bytes, contentType: str, extra: Optional[Dict[str, List[str]]] = None
    ) -> Tuple[str, Optional[int], str, str, Optional[float]]:
        """
        Send once: C{(status, http_status, error, response_excerpt,
        retry_after_seconds)}.  C{extra}: the message's id and attempt
        number (stable across retries, so receivers can drop duplicates).
        """
        now = self._clock.seconds()
        try:
            url = resolveURL(target["url"], self._environ, self.policy)
            headers = requestHeaders(target, body, contentType, now, self._environ, self.policy)
            headers.update(extra or {})
        except BadRequest as e:
            return PERMANENT, None, "url: " + e.message, "", None
        except DeliveryError as e:
            return PERMANENT, None, str(e), "", None
        host = urlsplit(url).hostname or ""
        addresses = literalAddresses(host)
        if not addresses:
            if self._resolver is None:
                return PERMANENT, None, "no resolver to check %s with" % (host,), "", None
            try:
                addresses = list(await self._resolver(host))
            except Exception as e:
                return FAILED, None, "dns: %s" % (_describe(e),), "", None
            if not addresses:
                return FAILED, None, "dns: %s has no address" % (host,), "", None
        for a in addresses:
            why = self.policy.refusal(a)
            if why is None and url.startswith("http:") and not self.policy.allowlisted(a):
                why = "%s is not in notifiers.allow_private (plain http:// goes to allowlisted addresses only)" % (a,)
            if why is not None:
                return PERMANENT, None, "url host %s refused: %s" % (host, why), "", None
        http = self._httpFor(addresses[0]) if self._httpFor is not None else self._http
        try:
            response = await http.request(
                "POST",
                url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                reactor=self._clock,
                allow_redirects=False,
            )
        except Exception as e:
            return FAILED, None, "transport: %s" % (_describe(e),), "", None
        code = response.code
        excerpt = await self._excerpt(response)
        status = classify(code)
        retryAfter = None
        if status == FAILED:
            retryAfter = parseRetryAfter(
                (response.headers.getRawHeaders(b"retry-after") or [None])[0], self._clock.seconds()
            )
        error = "" if status == SENT else "HTTP %d" % (code,)
        return status, code, error, excerpt, retryAfter

    async def _excerpt(self, response: Any) -> str:
        chunks: List[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            if size < EXCERPT:
                chunks.append(data[: EXCERPT - size])
            size += len(data)

        d = treq.collect(response, collect)
        d.addTimeout(self.timeout, self._clock)
        try:
            await d
        except Exception as e:
            return "(response body unreadable: %s)" % (_describe(e),)
        return b"".join(chunks).decode("utf-8", "replace")

    async def sendTest(self, target: Mapping[str, Any]) -> Dict[str, Any]:
        """
        Send the test message to a target (signed like real messages, custom
        headers applied).  Not recorded in the outbox.
        """
        body, ctype = renderTest(target["template"], target["name"])
        status, code, error, excerpt, _ = await self._send(target, body, ctype)
        if self._metrics is not None:
            self._metrics.notifications.labels(target["template"], status).inc()
        return {
            "name": target["name"],
            "ok": status == SENT,
            "status": status,
            "http_status": code,
            "error": error,
            "response_excerpt": excerpt[:512],
            "signed": bool(target.get("secret_env")) and target["template"] in SIGNED_TEMPLATES,
        }


def _describe(e: BaseException) -> str:
    text = str(e) or e.__class__.__name__
    reasons = getattr(e, "reasons", None)  # treq/twisted ResponseFailed and friends
    if reasons:
        text = "; ".join(str(getattr(r, "value", r)) for r in reasons) or text
    return _cut(text, 300)


# ---------------------------------------------------------------------------
# Connecting to checked addresses only


def _thd_resolve(host: str) -> List[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    seen: List[str] = []
    for info in infos:
        a = info[4][0]
        if a not in seen:
            seen.append(a)
    return seen


def threadResolver(reactor: Any) -> Callable[[str], Any]:
    """
    C{resolver(host)}: the system resolver on the reactor's thread pool.
    """
    from twisted.internet.threads import deferToThreadPool

    def resolve(host: str) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), _thd_resolve, host)

    return resolve


def pinnedClients(reactor: Any, pool: Any, timeout: float = TIMEOUT) -> Callable[[str], Any]:
    """
    C{httpFor(address)}: a treq client whose every connection goes to
    C{address} (the one just checked), with TLS verified against the URL's
    host name.
    """
    from treq.client import HTTPClient
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
    from twisted.internet.ssl import optionsForClientTLS
    from twisted.web.client import Agent
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    @implementer(IAgentEndpointFactory)
    class Pinned:
        def __init__(self, address: str) -> None:
            self.address = address

        def endpointForURI(self, uri: Any) -> Any:
            cls = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
            endpoint = cls(reactor, self.address, uri.port, timeout=timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(optionsForClientTLS(uri.host.decode("ascii")), endpoint)
            return endpoint

    def httpFor(address: str) -> Any:
        return HTTPClient(Agent.usingEndpointFactory(reactor, Pinned(address), pool=pool))

    return httpFor
