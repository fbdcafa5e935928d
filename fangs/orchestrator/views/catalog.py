"""
Views of what a tenant watches and accepts: packages, their baselines and
releases, and the allowlist.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import attrs

from fangs.orchestrator.views.runs import nsToTimestamp



# -- packages -------------------------------------------------------------------


@attrs.frozen
class PackageView:
    """
    A watched package and what its runs amount to.
    """

    name: str
    last_seen_version: Optional[str]
    runs: int
    baseline_runs: int
    pending_runs: int
    baseline_fingerprints: int
    added_at: Optional[str]
    last_checked_at: Optional[str]

    @staticmethod
    def fields(p: Dict[str, Any]) -> Dict[str, Any]:
        return dict(
            name=p["name"],
            last_seen_version=p["last_seen_version"],
            runs=p["runs"],
            baseline_runs=p["baseline_runs"],
            pending_runs=p["pending_runs"],
            baseline_fingerprints=p["baseline_fingerprints"],
            added_at=nsToTimestamp(p["added_ns"]),
            last_checked_at=nsToTimestamp(p["last_checked_ns"]),
        )

    @classmethod
    def of(cls, p: Dict[str, Any]) -> "PackageView":
        return cls(**cls.fields(p))


@attrs.frozen
class PackageAdded(PackageView):
    added: bool


@attrs.frozen
class PackageList:
    packages: List[PackageView]


@attrs.frozen
class BaselineFingerprint:
    """
    One fingerprint of a package's baseline, with how many runs showed it
    and the first and last of them.
    """

    category: str
    value: str
    actor: str
    occurrences: int
    events: int
    first_seen_run_id: str
    last_seen_run_id: str

    @classmethod
    def of(cls, r: Dict[str, Any]) -> "BaselineFingerprint":
        return cls(**{f.name: r[f.name] for f in attrs.fields(cls)})


@attrs.frozen
class BaselineView:
    package_name: str
    fingerprints: List[BaselineFingerprint]


@attrs.frozen
class ReleaseView:
    """
    A release the watcher recorded, and whether and as which run it was queued.
    """

    package_name: str
    version: str
    integrity: Optional[str]
    shasum: Optional[str]
    tarball: Optional[str]
    dist_tags: List[Any]
    seeded: bool
    queued: bool
    run_id: Optional[str]
    attempts: int
    last_error: Optional[str]
    #: What the registry's manifest changed against the previous release.
    deltas: List[Any]
    published_at: Optional[str]
    discovered_at: Optional[str]
    queued_at: Optional[str]

    @classmethod
    def of(cls, r: Dict[str, Any]) -> "ReleaseView":
        times = {"published_at": "published_ns", "discovered_at": "discovered_ns", "queued_at": "queued_ns"}
        return cls(**{f.name: nsToTimestamp(r[times[f.name]]) if f.name in times else r[f.name] for f in attrs.fields(cls)})


@attrs.frozen
class ReleasesView:
    """
    What the watcher knows of a package, and its releases newest first.
    """

    last_seen_version: Optional[str]
    etag: Optional[str]
    last_error: Optional[str]
    last_checked_at: Optional[str]
    next_check_at: Optional[str]
    package_name: str
    releases: List[ReleaseView]


# -- the allowlist ----------------------------------------------------------------


@attrs.frozen
class AllowEntryView:
    """
    One allowlist entry: behaviour a tenant accepts, globally or for one package.
    """

    id: str
    kind: str
    value: Any
    scope: str
    package_name: Optional[str]
    note: str
    source: str
    created_by: str
    created_at: Optional[str]

    @classmethod
    def of(cls, e: Dict[str, Any]) -> "AllowEntryView":
        return cls(
            id=e["id"], kind=e["kind"], value=e["value"], scope=e["scope"], package_name=e["package_name"],
            note=e["note"], source=e["source"], created_by=e["created_by"], created_at=nsToTimestamp(e["created_ns"]),
        )


@attrs.frozen
class AllowList:
    entries: List[AllowEntryView]
