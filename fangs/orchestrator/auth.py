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

import base64
import hashlib
import hmac
import os
import re
from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import attrs
from twisted.logger import Logger

from fangs.errors import BadRequest, Forbidden, NotFoundError, Unauthorized
from fangs.tenants import ALL_TENANTS, DEFAULT_TENANT, TENANT_HEADER, TenantError, selectTenant
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
    #: The tenant it belongs to, or L{ALL_TENANTS} (an all-tenant admin, a
    #: runner, anonymous).
    tenant: str = DEFAULT_TENANT

    def __str__(self) -> str:
        if self.kind == "anonymous":
            return "anonymous"
        return "%s:%s (%s)" % (self.kind, self.name, self.via)


ANONYMOUS = Principal("anonymous", "", frozenset(ALL_SCOPES), "none", tenant=ALL_TENANTS)


class TenantForbidden(Forbidden):
    code = "tenant_forbidden"


@attrs.frozen
class Caller:
    """
    Who called a route and on which tenant it acts: what L{authorizedRoute}
    hands a handler.

    @ivar tenant: the tenant of the objects it creates, reads and changes
        (its own; for an all-tenant principal the one C{X-Fangs-Tenant}
        selects, else L{DEFAULT_TENANT}).
    @ivar selected: the tenant of its views (lists, stream, metrics, admin
        health), or None for an all-tenant principal that selected none
        (it sees every tenant).
    """

    principal: Principal
    tenant: str = DEFAULT_TENANT
    selected: Optional[str] = DEFAULT_TENANT

    @property
    def allTenants(self) -> bool:
        return self.principal.tenant == ALL_TENANTS


def tenantOfRow(row: Any) -> str:
    try:
        value = row["tenant"]
    except (KeyError, IndexError, TypeError):
        return DEFAULT_TENANT
    return value or DEFAULT_TENANT


