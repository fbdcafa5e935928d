"""
The dashboard's mount on the API app: sign-in and sign-out, its static
files, the C{/ui/} branch (L{fangs.orchestrator.ui.DashboardUI}) and C{/}.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from fangs.errors import FangsError
from fangs.orchestrator.auth import SCOPE_READ, SESSION_COOKIE, SESSION_SECONDS, Caller, operator, public
from fangs.orchestrator.routes.base import Routes, route

log = Logger()


class DashboardRoutes(Routes):
    @route("/ui/login", public(), methods=["GET"])
    def loginPage(self, request: IRequest, caller: Caller) -> bytes:
        return self._loginHTML(request, "")

    @route("/ui/login", public(), methods=["POST"])
    async def login(self, request: IRequest, caller: Caller) -> bytes:
        token = (request.args.get(b"token") or [b""])[-1].decode("latin-1").strip()
        if self.auth.mode == "none":
            request.redirect(b"/ui/")
            return b""
        try:
            cookie, principal = await self.auth.sessionFor(token, self.core.nowNs())
        except FangsError as e:
            return self._loginHTML(request, e.message, 401 if e.status == 401 else 403)
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
        from fangs.orchestrator.ui import STATIC

        from twisted.web.static import File

        return File(STATIC)

    def _loginHTML(self, request: IRequest, error: str, status: int = 200) -> bytes:
        import html

        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Security-Policy", b"default-src 'self'")
        request.setHeader(b"X-Frame-Options", b"DENY")
        message = '<p class="login-error">%s</p>' % (html.escape(error),) if error else ""
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>FANGS — sign in</title>'
            '<link rel="stylesheet" href="/ui/static/fangs.css"></head><body class="login">'
            '<main class="login-box"><h1>FANGS</h1><p>Sign in with an operator token '
            "(<code>fangs token create --name you --scope orchestrator:write</code>).</p>%s"
            '<form method="post" action="/ui/login"><input type="password" name="token" autocomplete="off" '
            'placeholder="fangs_…" required autofocus><button type="submit">Sign in</button></form></main></body></html>'
            % (message,)
        ).encode("utf-8")

    @route("/ui/", operator(SCOPE_READ), branch=True)
    async def dashboard(self, request: IRequest, caller: Caller) -> Any:
        ui = getattr(self, "_ui", None)
        if ui is None:
            from fangs.orchestrator.ui import DashboardUI

            ui = self._ui = DashboardUI(self.core).resource()
        request.fangsTenant = caller.tenant  # the dashboard shows (and changes) this tenant's objects
        return ui

    @route("/", public(), methods=["GET"])
    def root(self, request: IRequest, caller: Caller) -> bytes:
        request.redirect(b"/ui/")
        return b""
