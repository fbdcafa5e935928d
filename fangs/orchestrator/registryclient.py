"""
An npm registry client on treq, for the watcher: packuments fetched with
C{If-None-Match}, the abbreviated install form first, retries with jittered
exponential backoff on 429, 5xx and timeouts, and C{Retry-After} honoured for
every request to the registry, not just the one that was told.

The pure parts (L{packumentURL}, L{parsePackument}, L{parseRetryAfter},
L{versionKey}, the errors) live in L{fangs.npmregistry}, shared with the
CLI's blocking pre-flight; they keep their names here.
"""

from __future__ import annotations

import json
import random
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived

from fangs.npmregistry import (  # noqa: F401 (the watcher's names for them)
    ABBREVIATED,
    ACCEPT_ABBREVIATED,
    ACCEPT_FULL,
    DEFAULT_REGISTRY,
    PackageNotFound,
    Packument,
    RateLimited,
    RegistryError,
    Release,
    packumentURL,
    parsePackument,
    parseRetryAfter,
    releaseOrder,
    versionKey,
)

log = Logger()

USER_AGENT = "fangs-watcher (+https://github.com/fangs)"

NOT_MODIFIED = object()


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
