"""
The dashboard's sessions: signing in with an operator token (the login page,
C{templates/login.html}) and out, the double-submit CSRF token of its forms,
whether a session may act, and what a page reads from its request.

L{DashboardRoutes} is the dashboard's mount on the API's one app
(L{fangs.orchestrator.api.OrchestratorAPI}): sign-in and sign-out, the static
files, the C{/ui/} branch (L{fangs.orchestrator.ui.pages.DashboardUI}) and C{/}.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Optional, Tuple

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.static import File

from fangs.errors import BadRequest, FangsError
from fangs.orchestrator.auth import SCOPE_READ, SESSION_COOKIE, SESSION_SECONDS, Caller, operator, public
from fangs.orchestrator.routes.base import Routes, route
from fangs.orchestrator.ui.render import STATIC, environment
from fangs.tenants import DEFAULT_TENANT

log = Logger()

CSRF_COOKIE = b"fangs_csrf"


def canWrite(request: IRequest) -> bool:
    """
    Whether this request may act (promote, reject, edit the allowlist): with
    no operator auth configured (C{fangsScopes} unset) or with the
    C{orchestrator:write} scope.  The one place the dashboard decides it.
    """
    scopes = getattr(request, "fangsScopes", None)
    return scopes is None or "orchestrator:write" in scopes


class CSRF:
    """
    Double-submit token: a random cookie, and in each form the HMAC of that
    cookie under a per-process secret.  A cross-site page can neither read
    the cookie nor compute the HMAC.
    """

    def __init__(self, secret: Optional[bytes] = None) -> None:
        self._secret = secret or os.urandom(32)

    def tokenFor(self, request: IRequest) -> str:
        cookie = request.getCookie(CSRF_COOKIE)
        if not cookie or len(cookie) != 32:
            cookie = os.urandom(16).hex().encode()
            request.addCookie(
                CSRF_COOKIE, cookie, path=b"/ui/", httpOnly=True, sameSite="strict", secure=request.isSecure()
            )
            request.received_cookies[CSRF_COOKIE] = cookie
        return hmac.new(self._secret, cookie, hashlib.sha256).hexdigest()

    def check(self, request: IRequest, token: Optional[str]) -> bool:
        cookie = request.getCookie(CSRF_COOKIE)
        if not cookie or not token:
            return False
        want = hmac.new(self._secret, cookie, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, token)


# -- request helpers ----------------------------------------------------------------


def _arg(request: IRequest, name: str) -> Optional[str]:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[-1].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadRequest("parameter %s is not UTF-8" % (name,)) from None


def _intArg(request: IRequest, name: str, default: int, low: int, high: int) -> int:
    raw = _arg(request, name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest("%s must be an integer from %d to %d" % (name, low, high))
    return int(raw)


def _cursor(raw: Optional[str]) -> Tuple[int, int]:
    if not raw:
        return (0, -1)
    seq, _, idx = raw.partition(".")
    if not seq.isdigit() or not idx.isdigit():
        raise BadRequest("after must be SEQ.IDX")
    return (int(seq), int(idx))


def _tenant(request: IRequest) -> str:
    """
    The tenant the dashboard shows: the signed-in principal's (set by the
    API's route declaration), else the default.
    """
    return getattr(request, "fangsTenant", None) or DEFAULT_TENANT


def _actor(request: IRequest) -> str:
    identity = getattr(request, "fangsIdentity", None)
    if identity:
        return str(identity)
    peer = request.getClientAddress()
    return "dashboard@%s" % (getattr(peer, "host", "?"),)


_login = []


def renderLogin(request: IRequest, error: str, status: int = 200) -> bytes:
    """
    The sign-in page (C{templates/login.html}), with C{error} when a sign-in
    was refused.
    """
    if not _login:
        _login.append(environment().get_template("login.html"))
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Content-Security-Policy", b"default-src 'self'")
    request.setHeader(b"X-Frame-Options", b"DENY")
    return _login[0].render(error=error).encode("utf-8")


class DashboardRoutes(Routes):
    @route("/ui/login", public(), methods=["GET"])
    def loginPage(self, request: IRequest, caller: Caller) -> bytes:
        return renderLogin(request, "")

    @route("/ui/login", public(), methods=["POST"])
    async def login(self, request: IRequest, caller: Caller) -> bytes:
        token = (request.args.get(b"token") or [b""])[-1].decode("latin-1").strip()
        if self.auth.mode == "none":
            request.redirect(b"/ui/")
            return b""
        try:
            cookie, principal = await self.auth.sessionFor(token, self.core.nowNs())
        except FangsError as e:
            return renderLogin(request, e.message, 401 if e.status == 401 else 403)
        request.addCookie(SESSION_COOKIE, cookie, path=b"/ui/", httpOnly=True, sameSite="strict", secure=request.isSecure(), max_age=str(SESSION_SECONDS))
        log.info("dashboard sign-in by {principal}", principal=str(principal))
        request.redirect(b"/ui/")
        return b""

    @route("/ui/logout", public(), methods=["POST"])
    async def logout(self, request: IRequest, caller: Caller) -> bytes:
        ended = await self.auth.endSession(request.getCookie(SESSION_COOKIE))
        if ended:
            log.info("dashboard sign-out")
        request.addCookie(SESSION_COOKIE, b"", path=b"/ui/", httpOnly=True, sameSite="strict", max_age="0")
        request.redirect(b"/ui/login")
        return b""

    @route("/ui/static/", public(), branch=True, methods=["GET", "HEAD"])
    def dashboardStatic(self, request: IRequest, caller: Caller) -> Any:
        return File(STATIC)

    @route("/ui/", operator(SCOPE_READ), branch=True)
    async def dashboard(self, request: IRequest, caller: Caller) -> Any:
        ui = getattr(self, "_ui", None)
        if ui is None:
            from fangs.orchestrator.ui.pages import DashboardUI

            # The dashboard's errors leave through the API's one mapping.
            ui = self._ui = DashboardUI(self.core, errors=self.error, views=self.views).resource()
        request.fangsTenant = caller.tenant  # the dashboard shows (and changes) this tenant's objects
        return ui

    @route("/", public(), methods=["GET"])
    def root(self, request: IRequest, caller: Caller) -> bytes:
        request.redirect(b"/ui/")
        return b""
