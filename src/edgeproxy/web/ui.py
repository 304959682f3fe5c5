"""The Control Panel: server-rendered pages under ``/ui/`` (Starlette, Jinja2), off unless
``[admin] ui = true``.

Every page goes through :class:`Panel`: a session (``web.auth``) or the login page; on every
POST the session's CSRF token, and the admin role for a change; every change is written to the
event log (EP8014) with who made it. Pages read and change the store only through
``edgeproxy.policy.operations`` and ``edgeproxy.policy.validation`` — the same functions, rules
and refusals as the CLI. The ``Host`` check and the size bounds are the admin listener's
(:class:`edgeproxy.web.api.AdminApplication`), before any page.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from edgeproxy import __version__
from edgeproxy.config import EdgeConfig
from edgeproxy.ops import events
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.status import StatusSource
from edgeproxy.policy.store import Store
from edgeproxy.web.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Credentials,
    LoginThrottle,
    Session,
    Sessions,
    csrf_ok,
)
from edgeproxy.web.dashboard import age, dashboard_view

T = TypeVar("T")
PREFIX = "/ui"
#: Form fields and sizes a page accepts (the listener bounds the body to 64 KiB anyway).
MAX_FORM_FIELDS = 64
#: The longest notice a change leaves for the next page (warnings included).
MAX_NOTICE_CHARS = 2000
#: Seconds between the dashboard's refreshes.
DASHBOARD_REFRESH_SECONDS = 2

#: Sent with every page: no framing, no foreign scripts or styles, no referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: The navigation: (path under /ui, title); the pages register themselves in this order.
NAV = (
    ("/", "Dashboard"),
    ("/partners", "XMPP Federated Partners"),
    ("/gateway", "Gateway settings"),
    ("/policies", "External access policies"),
    ("/users", "Users"),
    ("/certificates", "Certificates"),
    ("/dns", "DNS"),
    ("/check", "Check"),
)

Page = Callable[[Request, Session], Awaitable[Response]]


@dataclass
class Panel:
    """What every page needs: configuration, status, event log, sessions, templates."""

    config: EdgeConfig
    status_source: StatusSource
    event_log: EventLog | None
    credentials: Credentials
    tls: bool = False

    def __post_init__(self) -> None:
        self.sessions = Sessions()
        self.throttle = LoginThrottle()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("edgeproxy.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["age"] = age

    # -- rendering ------------------------------------------------------------------------

    def render(self, request: Request, session: Session | None, template: str, *, status: int = 200,
               **context: Any) -> HTMLResponse:
        """A page from ``template`` with the base context (navigation, session, CSRF token)."""
        html = self.templates.get_template(template).render(
            prefix=PREFIX, nav=NAV, session=session, csrf=session.csrf if session else "",
            path=request.url.path, version=__version__, domains=self.config.edge.domains,
            notice=self._take_notice(session), **context,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def refusal(self, request: Request, session: Session | None, status: int, message: str) -> HTMLResponse:
        """An error page (403 for a missing session, CSRF token or right)."""
        return self.render(request, session, "message.html", status=status, title="Refused", message=message)

    @staticmethod
    def _take_notice(session: Session | None) -> str:
        """The notice a change left for the next page of this session (shown once)."""
        if session is None:
            return ""
        notice, session.notice = session.notice, ""
        return notice

    def redirect(self, path: str, notice: str = "", session: Session | None = None) -> RedirectResponse:
        """303 to ``/ui<path>`` (Post/Redirect/Get); ``notice`` is kept in the session for the
        next page (never in the address: a link could not put words in the panel's mouth)."""
        if session is not None and notice:
            session.notice = notice[:MAX_NOTICE_CHARS]
        return RedirectResponse(PREFIX + path, status_code=303, headers=SECURITY_HEADERS)

    # -- the guard --------------------------------------------------------------------------

    def page(self, handler: Page, *, change: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the guard: a live session, and for a POST the CSRF token and (when
        ``change``) the admin role. Without a session a GET goes to the login page and a POST is
        refused (403)."""

        async def endpoint(request: Request) -> Response:
            session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is None:
                if request.method in ("GET", "HEAD"):
                    return self.redirect("/login")
                return self.refusal(request, None, 403, "Not logged in (or the session expired): log in again.")
            if request.method == "POST":
                form = await request.form(max_fields=MAX_FORM_FIELDS)
                if not csrf_ok(session.csrf, form.get("csrf")):
                    return self.refusal(request, session, 403,
                                        "The form's CSRF token is missing or wrong: reload the page and try again.")
                if change and not session.can_change:
                    return self.refusal(request, session, 403,
                                        "Your login is read-only: changes need the admin role.")
                request.state.form = form
            return await handler(request, session)

        return endpoint

    def audit(self, session: Session, kind: str, name: str, action: str) -> None:
        """EP8014: who changed what."""
        if self.event_log is not None:
            self.event_log.emit(events.PANEL_CHANGE, who=session.who, kind=kind, name=name, action=action)

    async def in_store(self, work: Callable[[Store], T]) -> T:
        """Run ``work(store)`` in a worker thread with the store open (SQLite blocks)."""

        def run() -> T:
            store = Store.open(self.config.state_dir)
            try:
                return work(store)
            finally:
                store.close()

        return await anyio.to_thread.run_sync(run)

    # -- login ------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if request.method == "GET":
            return self._login_form(request, "")
        form = await request.form(max_fields=MAX_FORM_FIELDS)
        peer = _peer(request)
        if not csrf_ok(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf")):
            return self._login_form(request, "The login form expired: try again.", status=403)
        if self.throttle.blocked(peer.rsplit(":", 1)[0]):
            return self._login_form(request, "Too many failed logins from your address: wait a minute.", status=429)
        secret = form.get("secret")
        found = await anyio.to_thread.run_sync(self.credentials.check, secret if isinstance(secret, str) else "")
        if found is None:
            self.throttle.failed(peer.rsplit(":", 1)[0])
            if self.event_log is not None:
                self.event_log.emit(events.ADMIN_DENIED, method="POST", path=PREFIX + "/login", peer=peer,
                                    reason="wrong credential")
            return self._login_form(request, "Wrong token or password.", status=403)
        role, method = found
        old = request.cookies.get(SESSION_COOKIE)
        if old:
            self.sessions.end(old)
        session = self.sessions.create(role, method, peer)
        if self.event_log is not None:
            self.event_log.emit(events.PANEL_LOGIN, action="login", role=role.value, method=method, peer=peer)
        response = self.redirect("/")
        response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="strict", secure=self.tls,
                            path=PREFIX)
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    def _login_form(self, request: Request, error: str, *, status: int = 200) -> Response:
        token = _random_token()
        response = self.render(request, None, "login.html", status=status, error=error, login_csrf=token,
                               logged_out=request.query_params.get("out") == "1")
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=self.tls, path=PREFIX,
                            max_age=3600)
        return response

    async def logout(self, request: Request, session: Session) -> Response:
        self.sessions.end(session.id)
        if self.event_log is not None:
            self.event_log.emit(events.PANEL_LOGIN, action="logout", role=session.role.value, method=session.method,
                                peer=_peer(request))
        response = self.redirect("/login?out=1")
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # -- dashboard --------------------------------------------------------------------------

    async def dashboard(self, request: Request, session: Session) -> Response:
        view = dashboard_view(self.config, self.status_source, self.event_log, dt.datetime.now(dt.UTC))
        return self.render(request, session, "dashboard.html", refresh=DASHBOARD_REFRESH_SECONDS, **view)


def _peer(request: Request) -> str:
    client = request.client
    if client is None:
        return "?"
    return f"[{client.host}]:{client.port}" if ":" in client.host else f"{client.host}:{client.port}"


def _random_token() -> str:
    return secrets.token_urlsafe(32)


def form_text(form: FormData, name: str) -> str:
    """A text field of a submitted form, stripped ("" when absent or a file)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""
