"""
Matchers shared by the allowlist and the differ: canonical paths and path
prefixes, exec globs, host names, IP addresses, destinations, CIDR sets and
the provider ranges (CDN and hosting ranges anyone can rent).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any, Iterable, List, Optional, Tuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


# Paths


def canonicalPath(path: str) -> str:
    """
    Lexically canonicalise a path: collapse C{//}, drop C{.} segments, resolve
    C{..} against the preceding segment, drop a trailing slash.  C{..} above
    the root stays at the root (C{/tmp/../../etc} is C{/etc}); a relative
    path stays relative (C{a/../../b} is C{../b}).  No symlink resolution.

    The common case (nothing to do) is a handful of substring tests.
    """
    if not (
        "//" in path
        or "/./" in path
        or "/../" in path
        or path.endswith(("/", "/.", "/.."))
        or path.startswith(("./", "../"))
        or path in (".", "..")
    ):
        return path
    absolute = path.startswith("/")
    parts: List[str] = []
    for segment in path.split("/"):
        if not segment or segment == ".":
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append("..")
            continue
        parts.append(segment)
    joined = "/".join(parts)
    if absolute:
        return "/" + joined
    return joined or "."


class PathPrefixes:
    """
    A set of path prefixes with segment semantics: a prefix C{P} (with or
    without a trailing slash) covers C{P} itself and every path below
    C{P/}.  C{/} covers every absolute path.
    """

    __slots__ = ("_exact", "_starts", "_all")

    def __init__(self, prefixes: Iterable[str] = ()) -> None:
        exact = set()
        starts = set()
        everything = False
        for prefix in prefixes:
            canonical = canonicalPath(prefix)
            if canonical == "/":
                everything = True
                continue
            exact.add(canonical)
            starts.add(canonical + "/")
        self._exact = frozenset(exact)
        self._starts = tuple(sorted(starts))
        self._all = everything

    def __bool__(self) -> bool:
        return bool(self._exact) or self._all

    def covers(self, path: str) -> bool:
        if self._all:
            return path.startswith("/")
        return path in self._exact or (bool(self._starts) and path.startswith(self._starts))

    def coversExactly(self, path: str) -> bool:
        """
        Whether C{path} is itself one of the prefixes (no directory match).
        """
        return path in self._exact


class ExecMatcher:
    """
    Exec allow entries: exact binary paths, and directory prefixes (values
    ending in C{/}) that cover every binary below them.
    """

    __slots__ = ("_exact", "_starts")

    def __init__(self, values: Iterable[str] = ()) -> None:
        exact = set()
        starts = set()
        for value in values:
            if value.endswith("/"):
                canonical = canonicalPath(value)
                starts.add("/" if canonical == "/" else canonical + "/")
            else:
                exact.add(canonicalPath(value))
        self._exact = frozenset(exact)
        self._starts = tuple(sorted(starts))

    def covers(self, path: str) -> bool:
        return path in self._exact or (bool(self._starts) and path.startswith(self._starts))


# ---------------------------------------------------------------------------
# Host names


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})\Z")


def normalizeHostName(name: str) -> str:
    """
    Trim, lower-case and drop one trailing dot: the form both DNS and SNI
    fingerprints and C{dns}/C{sni} entries are compared in.
    """
    name = name.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    return name


class NameMatcher:
    """
    Exact names plus C{*.suffix} wildcards (one or more labels in front).
    """

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, values: Iterable[str] = ()) -> None:
        exact = set()
        suffixes = set()
        for value in values:
            value = normalizeHostName(value)
            if value.startswith("*."):
                suffixes.add(value[1:])
            else:
                exact.add(value)
        self._exact = frozenset(exact)
        self._suffixes = tuple(sorted(suffixes))

    def covers(self, name: str) -> bool:
        if name in self._exact:
            return True
        if self._suffixes and name.endswith(self._suffixes):
            # "a.example.com" ends with ".example.com"; ".example.com" alone
            # (an empty label) does not count.
            for suffix in self._suffixes:
                if name.endswith(suffix) and len(name) > len(suffix):
                    return True
        return False


# ---------------------------------------------------------------------------
# Addresses


@functools.lru_cache(maxsize=1 << 14)
def parseIP(text: str) -> Optional[IPAddress]:
    """
    Parse an IP address as the sensor prints it (Go's C{net.IP.String()}),
    tolerating brackets and surrounding space.  IPv4-mapped IPv6 addresses
    become IPv4.  C{None} when it is not an address.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def formatDestination(ip: str, port: Any) -> str:
    """
    C{ip:port} for IPv4, C{[ip]:port} for IPv6 (compressed form), so the
    port is never ambiguous.  An unparseable IP is kept as given (trimmed),
    bracketed when it contains a colon.  A missing or non-integer port is 0.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        port = 0
    address = parseIP(ip)
    if address is None:
        host = ip.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if ":" in host:
            return "[%s]:%d" % (host, port)
        return "%s:%d" % (host, port)
    if address.version == 6:
        return "[%s]:%d" % (address.compressed, port)
    return "%s:%d" % (address.compressed, port)


def splitDestination(value: str) -> Tuple[str, int]:
    """
    The inverse of L{formatDestination}: C{(host, port)}; port -1 if absent.
    """
    host, sep, port = value.rpartition(":")
    if not sep or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        return value, -1
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return host, int(port)
    except ValueError:
        return value, -1


class CIDRSet:
    """
    A set of networks with a fast membership test on integer ranges.  Each
    network carries a label (the provider name, or the entry value).
    """

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Iterable[Tuple[str, str]] = ()) -> None:
        v4: List[Tuple[int, int, str]] = []
        v6: List[Tuple[int, int, str]] = []
        for label, cidr in networks:
            network = ipaddress.ip_network(cidr, strict=False)
            mask = int(network.netmask)
            row = (int(network.network_address), mask, label)
            (v4 if network.version == 4 else v6).append(row)
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def find(self, address: Optional[IPAddress]) -> Optional[str]:
        """
        The label of the first network containing C{address}, or C{None}.
        """
        if address is None:
            return None
        table = self._v4 if address.version == 4 else self._v6
        number = int(address)
        for network, mask, label in table:
            if number & mask == network:
                return label
        return None


#: Published ranges of the large CDNs / code hosts.  IPv4 from the reference
#: (refreshed 2026-05-22); IPv6 from the providers' published lists.
PROVIDER_CIDRS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    (
        "Cloudflare",
        (
            "103.21.244.0/22", "103.22.200.0/22", "103.31.4.0/22", "104.16.0.0/13",
            "104.24.0.0/14", "108.162.192.0/18", "131.0.72.0/22", "141.101.64.0/18",
            "162.158.0.0/15", "172.64.0.0/13", "173.245.48.0/20", "188.114.96.0/20",
            "190.93.240.0/20", "197.234.240.0/22", "198.41.128.0/17",
            "2400:cb00::/32", "2606:4700::/32", "2803:f800::/32", "2405:b500::/32",
            "2405:8100::/32", "2a06:98c0::/29", "2c0f:f248::/32",
        ),
    ),
    (
        "GitHub",
        (
            "140.82.112.0/20", "143.55.64.0/20", "185.199.108.0/22", "192.30.252.0/22",
            "2606:50c0::/32",
        ),
    ),
    (
        "Google",
        (
            "142.250.0.0/15", "172.217.0.0/16", "216.58.192.0/19", "172.253.0.0/16",
            "74.125.0.0/16",
            "2607:f8b0::/32", "2a00:1450::/32", "2404:6800::/32", "2800:3f0::/32",
            "2c0f:fb50::/32", "2001:4860::/32",
        ),
    ),
    (
        "Fastly",
        (
            "151.101.0.0/16", "199.232.0.0/16",
            "2a04:4e40::/32", "2a04:4e42::/32",
        ),
    ),
    (
        "CloudFront",
        (
            "13.32.0.0/15", "13.224.0.0/14", "52.84.0.0/15", "54.182.0.0/16",
            "54.192.0.0/16", "54.230.0.0/16", "99.86.0.0/16", "204.246.164.0/22",
            "2600:9000::/28",
        ),
    ),
)

PROVIDERS = CIDRSet(
    (provider, cidr) for provider, cidrs in PROVIDER_CIDRS for cidr in cidrs
)


@functools.lru_cache(maxsize=1 << 14)
def providerFor(ip: Union[str, IPAddress, None]) -> Optional[str]:
    """
    The provider whose published range contains C{ip}, or C{None}.
    """
    if isinstance(ip, str):
        ip = parseIP(ip)
    return PROVIDERS.find(ip)
