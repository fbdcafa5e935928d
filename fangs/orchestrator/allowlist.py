"""
Allowlists: what the differ may ignore.  Pure logic, no Twisted, no I/O.

Entries
=======

An L{AllowEntry} has a C{kind}, a C{value}, a scope (C{global}, or
C{package} with a C{package_name}) and a free-text C{note}.  Kinds:

C{cidr}
    An IPv4 or IPv6 network (C{10.0.0.0/8}, C{2001:db8::/32}); a bare
    address means a single host (C{/32} or C{/128}).  Host bits must be zero
    (C{10.0.0.1/8} is rejected with a hint).  Suppresses
    C{net_new_destination} fingerprints whose IP is inside.

C{path}
    An absolute file or directory path.  It allows that path and everything
    below it, on path-segment boundaries: C{/usr/lib/} and C{/usr/lib} are
    equivalent, both allow C{/usr/lib}, C{/usr/lib/x.so} and
    C{/usr/lib/a/b}, and neither allows C{/usr/lib64/x}.  The value is
    canonicalised (C{.}, C{..}, C{//}) but otherwise kept as written (a
    trailing slash is kept for readability; it changes nothing).  Matched
    against the I{normalised} fingerprint value, so placeholders such as
    C{/proc/<PID>/} may be used.  Suppresses C{fs_new_path_read} and
    C{fs_new_path_write}.  B{Cred-tagged fingerprints are only suppressed by
    an entry naming exactly that path}: a directory entry such as C{/root/}
    never hides a read of C{/root/.ssh/id_rsa}; an entry C{/etc/passwd}
    does allow a cred-tagged read of C{/etc/passwd}.

C{sni}, C{dns}
    A host name, compared case-insensitively after trimming and dropping one
    trailing dot.  C{*.example.com} allows every name with at least one
    label in front of C{example.com} (C{a.example.com}, C{a.b.example.com})
    but not C{example.com} itself.  C{sni} suppresses C{net_new_https_host},
    C{dns} suppresses C{net_new_dns}; they are separate on purpose (allowing
    a TLS host does not allow arbitrary DNS lookups of it, and vice versa).

C{exec}
    An absolute binary path: exact match, or, when the value ends in C{/},
    every binary below that directory (segment semantics as for C{path}).
    Suppresses C{proc_new_exec}.

Validation
==========

L{validateEntry} returns C{None} or a one-line message suitable for an HTTP
400 body (unknown kind, empty value, invalid CIDR, non-absolute path, bad
host name, bad scope).  L{makeEntry} validates, normalises the value and
raises L{AllowlistError} with the same message.

Config-managed entries
======================

L{configEntries} turns the YAML C{allow:} section::

    allow:
      cidrs: [{value: 10.0.0.0/8, note: lab}]
      snis:  [{value: registry.npmjs.org}]
      paths: [{value: /usr/lib/, note: shared libraries}]
      dns:   [registry.npmjs.org]          # a plain string is fine too
      execs: [{value: /usr/bin/}]

into global entries whose ids are deterministic: C{cfg} + the first 12 hex
digits of SHA-256(C{kind|value}) over the I{normalised} value.  Invalid
values and unknown section keys raise L{AllowlistError} (the orchestrator
should refuse to start rather than silently ignore a typo).  Duplicates
(same kind and normalised value) keep the first occurrence.
L{planConfigSync} compares them with the C{cfg…} rows already stored and
says what to insert, whose note to update and which ids to delete.

Matching
========

L{Allowlist} compiles the entries that apply to one package (all global
ones plus the package's own) into fast matchers.  Stored entries that fail
validation are skipped and listed in C{Allowlist.invalid} for logging.

Provider CIDRs
==============

L{PROVIDER_CIDRS} lists the published IPv4 and IPv6 ranges of Cloudflare,
GitHub, Google, Fastly and Amazon CloudFront.  The differ applies them only
to a connect destination whose connecting process also sent a DNS query or
a TLS SNI in the same run (see L{fangs.orchestrator.differ}); raw-IP
traffic into a CDN from a process that never named a host stays visible.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import attrs

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

KIND_CIDR = "cidr"
KIND_PATH = "path"
KIND_SNI = "sni"
KIND_DNS = "dns"
KIND_EXEC = "exec"
KINDS = (KIND_CIDR, KIND_PATH, KIND_SNI, KIND_DNS, KIND_EXEC)

SCOPE_GLOBAL = "global"
SCOPE_PACKAGE = "package"
SCOPES = (SCOPE_GLOBAL, SCOPE_PACKAGE)

CONFIG_ID_PREFIX = "cfg"

#: YAML key under C{allow:} -> entry kind.
CONFIG_SECTIONS: Mapping[str, str] = {
    "cidrs": KIND_CIDR,
    "snis": KIND_SNI,
    "paths": KIND_PATH,
    "dns": KIND_DNS,
    "execs": KIND_EXEC,
}


class AllowlistError(ValueError):
    """
    An allowlist entry or config section that cannot be used.  The message is
    one line, meant for an operator (HTTP 400 body, startup error).
    """


@attrs.frozen
class AllowEntry:
    """
    One allowlist row, as stored.  C{value} is normalised (see L{makeEntry}).
    """

    id: str
    kind: str
    value: str
    scope: str = SCOPE_GLOBAL
    package_name: str = ""
    note: str = ""

    def appliesTo(self, packageName: str) -> bool:
        if self.scope == SCOPE_GLOBAL:
            return True
        return self.scope == SCOPE_PACKAGE and self.package_name == packageName


# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# Validation


def normalizeEntryValue(kind: str, value: Any) -> str:
    """
    The stored form of an entry value, or L{AllowlistError} saying why the
    value is unusable.
    """
    if kind not in KINDS:
        raise AllowlistError(
            "unknown allowlist kind %r (expected one of %s)" % (kind, ", ".join(KINDS))
        )
    if not isinstance(value, str):
        raise AllowlistError("%s value must be a string" % (kind,))
    if not value.strip():
        raise AllowlistError("%s value must not be empty" % (kind,))
    if kind == KIND_CIDR:
        return _normalizeCIDR(value.strip())
    if kind in (KIND_PATH, KIND_EXEC):
        return _normalizePathValue(kind, value)
    return _normalizeName(kind, value)


def _normalizeCIDR(value: str) -> str:
    try:
        return ipaddress.ip_network(value, strict=True).compressed
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise AllowlistError(
            "invalid cidr %r: expected an address or network such as 10.0.0.0/8"
            " or 2001:db8::/32" % (value,)
        ) from None
    raise AllowlistError(
        "invalid cidr %r: host bits are set (did you mean %s?)" % (value, loose.compressed)
    )


def _normalizePathValue(kind: str, value: str) -> str:
    if "\x00" in value:
        raise AllowlistError("%s value must not contain NUL" % (kind,))
    if not value.startswith("/"):
        raise AllowlistError("%s value %r must be an absolute path (start with /)" % (kind, value))
    canonical = canonicalPath(value)
    if value.endswith("/") and canonical != "/":
        canonical += "/"
    return canonical


def _normalizeName(kind: str, value: str) -> str:
    name = normalizeHostName(value)
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            raise AllowlistError("%s value %r: a wildcard needs a domain after '*.'" % (kind, value))
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise AllowlistError(
            "%s value %r is not a host name (letters, digits, '-', '_' and dots;"
            " a wildcard only as a leading '*.')" % (kind, value)
        )
    return name


def validateEntry(
    kind: str, value: Any, scope: str = SCOPE_GLOBAL, package_name: str = ""
) -> Optional[str]:
    """
    C{None} if the entry is usable, else a one-line message for the operator.
    """
    try:
        normalizeEntryValue(kind, value)
        _checkScope(scope, package_name)
    except AllowlistError as e:
        return str(e)
    return None


def _checkScope(scope: str, package_name: str) -> None:
    if scope not in SCOPES:
        raise AllowlistError("unknown scope %r (expected global or package)" % (scope,))
    if scope == SCOPE_PACKAGE and not package_name:
        raise AllowlistError("package scope needs a package_name")
    if scope == SCOPE_GLOBAL and package_name:
        raise AllowlistError("global entries must not name a package")


def makeEntry(
    id: str,
    kind: str,
    value: Any,
    scope: str = SCOPE_GLOBAL,
    package_name: str = "",
    note: str = "",
) -> AllowEntry:
    """
    A validated entry with its value normalised; L{AllowlistError} if not
    usable.
    """
    normalized = normalizeEntryValue(kind, value)
    _checkScope(scope, package_name)
    return AllowEntry(
        id=id, kind=kind, value=normalized, scope=scope, package_name=package_name, note=note
    )


# ---------------------------------------------------------------------------
# Config-managed entries


def configEntryId(kind: str, value: str) -> str:
    """
    C{cfg} + 12 hex digits of SHA-256(C{kind|value}); C{value} normalised.
    """
    digest = hashlib.sha256(("%s|%s" % (kind, value)).encode("utf-8")).hexdigest()
    return CONFIG_ID_PREFIX + digest[:12]


def configEntries(section: Any) -> List[AllowEntry]:
    """
    The global entries described by the YAML C{allow:} section (see the
    module docstring).  C{None} or an empty mapping gives no entries.
    Raises L{AllowlistError} naming the offending item (C{allow.cidrs[2]}).
    """
    if section is None:
        return []
    if not isinstance(section, Mapping):
        raise AllowlistError("allow: must be a mapping of %s" % (", ".join(CONFIG_SECTIONS),))
    entries: List[AllowEntry] = []
    seen = set()
    for key, items in section.items():
        kind = CONFIG_SECTIONS.get(key)
        if kind is None:
            raise AllowlistError(
                "allow.%s: unknown section (expected one of %s)"
                % (key, ", ".join(CONFIG_SECTIONS))
            )
        if items is None:
            continue
        if not isinstance(items, list):
            raise AllowlistError("allow.%s: must be a list" % (key,))
        for index, item in enumerate(items):
            where = "allow.%s[%d]" % (key, index)
            if isinstance(item, str):
                value, note = item, ""
            elif isinstance(item, Mapping):
                value = item.get("value")
                note = item.get("note") or ""
                if not isinstance(note, str):
                    raise AllowlistError("%s: note must be a string" % (where,))
            else:
                raise AllowlistError("%s: expected {value, note} or a string" % (where,))
            try:
                normalized = normalizeEntryValue(kind, value)
            except AllowlistError as e:
                raise AllowlistError("%s: %s" % (where, e)) from None
            entryId = configEntryId(kind, normalized)
            if entryId in seen:
                continue
            seen.add(entryId)
            entries.append(AllowEntry(id=entryId, kind=kind, value=normalized, note=note))
    return entries


@attrs.frozen
class ConfigSync:
    """
    What to do to the stored C{cfg…} rows so they equal the config: insert
    these entries, update the note of these (same id, new note), delete
    these ids.
    """

    insert: Tuple[AllowEntry, ...]
    update: Tuple[AllowEntry, ...]
    delete: Tuple[str, ...]


def planConfigSync(existing: Iterable[AllowEntry], wanted: Iterable[AllowEntry]) -> ConfigSync:
    """
    Compare stored entries (any; only C{cfg…} ids are considered) with the
    entries from L{configEntries}.
    """
    stored = {e.id: e for e in existing if e.id.startswith(CONFIG_ID_PREFIX)}
    want = {e.id: e for e in wanted}
    insert = tuple(e for i, e in want.items() if i not in stored)
    update = tuple(e for i, e in want.items() if i in stored and stored[i] != e)
    delete = tuple(sorted(i for i in stored if i not in want))
    return ConfigSync(insert=insert, update=update, delete=delete)


# ---------------------------------------------------------------------------
# The compiled allowlist


class Allowlist:
    """
    The entries that apply to one package, compiled for matching.  Entries
    failing validation are skipped and kept in C{invalid} as
    C{(entry, message)} so the caller can log them.
    """

    def __init__(self, entries: Iterable[AllowEntry] = (), packageName: str = "") -> None:
        cidrs: List[Tuple[str, str]] = []
        paths: List[str] = []
        execs: List[str] = []
        names: Dict[str, List[str]] = {KIND_SNI: [], KIND_DNS: []}
        self.invalid: List[Tuple[AllowEntry, str]] = []
        self.entries: Tuple[AllowEntry, ...] = ()
        kept = []
        for entry in entries:
            if not entry.appliesTo(packageName):
                continue
            try:
                value = normalizeEntryValue(entry.kind, entry.value)
            except AllowlistError as e:
                self.invalid.append((entry, str(e)))
                continue
            kept.append(entry)
            if entry.kind == KIND_CIDR:
                cidrs.append((value, value))
            elif entry.kind == KIND_PATH:
                paths.append(value)
            elif entry.kind == KIND_EXEC:
                execs.append(value)
            else:
                names[entry.kind].append(value)
        self.entries = tuple(kept)
        self._cidrs = CIDRSet(cidrs)
        self._paths = PathPrefixes(paths)
        self._execs = ExecMatcher(execs)
        self._names = {kind: NameMatcher(values) for kind, values in names.items()}

    def cidrFor(self, ip: Union[str, IPAddress, None]) -> Optional[str]:
        """
        The operator CIDR containing C{ip}, or C{None}.
        """
        if isinstance(ip, str):
            ip = parseIP(ip)
        return self._cidrs.find(ip)

    def coversPath(self, path: str, cred: bool = False) -> bool:
        """
        Whether a (normalised) path is allowed; a cred-tagged path only by an
        entry naming exactly that path.
        """
        if cred:
            return self._paths.coversExactly(path)
        return self._paths.covers(path)

    def coversExec(self, path: str) -> bool:
        return self._execs.covers(path)

    def coversName(self, kind: str, name: str) -> bool:
        """
        C{kind} is C{sni} or C{dns}; C{name} already normalised.
        """
        return self._names[kind].covers(name)


EMPTY_ALLOWLIST = Allowlist()


__all__ = [
    "AllowEntry",
    "Allowlist",
    "AllowlistError",
    "CIDRSet",
    "ConfigSync",
    "EMPTY_ALLOWLIST",
    "ExecMatcher",
    "KINDS",
    "NameMatcher",
    "PROVIDER_CIDRS",
    "PathPrefixes",
    "canonicalPath",
    "configEntries",
    "configEntryId",
    "formatDestination",
    "makeEntry",
    "normalizeEntryValue",
    "normalizeHostName",
    "parseIP",
    "planConfigSync",
    "providerFor",
    "splitDestination",
    "validateEntry",
]
