# -*- test-case-name: tests.runner.test_client -*-
"""
The runner's HTTP client for the orchestrator's C{/v1} API.

L{OrchestratorClient} speaks the wire protocol over any treq-style
C{HTTPClient}: the real one from L{makeHTTPClient} (its own persistent
connection pool, optional mTLS), or an in-memory one in tests.  Every call is
bounded by a timeout on the injected clock; the long poll gets more than the
server's 25 s cap so the server always wins the race.

Status codes the caller acts on become exceptions of their own
(L{NotRegistered} for a poll 404, L{UnknownRun} for a run 404); every other
non-2xx answer is an L{OrchestratorError} carrying the status and the code and
message of the error envelope C{{"error": {"code", "message", "trace_id"}}}
(the reference's C{{"error": "message"}} is read too).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Type, TypeVar
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from fangs import wire
from fangs.wire import (
    Heartbeat,
    HeartbeatAck,
    IngestAck,
    Job,
    RegistrationAck,
    ResultAck,
    RunID,
    RunnerRegistration,
    ScanResult,
)

log = Logger()

T = TypeVar("T")

#: The orchestrator holds a long poll for at most 25 s; we wait longer.
POLL_TIMEOUT = 30.0

_JSON = b"application/json"
_NDJSON = b"application/x-ndjson"


class OrchestratorError(Exception):
    """
    The orchestrator answered with an error (or an answer we cannot read).

    @ivar status: the HTTP status code (0 when there was no HTTP answer).
    @ivar code: the machine-readable code of the error envelope, or C{""}.
    @ivar message: the human-readable message.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        if self.code:
            return "HTTP %d %s: %s" % (self.status, self.code, self.message)
        return "HTTP %d: %s" % (self.status, self.message)

    def isPermanent(self) -> bool:
        """
        Whether retrying the same request cannot help: a 4xx other than
        404 (handled by the caller), 408 (timeout) and 429 (slow down).
        """
        return 400 <= self.status < 500 and self.status not in (404, 408, 429)


class NotRegistered(OrchestratorError):
    """
    The orchestrator does not know this runner (poll answered 404): register
    again.
    """


class UnknownRun(OrchestratorError):
    """
    The orchestrator has no such run (404 on a run's endpoint).
    """


def parseError(status: int, body: bytes) -> OrchestratorError:
    """
    Build an L{OrchestratorError} from an error answer, tolerating both our
    envelope and the reference's C{{"error": "message"}} and anything else.
    """
    code, message = "", ""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or "")
            message = str(err.get("message") or "")
        elif isinstance(err, str):
            message = err
    if not message:
        message = body.decode("utf-8", "replace").strip()[:200] or "(empty body)"
    return OrchestratorError(status, code, message)


