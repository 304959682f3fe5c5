"""The Control Panel's ASGI application: the log-in, the dashboard and every page (``pages``,
``tools``) under ``/ui``, on a :class:`~edgeproxy.web.ui.Panel` (sessions, templates, the event
log). Kept apart from ``ui`` so that the pages, which use ``ui``, are assembled here without
``ui`` importing them back."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgeproxy.config import EdgeConfig
from edgeproxy.ops.admin import PanelRole, panel_password_path
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.status import StatusSource
from edgeproxy.web import pages
from edgeproxy.web.auth import Credentials
from edgeproxy.web.ui import PREFIX, Panel


def control_panel(
    config: EdgeConfig,
    status_source: StatusSource,
    event_log: EventLog | None,
    token: str,
    *,
    tls: bool = False,
) -> Starlette:
    """The Control Panel's ASGI application (mounted at ``/ui`` by the admin listener). ``tls``:
    the listener is reached over TLS (the session cookie is then ``Secure``)."""
    credentials = Credentials(token, {role: panel_password_path(config, role) for role in PanelRole})
    panel = Panel(config, status_source, event_log, credentials, tls=tls)
    routes = [
        Route("/login", panel.login_page, methods=["GET", "POST"]),
        Route("/logout", panel.page(panel.logout), methods=["POST"]),
        Route("/", panel.page(panel.dashboard), methods=["GET"]),
        *pages.routes(panel),
        Mount("/static", StaticFiles(packages=[("edgeproxy.web", "static")]), name="static"),
    ]

    async def root(request: Request) -> Response:
        return RedirectResponse(PREFIX + "/", status_code=303)

    return Starlette(routes=[Route("/", root), Route(PREFIX, root), Mount(PREFIX, routes=routes)])
