"""``edgeproxy status [--json]``, ``edgeproxy stop``, ``edgeproxy reload``: clients of the admin endpoint.

They connect to ``[admin] listen`` of the same configuration the server uses (a wildcard address
is reached through loopback). When nothing answers there, they say
``edgeproxy is not running (nothing on 127.0.0.1:9269)`` (``status`` on stdout as its answer, the
others on stderr after ``edgeproxy: ``) and exit 1. ``stop`` and ``reload`` send the admin token
(``[admin] token-file``, default ``<state-dir>/admin.token``); reading that file is the admin
right to change the running server, viewing its status needs none.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from dataclasses import dataclass

import msgspec

from edgeproxy.commands.common import (
    EXIT_OK,
    SubParsers,
    add_json_option,
    config_option_parent,
    error,
    load_args_config,
)
from edgeproxy.config import EdgeConfig
from edgeproxy.names import listen_address
from edgeproxy.ops.admin import (
    admin_token_path,
    client_host,
    join_host_port,
    read_admin_token,
)
from edgeproxy.ops.lifecycle import DRAIN_BOUND_SECONDS, ReloadOutcome
from edgeproxy.ops.status import STATUS_FORMAT, decode_status, render_table

EXIT_FAILED = 1  # not running, or the request failed


class NotRunning(Exception):
    """Nothing accepts connections on the admin address."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


class AdminClient:
    """A tiny synchronous HTTP client for the admin endpoint (one request per connection)."""

    def __init__(self, config: EdgeConfig, *, timeout: float = 10.0) -> None:
        host, port = listen_address(config.admin.listen)
        self.host = client_host(host)
        self.port = port
        self.address = join_host_port(self.host, port)
        self.timeout = timeout
        self.token_path = admin_token_path(config)

    def request(self, method: str, path: str, *, token: str | None = None) -> Reply:
        """Raises ``NotRunning`` when the connection is refused, OSError for other failures."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            try:
                conn.connect()
            except (ConnectionRefusedError, ConnectionResetError) as exc:
                raise NotRunning(self.address) from exc
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return Reply(response.status, response.read())
        finally:
            conn.close()

    def token(self) -> str:
        """The admin token; raises OSError or ValueError with a message for the operator."""
        return read_admin_token(self.token_path)


def not_running(client: AdminClient) -> str:
    return f"edgeproxy is not running (nothing on {client.address})"


def _error_text(reply: Reply) -> str:
    return reply.body.decode("utf-8", "replace").strip() or f"HTTP {reply.status}"


def cmd_status(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    client = AdminClient(config, timeout=args.timeout)
    try:
        reply = client.request("GET", "/status")
    except NotRunning:
        if args.json:
            print(json.dumps({"format": STATUS_FORMAT, "running": False, "admin": client.address}))
            error(not_running(client))
        else:
            print(not_running(client))
        return EXIT_FAILED
    except OSError as exc:
        print(f"edgeproxy: admin endpoint {client.address}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if reply.status != 200:
        print(f"edgeproxy: status failed: {_error_text(reply)}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        sys.stdout.write(reply.body.decode("utf-8").rstrip("\n") + "\n")
        return EXIT_OK
    try:
        status = decode_status(reply.body)
    except msgspec.DecodeError as exc:
        print(f"edgeproxy: unreadable status from {client.address}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(render_table(status, admin=client.address))
    return EXIT_OK


def _write(client: AdminClient, path: str) -> Reply | int:
    """POST with the token; an exit status when it could not even be asked."""
    try:
        token = client.token()
    except (OSError, ValueError) as exc:
        try:
            client.request("GET", "/healthz")
        except NotRunning:
            error(not_running(client))
            return EXIT_FAILED
        except OSError:
            pass
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(
            f"edgeproxy: cannot read the admin token {client.token_path}: {reason} "
            "(stop and reload need the service account or the admin group)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        return client.request("POST", path, token=token)
    except NotRunning:
        error(not_running(client))
        return EXIT_FAILED
    except OSError as exc:
        print(f"edgeproxy: admin endpoint {client.address}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def reload_json(outcome: ReloadOutcome) -> dict[str, object]:
    """What ``reload --json`` prints (docs/cli-json.md)."""
    return {
        "ok": outcome.ok,
        "message": outcome.message,
        "partners-added": list(outcome.partners_added),
        "partners-removed": list(outcome.partners_removed),
        "streams-closed": outcome.streams_closed,
    }


def cmd_reload(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    client = AdminClient(config, timeout=args.timeout)
    reply = _write(client, "/reload")
    if isinstance(reply, int):
        return reply
    if reply.status not in (200, 409):
        print(f"edgeproxy: reload failed: {_error_text(reply)}", file=sys.stderr)
        return EXIT_FAILED
    outcome = msgspec.json.decode(reply.body, type=ReloadOutcome)
    if args.json:
        print(json.dumps(reload_json(outcome)))
    if not outcome.ok:
        print(f"edgeproxy: reload refused: {outcome.message}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        return EXIT_OK
    added = ", ".join(outcome.partners_added) or "none"
    removed = ", ".join(outcome.partners_removed) or "none"
    print(f"reloaded: partners added {added}; removed {removed}; {outcome.streams_closed} streams closed")
    if outcome.message:
        print(outcome.message)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    client = AdminClient(config, timeout=min(args.timeout, 10.0))
    reply = _write(client, "/stop")
    if isinstance(reply, int):
        return reply
    if reply.status != 202:
        print(f"edgeproxy: stop failed: {_error_text(reply)}", file=sys.stderr)
        return EXIT_FAILED
    if args.no_wait:
        print("edgeproxy is stopping")
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            client.request("GET", "/healthz")
        except (NotRunning, OSError, http.client.HTTPException):
            # An answer cut off by the process exiting counts as stopped too.
            print("edgeproxy stopped")
            return EXIT_OK
        time.sleep(0.1)
    print(f"edgeproxy: still answering on {client.address} after {args.timeout:g} s", file=sys.stderr)
    return EXIT_FAILED


def register(sub: SubParsers) -> None:
    status = sub.add_parser("status", parents=[config_option_parent()],
                            help="is edgeproxy running: listeners (S2S, channel, admin, SIP), streams, "
                            "gateway channel, queues")
    status.add_argument("--json", action="store_true",
                        help="print the status as stable JSON (docs/status-json.md) instead of the table")
    status.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for the admin endpoint's answer (default 5)")
    status.set_defaults(handler=cmd_status)

    stop = sub.add_parser("stop", parents=[config_option_parent()],
                          help="graceful shutdown: drain queues, close streams with system-shutdown")
    stop.add_argument("--no-wait", action="store_true",
                      help="return once the shutdown has begun (default: wait until the process is gone)")
    stop.add_argument("--timeout", type=float, default=DRAIN_BOUND_SECONDS + 10, metavar="S",
                      help=f"seconds to wait for the process to stop (default {DRAIN_BOUND_SECONDS + 10:g})")
    stop.set_defaults(handler=cmd_stop)

    reload_ = sub.add_parser("reload", parents=[config_option_parent()],
                             help="re-read configuration, certificates and store; keeps allowed streams")
    reload_.add_argument("--timeout", type=float, default=30.0, metavar="S",
                         help="seconds to wait for the reload's outcome (default 30)")
    add_json_option(reload_)
    reload_.set_defaults(handler=cmd_reload)