class OrchestratorClient:
    """
    Typed calls to the orchestrator API.

    @param httpClient: a C{treq.client.HTTPClient} (or anything with its
        C{request} method).
    @param baseURL: e.g. C{http://127.0.0.1:8443}; paths are appended.
    @param clock: bounds every request with C{requestTimeout} seconds.
    """

    def __init__(self, httpClient: Any, baseURL: str, clock: IReactorTime,
                 requestTimeout: float = 30.0, token: Optional[str] = None) -> None:
        self._http = httpClient
        self._base = baseURL.rstrip("/")
        self._clock = clock
        self._timeout = requestTimeout
        #: A runner-scoped API token, for orchestrators in token auth mode.
        self._token = token

    # -- the API -------------------------------------------------------------

    async def register(self, registration: RunnerRegistration) -> RegistrationAck:
        status, body = await self._call(
            "POST", "/v1/runners/register", wire.dumps(registration), _JSON
        )
        return self._decode(status, body, RegistrationAck)

    async def heartbeat(self, runnerID: str, heartbeat: Heartbeat) -> HeartbeatAck:
        status, body = await self._call(
            "POST", "/v1/runners/%s/heartbeat" % (_segment(runnerID),),
            wire.dumps(heartbeat), _JSON,
        )
        return self._decode(status, body, HeartbeatAck, NotRegistered)

    async def poll(self, runnerID: str) -> Optional[Job]:
        """
        Long-poll for the next job: a L{Job}, or C{None} when the server's
        wait expired (204).  Raises L{NotRegistered} on 404.
        """
        status, body = await self._call(
            "GET", "/v1/runners/%s/jobs" % (_segment(runnerID),), None, None,
            timeout=max(self._timeout, POLL_TIMEOUT),
        )
        if status == 204:
            return None
        return self._decode(status, body, Job, NotRegistered)

    async def postEvents(self, runID: RunID, bodyProducer: IBodyProducer,
                         timeout: Optional[float] = None) -> IngestAck:
        """
        Stream NDJSON event batches from C{bodyProducer} (usually of unknown
        length, so the request is chunked).  The answer arrives once the
        producer has finished.  Raises L{UnknownRun} on 404.
        """
        status, body = await self._call(
            "POST", "/v1/runs/%s/events" % (runID.hex(),), bodyProducer, _NDJSON,
            timeout=timeout,
        )
        return self._decode(status, body, IngestAck, UnknownRun)

    async def postResult(self, runID: RunID, result: ScanResult) -> ResultAck:
        status, body = await self._call(
            "POST", "/v1/runs/%s/result" % (runID.hex(),), wire.dumps(result), _JSON
        )
        return self._decode(status, body, ResultAck, UnknownRun)

    # -- plumbing ------------------------------------------------------------

    async def _call(self, method: str, path: str, data: Any, contentType: Optional[bytes],
                    timeout: Optional[float] = None) -> tuple[int, bytes]:
        """
        One request, response body read in full, the whole exchange bounded
        by C{timeout} seconds (cancelled on expiry: L{defer.TimeoutError}).
        """
        d = Deferred.fromCoroutine(self._exchange(method, path, data, contentType))
        limit = self._timeout if timeout is None else timeout
        expired = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        call = self._clock.callLater(limit, expire)
        try:
            return await d
        except Exception as e:
            # Twisted's Agent reports a cancelled request as
            # ResponseNeverReceived([CancelledError]) and the like; give our
            # callers a plain TimeoutError or CancelledError.
            if expired:
                raise TimeoutError("%s %s: no answer within %gs" % (method, path, limit)) from None
            if _wasCancelled(e):
                raise CancelledError() from None
            raise
        finally:
            if call.active():
                call.cancel()

    async def _exchange(self, method: str, path: str, data: Any,
                        contentType: Optional[bytes]) -> tuple[int, bytes]:
        if isinstance(data, bytes):
            data = BytesProducer(data)
        headers = {b"Accept": [_JSON]}
        if self._token:
            headers[b"Authorization"] = [b"Bearer " + self._token.encode("ascii")]
        if contentType is not None:
            headers[b"Content-Type"] = [contentType]
        response = await self._http.request(
            method, self._base + path, headers=headers, data=data,
            allow_redirects=False, reactor=self._clock,
        )
        body = await response.content()
        return response.code, body

    def _decode(self, status: int, body: bytes, cls: Type[T],
                notFound: Type[OrchestratorError] = OrchestratorError) -> T:
        if status == 404:
            err = parseError(status, body)
            raise notFound(404, err.code, err.message)
        if not 200 <= status < 300:
            raise parseError(status, body)
        try:
            return wire.loads(body, cls)
        except wire.WireError as e:
            raise OrchestratorError(status, "bad_response", "cannot read %s: %s"
                                    % (cls.__name__, e)) from None


@implementer(IBodyProducer)
class BytesProducer:
    """
    A body known in advance, written at once (treq's default producer for
    bytes goes through the global cooperator, which a test clock cannot
    drive).
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _wasCancelled(e: BaseException) -> bool:
    if isinstance(e, (CancelledError, ConnectingCancelledError)):
        return True
    return any(r.check(CancelledError) for r in getattr(e, "reasons", None) or ())


def _segment(text: str) -> str:
    return quote(text, safe="")


# -- building the real HTTP client ---------------------------------------------


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """
    HTTPS to the orchestrator: verify it against C{trustRoot} (the platform's
    roots when C{None}) and present C{clientCertificate} when given (mTLS).
    """

    def __init__(self, trustRoot: Any = None, clientCertificate: Any = None) -> None:
        self._trustRoot = trustRoot
        self._clientCertificate = clientCertificate

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self._trustRoot,
            clientCertificate=self._clientCertificate,
        )


def tlsPolicy(tlsCA: Optional[bytes] = None, tlsCert: Optional[bytes] = None,
              tlsKey: Optional[bytes] = None) -> Optional[ClientTLSPolicy]:
    """
    The HTTPS policy for PEM data (not paths), or C{None} when none is given.
    C{tlsCert} and C{tlsKey} go together.
    """
    if (tlsCert is None) != (tlsKey is None):
        raise ValueError("a client certificate and its key must be given together")
    if tlsCA is None and tlsCert is None:
        return None
    from twisted.internet.ssl import Certificate, PrivateCertificate

    trustRoot = Certificate.loadPEM(tlsCA) if tlsCA is not None else None
    clientCertificate = None
    if tlsCert is not None and tlsKey is not None:
        clientCertificate = PrivateCertificate.loadPEM(tlsCert + b"\n" + tlsKey)
    return ClientTLSPolicy(trustRoot, clientCertificate)


def makeHTTPClient(reactor: Any, tlsCA: Optional[bytes] = None, tlsCert: Optional[bytes] = None,
                   tlsKey: Optional[bytes] = None, pool: Any = None) -> Any:
    """
    A treq C{HTTPClient} over an C{Agent} with its own persistent connection
    pool (not treq's global one) and, when a CA or client certificate is
    given (PEM bytes), an explicit TLS policy.  Close C{pool} (pass your own
    to keep a handle on it) with C{closeCachedConnections()} at shutdown.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
    policy = tlsPolicy(tlsCA, tlsCert, tlsKey) or BrowserLikePolicyForHTTPS()
    agent = Agent(reactor, contextFactory=policy, pool=pool)
    return HTTPClient(agent)