def certificateTenant(identity: Identity) -> str:
    """
    An operator certificate's tenant: the one it names (see
    L{fangs.tls.identityOf}), else all tenants for an admin certificate
    (an install's admin before tenants existed), else L{DEFAULT_TENANT}.
    """
    if identity.tenant:
        return identity.tenant
    return ALL_TENANTS if SCOPE_ADMIN in identity.scopes else DEFAULT_TENANT


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
        sessionKeys: Optional["SessionKeys"] = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError("auth mode must be one of %s" % (", ".join(MODES),))
        self.mode = mode
        self._store = store
        self._peerIdentity = peerIdentity
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: only when none is given
        self._clock = clock
        # Without a key file (embedded, tests) sessions are signed with a
        # key that lives in this process only.
        self._sessionKeys = sessionKeys if sessionKeys is not None else EphemeralSessionKeys()

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
                return Principal("operator", identity.name, impliedScopes(frozenset(identity.scopes)), "certificate", identity.subject,
                                 certificateTenant(identity))
            return Principal("runner", identity.name, frozenset((SCOPE_RUNNER,)), "certificate", identity.subject, ALL_TENANTS)
        if self.mode == "mtls":
            # Cannot happen through the TLS layer (it requires a certificate),
            # but a certificate without a usable identity ends here.
            raise Unauthorized("the client certificate names no runner or operator")
        raise Unauthorized("authentication required: send Authorization: Bearer <token> (see `fangs token create`)")

    # -- dashboard sessions ---------------------------------------------------------

    async def sessionFor(self, token: str, nowNs: int) -> Tuple[bytes, Principal]:
        """
        Exchange an operator token for a dashboard session.  The session is
        a random id stored (hashed) server-side, so logout and the token's
        revocation end it at once; the cookie carries the id signed with the
        server's session key, which lives outside the database.
        """
        principal = await self._fromToken(b"Bearer " + token.strip().encode("ascii", "replace"))
        if principal.kind != "operator":
            raise Forbidden("runner tokens cannot sign in to the dashboard")
        if self._sessionKeys is None:
            raise Unauthorized("dashboard sessions are not configured on this orchestrator")
        tokenID = principal.subject.split()[-1]
        sessionID = os.urandom(32).hex()
        await self._store.createSession(_sessionHash(sessionID), tokenID, nowNs, nowNs + SESSION_SECONDS * 1_000_000_000)
        return self._sessionKeys.sign(sessionID).encode("ascii"), principal

    async def endSession(self, cookie: Optional[bytes]) -> bool:
        """
        Logout: forget the session server-side.  A forged or unknown cookie
        ends nothing.
        """
        sessionID = self._sessionID(cookie)
        if sessionID is None or self._store is None:
            return False
        return bool(await self._store.deleteSession(_sessionHash(sessionID)))

    def _sessionID(self, cookie: Optional[bytes]) -> Optional[str]:
        if not cookie or self._sessionKeys is None:
            return None
        try:
            text = cookie.decode("ascii")
        except UnicodeDecodeError:
            return None
        return self._sessionKeys.verify(text)

    async def _fromSession(self, cookie: bytes) -> Principal:
        sessionID = self._sessionID(cookie)
        if sessionID is None:
            raise Unauthorized("dashboard session is malformed or signed with a retired key; sign in again at /ui/login")
        row = await self._store.lookupSession(_sessionHash(sessionID)) if self._store is not None else None
        if row is None:
            raise Unauthorized("dashboard session ended; sign in again at /ui/login")
        if row["revoked_ns"] is not None:
            raise Unauthorized("dashboard session ended (token revoked); sign in again at /ui/login")
        if row["expires_ns"] < self._clock.seconds() * 1_000_000_000:
            raise Unauthorized("dashboard session expired; sign in again at /ui/login")
        scopes = frozenset(row["scopes"].split())
        if SCOPE_RUNNER in scopes:
            raise Unauthorized("runner tokens cannot use the dashboard")
        return Principal("operator", row["name"], impliedScopes(scopes), "session", "token " + row["token_id"], tenantOfRow(row))

    async def _fromToken(self, header: bytes) -> Principal:
        text = header.decode("latin-1").strip()
        scheme, _, value = text.partition(" ")
        value = value.strip()
        if scheme.lower() == "basic" and value:
            # Go runners can only send credentials as HTTP Basic: the token
            # is the password (the user name is ignored).
            try:
                decoded = base64.b64decode(value.encode("ascii"), validate=True).decode("ascii")
            except (ValueError, UnicodeError):
                raise Unauthorized("Authorization Basic credentials are not base64 of user:token") from None
            value = decoded.partition(":")[2].strip()
        elif scheme.lower() != "bearer" or not value:
            raise Unauthorized("Authorization must be 'Bearer <token>' (or Basic with the token as password)")
        m = _TOKEN.match(value)
        if m is None or self._store is None:
            raise Unauthorized("unknown or malformed token")
        row = await self._store.lookupToken(m.group(1))
        if row is None or row["revoked_ns"] is not None or not hmac.compare_digest(row["secret_hash"], hashSecret(m.group(2))):
            log.warn("refused token {token_id}: unknown, revoked or wrong secret", token_id=m.group(1))
            raise Unauthorized("unknown, revoked or wrong token")
        scopes = frozenset(row["scopes"].split())
        if SCOPE_RUNNER in scopes:
            return Principal("runner", row["name"], frozenset((SCOPE_RUNNER,)), "token", "token " + row["id"], ALL_TENANTS)
        return Principal("operator", row["name"], impliedScopes(scopes), "token", "token " + row["id"], tenantOfRow(row))

    # -- checks used by the routes ------------------------------------------------

    async def requireKind(self, request: Any, kind: str) -> Principal:
        """
        An authenticated caller of this kind (C{runner} or C{operator}).
        """
        p = await self.principal(request)
        if p.kind == "anonymous" or p.kind == kind:
            return p
        self._refuse(request, p, "%s credentials cannot use %s routes" % (p.kind, kind))
        return p

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

    def caller(self, request: Any, p: Principal) -> Caller:
        """
        The tenant C{p} acts on in C{request}: C{X-Fangs-Tenant} selects one
        for an all-tenant principal; a principal naming a tenant it does not
        belong to is refused (403 C{tenant_forbidden}).
        """
        raw = request.getHeader(TENANT_HEADER)
        asked = None
        if raw is not None:
            asked = raw.decode("latin-1").strip()
        try:
            selected = selectTenant(p.tenant, asked)
        except TenantError as e:
            raise BadRequest("X-Fangs-Tenant: %s" % (e,)) from None
        except PermissionError:
            self._refuse(request, p, "this credential belongs to tenant %r, not %r" % (p.tenant, asked), TenantForbidden)
            raise  # not reached
        request.fangsTenant = selected or DEFAULT_TENANT
        return Caller(p, selected or DEFAULT_TENANT, selected)

    async def authorize(self, request: Any, access: "Access", args: Any, runnerOfRun: Any = None) -> Caller:
        """
        Check C{request} against a route's declared L{Access} (C{args} are
        the route's path arguments); the caller and its tenant, cached on the
        request (the site's gate runs this before the body is read, the
        handler gets the same answer).
        """
        cached = getattr(request, "fangsCaller", None)
        if cached is not None:
            return cached
        if access.kind == PUBLIC:
            caller = Caller(ANONYMOUS, DEFAULT_TENANT, None)
        elif access.kind == OPERATOR:
            p = await self.requireOperator(request, access.scopeFor(request))
            caller = self.caller(request, p)
        elif access.kind == RUNNER:
            p = await self.requireKind(request, "runner")
            if access.arg:
                await self.requireRunner(request, args.get(access.arg))
            caller = Caller(p, DEFAULT_TENANT, None)
        elif access.kind == RUNNER_OF_RUN:
            p = await self.requireKind(request, "runner")
            if self.mode != "none":
                runID = args.get(access.arg) or ""
                if runnerOfRun is None:
                    raise NotFoundError("run %s not found" % (runID,), code="unknown_run")
                await self.requireRunner(request, await runnerOfRun(runID))
            caller = Caller(p, DEFAULT_TENANT, None)
        else:  # pragma: no cover - Access() checks its kind
            raise ValueError(access.kind)
        request.fangsCaller = caller
        return caller

    def _refuse(self, request: Any, p: Principal, why: str, error: Any = Forbidden) -> None:
        method = getattr(request, "requestMethod", b"") or request.method
        path = getattr(request, "requestPath", b"") or getattr(request, "path", b"") or b""
        log.warn(
            "403 {method} {path} for {principal} ({subject}): {why}",
            method=method.decode("latin-1") if isinstance(method, bytes) else str(method),
            path=path.decode("latin-1", "replace") if isinstance(path, bytes) else str(path),
            principal=str(p),
            subject=p.subject,
            why=why,
        )
        raise error(why)


