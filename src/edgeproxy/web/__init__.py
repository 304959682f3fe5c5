"""The admin listener's HTTP application: the admin API (``/metrics``, ``/healthz``, ``/status``,
POST ``/reload`` and ``/stop``) and the Control Panel under ``/ui/``, an ASGI application served
by hypercorn's trio worker inside the server's own trio nursery (:mod:`edgeproxy.web.server`).
"""
