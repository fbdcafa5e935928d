"""
Normalisation of paths, names and binaries before they are fingerprinted:
the reference's eight path rules (ref 3.3), in order.
"""

from __future__ import annotations

import re
from typing import Any

from fangs.orchestrator.allowlist import canonicalPath, normalizeHostName


# Normalisation

# The reference's eight rules, in order (ref §3.3), with C{\Z} for C{$} and
# rule 8 using a look-ahead so consecutive hex components all collapse.
_R1_PROC_PID = re.compile(r"^/proc/[0-9]+(/|\Z)")
_R2_TMP_RAND = re.compile(r"^/tmp/[a-zA-Z0-9._-]*-[0-9]{3,}([a-zA-Z0-9._-]*)")
_R3_DEBUG_LOG = re.compile(r"/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9_]+Z-debug-[0-9]+\.log\Z")
_R4_DATE_FILE = re.compile(r"/[0-9]{4}-[0-9]{2}-[0-9]{2}(\.[a-zA-Z]+)\Z")
_R5_CACACHE_CONTENT = re.compile(
    r"(/\.npm/_cacache/[^/]+/[a-zA-Z0-9]+)/[a-f0-9]{2}/[a-f0-9]{2}/[a-f0-9]+"
)
_R6_CACACHE_INDEX = re.compile(r"(/\.npm/_cacache/index-[^/]+)/[a-f0-9]{2}/[a-f0-9]{2}/[a-f0-9]+")
# Rule 7 widened: npm names its cacache temp entries with any random
# characters (C{tmp/jlNkTC}), not only hex.
_R7_CACACHE_TMP = re.compile(r"(/\.npm/_cacache/tmp)/[^/]+")
# Beyond the reference: random UUIDs anywhere in a path.
_R9_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_R8_LONG_HEX = re.compile(r"/[a-f0-9]{12,}(?=/|\Z)")


def _keepGroup(placeholder: str) -> Any:
    # A callable replacement: no template expansion on every sub() call.
    def replace(match: "re.Match[str]") -> str:
        return match.group(1) + placeholder

    return replace


def _prefixGroup(prefix: str) -> Any:
    def replace(match: "re.Match[str]") -> str:
        return prefix + match.group(1)

    return replace


_SUB_PID = _prefixGroup("/proc/<PID>")
_SUB_DATE = _prefixGroup("/<DATE>")
_SUB_SHA = _keepGroup("/<SHA256>")
_SUB_HASH = _keepGroup("/<HASH>")
_SUB_HEX = _keepGroup("/<HEX>")


def _applyRules(path: str) -> str:
    """
    The eight substitutions; each is gated by a cheap test that is true
    whenever the rule could match (tested against the ungated chain), so
    most paths only pay for rule 8.
    """
    if path.startswith("/proc/"):
        path = _R1_PROC_PID.sub(_SUB_PID, path)
    if path.startswith("/tmp/"):
        path = _R2_TMP_RAND.sub("/tmp/<RAND>", path)
    # Rules 3 and 4 can only match the last component (no "/" inside), which
    # must look like "dddd-dd-dd...".
    slash = path.rfind("/")
    if len(path) - slash > 11 and path[slash + 5] == "-" and path[slash + 8] == "-":
        if "-debug-" in path:
            path = _R3_DEBUG_LOG.sub("/<TIMESTAMP>-debug-<N>.log", path)
        path = _R4_DATE_FILE.sub(_SUB_DATE, path)
    if "/.npm/_cacache/" in path:
        path = _R5_CACACHE_CONTENT.sub(_SUB_SHA, path)
        if "/.npm/_cacache/index-" in path:
            path = _R6_CACACHE_INDEX.sub(_SUB_HASH, path)
        if "/.npm/_cacache/tmp/" in path:
            path = _R7_CACACHE_TMP.sub(_SUB_HEX, path)
    if path.count("-") >= 4:
        path = _R9_UUID.sub("<UUID>", path)
    return _R8_LONG_HEX.sub("/<HEX>", path)


def normalizePath(path: str) -> str:
    """
    Canonicalise (C{.}, C{..}, C{//}, trailing C{/}), then apply the
    reference's eight rules.
    """
    return _applyRules(canonicalPath(path))


def normalizeDNS(name: str) -> str:
    return normalizeHostName(name)


def normalizeSNI(name: str) -> str:
    return normalizeHostName(name)


def normalizeExec(binary: str) -> str:
    """
    Strip NULs and surrounding space; a value with a C{/} is a path and gets
    L{normalizePath} (so C{/tmp/npm-1234-x/run.sh} is stable across runs).
    """
    binary = binary.replace("\x00", "").strip()
    if "/" in binary:
        return normalizePath(binary)
    return binary