PUBLIC = "public"
OPERATOR = "operator"
RUNNER = "runner"
RUNNER_OF_RUN = "runner-of-run"


@attrs.frozen
class Access:
    """
    Who may call a route, declared once with it (L{authorizedRoute}):

     - C{public}: anybody, unauthenticated;
     - C{operator}: an operator credential with C{scope} (one scope, or a
       mapping of HTTP method to scope), acting on a tenant;
     - C{runner}: a runner credential, the runner named by the path
       argument C{arg} when given;
     - C{runner-of-run}: the runner the run named by path argument C{arg}
       was dispatched to.
    """

    kind: str
    scope: Any = SCOPE_READ
    arg: str = ""

    def __attrs_post_init__(self) -> None:
        if self.kind not in (PUBLIC, OPERATOR, RUNNER, RUNNER_OF_RUN):
            raise ValueError("unknown access kind %r" % (self.kind,))

    def scopeFor(self, request: Any) -> str:
        if isinstance(self.scope, str):
            return self.scope
        method = (getattr(request, "method", b"") or b"GET").decode("latin-1").upper()
        return self.scope.get(method, self.scope.get("*", SCOPE_ADMIN))


def public() -> Access:
    return Access(PUBLIC)


def operator(scope: Any = SCOPE_READ) -> Access:
    return Access(OPERATOR, scope)


