"""
The npm watcher: every C{--watch-interval} it fetches each watched package's
packument and queues a sandbox scan of every version published since the
last poll, oldest first.

Unlike the reference it never loses a release: the release is recorded first
(with its integrity, shasum, tarball, publish time and dist-tags), and marked
queued only once its run is durably in the queue; a failed submit leaves it
waiting and the next cycle tries again (with the same idempotency key
C{watch:<pkg>@<version>}, so a retry after a half-failure never queues twice).

The first poll of a package seeds it: every existing version is recorded as
seen and only the current C{latest} is scanned (the run that becomes the
package's baseline).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.logger import Logger

from fangs import npm
from fangs.orchestrator import manifest
from fangs.scanrequest import DEFAULT_SCAN_DURATION_NS, idempotencyKey, scanRequest  # noqa: F401 (also imported from here)
from fangs.tenants import DEFAULT_TENANT
from fangs.orchestrator.registryclient import (
    NOT_MODIFIED,
    PackageNotFound,
    RateLimited,
    RegistryClient,
    RegistryError,
    releaseOrder,
)

log = Logger()


def _depHasInstallScript(doc: Any, spec: str) -> Optional[bool]:
    """
    Whether the version of a dependency that C{spec} most likely installs
    (that exact version, else the highest version whose text the range
    names, else C{latest}) has install scripts.
    """
    versions = {r.version: r for r in doc.releases}
    spec = spec.strip()
    chosen = versions.get(spec.lstrip("=v"))
    if chosen is None:
        bare = spec.lstrip("^~>=<v ")
        candidates = [v for v in versions if v == bare or v.startswith(bare.split(" ")[0])]
        if candidates:
            chosen = versions[max(candidates, key=lambda v: releaseOrder({"version": v}))]
    if chosen is None and doc.latest in versions:
        chosen = versions[doc.latest]
    if chosen is None:
        return None
    return bool(chosen.manifest.get("has_install_script"))

DEFAULT_INTERVAL = 300.0
DEFAULT_CONCURRENCY = 16

#: C{submit(request, idempotencyKey)} -> run id; raises when not queued.  For
#: a package another tenant than C{default} watches it is called with
#: C{tenant=<name>} too: the release's scan is the same run for every tenant
#: (the key names the release), linked to each tenant that watches it.
Submit = Callable[..., Awaitable[str]]


@attrs.define
class CycleStats:
    packages: int = 0
    not_modified: int = 0
    fetched: int = 0
    seeded: int = 0
    queued: int = 0
    queue_failures: int = 0
    errors: int = 0
    seconds: float = 0.0


class Watcher:
    """
    @param clock: time for stamps, C{Retry-After} and the cycle's duration.
    @param store: the orchestrator's store (the C{releases} methods).
    @param registry: a L{RegistryClient}.
    @param submit: queues one scan (see L{Submit}).
    """

    def __init__(
        self,
        clock: Any,
        store: Any,
        registry: RegistryClient,
        submit: Submit,
        concurrency: int = DEFAULT_CONCURRENCY,
        scanDurationNs: int = DEFAULT_SCAN_DURATION_NS,
        targetRunner: str = "",
    ) -> None:
        self.clock = clock
        self.store = store
        self.registry = registry
        self.submit = submit
        self.concurrency = concurrency
        self.scanDurationNs = scanDurationNs
        self.targetRunner = targetRunner
        self.lastCycle: Optional[CycleStats] = None
        self._running: Optional[Deferred] = None

    def nowNs(self) -> int:
        return int(self.clock.seconds() * 1_000_000_000)

    def tick(self) -> Deferred:
        """
        For the C{TimerService}: one cycle, unless the previous one is still
        running.  Never fails.
        """
        if self._running is not None:
            log.info("watcher: previous cycle still running; skipping this tick")
            return self._running
        d = Deferred.fromCoroutine(self.pollOnce())

        def done(r: Any) -> Any:
            self._running = None
            return None

        d.addErrback(lambda f: log.failure("watcher cycle failed", f))
        d.addBoth(done)
        if not d.called:
            self._running = d
        return d

    async def pollOnce(self) -> CycleStats:
        """
        Check every watched package due for a check, at most C{concurrency}
        at a time.  Per-package problems are logged and recorded on the
        package; they never stop the cycle.
        """
        started = self.clock.seconds()
        stats = CycleStats()
        packages = await self.store.watchList(self.nowNs())
        stats.packages = len(packages)
        sem = DeferredSemaphore(self.concurrency)
        outcomes: List[Tuple[Any, ...]] = []

        async def one(p: Dict[str, Any]) -> None:
            outcome = await self._checkPackage(p, stats)
            if outcome is not None:
                outcomes.append(outcome)

        def guarded(p: Dict[str, Any]) -> Deferred:
            return Deferred.fromCoroutine(one(p))

        ds = [sem.run(guarded, p) for p in packages]
        for d in ds:
            try:
                await d
            except Exception:
                stats.errors += 1
                log.failure("watcher: checking a package failed")
        if outcomes:
            await self.store.finishChecks(outcomes, self.nowNs())
        stats.seconds = self.clock.seconds() - started
        self.lastCycle = stats
        log.info(
            "watcher cycle: {packages} packages, {fetched} fetched, {not_modified} unchanged,"
            " {queued} scans queued, {queue_failures} queue failures, {errors} errors in {seconds:.2f}s",
            **attrs.asdict(stats),
        )
        return stats

    async def _checkPackage(self, p: Dict[str, Any], stats: CycleStats) -> Optional[Tuple[Any, ...]]:
        """
        One tenant's watch of a package (each tenant that watches a package
        has its own releases' watch state; the scans are shared).

        @return: C{(name, error, next_check_ns, tenant)} for
            L{store.finishChecks}, or None when L{store.recordPackument}
            stamped the package already.
        """
        name = p["name"]
        tenant = p.get("tenant") or DEFAULT_TENANT
        try:
            result = await self.registry.fetch(name, p["etag"] if p["seeded"] else None)
            if result is not NOT_MODIFIED and not (result.has_times and result.full):
                # The abbreviated form has no publish times, scripts,
                # repository or maintainers: fetch the full document, but
                # only when there is something new to record.
                known = await self.store.knownVersions(name, tenant=tenant)
                if any(r.version not in known for r in result.releases):
                    full = await self.registry.fetch(name, None, full=True)
                    result = attrs.evolve(full, etag=result.etag)
        except RateLimited as e:
            log.warn("watcher: {name}: {error}", name=name, error=str(e))
            stats.errors += 1
            return (name, str(e), self.nowNs() + int(e.retryAfter * 1e9), tenant)
        except PackageNotFound as e:
            log.warn("watcher: {name}: {error}", name=name, error=str(e))
            stats.errors += 1
            return (name, str(e), None, tenant)
        except RegistryError as e:
            log.warn("watcher: {name}: {error}", name=name, error=str(e))
            stats.errors += 1
            return (name, str(e), None, tenant)

        stamped = False
        if result is NOT_MODIFIED:
            stats.not_modified += 1
            waiting = await self.store.waitingReleases(name, tenant=tenant) if p["waiting"] else []
        else:
            stats.fetched += 1
            seeding = not p["seeded"]
            known = await self.store.knownVersions(name, tenant=tenant)
            deltas = await self._deltas(name, result, known, seeding)
            releases = []
            for r in result.releases:
                row = r.asDict()
                # Seeding: every version already out counts as seen, except
                # latest, which is scanned to make the baseline.
                row["seeded"] = seeding and r.version != result.latest
                row["deltas"] = deltas.get(r.version, [])
                releases.append(row)
            if seeding:
                stats.seeded += 1
            waiting = await self.store.recordPackument(name, releases, result.latest, result.etag, self.nowNs(), tenant=tenant)
            stamped = True
        error = await self._queue(name, waiting, stats, tenant)
        if stamped and not error:
            return None
        return (name, error, None, tenant)

    async def _deltas(self, name: str, result: Any, known: Dict[str, bool], seeding: bool) -> Dict[str, List[Dict[str, str]]]:
        """
        Manifest deltas of each release that will be scanned (new ones, or
        latest when seeding) against the release before it.  A dependency
        that is new is looked up on the registry for install scripts of its
        own; a lookup that fails leaves it "unknown" (medium).
        """
        ordered = sorted(result.releases, key=lambda r: releaseOrder({"version": r.version}))
        out: Dict[str, List[Dict[str, str]]] = {}
        cache: Dict[str, Any] = {}

        async def lookup(dep: str) -> Any:
            if dep not in cache:
                try:
                    npm.checkPackageName(dep)
                    cache[dep] = await self.registry.fetch(dep, None)
                except Exception as e:
                    log.info("watcher: could not look up dependency {dep}: {error}", dep=dep, error=str(e))
                    cache[dep] = None
            return cache[dep]

        for i, r in enumerate(ordered):
            scanned = r.version not in known and (not seeding or r.version == result.latest)
            if not scanned or i == 0:
                continue
            previous = ordered[i - 1].manifest
            current = r.manifest
            newDeps = {
                dep: spec
                for key, _ in manifest.DEP_KINDS
                for dep, spec in (current.get(key) or {}).items()
                if not any(dep in (previous.get(k) or {}) for k, _ in manifest.DEP_KINDS)
            }
            answers: Dict[str, Optional[bool]] = {}
            for dep, spec in sorted(newDeps.items())[:20]:
                doc = await lookup(dep)
                answers[dep] = _depHasInstallScript(doc, spec) if doc is not None else None
            out[r.version] = manifest.manifestDeltas(previous, current, lambda dep, spec: answers.get(dep))
            if out[r.version]:
                log.info("watcher: {name}@{version}: {count} manifest deltas", name=name, version=r.version, count=len(out[r.version]))
        return out

    async def _queue(self, name: str, waiting: List[Dict[str, Any]], stats: CycleStats, tenant: str = DEFAULT_TENANT) -> str:
        """
        Queue each waiting release oldest first; stop at the first failure
        (so the order holds) and leave the rest for the next cycle.
        """
        for r in sorted(waiting, key=releaseOrder):
            version = r["version"]
            try:
                request = scanRequest(name, version, self.scanDurationNs, self.targetRunner)
                if tenant == DEFAULT_TENANT:
                    runID = await self.submit(request, idempotencyKey(name, version))
                else:
                    runID = await self.submit(request, idempotencyKey(name, version), tenant=tenant)
                await self.store.markReleaseQueued(name, version, runID, self.nowNs(), tenant=tenant)
            except Exception as e:
                stats.queue_failures += 1
                message = "queueing %s@%s failed: %s" % (name, version, e)
                log.warn("watcher: {message}; retrying next cycle", message=message)
                try:
                    await self.store.markReleaseFailed(name, version, message, tenant=tenant)
                except Exception:
                    log.failure("watcher: recording the failure of {name}@{version}", name=name, version=version)
                return message
            stats.queued += 1
            log.info("watcher: queued {name}@{version} as run {run_id} (tenant {tenant})", name=name, version=version,
                     run_id=runID, tenant=tenant)
        return ""
