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

import hashlib
import ipaddress
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import attrs
from fangs.orchestrator.matchers import *  # noqa: F401,F403 (re-exported: callers use allowlist.X)
from fangs.orchestrator.matchers import (  # noqa: F401
    IPAddress,
    canonicalPath,
    PathPrefixes,
    ExecMatcher,
    _LABEL,
    normalizeHostName,
    NameMatcher,
    parseIP,
    formatDestination,
    splitDestination,
    CIDRSet,
    PROVIDER_CIDRS,
    providerFor,
)

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
