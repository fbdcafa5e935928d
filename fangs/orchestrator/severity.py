"""
Severity rules: the flags a fingerprint carries and the rule table that
turns a category and its flags into a severity and a reason.
"""

from __future__ import annotations

from typing import AbstractSet, FrozenSet, Tuple

import attrs

from fangs.orchestrator.allowlist import PathPrefixes
from fangs.orchestrator.categories import (
    NET_DESTINATION,
    NET_DNS,
    NET_HTTPS_HOST,
    PROC_EXEC,
    FS_READ,
    FS_WRITE,
    NET_HTTP,
    NET_UDP,
    NET_EGRESS,
    PROC_IO_URING,
    PROC_DETACHED,
    CANARY,
    OUTBOUND_CATEGORIES,
    Severity,
)


# Severity rules

FLAG_CRED = "cred"
FLAG_NETWORK = "network"
FLAG_RAW_IP = "raw_ip"
FLAG_PROVIDER_RANGE = "provider_range"
FLAG_SCRIPT = "script"
FLAG_NPM = "npm"
FLAG_NPM_CONFIG = "npm_config"
FLAG_OWN_PACKAGE = "own_package"
FLAG_WRITABLE_EXEC = "writable_exec"
FLAG_DETACHED = "detached"
FLAG_TREE_OUTBOUND = "tree_outbound"
FLAG_TREE_CRED = "tree_cred"
FLAG_TREE_WRITABLE_EXEC = "tree_writable_exec"
FLAG_TREE_NETWORK = "tree_network"
FLAG_PROC_CRED = "process_cred"
FLAG_ACCOUNT_DB = "account_db"
FLAG_OUTSIDE_WRITE = "outside_write"
FLAG_NAMING_PROCESS = "naming_process"
ACCOUNT_DB_FILES = ("/etc/passwd", "/etc/group")
FLAGS = frozenset((
    FLAG_CRED, FLAG_NETWORK, FLAG_RAW_IP, FLAG_PROVIDER_RANGE, FLAG_SCRIPT, FLAG_NPM, FLAG_NPM_CONFIG,
    FLAG_OWN_PACKAGE, FLAG_WRITABLE_EXEC, FLAG_DETACHED, FLAG_TREE_OUTBOUND, FLAG_TREE_CRED,
    FLAG_TREE_WRITABLE_EXEC, FLAG_TREE_NETWORK, FLAG_PROC_CRED, FLAG_ACCOUNT_DB, FLAG_OUTSIDE_WRITE,
    FLAG_NAMING_PROCESS,
))

#: Where an install script has no business writing: home directories and
#: system configuration (shell startup files, autostart, cron, profile.d),
#: outside installed packages and npm's own cache.
PERSISTENCE_DIRS = PathPrefixes(("/root", "/home", "/etc", "/usr/local/bin", "/usr/bin", "/var/spool/cron"))


def _persistencePath(path: str) -> bool:
    return (
        PERSISTENCE_DIRS.covers(path)
        and "/node_modules/" not in path
        and "/.npm/" not in path
        and "/.cache/" not in path
    )


@attrs.frozen
class SeverityRule:
    category: str
    requires: FrozenSet[str]
    unless: FrozenSet[str]
    severity: Severity
    reason: str

    def matches(self, category: str, flags: AbstractSet[str]) -> bool:
        return (
            (self.category == "*outbound" and category in OUTBOUND_CATEGORIES or category == self.category)
            and self.requires <= flags
            and self.unless.isdisjoint(flags)
        )


def _rule(category: str, requires: str, unless: str, severity: Severity, reason: str) -> SeverityRule:
    return SeverityRule(
        category, frozenset(requires.split()), frozenset(unless.split()), severity, reason
    )


_L, _M, _H, _C = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL
_OUT = "*outbound"

