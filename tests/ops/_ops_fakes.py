"""Fakes for the server side of the ops surface, and an admin endpoint on 127.0.0.1, port 0 (the
``admin`` fixture is re-exported by conftest.py)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from edgeproxy.config import EdgeConfig, load_config
from edgeproxy.ops.admin import AdminEndpoint
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.lifecycle import ReloadOutcome
from edgeproxy.ops.metrics import Metrics
from edgeproxy.ops.status import (
    ChannelState,
    ChannelStatus,
    Direction,
    EdgeStatus,
    ListenerStatus,
    QueueStatus,
    Role,
    ServiceState,
    StreamStatus,
)
from edgeproxy.policy.model import AuthMethod
from edgeproxy.web.server import serve_admin


class FakeEdge:
    """Implements StatusSource and Control the way the server will, with scripted state."""

    def __init__(self) -> None:
        self.state = ServiceState.RUNNING
        self.partners = {"fabrikam.test", "gtalk.test"}
        self.streams = [
            StreamStatus("in-1", "fabrikam.test", Direction.INBOUND, "127.0.0.1:40000",
                         auth=AuthMethod.SASL_OVER_TLS, tls_version="TLSv1.3", age_seconds=12,
                         stanzas_in=5, stanzas_out=2),
            StreamStatus("out-1", "gtalk.test", Direction.OUTBOUND, "127.0.0.1:5269",
                         auth=AuthMethod.TCP_DIALBACK, age_seconds=3, stanzas_out=1),
        ]
        self.stop_requests = 0
        self.reloads = 0
        self.next_reload: ReloadOutcome | None = None
        self.stopped = trio.Event()

    def status(self) -> EdgeStatus:
        return EdgeStatus(
            version="0.1.0", pid=os.getpid(), state=self.state, uptime_seconds=20,
            domains=("contoso.test",),
            listeners=(ListenerStatus(Role.EXTERNAL, "127.0.0.10:5269"),
                       ListenerStatus(Role.INTERNAL, "127.0.0.1:23456")),
            streams=tuple(self.streams),
            channel=ChannelStatus(ChannelState.CONNECTED, "127.0.0.1:50000", 20.0),
            queues=(QueueStatus("outbound:gtalk.test", 2, 100),),
        )

    async def reload(self) -> ReloadOutcome:
        self.reloads += 1
        await trio.sleep(0)
        if self.next_reload is not None:
            return self.next_reload
        return ReloadOutcome(ok=True, partners_added=("northwind.test",), partners_removed=("gtalk.test",),
                             streams_closed=1)

    def request_stop(self) -> None:
        self.stop_requests += 1
        self.state = ServiceState.DRAINING
        self.stopped.set()


@dataclass
class Running:
    """An admin endpoint being served, with what the test needs to talk to it."""

    endpoint: AdminEndpoint
    edge: FakeEdge
    metrics: Metrics
    config: EdgeConfig
    config_path: Path
    log: io.StringIO
    event_log: EventLog
    serving: trio.CancelScope = field(default_factory=trio.CancelScope)

    def cancel_admin(self) -> None:
        """Stop serving: the endpoint's socket closes, as when the process exits."""
        self.serving.cancel()

    def events(self) -> list[dict[str, object]]:
        self.event_log.flush()
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


def write_ops_config(directory: Path, *, listen: str = "127.0.0.1:0", extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "edgeproxy.toml"
    path.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nstate-dir = "state"\n\n[admin]\nlisten = "{listen}"\n{extra}',
        encoding="utf-8",
    )
    return path


def config_for_port(config_path: Path, port: int) -> Path:
    """A copy of the configuration pointing clients at the bound port (same state dir)."""
    text = config_path.read_text(encoding="utf-8").replace("127.0.0.1:0", f"127.0.0.1:{port}")
    client_path = config_path.with_name("client.toml")
    client_path.write_text(text, encoding="utf-8")
    return client_path


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Running]:
    config_path = write_ops_config(tmp_path / "edge")
    config = load_config(config_path)
    edge, metrics, out = FakeEdge(), Metrics(), io.StringIO()
    event_log = EventLog(out, output="json", on_emit=metrics.event_logged)
    serving = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[AdminEndpoint]) -> None:
        with serving:
            await serve_admin(config, edge, metrics, edge, event_log=event_log, request_timeout=2.0,
                              max_connections=4, task_status=task_status)

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(serve)
        running = Running(endpoint, edge, metrics, config, config_for_port(config_path, endpoint.port),
                          out, event_log, serving)
        yield running
        nursery.cancel_scope.cancel()
    event_log.close()
