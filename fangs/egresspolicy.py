"""
Egress policy names and the validation of allowed hosts, shared by the
runner's gateway (which enforces them), the orchestrator's configuration and
scan submission (which check them before a job exists) and the runner's
options.  Pure functions, no I/O; see docs/egress.md.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Dict, FrozenSet, Sequence

CONTAIN = "contain"
REGISTRY_ONLY = "registry-only"
OPEN = "open"
POLICIES = (CONTAIN, REGISTRY_ONLY, OPEN)

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")


class PolicyError(ValueError):
    """
    An egress policy or allowed host is not usable; the message says which.
    """


def normaliseName(name: str) -> str:
    return name.strip().rstrip(".").lower()


def parseAllowedHosts(entries: Sequence[str]) -> Dict[str, FrozenSet[int]]:
    """
    C{host} (ports 443 and 80) or C{host:port} entries, validated.
    """
    allowed: Dict[str, set] = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise PolicyError("allowed host %r is not a string" % (entry,))
        text = entry.strip().lower()
        if "://" in text:
            raise PolicyError("allowed host %r must be a host name, not a URL" % (entry,))
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket:
                raise PolicyError("allowed host %r has an unclosed [" % (entry,))
            sep, port = (":", rest[1:]) if rest.startswith(":") else ("", "")
        elif text.count(":") > 1:
            host, sep, port = text, "", ""  # a bare IPv6 address
        else:
            host, sep, port = text.rpartition(":")
            if not sep:
                host = text
        if not sep:
            ports = {443, 80}
        else:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise PolicyError("allowed host %r has a bad port" % (entry,))
            ports = {int(port)}
        host = host.rstrip(".")
        if _isAddress(host):
            # A registry reached by address (a private one): connections
            # whose original destination is that address are forwarded.
            host = str(ipaddress.ip_address(host))
        elif not _HOSTNAME.match(host):
            raise PolicyError("allowed host %r is not a host name or address" % (entry,))
        allowed.setdefault(host, set()).update(ports)
    return {h: frozenset(p) for h, p in allowed.items()}


def _isAddress(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