#: First matching row wins.  C{tree_*} flags are chains: facts of the same
#: actor's process tree (one install script and all its descendants; or all
#: of npm; or all of "other").  C{{provider}} is the provider's name.
SEVERITY_RULES: Tuple[SeverityRule, ...] = (
    # category        requires                    unless          sev  reason
    _rule(CANARY,     "",                         "",             _C, "a planted credential (canary) left the sandbox"),
    _rule(FS_READ,    "cred tree_outbound",       "npm_config",   _C, "credential read and a new outbound destination in the same process tree"),
    _rule(FS_WRITE,   "cred tree_outbound",       "npm_config",   _C, "write to a credential path and a new outbound destination in the same process tree"),
    _rule(_OUT,       "tree_cred",                "",             _C, "new outbound destination from a process tree that read a credential"),
    _rule(FS_READ,    "cred npm_config npm",      "",             _L, "npm reads its own configuration"),
    _rule(FS_READ,    "cred account_db",          "script",       _L, "account database read by the container runtime or npm (user lookup)"),
    _rule(FS_READ,    "cred",                     "",             _H, "read of cred-tagged path"),
    _rule(FS_WRITE,   "cred",                     "",             _H, "write to cred-tagged path"),
    _rule(PROC_IO_URING, "",                      "",             _H, "io_uring used (its I/O is invisible to the sensor)"),
    _rule(PROC_DETACHED, "tree_network",          "",             _H, "detached process that reached the network"),
    _rule(PROC_DETACHED, "",                      "",             _M, "process left running after the install (detached)"),
    _rule(PROC_EXEC,  "writable_exec tree_outbound", "",          _H, "new executable from a writable directory, and a new outbound destination in the same tree"),
    _rule(_OUT,       "tree_writable_exec",       "",             _H, "new outbound destination from a process tree that ran an executable from a writable directory"),
    _rule(_OUT,       "detached",                 "",             _H, "new outbound destination from a detached process"),
    _rule(NET_DESTINATION, "raw_ip provider_range process_cred", "", _H, "connection into a {provider} range, no allowlisted or baselined name on the socket, by a process that read a credential"),
    _rule(NET_DESTINATION, "raw_ip",              "provider_range", _H, "connection to a raw IP outside every allowlist"),
    _rule(NET_DESTINATION, "raw_ip provider_range", "",           _M, "connection into a {provider} range without an allowlisted or baselined name (TLS SNI / HTTP Host) on that socket"),
    _rule(NET_DESTINATION, "",                    "",             _M, "new network destination"),
    _rule(NET_EGRESS, "raw_ip",                   "",             _H, "egress attempt to a raw IP"),
    _rule(NET_EGRESS, "",                         "",             _M, "new egress attempt"),
    _rule(NET_UDP,    "",                         "",             _M, "new UDP destination"),
    _rule(NET_DNS,    "",                         "",             _M, "new DNS name queried"),
    _rule(NET_HTTPS_HOST, "",                     "",             _M, "new TLS server name (SNI)"),
    _rule(NET_HTTP,   "",                         "",             _M, "new plain-HTTP host"),
    _rule(PROC_EXEC,  "writable_exec",            "",             _M, "new executable from a writable directory"),
    _rule(PROC_EXEC,  "",                         "",             _M, "new executable run"),
    _rule(FS_WRITE,   "own_package script",       "",             _L, "build output inside the script's own package directory"),
    _rule(FS_WRITE,   "outside_write script",     "",             _M, "install script wrote into a home or system directory (persistence?)"),
    _rule(FS_READ,    "",                         "",             _L, "new path read"),
    _rule(FS_WRITE,   "",                         "",             _L, "new path written"),
)  # fmt: skip


def classify(category: str, flags: AbstractSet[str], provider: str = "") -> Tuple[Severity, str]:
    for rule in SEVERITY_RULES:
        if rule.matches(category, flags):
            return rule.severity, rule.reason.replace("{provider}", provider or "provider")
    raise ValueError("no severity rule for category %r" % (category,))