def runner(arg: str = "") -> Access:
    return Access(RUNNER, arg=arg)


def runnerOfRun(arg: str = "runID") -> Access:
    return Access(RUNNER_OF_RUN, arg=arg)


def callerKey(p: Principal) -> str:
    """
    A stable name for the caller, for scoping its idempotency keys: the
    token id for tokens and sessions, the certificate identity otherwise.
    """
    if p.kind == "anonymous":
        return "anonymous"
    if p.subject.startswith("token "):
        return p.subject
    return "%s:%s" % (p.kind, p.name)


def _sessionHash(sessionID: str) -> str:
    return hashlib.sha256(sessionID.encode("ascii")).hexdigest()


class SessionKeyError(ValueError):
    """
    The session key file cannot be used.
    """


class SessionKeys:
    """
    The HMAC keys of dashboard session cookies, kept in a file outside the
    database (created 0600 at first start).  The file holds one hex key per
    line: the first signs new cookies, the others (the retired keys of a
    rotation) are still accepted, so a rotation does not sign everybody
    out unless the old line is dropped.  Re-read on SIGHUP.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._keys: List[bytes] = []
        self.reload()

    def reload(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as e:
            raise SessionKeyError("cannot create session key file %s: %s" % (self.path, e.strerror)) from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        try:
            st = os.stat(self.path)
            if st.st_mode & 0o077:
                os.chmod(self.path, 0o600)
            with open(self.path, "r", encoding="ascii") as f:
                lines = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise SessionKeyError("cannot read session key file %s: %s" % (self.path, e)) from None
        keys = []
        for line in lines:
            try:
                key = bytes.fromhex(line)
            except ValueError:
                raise SessionKeyError("session key file %s: every line must be a hex key" % (self.path,)) from None
            if len(key) < 16:
                raise SessionKeyError("session key file %s: keys must be at least 16 bytes" % (self.path,))
            keys.append(key)
        if not keys:
            raise SessionKeyError("session key file %s holds no key" % (self.path,))
        self._keys = keys

    def sign(self, sessionID: str) -> str:
        mac = hmac.new(self._keys[0], sessionID.encode("ascii"), hashlib.sha256).hexdigest()
        return "%s.%s" % (sessionID, mac)

    def verify(self, cookie: str) -> Optional[str]:
        sessionID, _, mac = cookie.partition(".")
        if not re.match(r"^[0-9a-f]{64}$", sessionID) or not mac:
            return None
        for key in self._keys:
            want = hmac.new(key, sessionID.encode("ascii"), hashlib.sha256).hexdigest()
            if hmac.compare_digest(want, mac):
                return sessionID
        return None


class EphemeralSessionKeys(SessionKeys):
    """
    A random session key kept in memory only: every session ends with the
    process.
    """

    def __init__(self) -> None:
        self.path = ""
        self._keys = [os.urandom(32)]

    def reload(self) -> None:
        pass


def rotateSessionKey(path: str, keep: int = 1) -> None:
    """
    Put a new key first in the session key file, keeping C{keep} previous
    keys (0 signs every session out).  Written atomically, mode 0600.
    """
    old: List[str] = []
    if os.path.exists(path):
        with open(path, "r", encoding="ascii") as f:
            old = [line.strip() for line in f if line.strip()]
    lines = [os.urandom(32).hex()] + old[:keep]
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
