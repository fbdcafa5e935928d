"""
An npm registry client on treq, for the watcher: packuments fetched with
C{If-None-Match}, the abbreviated install form first, retries with jittered
exponential backoff on 429, 5xx and timeouts, and C{Retry-After} honoured for
every request to the registry, not just the one that was told.

The pure parts (L{packumentURL}, L{parsePackument}, L{parseRetryAfter},
L{versionKey}) are shared with the CLI's blocking pre-flight.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived

from fangs.orchestrator.manifest import manifestOf
from fangs import npm, wire

log = Logger()

DEFAULT_REGISTRY = "https://registry.npmjs.org"
ABBREVIATED = "application/vnd.npm.install-v1+json"
ACCEPT_ABBREVIATED = ABBREVIATED + "; q=1.0, application/json; q=0.8, */*"
ACCEPT_FULL = "application/json"
USER_AGENT = "fangs-watcher (+https://github.com/fangs)"


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


NOT_MODIFIED = object()


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


def _cancelled(e: BaseException) -> bool:
    """
    Whether a connection error is only how treq reports that the request
    was cancelled.
    """
    if isinstance(e, ConnectingCancelledError):
        return True
    reasons = getattr(e, "reasons", None) or []
    return any(getattr(f, "check", lambda *a: False)(defer.CancelledError) for f in reasons)


class RegistryClient:
    """
    @param client: a treq C{HTTPClient} (or C{StubTreq}).
    @param clock: for timeouts, backoff and C{Retry-After}.
    @param rng: jitter source (tests pass a seeded C{random.Random}).
    """

    def __init__(
        self,
        client: Any,
        clock: Any,
        baseURL: str = DEFAULT_REGISTRY,
        timeout: float = 15.0,
        retries: int = 4,
        backoffBase: float = 1.0,
        backoffMax: float = 30.0,
        maxRetryAfter: float = 60.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.baseURL = baseURL.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoffBase = backoffBase
        self.backoffMax = backoffMax
        self.maxRetryAfter = maxRetryAfter
        self.rng = rng or random.Random()
        #: No request to the registry before this time (a C{Retry-After}).
        self.notBefore = 0.0
        self.requests = 0
        self.parsed = 0

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await deferLater(self.clock, seconds, lambda: None)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: uniform in [0, min(max, base * 2^attempt)].
        return self.rng.uniform(0, min(self.backoffMax, self.backoffBase * (2**attempt)))

    async def _get(self, url: str, headers: Dict[bytes, List[bytes]]) -> Tuple[int, Any, bytes]:
        response = await self.client.get(url, headers=headers)
        body = await response.content()
        return response.code, response.headers, body

    async def fetch(self, name: str, etag: Optional[str] = None, full: bool = False) -> Any:
        """
        The packument of C{name}, or L{NOT_MODIFIED} when C{etag} still
        matches.

        @raise PackageNotFound: the registry does not know C{name}.
        @raise RateLimited: told to wait longer than C{maxRetryAfter}.
        @raise RegistryError: anything else, after the retries.
        """
        url = packumentURL(self.baseURL, name)
        headers = {
            b"Accept": [(ACCEPT_FULL if full else ACCEPT_ABBREVIATED).encode()],
            b"User-Agent": [USER_AGENT.encode()],
        }
        if etag:
            headers[b"If-None-Match"] = [etag.encode("latin-1")]
        problem = "no attempt made"
        for attempt in range(self.retries + 1):
            wait = self.notBefore - self.clock.seconds()
            if wait > self.maxRetryAfter:
                raise RateLimited("registry asked to wait %.0fs" % (wait,), wait)
            await self._sleep(wait)
            self.requests += 1
            try:
                code, respHeaders, body = await Deferred.fromCoroutine(self._get(url, headers)).addTimeout(
                    self.timeout, self.clock
                )
            except defer.TimeoutError:
                problem = "%s: no answer within %gs" % (url, self.timeout)
                await self._sleep(self._backoff(attempt))
                continue
            except (ConnectError, ConnectionLost, DNSLookupError, TimeoutError, ResponseFailed, ResponseNeverReceived) as e:
                if _cancelled(e):
                    raise defer.CancelledError() from None  # our caller gave up: no retry
                problem = "%s: %s" % (url, e.__class__.__name__)
                await self._sleep(self._backoff(attempt))
                continue
            if code == 304:
                return NOT_MODIFIED
            if code == 200:
                try:
                    doc = json.loads(body)
                except ValueError as e:
                    raise RegistryError("%s: malformed JSON (%s)" % (url, e)) from None
                self.parsed += 1
                tag = respHeaders.getRawHeaders(b"etag", [None])[0]
                return parsePackument(doc, name, tag.decode("latin-1") if tag else None)
            if code == 404:
                raise PackageNotFound("%s is not on the registry %s" % (name, self.baseURL))
            if code == 429 or code >= 500:
                retryAfter = parseRetryAfter(
                    respHeaders.getRawHeaders(b"retry-after", [None])[0], self.clock.seconds()
                )
                problem = "%s answered %d" % (url, code)
                if retryAfter is not None:
                    self.notBefore = max(self.notBefore, self.clock.seconds() + retryAfter)
                    if retryAfter > self.maxRetryAfter:
                        raise RateLimited("%s; Retry-After %.0fs" % (problem, retryAfter), retryAfter)
                    log.info("{problem}; retrying after {seconds}s", problem=problem, seconds=retryAfter)
                else:
                    await self._sleep(self._backoff(attempt))
                continue
            raise RegistryError("%s answered %d: %s" % (url, code, body[:200].decode("utf-8", "replace")))
        raise RegistryError("%s (after %d attempts)" % (problem, self.retries + 1))
