"""
Manifest deltas: what the registry itself says changed between a release
and the one before it.  Pure logic, no I/O.

The watcher keeps, per release, the parts of its packument entry that
matter (L{fangs.npmregistry.manifestOf}) and compares each new release with its predecessor
(L{manifestDeltas}).  Each delta becomes a deviation of the release's run,
shown beside the behaviour deviations:

==============================  ========  ====================================
category                        severity  when
==============================  ========  ====================================
C{pkg_new_install_script}       high      a lifecycle script (preinstall,
                                          install, postinstall, prepare) that
                                          the previous release did not have
C{pkg_changed_install_script}   high      ... whose command changed
C{pkg_git_dependency}           high      a dependency (direct, optional,
                                          peer) given as a git or URL spec,
                                          new or changed
C{pkg_new_dependency}           medium    a new dependency that has install
                                          scripts itself (or could not be
                                          checked); C{low} otherwise
C{pkg_changed_bin}              medium    C{bin} added, removed or changed
C{pkg_removed_repository}       medium    C{repository} removed
C{pkg_new_maintainer}           medium    published by an account that was
                                          neither a maintainer nor the
                                          publisher of the previous release
==============================  ========  ====================================
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional

from fangs.npmregistry import DEP_KINDS, LIFECYCLE, manifestOf  # noqa: F401 (manifestOf: what deltas compare)

NEW_INSTALL_SCRIPT = "pkg_new_install_script"
CHANGED_INSTALL_SCRIPT = "pkg_changed_install_script"
GIT_DEPENDENCY = "pkg_git_dependency"
NEW_DEPENDENCY = "pkg_new_dependency"
CHANGED_BIN = "pkg_changed_bin"
REMOVED_REPOSITORY = "pkg_removed_repository"
NEW_MAINTAINER = "pkg_new_maintainer"
CATEGORIES = (NEW_INSTALL_SCRIPT, CHANGED_INSTALL_SCRIPT, GIT_DEPENDENCY, NEW_DEPENDENCY, CHANGED_BIN,
              REMOVED_REPOSITORY, NEW_MAINTAINER)

_URL_SPEC = re.compile(r"^(git\+|git:|github:|gitlab:|bitbucket:|gist:|https?:|file:|[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(#.*)?$)")

#: C{hasInstallScript(name, spec)} -> True, False, or None (unknown).
InstallScriptCheck = Callable[[str, str], Optional[bool]]


def isURLSpec(spec: str) -> bool:
    return bool(_URL_SPEC.match(spec.strip()))


def manifestDeltas(
    previous: Optional[Mapping[str, Any]],
    current: Mapping[str, Any],
    hasInstallScript: InstallScriptCheck = lambda name, spec: None,
) -> List[Dict[str, str]]:
    """
    The deltas of C{current} against C{previous} (both L{manifestOf}
    results) as plain dicts C{category, value, severity, reason}, sorted.
    No previous release: no deltas.
    """
    if not previous or not current:
        return []
    out: List[Dict[str, str]] = []

    def add(category: str, value: str, severity: str, reason: str) -> None:
        out.append({"category": category, "value": value, "severity": severity, "reason": reason})

    full = previous.get("full", True) and current.get("full", True)
    if full:
        before = previous.get("scripts") or {}
        for phase, command in sorted((current.get("scripts") or {}).items()):
            if phase not in before:
                add(NEW_INSTALL_SCRIPT, "%s: %s" % (phase, command), "high",
                    "the registry's manifest adds a %s script the previous release did not have" % (phase,))
            elif before[phase] != command:
                add(CHANGED_INSTALL_SCRIPT, "%s: %s" % (phase, command), "high",
                    "the registry's manifest changes the %s script (was: %s)" % (phase, before[phase][:200]))
    elif current.get("has_install_script") and not previous.get("has_install_script"):
        add(NEW_INSTALL_SCRIPT, "install script", "high", "the release has install scripts; the previous one had none")
    for key, kind in DEP_KINDS:
        before = previous.get(key) or {}
        for name, spec in sorted((current.get(key) or {}).items()):
            if isURLSpec(spec) and before.get(name) != spec:
                add(GIT_DEPENDENCY, "%s@%s (%s)" % (name, spec, kind), "high",
                    "a %s dependency from a git repository or URL, outside the registry" % (kind,))
            elif name not in before and not any(name in (previous.get(k) or {}) for k, _ in DEP_KINDS):
                scripts = hasInstallScript(name, spec)
                if scripts is False:
                    add(NEW_DEPENDENCY, "%s@%s (%s)" % (name, spec, kind), "low", "new %s dependency" % (kind,))
                else:
                    add(NEW_DEPENDENCY, "%s@%s (%s)" % (name, spec, kind), "medium",
                        "new %s dependency %s" % (kind, "with install scripts of its own" if scripts else
                                                  "(whether it has install scripts could not be checked)"))
    if (previous.get("bin") or {}) != (current.get("bin") or {}):
        add(CHANGED_BIN, ", ".join("%s=%s" % kv for kv in sorted((current.get("bin") or {}).items())) or "(none)",
            "medium", "the executables the package installs (bin) changed")
    if full and previous.get("repository") and not current.get("repository"):
        add(REMOVED_REPOSITORY, previous["repository"], "medium", "the repository field was removed")
    publisher = current.get("publisher") or ""
    if full and publisher and previous.get("publisher"):
        known = set(previous.get("maintainers") or ()) | {previous.get("publisher")}
        if publisher not in known:
            add(NEW_MAINTAINER, publisher, "medium",
                "published by %s, who was not a maintainer or the publisher of the previous release" % (publisher,))
    out.sort(key=lambda d: (d["category"], d["value"]))
    return out
