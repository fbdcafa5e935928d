"""
The npm registry's documents, read without I/O: packument URLs, a
packument's releases (L{parsePackument}) and the parts of each version entry
that manifest deltas compare (L{manifestOf}), semantic-version order and
C{Retry-After}.  Shared by the orchestrator's watcher (its treq client,
L{fangs.orchestrator.registryclient}) and the CLI's blocking pre-flight, so
the CLI never imports the orchestrator.
"""

from __future__ import annotations

import email.utils
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import attrs

from fangs import npm, wire

DEFAULT_REGISTRY = "https://registry.npmjs.org"
ABBREVIATED = "application/vnd.npm.install-v1+json"
ACCEPT_ABBREVIATED = ABBREVIATED + "; q=1.0, application/json; q=0.8, */*"
ACCEPT_FULL = "application/json"

LIFECYCLE = ("preinstall", "install", "postinstall", "prepare")
DEP_KINDS = (("dependencies", "direct"), ("optionalDependencies", "optional"), ("peerDependencies", "peer"))


class RegistryError(Exception):
    """
    The registry could not give an answer; the message says why.
    """


class PackageNotFound(RegistryError):
    pass


class RateLimited(RegistryError):
    """
    The registry asked us to wait longer than we are willing to within one
    cycle; C{retryAfter} seconds from now it may answer.
    """

    def __init__(self, message: str, retryAfter: float) -> None:
        super().__init__(message)
        self.retryAfter = retryAfter


@attrs.frozen
class Release:
    version: str
    integrity: str = ""
    shasum: str = ""
    tarball: str = ""
    published_ns: Optional[int] = None
    dist_tags: Tuple[str, ...] = ()
    #: L{fangs.orchestrator.manifest.manifestOf} of the version entry.
    manifest: Dict[str, Any] = attrs.field(factory=dict, eq=False)

    def asDict(self) -> Dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Packument:
    name: str
    latest: Optional[str]
    releases: Tuple[Release, ...]
    etag: Optional[str]
    #: Whether per-version publish times were present (the abbreviated form
    #: may leave them out).
    has_times: bool
    #: Whether this is the full document (scripts, repository, maintainers).
    full: bool = False

    def release(self, version: str) -> Optional[Release]:
        for r in self.releases:
            if r.version == version:
                return r
        return None


def _strDict(value: Any) -> Dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(k, str) and isinstance(v, (str, int, float))}


def _names(people: Any) -> List[str]:
    out = []
    if isinstance(people, list):
        for p in people:
            if isinstance(p, dict) and isinstance(p.get("name"), str):
                out.append(p["name"])
            elif isinstance(p, str):
                out.append(p.split("<")[0].strip())
    return sorted(set(n for n in out if n))


def manifestOf(meta: Any) -> Dict[str, Any]:
    """
    The parts of one packument version entry that deltas compare; tolerant
    of any shape (missing or odd fields become empty).
    """
    if not isinstance(meta, dict):
        return {}
    scripts = {k: v for k, v in _strDict(meta.get("scripts")).items() if k in LIFECYCLE}
    bin_ = meta.get("bin")
    if isinstance(bin_, str):
        bin_ = {str(meta.get("name") or ""): bin_}
    publisher = meta.get("_npmUser")
    if isinstance(publisher, dict):
        publisher = publisher.get("name")
    repository = meta.get("repository")
    if isinstance(repository, dict):
        repository = repository.get("url") or ""
    out: Dict[str, Any] = {
        "scripts": scripts,
        "bin": _strDict(bin_),
        "repository": repository if isinstance(repository, str) else "",
        "maintainers": _names(meta.get("maintainers")),
        "publisher": publisher if isinstance(publisher, str) else "",
        "has_install_script": bool(meta.get("hasInstallScript")) or bool(scripts.keys() & {"preinstall", "install", "postinstall"}),
        # Whether this entry came from the full document (scripts,
        # repository, maintainers) or the abbreviated one.
        "full": "scripts" in meta or "maintainers" in meta or "_npmUser" in meta,
    }
    for key, _ in DEP_KINDS:
        out[key] = _strDict(meta.get(key))
    return out


def packumentURL(base: str, name: str) -> str:
    """
    C{@scope/pkg} becomes C{@scope%2fpkg}, as the registry expects.
    """
    return base.rstrip("/") + "/" + quote(name, safe="@").replace("%2F", "%2f")


def _timeNs(text: Any) -> Optional[int]:
    if not isinstance(text, str):
        return None
    try:
        when = wire.parseTimestamp(text)
    except wire.WireError:
        return None
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def parsePackument(doc: Any, name: str, etag: Optional[str] = None) -> Packument:
    """
    The releases in a (full or abbreviated) packument.  Versions that are not
    exact semantic versions, or carry no C{dist}, are skipped; a malformed
    document raises L{RegistryError}.
    """
    if not isinstance(doc, dict):
        raise RegistryError("packument for %s is not a JSON object" % (name,))
    versions = doc.get("versions")
    if not isinstance(versions, dict):
        raise RegistryError("packument for %s has no versions object" % (name,))
    tags = doc.get("dist-tags") if isinstance(doc.get("dist-tags"), dict) else {}
    tagsOf: Dict[str, List[str]] = {}
    for tag, version in tags.items():
        if isinstance(version, str):
            tagsOf.setdefault(version, []).append(tag)
    times = doc.get("time") if isinstance(doc.get("time"), dict) else {}
    releases = []
    for version, meta in versions.items():
        try:
            npm.checkVersion(version)
        except ValueError:
            continue
        if not isinstance(meta, dict):
            continue
        dist = meta.get("dist") if isinstance(meta.get("dist"), dict) else {}

        def s(key: str) -> str:
            v = dist.get(key)
            return v if isinstance(v, str) else ""

        releases.append(
            Release(
                version=version,
                integrity=s("integrity"),
                shasum=s("shasum"),
                tarball=s("tarball"),
                published_ns=_timeNs(times.get(version)),
                dist_tags=tuple(sorted(tagsOf.get(version, ()))),
                manifest=manifestOf(meta),
            )
        )
    latest = tags.get("latest") if isinstance(tags.get("latest"), str) else None
    full = any(r.manifest.get("full") for r in releases)
    return Packument(name=name, latest=latest, releases=tuple(releases), etag=etag, has_times=bool(times), full=full)


_NUM = re.compile(r"^\d+$")


def versionKey(version: str) -> Tuple[Any, ...]:
    """
    Semantic-version precedence as a sort key (pre-releases before their
    release; build metadata ignored).
    """
    core, _, pre = version.split("+", 1)[0].partition("-")
    try:
        nums = tuple(int(x) for x in core.split("."))
    except ValueError:
        return ((0, 0, 0), 0, ())
    preKey: Tuple[Any, ...] = tuple((0, int(p), "") if _NUM.match(p) else (1, 0, p) for p in pre.split(".")) if pre else ()
    return (nums, 0 if pre else 1, preKey)


def releaseOrder(r: Dict[str, Any]) -> Tuple[Any, ...]:
    """
    Oldest first: by publish time when known, else by version precedence.
    """
    published = r.get("published_ns")
    return (published is None, published or 0, versionKey(r["version"]))


def parseRetryAfter(value: Optional[bytes], nowSeconds: float) -> Optional[float]:
    """
    Seconds to wait from a C{Retry-After} header (delta-seconds or an HTTP
    date), or None when absent or unreadable.
    """
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - nowSeconds)
