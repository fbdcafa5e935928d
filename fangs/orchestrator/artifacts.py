"""
Artifacts: the tarball of every scanned release, fetched by the orchestrator
from the registry, checked against the packument's C{integrity}, stored once
by content hash and served at C{GET /v1/artifacts/{sha512-hex}}.

A tarball whose bytes do not match the integrity the registry publishes is
itself a finding (the artifact status C{integrity_mismatch}): what the
sandbox installed is not what the registry vouches for.

Only tarballs on the configured registry's own host are fetched: a
packument may name any URL, and the orchestrator must not be made to fetch
from wherever a package says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from fangs.orchestrator.db.artifacts import RunArtifact

log = Logger()

#: Tarballs larger than this are not downloaded (the check is recorded as failed).
MAX_TARBALL_BYTES = 256 * 1024 * 1024

VERIFIED = "verified"
MISMATCH = "integrity_mismatch"
FETCH_FAILED = "fetch_failed"
SKIPPED = "skipped"


def checkIntegrity(data: bytes, integrity: str, shasum: str = "") -> Tuple[bool, str]:
    """
    Whether C{data} matches the registry's C{integrity} (Subresource
    Integrity: C{"sha512-<base64>"}, several allowed; the strongest
    algorithm present decides) or, for old packages without one, its SHA-1
    C{shasum}.  @return: C{(ok, explanation)}.
    """
    wanted = {}
    for item in (integrity or "").split():
        algo, _, digest = item.partition("-")
        algo = algo.lower()
        if algo in ("sha512", "sha384", "sha256", "sha1") and digest:
            try:
                wanted.setdefault(algo, []).append(base64.b64decode(digest.split("?")[0], validate=True))
            except (binascii.Error, ValueError):
                return False, "integrity %r is not valid base64" % (item[:40],)
    for algo in ("sha512", "sha384", "sha256", "sha1"):
        if algo in wanted:
            got = hashlib.new(algo, data).digest()
            if got in wanted[algo]:
                return True, "%s matches the registry's integrity" % (algo,)
            return False, "%s of the tarball %s does not match the registry's integrity %s" % (
                algo, base64.b64encode(got).decode()[:24] + "...", base64.b64encode(wanted[algo][0]).decode()[:24] + "...")
    if shasum:
        got = hashlib.sha1(data).hexdigest()
        if got == shasum.lower():
            return True, "sha1 matches the registry's shasum (no integrity published)"
        return False, "sha1 of the tarball %s does not match the registry's shasum %s" % (got, shasum)
    return False, "the registry publishes no integrity or shasum for this release"


def sameHost(url: str, registry: str) -> bool:
    a, b = urlsplit(url), urlsplit(registry)
    return a.scheme in ("http", "https") and a.scheme == b.scheme and a.netloc.lower() == b.netloc.lower()


class ArtifactFetcher:
    """
    @param registry: a L{fangs.orchestrator.registryclient.RegistryClient}
        (its packuments give each release's tarball URL and integrity).
    @param client: a treq C{HTTPClient} for the download.
    """

    def __init__(self, clock: Any, registry: Any, client: Any, store: Any, maxBytes: int = MAX_TARBALL_BYTES,
                 timeout: float = 120.0) -> None:
        self.clock = clock
        self.registry = registry
        self.client = client
        self.store = store
        self.maxBytes = maxBytes
        self.timeout = timeout
        self.listeners: list = []
        self._inflight: set = set()

    def nowNs(self) -> int:
        return int(self.clock.seconds() * 1_000_000_000)

    def fetchForRun(self, runID: str, package: str, version: str) -> Deferred:
        """
        Fetch, check and store the tarball of C{package@version} for
        C{runID} in the background; never fails (the outcome is recorded).
        """
        d = Deferred.fromCoroutine(self._fetch(runID, package, version))
        self._inflight.add(d)

        def done(result: Any) -> Any:
            self._inflight.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(lambda f: None if f.check(CancelledError) else log.failure(
            "artifact of run {run_id} not recorded", f, run_id=runID))
        return d

    def stop(self) -> None:
        """
        Abandon downloads in flight (at shutdown).
        """
        for d in list(self._inflight):
            d.cancel()

    async def _fetch(self, runID: str, package: str, version: str) -> RunArtifact:
        link = await self._check(runID, package, version)
        await self.store.linkArtifact(link)
        log.info("run {run_id}: tarball of {package}@{version} {status} ({detail})", run_id=runID,
                 package=package, version=version, status=link.status, detail=link.detail)
        for listener in self.listeners:
            try:
                listener(link)
            except Exception:
                log.failure("artifact listener failed")
        return link

    async def _check(self, runID: str, package: str, version: str) -> RunArtifact:
        def outcome(status: str, detail: str, sha: Optional[str] = None, url: str = "", integrity: str = "",
                    size: int = 0) -> RunArtifact:
            return RunArtifact(runID, sha, status, detail, integrity, url, size, self.nowNs())

        try:
            packument = await self.registry.fetch(package)
        except Exception as e:
            return outcome(FETCH_FAILED, "packument: %s" % (e,))
        release = packument.release(version)
        if release is None or not release.tarball:
            return outcome(FETCH_FAILED, "the registry lists no tarball for %s@%s" % (package, version))
        url, integrity = release.tarball, release.integrity or ""
        if not sameHost(url, self.registry.baseURL):
            return outcome(SKIPPED, "tarball %s is not on the registry %s; not fetched" % (url, self.registry.baseURL),
                           url=url, integrity=integrity)
        try:
            data = await self._download(url)
        except Exception as e:
            return outcome(FETCH_FAILED, "download: %s" % (e,), url=url, integrity=integrity)
        sha = hashlib.sha512(data).hexdigest()
        await self.store.putArtifact(sha, data, self.nowNs())
        ok, why = checkIntegrity(data, integrity, release.shasum)
        return outcome(VERIFIED if ok else MISMATCH, why, sha, url, integrity or ("sha1:" + release.shasum), len(data))

    async def _download(self, url: str) -> bytes:
        import treq

        response = await self.client.get(url, headers={b"Accept": [b"application/octet-stream"]},
                                         timeout=self.timeout)
        if response.code != 200:
            await response.content()
            raise IOError("%s answered %d" % (url, response.code))
        length = response.length if isinstance(response.length, int) else None
        if length is not None and length > self.maxBytes:
            raise IOError("tarball of %d bytes is over the %d byte limit" % (length, self.maxBytes))
        parts: list = []
        total = [0]

        def collect(data: bytes) -> None:
            total[0] += len(data)
            if total[0] > self.maxBytes:
                raise IOError("tarball is over the %d byte limit" % (self.maxBytes,))
            parts.append(data)

        await treq.collect(response, collect)
        return b"".join(parts)
