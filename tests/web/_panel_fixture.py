"""The ``panel`` fixture of the Control Panel tests (re-exported by conftest.py): an in-process admin listener with the Control Panel on
(the ops fakes' edge behind it), on 127.0.40.1."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from _ops_fakes import FakeEdge, write_ops_config  # noqa: E402
from _panel_client import Client  # noqa: E402

from edgeproxy.config import EdgeConfig, load_config  # noqa: E402
from edgeproxy.ops.admin import AdminEndpoint  # noqa: E402
from edgeproxy.ops.events import EventLog  # noqa: E402
from edgeproxy.ops.metrics import Metrics  # noqa: E402
from edgeproxy.web.server import serve_admin  # noqa: E402

LISTEN = "127.0.40.1"


@dataclass
class PanelRunning:
    endpoint: AdminEndpoint
    config: EdgeConfig
    edge: FakeEdge
    log: io.StringIO
    event_log: EventLog

    @property
    def token(self) -> str:
        return self.endpoint.token_path.read_text().strip()

    def client(self) -> Client:
        return Client(LISTEN, self.endpoint.port)

    def events(self, event_id: str) -> list[dict[str, object]]:
        self.event_log.flush()
        return [e for e in map(json.loads, self.log.getvalue().splitlines()) if e["id"] == event_id]


@pytest.fixture
async def panel(tmp_path: Path) -> AsyncIterator[PanelRunning]:
    config = load_config(write_ops_config(tmp_path / "edge", listen=f"{LISTEN}:0", extra="ui = true\n"))
    edge, out = FakeEdge(), io.StringIO()
    event_log = EventLog(out, output="json")
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(lambda task_status: serve_admin(
            config, edge, Metrics(), edge, event_log=event_log, task_status=task_status))
        yield PanelRunning(endpoint, config, edge, out, event_log)
        nursery.cancel_scope.cancel()
    event_log.close()
