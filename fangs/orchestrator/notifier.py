"""
Notifications about runs with deviations: targets, message templates,
signatures, and the delivery loop over the durable outbox.

How a notification travels:

  1. The store analyses a finished run.  In the same transaction, when the
     verdict changed to C{deviations} (or C{incomplete} with deviations: a
     package that crashes or stalls its own install must not hide), every
     enabled target whose C{min_severity} and package filter match gets one
     C{outbox} row with the rendered body (L{wants}, L{render}).  The row is
     unique per run and target, so a re-analysis never sends twice.
  2. L{NotifierService} wakes when an analysis changed a verdict and on a
     timer, sends the rows that are due, and records one C{deliveries} row
     per attempt together with the row's new state, in one transaction.  A
     row still C{pending} when the orchestrator stops is sent after it
     starts again.

Outbox states: C{pending} (waiting for its first or next attempt), C{sent},
C{permanent} (the receiver or the configuration refused it; retrying would
not help), C{dead} (retries exhausted, or its target was removed).
Delivery statuses (one per attempt): C{sent}, C{failed} (retryable),
C{permanent}.

Signatures (templates C{generic} and C{siem}, when the target names a
C{secret_env}): C{X-Fangs-Timestamp: <unix seconds>} and
C{X-Fangs-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>}.
See C{docs/webhooks.md} for the receiver's side.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import random as _random
import treq
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http import stringToDatetime

from fangs.errors import BadRequest
from fangs.orchestrator.notifytargets import *  # noqa: F401,F403 (re-exported: callers use notifier.X)
from fangs.orchestrator.notifytargets import (  # noqa: F401
    SIGNED_TEMPLATES,
    TIMEOUT,
    BACKOFF_BASE,
    BACKOFF_CAP,
    RETRY_AFTER_CAP,
    MAX_ATTEMPTS,
    POLL_INTERVAL,
    CONCURRENCY,
    EXCERPT,
    USER_AGENT,
    SENT,
    FAILED,
    PERMANENT,
    DEAD,
    PENDING,
    _ENV_REF,
    DeliveryError,
    TargetPolicy,
    checkURL,
    literalAddresses,
)
from fangs.orchestrator.notifytemplates import *  # noqa: F401,F403 (re-exported: callers use notifier.X)
from fangs.orchestrator.notifytemplates import _cut, renderTest, _breakMentions, _breakLinks, _json
from fangs.orchestrator.notifyconnect import *  # noqa: F401,F403 (re-exported: callers use notifier.X)
from fangs.orchestrator.notifyconnect import _thd_resolve
log = Logger()

# ---------------------------------------------------------------------------
# Signatures


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """
    The C{X-Fangs-Signature} value: C{v1=} and the hex HMAC-SHA256 of
    C{"<timestamp>." + body}.
    """
    mac = hmac.new(secret, str(int(timestamp)).encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """
    The receiver's check (see C{docs/webhooks.md}): a fresh timestamp and a
    matching C{v1} signature, compared in constant time.
    """
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, int(timestamp), body)
    return any(hmac.compare_digest(expected, s.strip()) for s in signature.split(","))


# ---------------------------------------------------------------------------
# Delivery policy


def classify(code: Optional[int]) -> str:
    """
    One attempt's status from its HTTP status (None: transport error).
    Redirects are not followed, so a 3xx is permanent like other 4xx.
    """
    if code is None:
        return FAILED
    if 200 <= code < 300:
        return SENT
    if code in (408, 429) or code >= 500:
        return FAILED
    return PERMANENT


def backoff(attempt: int, rand: Callable[[], float] = _random.random) -> float:
    """
    Seconds to wait after failed attempt C{attempt} (1-based): 1 s x
    2^(attempt-1), +/-25% jitter, capped.
    """
    base = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    return min(BACKOFF_CAP, base * (0.75 + 0.5 * rand()))


def parseRetryAfter(value: Optional[bytes], now: float) -> Optional[float]:
    """
    C{Retry-After} as seconds from C{now}: delta-seconds or an HTTP date.
    None when absent or unreadable.
    """
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return min(RETRY_AFTER_CAP, float(text))
    try:
        when = stringToDatetime(text.encode("latin-1"))
    except (ValueError, IndexError, KeyError):
        return None
    return min(RETRY_AFTER_CAP, max(0.0, when - now))


def resolveURL(url: str, environ: Mapping[str, str], policy: Optional[TargetPolicy] = None) -> str:
    """
    The target's URL, read from the environment when it is a C{${NAME}}
    (a Slack or Discord webhook URL is itself a secret), and checked.

    @raise DeliveryError: the variable is missing.
    @raise BadRequest: the URL is not acceptable.
    """
    policy = policy if policy is not None else TargetPolicy()
    ref = _ENV_REF.match(url)
    if ref:
        if ref.group(1) not in policy.env:
            raise DeliveryError("url: environment variable %s is not listed in the config's notifiers.env" % (ref.group(1),))
        url = environ.get(ref.group(1), "")
        if not url:
            raise DeliveryError("url: environment variable %s is not set" % (ref.group(1),))
    return checkURL(url, policy)


def requestHeaders(
    target: Mapping[str, Any], body: bytes, contentType: str, now: float, environ: Mapping[str, str],
    policy: Optional[TargetPolicy] = None,
) -> Dict[str, List[str]]:
    """
    The headers of one attempt.  Custom headers first (a C{${NAME}} value is
    read from the environment), then ours, which they cannot override.

    @raise DeliveryError: a named environment variable is missing.
    """
    headers: Dict[str, List[str]] = {"User-Agent": [USER_AGENT]}
    for k, v in (target.get("headers") or {}).items():
        ref = _ENV_REF.match(v)
        if ref:
            if policy is not None and ref.group(1) not in policy.env:
                raise DeliveryError("header %s: environment variable %s is not listed in the config's notifiers.env" % (k, ref.group(1)))
            v = environ.get(ref.group(1), "")
            if not v:
                raise DeliveryError("header %s: environment variable %s is not set" % (k, ref.group(1)))
        headers[k] = [v]
    headers["Content-Type"] = [contentType]
    secretEnv = target.get("secret_env")
    if secretEnv and target.get("template") in SIGNED_TEMPLATES:
        if policy is not None and secretEnv not in policy.env:
            raise DeliveryError("signing secret: environment variable %s is not listed in the config's notifiers.env" % (secretEnv,))
        secret = environ.get(secretEnv, "")
        if not secret:
            raise DeliveryError("signing secret: environment variable %s is not set" % (secretEnv,))
        ts = int(now)
        headers["X-Fangs-Timestamp"] = [str(ts)]
        headers["X-Fangs-Signature"] = [sign(secret.encode("utf-8"), ts, body)]
    return headers


# ---------------------------------------------------------------------------
# The delivery loop


class NotifierService(service.Service):
    """
    Sends due outbox rows; one attempt, one C{deliveries} row.

    @param http: a treq-like client (C{request(method, url, data=,
        headers=, timeout=, reactor=, allow_redirects=)}); the orchestrator
        gives it its own connection pool.
    """

    name = "notifier"

    def __init__(
        self,
        clock: IReactorTime,
        store: Any,
        http: Any,
        environ: Optional[Mapping[str, str]] = None,
        metrics: Any = None,
        rand: Callable[[], float] = _random.random,
        interval: float = POLL_INTERVAL,
        maxAttempts: int = MAX_ATTEMPTS,
        concurrency: int = CONCURRENCY,
        timeout: float = TIMEOUT,
        pool: Any = None,
        policy: Optional[TargetPolicy] = None,
        resolver: Optional[Callable[[str], Any]] = None,
        httpFor: Optional[Callable[[str], Any]] = None,
    ) -> None:
        self._pool = pool  # closed at stop
        #: Where messages may go; the default refuses every non-public address.
        self.policy = policy if policy is not None else TargetPolicy()
        #: C{resolver(host)}: a Deferred of the host's addresses (DNS at
        #: delivery time, so a name rebound to a private address is refused).
        self._resolver = resolver
        #: C{httpFor(address)}: a client that connects to exactly that
        #: checked address (no second DNS lookup); None: use C{http}.
        self._httpFor = httpFor
        self._clock = clock
        self._store = store
        self._http = http
        self._environ = os.environ if environ is None else environ
        self._metrics = metrics
        self._rand = rand
        self.interval = interval
        self.maxAttempts = maxAttempts
        self.concurrency = concurrency
        self.timeout = timeout
        self._loop: Optional[LoopingCall] = None
        self._pass: Optional[Deferred] = None
        self._again = False
        self._soon: Optional[IDelayedCall] = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.wake)
        self._loop.clock = self._clock
        # Rows left pending by a previous process are sent by the first pass.
        self._loop.start(self.interval, now=True).addErrback(lambda f: log.failure("notifier timer stopped", f))

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        # Let an attempt in flight finish and be recorded (bounded by the
        # request timeout) before the store closes.
        done: Deferred = Deferred()
        if self._pass is None:
            done.callback(None)
        else:
            self._pass.addBoth(lambda r: done.callback(None))
        if self._pool is not None:
            done.addCallback(lambda _: self._pool.closeCachedConnections())
        return done

    def wake(self, *_: Any) -> None:
        """
        Send whatever is due now.  Safe to call any time (an analysis
        listener, the timer): one pass runs at a time, a wake during a pass
        runs another after it.
        """
        if not self.running:
            return
        if self._pass is not None:
            self._again = True
            return
        self._again = False
        d = Deferred.fromCoroutine(self._sendDue())
        self._pass = d
        d.addErrback(lambda f: log.failure("notification pass failed", f))
        d.addBoth(self._passDone)

    def _passDone(self, _: Any) -> None:
        self._pass = None
        if self._again:
            self.wake()

    def nowNs(self) -> int:
        return int(self._clock.seconds() * 1_000_000_000)

    async def _sendDue(self) -> None:
        while self.running:
            rows = await self._store.dueNotifications(self.nowNs(), self.concurrency)
            if not rows:
                break
            await DeferredList([Deferred.fromCoroutine(self._attempt(row)) for row in rows], consumeErrors=True)
            if len(rows) < self.concurrency:
                break
        nextNs = await self._store.nextNotificationDue()
        if nextNs is not None and self.running:
            delay = max(0.0, (nextNs - self.nowNs()) / 1e9)
            if delay < self.interval:
                if self._soon is not None and self._soon.active():
                    self._soon.cancel()
                self._soon = self._clock.callLater(delay, self.wake)

    async def _attempt(self, row: Mapping[str, Any]) -> None:
        """
        One attempt at one row.  Never raises.
        """
        attempt = row["attempts"] + 1
        try:
            status, code, error, excerpt, retryAfter = await self._send(
                row, row["body"], row["content_type"], {"X-Fangs-Delivery": [str(row["id"])], "X-Fangs-Attempt": [str(attempt)]}
            )
            state, nextNs = status, None
            if status == FAILED:
                if attempt >= self.maxAttempts:
                    state = DEAD
                    error = (error + "; " if error else "") + "giving up after %d attempts" % (attempt,)
                else:
                    state = PENDING
                    delay = max(backoff(attempt, self._rand), retryAfter or 0.0)
                    nextNs = self.nowNs() + int(delay * 1e9)
            recorded = await self._store.recordDelivery(
                row["id"], attempt, self.nowNs(), status, code, error, excerpt, state, nextNs
            )
            if self._metrics is not None:
                self._metrics.notifications.labels(row["template"], status).inc()
            log.info(
                "notification {outbox_id} ({notifier}, run {run_id}) attempt {attempt}: {status} {code} {error}",
                outbox_id=row["id"],
                notifier=row["notifier_name"],
                run_id=row["run_id"],
                attempt=attempt,
                status=status,
                code=code or "-",
                error=error,
            )
            if not recorded:
                log.warn("notification {outbox_id} changed meanwhile; attempt not recorded", outbox_id=row["id"])
        except Exception:
            log.failure("notification {outbox_id} attempt {attempt} failed", outbox_id=row.get("id"), attempt=attempt)

    async def _send(
        self, target: Mapping[str, Any], body: bytes, contentType: str, extra: Optional[Dict[str, List[str]]] = None
    ) -> Tuple[str, Optional[int], str, str, Optional[float]]:
        """
        Send once: C{(status, http_status, error, response_excerpt,
        retry_after_seconds)}.  C{extra}: the message's id and attempt
        number (stable across retries, so receivers can drop duplicates).
        """
        now = self._clock.seconds()
        try:
            url = resolveURL(target["url"], self._environ, self.policy)
            headers = requestHeaders(target, body, contentType, now, self._environ, self.policy)
            headers.update(extra or {})
        except BadRequest as e:
            return PERMANENT, None, "url: " + e.message, "", None
        except DeliveryError as e:
            return PERMANENT, None, str(e), "", None
        host = urlsplit(url).hostname or ""
        addresses = literalAddresses(host)
        if not addresses:
            if self._resolver is None:
                return PERMANENT, None, "no resolver to check %s with" % (host,), "", None
            try:
                addresses = list(await self._resolver(host))
            except Exception as e:
                return FAILED, None, "dns: %s" % (_describe(e),), "", None
            if not addresses:
                return FAILED, None, "dns: %s has no address" % (host,), "", None
        for a in addresses:
            why = self.policy.refusal(a)
            if why is None and url.startswith("http:") and not self.policy.allowlisted(a):
                why = "%s is not in notifiers.allow_private (plain http:// goes to allowlisted addresses only)" % (a,)
            if why is not None:
                return PERMANENT, None, "url host %s refused: %s" % (host, why), "", None
        http = self._httpFor(addresses[0]) if self._httpFor is not None else self._http
        try:
            response = await http.request(
                "POST",
                url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                reactor=self._clock,
                allow_redirects=False,
            )
        except Exception as e:
            return FAILED, None, "transport: %s" % (_describe(e),), "", None
        code = response.code
        excerpt = await self._excerpt(response)
        status = classify(code)
        retryAfter = None
        if status == FAILED:
            retryAfter = parseRetryAfter(
                (response.headers.getRawHeaders(b"retry-after") or [None])[0], self._clock.seconds()
            )
        error = "" if status == SENT else "HTTP %d" % (code,)
        return status, code, error, excerpt, retryAfter

    async def _excerpt(self, response: Any) -> str:
        chunks: List[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            if size < EXCERPT:
                chunks.append(data[: EXCERPT - size])
            size += len(data)

        d = treq.collect(response, collect)
        d.addTimeout(self.timeout, self._clock)
        try:
            await d
        except Exception as e:
            return "(response body unreadable: %s)" % (_describe(e),)
        return b"".join(chunks).decode("utf-8", "replace")

    async def sendTest(self, target: Mapping[str, Any]) -> Dict[str, Any]:
        """
        Send the test message to a target (signed like real messages, custom
        headers applied).  Not recorded in the outbox.
        """
        body, ctype = renderTest(target["template"], target["name"])
        status, code, error, excerpt, _ = await self._send(target, body, ctype)
        if self._metrics is not None:
            self._metrics.notifications.labels(target["template"], status).inc()
        return {
            "name": target["name"],
            "ok": status == SENT,
            "status": status,
            "http_status": code,
            "error": error,
            "response_excerpt": excerpt[:512],
            "signed": bool(target.get("secret_env")) and target["template"] in SIGNED_TEMPLATES,
        }


def _describe(e: BaseException) -> str:
    text = str(e) or e.__class__.__name__
    reasons = getattr(e, "reasons", None)  # treq/twisted ResponseFailed and friends
    if reasons:
        text = "; ".join(str(getattr(r, "value", r)) for r in reasons) or text
    return _cut(text, 300)


