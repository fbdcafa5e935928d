"""
The npm packages a project depends on, read from its C{package-lock.json},
C{npm-shrinkwrap.json} or C{package.json}: what C{fangs package import}
watches.

Pure logic, no Twisted, no network.  Lockfiles name every package installed,
transitive ones included (lockfile versions 1, 2 and 3); a C{package.json}
names only the direct dependencies.  Only packages that come from the npm
registry are watched: links, workspaces, C{file:}, git and tarball URL
dependencies are reported as skipped, with the reason.  Aliases
(C{"npm:real-name@^1"}) are watched under the real name.

A malformed file raises L{LockfileError}, whose message is one line naming
the file and the place (a JSON line and column, or the key path).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import attrs

from fangs import npm

#: The dependency sections of a manifest, in the order they are reported.
DEPENDENCY_KEYS = ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies")

_NOT_REGISTRY = ("file:", "link:", "git:", "git+", "github:", "gitlab:", "bitbucket:", "gist:",
                 "http:", "https:", "workspace:", "portal:", "patch:")


class LockfileError(ValueError):
    """
    The file cannot be read as a lockfile or manifest; the message is one
    line naming the file and the place.
    """


@attrs.frozen
class Dependencies:
    """
    What a lockfile or manifest names.

    @ivar kind: C{"package-lock"}, C{"npm-shrinkwrap"} or C{"package.json"}.
    @ivar names: the registry package names, sorted, each once.
    @ivar skipped: C{(what, reason)} for every entry that is not a registry
        package (a link, a git or file dependency), sorted.
    """

    kind: str
    names: Tuple[str, ...]
    skipped: Tuple[Tuple[str, str], ...] = ()


def _where(path: List[str]) -> str:
    out = ""
    for part in path:
        out += "[%s]" % (json.dumps(part),) if not part.isidentifier() else ("." + part if out else part)
    return out or "the top level"


def _object(value: Any, source: str, path: List[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise LockfileError("%s: %s must be a JSON object, not %s" % (source, _where(path), _jsonType(value)))
    return value


def _jsonType(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _registryName(name: str, spec: Any, source: str, path: List[str]) -> Tuple[Optional[str], str]:
    """
    The registry package C{name} at C{spec} stands for, or C{(None, reason)}.
    """
    if spec is not None and not isinstance(spec, str):
        raise LockfileError("%s: %s must be a string, not %s" % (source, _where(path), _jsonType(spec)))
    spec = (spec or "").strip()
    if spec.startswith("npm:"):
        real = spec[4:]
        at = real.rfind("@")
        name = real[:at] if at > 0 else real
        spec = ""
    elif spec.startswith(_NOT_REGISTRY) or ("/" in spec and not spec.startswith("@") and ":" not in spec
                                           and not any(c in spec for c in "<>=^~ *")):
        # "user/repo" is a GitHub shorthand.
        return None, "not from the npm registry (%s)" % (spec,)
    try:
        return npm.checkPackageName(name), ""
    except ValueError as e:
        raise LockfileError("%s: %s: %s" % (source, _where(path), e)) from None


def _fromResolved(entry: Mapping[str, Any]) -> Optional[str]:
    resolved = entry.get("resolved")
    if isinstance(resolved, str) and resolved and not resolved.startswith(("http://", "https://")):
        return "not from the npm registry (%s)" % (resolved,)
    if isinstance(resolved, str) and resolved.startswith(("http://", "https://")) and "/-/" not in resolved:
        return "not from the npm registry (%s)" % (resolved,)
    return None


def _packagesV2(packages: Mapping[str, Any], source: str) -> Iterator[Tuple[str, Optional[str], str]]:
    for key, entry in packages.items():
        if key == "":
            continue
        path = ["packages", key]
        entry = _object(entry, source, path)
        if "node_modules/" not in key:
            # The project's own folder (a workspace, a file: dependency):
            # what it depends on is listed under node_modules/ too.
            continue
        installed = key.rsplit("node_modules/", 1)[1]
        if entry.get("link"):
            yield installed, None, "a link to %s" % (entry.get("resolved", "a local folder"),)
            continue
        why = _fromResolved(entry)
        if why:
            yield installed, None, why
            continue
        name = entry.get("name", installed)
        if not isinstance(name, str):
            raise LockfileError("%s: %s must be a string, not %s" % (source, _where(path + ["name"]), _jsonType(name)))
        real, why = _registryName(name, None, source, path)
        yield installed, real, why


def _dependenciesV1(deps: Mapping[str, Any], source: str, path: List[str]) -> Iterator[Tuple[str, Optional[str], str]]:
    for name, entry in deps.items():
        here = path + [name]
        entry = _object(entry, source, here)
        version = entry.get("version")
        real, why = _registryName(name, version if isinstance(version, str) and version.startswith("npm:") else None,
                                  source, here)
        if isinstance(version, str) and version.startswith(_NOT_REGISTRY):
            real, why = None, "not from the npm registry (%s)" % (version,)
        elif real is not None:
            w = _fromResolved(entry)
            if w:
                real, why = None, w
        yield name, real, why
        nested = entry.get("dependencies")
        if nested is not None:
            yield from _dependenciesV1(_object(nested, source, here + ["dependencies"]), source, here + ["dependencies"])


def _manifest(doc: Mapping[str, Any], source: str) -> Iterator[Tuple[str, Optional[str], str]]:
    for section in DEPENDENCY_KEYS:
        deps = doc.get(section)
        if deps is None:
            continue
        deps = _object(deps, source, [section])
        for name, spec in deps.items():
            real, why = _registryName(name, spec, source, [section, name])
            yield name, real, why


def kindOf(filename: str) -> str:
    base = os.path.basename(filename)
    if base == "npm-shrinkwrap.json":
        return "npm-shrinkwrap"
    if base == "package.json":
        return "package.json"
    return "package-lock"


def parse(text: str, source: str = "package-lock.json") -> Dependencies:
    """
    The registry packages named by the lockfile or manifest C{text}; the kind
    follows the file name C{source} (a name other than C{package.json} or
    C{npm-shrinkwrap.json} is read as a lockfile unless it has neither
    C{lockfileVersion} nor C{packages}).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise LockfileError("%s: line %d column %d: not valid JSON (%s)" % (source, e.lineno, e.colno, e.msg)) from None
    doc = _object(doc, source, [])
    kind = kindOf(source)
    if kind != "package.json" and "packages" not in doc and "lockfileVersion" not in doc:
        # Every lockfile npm ever wrote says its version: this is a manifest.
        kind = "package.json"
    if kind == "package.json":
        entries = _manifest(doc, source)
    else:
        version = doc.get("lockfileVersion", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise LockfileError("%s: lockfileVersion must be 1, 2 or 3, not %s" % (source, json.dumps(version)))
        if "packages" in doc:
            entries = _packagesV2(_object(doc["packages"], source, ["packages"]), source)
        elif "dependencies" in doc:
            entries = _dependenciesV1(_object(doc["dependencies"], source, ["dependencies"]), source, ["dependencies"])
        else:
            raise LockfileError("%s: a lockfile needs \"packages\" (lockfileVersion 2 or 3) or \"dependencies\"" % (source,))
    names: Dict[str, None] = {}
    skipped: Dict[Tuple[str, str], None] = {}
    for what, real, why in entries:
        if real is None:
            skipped[(what, why)] = None
        else:
            names[real] = None
    return Dependencies(kind=kind, names=tuple(sorted(names)), skipped=tuple(sorted(skipped)))


def read(filename: str) -> Dependencies:
    """
    L{parse} the file C{filename}; unreadable files raise L{LockfileError} too.
    """
    try:
        with open(filename, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise LockfileError("%s: cannot read it (%s)" % (filename, e.strerror or e)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LockfileError("%s: byte %d: not UTF-8 text" % (filename, e.start)) from None
    return parse(text, filename)
