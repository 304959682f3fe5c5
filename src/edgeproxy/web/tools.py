"""The Control Panel's tool pages: Certificates, DNS and Check (filled in below)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from edgeproxy.web.ui import Panel


def routes(panel: Panel) -> list[BaseRoute]:
    """The tool pages' routes (under ``/ui``)."""
    return []
