"""
Who may call which route.

Three modes:

 - C{none}: no authentication (a plain-HTTP orchestrator on a loopback
   address, today's zero-config behaviour).
 - C{mtls}: every connection presents a client certificate signed by the
   configured CA (enforced in the TLS handshake); its identity (see
   L{fangs.tls.identityOf}) decides: a runner certificate may register,
   heartbeat and poll only as itself and post events and results only for
   runs dispatched to it; an operator certificate may use every operator
   route and no runner route.  A bearer token may still be sent by an
   operator.
 - C{token}: bearer tokens (C{Authorization: Bearer fangs_<id>_<secret>}),
   stored hashed, with scopes C{orchestrator:read}, C{orchestrator:write},
   C{orchestrator:admin}, or C{runner} (a runner token's name is its runner
   id).

Every refusal is a 401 (no credentials) or a 403 (wrong credentials) in the
error envelope, logged with the certificate subject or token name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any, Callable, FrozenSet, Optional, Tuple

import attrs
from twisted.logger import Logger

from fangs.errors import Forbidden, Unauthorized
from fangs.tls import Identity, peerIdentity

log = Logger()

SCOPE_READ = "orchestrator:read"
SCOPE_WRITE = "orchestrator:write"
SCOPE_ADMIN = "orchestrator:admin"
SCOPE_RUNNER = "runner"
OPERATOR_SCOPES = (SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN)
ALL_SCOPES = OPERATOR_SCOPES + (SCOPE_RUNNER,)
MODES = ("none", "token", "mtls")

SESSION_COOKIE = b"fangs_session"
SESSION_SECONDS = 12 * 3600

_TOKEN = re.compile(r"^fangs_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")


@attrs.frozen
class Principal:
    kind: str  # "runner", "operator" or "anonymous"
    name: str
    scopes: FrozenSet[str]
    via: str  # "certificate", "token" or "none"
    subject: str = ""

    def __str__(self) -> str:
        if self.kind == "anonymous":
            return "anonymous"
        return "%s:%s (%s)" % (self.kind, self.name, self.via)


ANONYMOUS = Principal("anonymous", "", frozenset(ALL_SCOPES), "none")


def newToken() -> Tuple[str, str, str]:
    """
    A fresh token: C{(token_id, secret, token_string)}.
    """
    tokenID = os.urandom(8).hex()
    secret = os.urandom(24).hex()
    return tokenID, secret, "fangs_%s_%s" % (tokenID, secret)


def hashSecret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def impliedScopes(scopes: FrozenSet[str]) -> FrozenSet[str]:
    """
    admin implies write implies read.
    """
    out = set(scopes)
    if SCOPE_ADMIN in out:
        out.add(SCOPE_WRITE)
    if SCOPE_WRITE in out:
        out.add(SCOPE_READ)
    return frozenset(out)


class Authenticator:
    def __init__(
        self,
        mode: str = "none",
        store: Any = None,
        peerIdentity: Callable[[Any], Optional[Identity]] = peerIdentity,
        clock: Any = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError("auth mode must be one of %s" % (", ".join(MODES),))
        self.mode = mode
        self._store = store
        self._peerIdentity = peerIdentity
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: only when none is given
        self._clock = clock

    async def principal(self, request: Any) -> Principal:
        """
        Who sent C{request}; cached on the request.
        """
        cached = getattr(request, "fangsPrincipal", None)
        if cached is not None:
            return cached
        principal = await self._identify(request)
        request.fangsPrincipal = principal
        request.fangsIdentity = None if principal.kind == "anonymous" else str(principal)
        request.fangsScopes = None if self.mode == "none" else principal.scopes
        return principal

    async def _identify(self, request: Any) -> Principal:
        if self.mode == "none":
            return ANONYMOUS
        header = request.getHeader(b"authorization")
        if header:
            return await self._fromToken(header)
        session = request.getCookie(SESSION_COOKIE)
        if session:
            return await self._fromSession(session)
        identity = self._peerIdentity(request)
        if identity is not None:
            if identity.kind == "operator":
                return Principal("operator", identity.name, frozenset(OPERATOR_SCOPES), "certificate", identity.subject)
            return Principal("runner", identity.name, frozenset((SCOPE_RUNNER,)), "certificate", identity.subject)
        if self.mode == "mtls":
            # Cannot happen through the TLS layer (it requires a certificate),
            # but a certificate without a usable identity ends here.
            raise Unauthorized("the client certificate names no runner or operator")
        raise Unauthorized("authentication required: send Authorization: Bearer <token> (see `fangs token create`)")

    # -- dashboard sessions ---------------------------------------------------------

    async def sessionFor(self, token: str, nowNs: int) -> Tuple[bytes, Principal]:
        """
        Exchange an operator token for a dashboard session cookie value.  The
        cookie names the token and is signed with the token's stored hash,
        so revoking the token ends the session and a restart does not.
        """
        principal = await self._fromToken(b"Bearer " + token.strip().encode("ascii", "replace"))
        if principal.kind != "operator":
            raise Forbidden("runner tokens cannot sign in to the dashboard")
        tokenID = principal.subject.split()[-1]
        row = await self._store.lookupToken(tokenID)
        expires = nowNs // 1_000_000_000 + SESSION_SECONDS
        payload = "%s.%d" % (tokenID, expires)
        mac = hmac.new(row["secret_hash"].encode("ascii"), payload.encode("ascii"), hashlib.sha256).hexdigest()
        return ("%s.%s" % (payload, mac)).encode("ascii"), principal

    async def _fromSession(self, cookie: bytes) -> Principal:
        try:
            tokenID, expires, mac = cookie.decode("ascii").split(".")
            expiresAt = int(expires)
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized("dashboard session is malformed; sign in again at /ui/login") from None
        row = await self._store.lookupToken(tokenID) if self._store is not None else None
        if row is None or row["revoked_ns"] is not None:
            raise Unauthorized("dashboard session ended (token revoked); sign in again at /ui/login")
        want = hmac.new(row["secret_hash"].encode("ascii"), ("%s.%s" % (tokenID, expires)).encode("ascii"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, mac) or expiresAt < self._clock.seconds():
            raise Unauthorized("dashboard session expired; sign in again at /ui/login")
        scopes = frozenset(row["scopes"].split())
        if SCOPE_RUNNER in scopes:
            raise Unauthorized("runner tokens cannot use the dashboard")
        return Principal("operator", row["name"], impliedScopes(scopes), "session", "token " + tokenID)

    async def _fromToken(self, header: bytes) -> Principal:
        text = header.decode("latin-1").strip()
        scheme, _, value = text.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization must be 'Bearer <token>'")
        m = _TOKEN.match(value.strip())
        if m is None or self._store is None:
            raise Unauthorized("unknown or malformed token")
        row = await self._store.lookupToken(m.group(1))
        if row is None or row["revoked_ns"] is not None or not hmac.compare_digest(row["secret_hash"], hashSecret(m.group(2))):
            log.warn("refused token {token_id}: unknown, revoked or wrong secret", token_id=m.group(1))
            raise Unauthorized("unknown, revoked or wrong token")
        scopes = frozenset(row["scopes"].split())
        if SCOPE_RUNNER in scopes:
            return Principal("runner", row["name"], frozenset((SCOPE_RUNNER,)), "token", "token " + row["id"])
        return Principal("operator", row["name"], impliedScopes(scopes), "token", "token " + row["id"])

    # -- checks used by the routes ------------------------------------------------

    async def requireOperator(self, request: Any, scope: str = SCOPE_READ) -> Principal:
        p = await self.principal(request)
        if p.kind == "anonymous":
            return p
        if p.kind != "operator":
            self._refuse(request, p, "runner credentials cannot use operator routes")
        if scope not in p.scopes:
            self._refuse(request, p, "this credential lacks the %s scope" % (scope,))
        return p

    async def requireRunner(self, request: Any, runnerID: Optional[str]) -> Principal:
        p = await self.principal(request)
        if p.kind == "anonymous":
            return p
        if p.kind != "runner":
            self._refuse(request, p, "operator credentials cannot use runner routes")
        if runnerID is None or p.name != runnerID:
            self._refuse(
                request,
                p,
                "credential is for runner %r, not %r" % (p.name, runnerID) if runnerID else "this run was not dispatched to runner %r" % (p.name,),
            )
        return p

    def _refuse(self, request: Any, p: Principal, why: str) -> None:
        log.warn(
            "403 {method} {path} for {principal} ({subject}): {why}",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1", "replace"),
            principal=str(p),
            subject=p.subject,
            why=why,
        )
        raise Forbidden(why)
