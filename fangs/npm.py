"""
npm names and versions: validation and the sandbox install command.  Pure
functions shared by the orchestrator, the watcher and the CLI.
"""

from __future__ import annotations

import re
import shlex
from typing import List, Tuple

_NAME_PART = r"[a-z0-9][a-z0-9._~-]*"
_NAME = re.compile(r"^(?:@(%s)/)?(%s)$" % (_NAME_PART, _NAME_PART))
# Semantic version, exact (no ranges, tags or URLs).
_VERSION = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


class NameError_(ValueError):
    pass


def checkPackageName(name: str) -> str:
    """
    Return C{name} if it is a valid npm package name (scoped or not), else
    raise ValueError with a one-line explanation.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("package name is empty")
    if len(name) > 214:
        raise ValueError("package name %r is longer than 214 characters" % (name[:40] + "...",))
    if name != name.lower():
        raise ValueError("package name %r must be lower-case" % (name,))
    if not _NAME.match(name):
        raise ValueError(
            "%r is not a valid npm package name (letters, digits, - . _ ~, optionally @scope/name)" % (name,)
        )
    return name


def checkVersion(version: str) -> str:
    """
    Return C{version} if it is one exact semantic version, else raise
    ValueError (a range, a tag like C{latest}, or garbage).
    """
    if not isinstance(version, str) or not version:
        raise ValueError("version is empty")
    if not _VERSION.match(version):
        if any(c in version for c in "^~<>=*| xX") or version in ("latest", "next"):
            raise ValueError("%r is a range or tag; give one exact version like 1.2.3" % (version,))
        raise ValueError("%r is not a semantic version like 1.2.3" % (version,))
    return version


def splitSpec(spec: str) -> Tuple[str, str]:
    """
    C{"@scope/pkg@1.2.3"} -> C{("@scope/pkg", "1.2.3")}; no version -> "".
    """
    at = spec.rfind("@")
    if at > 0:
        return spec[:at], spec[at + 1 :]
    return spec, ""


def installCommand(package: str, version: str) -> List[str]:
    """
    The sandbox command that installs C{package@version} into an empty
    project with its install scripts forced on, prints the last 40 lines of
    npm's output and exits with npm's own status (the reference's
    C{| tail; sleep 2} made every failure exit 0).  It does not wait for
    stragglers: the sandbox's init keeps observing every process the install
    left behind until it ends (or the job's duration does).

    Install scripts are forced on for npm 11 (C{--ignore-scripts=false}, and
    C{--dangerously-allow-all-scripts} for its C{allowScripts} policy) and
    for npm 12, where scripts become opt-in.  The spec is validated, then
    reaches the shell quoted with C{shlex.quote} after C{--}, never spliced
    and never readable as an option.  C{dash} has no C{pipefail}, so npm's
    status travels through a file.
    """
    checkPackageName(package)
    checkVersion(version)
    return installSpecCommand("%s@%s" % (package, version))


def installSpecCommand(spec: str) -> List[str]:
    """
    L{installCommand} for any npm install spec (a local tarball path, say),
    quoted as one shell word.
    """
    spec = shlex.quote(spec)
    npm = (
        "npm install --no-audit --no-fund --no-update-notifier --ignore-scripts=false"
        " --dangerously-allow-all-scripts --foreground-scripts -- " + spec
    )
    status = "/tmp/.fangs-npm-status"
    script = (
        "cd /tmp && mkdir -p t && cd t && npm init -y >/dev/null 2>&1"
        " && { " + npm + " 2>&1; echo $? >" + status + "; } | tail -n 40;"
        " s=$(cat " + status + " 2>/dev/null || echo 1); exit ${s:-1}"
    )
    return ["sh", "-c", script]
