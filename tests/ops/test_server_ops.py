"""Issue 7 acceptance with a real server: ``EdgeApp`` in-process (or ``edgeproxy serve`` as a
subprocess) on 127.0.0.1, scripted partner edges on real sockets, the real CLI and admin endpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from _lab import (
    PYTHON,
    SASL_ROW,
    TCP_DIALBACK_ROW,
    Certs,
    Peer,
    configuration,
    free_port,
    message,
    partner,
    start_peer,
    write_config,
    write_store,
)

from edgeproxy.app import EdgeApp
from edgeproxy.commands.ops import AdminClient, NotRunning
from edgeproxy.config import load_config
from edgeproxy.net.delivery import Delivery
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.lifecycle import DRAIN_BOUND_SECONDS
from edgeproxy.ops.metrics import Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"
DOCUMENTED = set(re.findall(r"^\| (EP\d{4}) \|", DOCS.read_text(), re.M))


class Lab:
    """contoso.test (the app under test) federating with fabrikam (SASL EXTERNAL) and northwind
    (TCP dialback)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.certs = Certs(tmp)
        self.admin_port = free_port()
        self.config_path = write_config(tmp, admin_port=self.admin_port, certs=self.certs)
        self.deliveries: list[Delivery] = []
        self.metrics = Metrics()
        self.log_file = (tmp / "events.jsonl").open("w")
        self.event_log = EventLog(self.log_file, output="json", on_emit=self.metrics.event_logged)
        self.app: EdgeApp
        self.peers: dict[str, Peer] = {}

    def store(self, *partners_: str) -> None:
        rows = {"fabrikam.test": SASL_ROW, "northwind.test": TCP_DIALBACK_ROW, "tailspin.test": TCP_DIALBACK_ROW}
        write_store(self.tmp / "state", configuration(
            "contoso.test", ("alice",), "contoso-secret",
            *(partner(d, self.peers[d].port, rows[d]) for d in partners_),
        ))

    async def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            [PYTHON, "-m", "edgeproxy", *args, "--config", str(self.config_path)],
            capture_stdout=True, capture_stderr=True, check=False,
        )

    async def status(self) -> dict[str, object]:
        done = await self.cli("status", "--json")
        assert done.returncode == 0, done.stderr.decode()
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    async def scrape(self) -> str:
        client = AdminClient(load_config(self.config_path), timeout=5)
        reply = await trio.to_thread.run_sync(client.request, "GET", "/metrics")
        assert reply.status == 200
        return reply.body.decode()

    def event_lines(self) -> list[dict[str, object]]:
        self.event_log.flush()
        return [json.loads(line) for line in (self.tmp / "events.jsonl").read_text().splitlines()]


@asynccontextmanager
async def running_lab(tmp: Path, *, drain_bound: float = DRAIN_BOUND_SECONDS,
                      signals: bool = False) -> AsyncIterator[tuple[Lab, trio.Nursery]]:
    lab = Lab(tmp)
    async with trio.open_nursery() as nursery:
        for domain, certs in (("fabrikam.test", lab.certs), ("northwind.test", None), ("tailspin.test", None)):
            lab.peers[domain] = await start_peer(nursery, domain, certs)
        lab.store("fabrikam.test", "northwind.test")
        lab.app = EdgeApp(load_config(lab.config_path), event_log=lab.event_log, metrics=lab.metrics,
                          drain_bound=drain_bound, poll_interval=3600, signals=signals,
                          on_delivery=lab.deliveries.append)
        done = trio.Event()
        await nursery.start(_run_app_task, lab.app, done)
        port = int(lab.app.status().listeners[0].address.rpartition(":")[2])
        for domain, peer in lab.peers.items():
            row = SASL_ROW if domain == "fabrikam.test" else TCP_DIALBACK_ROW
            peer.federate_with("contoso.test", port, row, ("bob",))
        lab.done = done  # type: ignore[attr-defined]
        try:
            yield lab, nursery
        finally:
            nursery.cancel_scope.cancel()
            lab.event_log.close()
            lab.log_file.close()


async def _run_app_task(app: EdgeApp, done: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
    try:
        async with trio.open_nursery() as inner:
            await inner.start(app.run)
            task_status.started()
    finally:
        done.set()


async def wait_for(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


async def test_status_json_shows_listeners_and_streams_with_their_auth_methods(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_lab(tmp_path) as (lab, _nursery):
            fab, north = lab.peers["fabrikam.test"], lab.peers["northwind.test"]
            for i in range(3):
                await fab.send(message("bob@fabrikam.test", "alice@contoso.test", id=f"f{i}"))
            for i in range(2):
                await north.send(message("bob@northwind.test", "alice@contoso.test", id=f"n{i}"))
            await wait_for(lambda: len(lab.deliveries) == 5)

            status = await lab.status()
            assert status["running"] is True and status["state"] == "running"
            roles = {(li["role"], li["address"]) for li in status["listeners"]}  # type: ignore[index,union-attr]
            external = lab.app.status().listeners[0].address
            assert ("external", external) in roles and external.startswith("127.0.0.1:")
            assert ("admin", f"127.0.0.1:{lab.admin_port}") in roles
            streams = {(s["partner"], s["direction"]): s for s in status["streams"]}  # type: ignore[index,union-attr]
            fab_in = streams[("fabrikam.test", "inbound")]
            assert fab_in["auth"] == "sasl-over-tls" and fab_in["tls_version"] in ("TLSv1.3", "TLSv1.2")
            assert fab_in["state"] == "established" and fab_in["stanzas_in"] == 3
            assert fab_in["remote_address"].startswith("127.0.0.1:") and fab_in["stream_id"]
            north_in = streams[("northwind.test", "inbound")]
            assert north_in["auth"] == "tcp-dialback" and north_in["tls_version"] is None
            assert north_in["stanzas_in"] == 2
            assert status["channel"]["state"] == "not-configured"  # type: ignore[index]
            assert any(q["name"] == "local-delivery" for q in status["queues"])  # type: ignore[union-attr]

            table = await lab.cli("status")
            assert table.returncode == 0
            assert b"SASL EXTERNAL" in table.stdout and b"TCP dialback" in table.stdout


async def test_metrics_count_a_known_traffic_pattern(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_lab(tmp_path) as (lab, _nursery):
            fab, north = lab.peers["fabrikam.test"], lab.peers["northwind.test"]
            for i in range(3):
                await fab.send(message("bob@fabrikam.test", "alice@contoso.test", id=f"f{i}"))
            await fab.send(message("bob@fabrikam.test", "nobody@contoso.test", id="x"))
            for i in range(2):
                await north.send(message("bob@northwind.test", "alice@contoso.test", id=f"n{i}"))
            await wait_for(lambda: len(lab.deliveries) == 5)
            # The refusal travels back to fabrikam on contoso's own outbound stream.
            await wait_for(lambda: any(d.type == "error" for d in fab.received()) or bool(
                sample_now(lab, "edgeproxy_stanzas_total", partner="fabrikam.test", flow="out",
                           verdict="delivered")))
            text = await lab.scrape()
            def value(name: str, **labels: str) -> float:
                return sample(text, name, **labels)
            assert value("edgeproxy_stanzas_total", partner="fabrikam.test", flow="in", kind="message",
                         verdict="delivered") == 3
            assert value("edgeproxy_stanzas_total", partner="northwind.test", flow="in", kind="message",
                         verdict="delivered") == 2
            assert value("edgeproxy_stanzas_total", partner="fabrikam.test", flow="in", kind="message",
                         verdict="refused") == 1
            refused = [e for e in lab.event_lines() if e["id"] == "EP7003"]
            assert len(refused) == 1
            condition = str(refused[0]["condition"])
            assert value("edgeproxy_bounces_total", condition=condition, cause="policy") == 1
            assert value("edgeproxy_stanzas_total", partner="fabrikam.test", flow="out", kind="message",
                         verdict="delivered") == 1
            assert value("edgeproxy_streams", partner="fabrikam.test", direction="inbound",
                         auth="sasl-over-tls") == 1
            assert value("edgeproxy_streams", partner="northwind.test", direction="inbound",
                         auth="tcp-dialback") == 1
            assert value("edgeproxy_streams", partner="fabrikam.test", direction="outbound",
                         auth="sasl-over-tls") == 1
            assert value("edgeproxy_tls_handshakes_total", direction="inbound") >= 1
            assert value("edgeproxy_gateway_channel_state", edgeproxy_gateway_channel_state="not-configured") == 1
            assert value("edgeproxy_events_total", id="EP3005", severity="info") == 3
            assert value("edgeproxy_stanza_latency_seconds_count", flow="in") == 5


def sample_now(lab: Lab, name: str, **labels: str) -> float:
    return lab.metrics.value(name, **labels) or 0.0


async def test_reload_adds_and_removes_partners_keeping_the_third_partners_stream(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_lab(tmp_path) as (lab, _nursery):
            fab, north = lab.peers["fabrikam.test"], lab.peers["northwind.test"]
            await fab.send(message("bob@fabrikam.test", "alice@contoso.test"))
            await north.send(message("bob@northwind.test", "alice@contoso.test"))
            await wait_for(lambda: len(lab.deliveries) == 2)
            before = {s["partner"]: s["stream_id"] for s in (await lab.status())["streams"]}  # type: ignore[union-attr,index]

            lab.store("fabrikam.test", "tailspin.test")  # northwind removed, tailspin added
            done = await lab.cli("reload")
            assert done.returncode == 0, done.stderr.decode()
            out = done.stdout.decode()
            assert "added tailspin.test" in out and "removed northwind.test" in out and "1 streams closed" in out

            await wait_for(lambda: north.stream_errors_received("policy-violation") == 1)
            after = {s["partner"]: s for s in (await lab.status())["streams"]}  # type: ignore[union-attr,index]
            assert "northwind.test" not in after
            assert after["fabrikam.test"]["stream_id"] == before["fabrikam.test"]
            assert after["fabrikam.test"]["state"] == "established"
            # The kept stream still carries stanzas; the new partner can federate at once.
            await fab.send(message("bob@fabrikam.test", "alice@contoso.test", id="after"))
            await lab.peers["tailspin.test"].send(message("bob@tailspin.test", "alice@contoso.test"))
            await wait_for(lambda: len(lab.deliveries) == 4)
            assert any(e["id"] == "EP8001" for e in lab.event_lines())


async def test_sigterm_during_a_message_stream_delivers_or_bounces_every_stanza_within_the_bound(
    tmp_path: Path,
) -> None:
    bound = 2.0
    # A partner that accepts TCP and never answers: its queue cannot drain and must be bounced.
    silent = trio.socket.socket()
    await silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent_port = silent.getsockname()[1]
    with trio.fail_after(30):
        async with running_lab(tmp_path, drain_bound=bound, signals=True) as (lab, nursery):
            fab = lab.peers["fabrikam.test"]
            write_store(tmp_path / "state", configuration(
                "contoso.test", ("alice",), "contoso-secret",
                partner("fabrikam.test", fab.port, SASL_ROW),
                partner("silent.test", silent_port, TCP_DIALBACK_ROW),
            ))
            outcome = await lab.app.reload()
            assert outcome.ok and outcome.partners_added == ("silent.test",)
            router = lab.app.edge.router  # type: ignore[union-attr]
            sent = 0
            for i in range(40):
                await router.send_from_local(message("alice@contoso.test", "bob@fabrikam.test", id=f"a{i}"))
                sent += 1
                if i % 8 == 0:
                    await router.send_from_local(message("alice@contoso.test", "x@silent.test", id=f"s{i}"))
                    sent += 1
            started = trio.current_time()
            os.kill(os.getpid(), signal.SIGTERM)
            await lab.done.wait()  # type: ignore[attr-defined]
            elapsed = trio.current_time() - started
            assert elapsed <= bound + 0.5, elapsed

            delivered = [d for d in fab.received() if d.type != "error"]
            bounced = [d for d in lab.deliveries if d.type == "error"]
            assert len(delivered) + len(bounced) == sent
            assert len(bounced) >= 5  # everything for silent.test
            m = lab.metrics
            assert (m.value("edgeproxy_stanzas_total", partner="fabrikam.test", flow="out", kind="message",
                            verdict="delivered") or 0) == len(delivered)
            bounced_counted = sum(
                m.value("edgeproxy_stanzas_total", partner=p, flow="out", kind="message", verdict="bounced") or 0
                for p in ("fabrikam.test", "silent.test")
            )
            assert bounced_counted == len(bounced)
            await wait_for(lambda: fab.stream_errors_received("system-shutdown") >= 1)
            ids = [e["id"] for e in lab.event_lines()]
            assert "EP1003" in ids and ("EP1004" in ids or "EP1005" in ids)
            nursery.cancel_scope.cancel()
    silent.close()


# Hang guards only (not speed checks): a subprocess start-up and dialback on a loaded shared
# machine can take many seconds.
HANG_GUARD_SECONDS = 60


def test_sigterm_stops_the_serve_process_within_the_bound_and_every_event_line_is_documented_json(
    tmp_path: Path,
) -> None:
    """``edgeproxy serve`` as a process, no certificate (TCP dialback only, with a warning)."""
    admin_port, edge_port = free_port(), free_port()
    config_path = write_config(tmp_path, admin_port=admin_port, listen_port=edge_port,
                               private_channel_ports=True)
    secret_body = "TOP-SECRET-BODY-7f3a"
    stats: dict[str, float] = {}

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            north = await start_peer(nursery, "northwind.test")
            north.federate_with("contoso.test", edge_port, TCP_DIALBACK_ROW, ("bob",))
            write_store(tmp_path / "state", configuration(
                "contoso.test", ("alice",), "contoso-secret",
                partner("northwind.test", north.port, TCP_DIALBACK_ROW)))
            stderr = (tmp_path / "serve.err").open("wb")
            proc = await trio.lowlevel.open_process(
                [PYTHON, "-m", "edgeproxy", "serve", "--config", str(config_path)],
                stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "EDGEPROXY_LOG_FORMAT": "json"},
            )
            try:
                client = AdminClient(load_config(config_path), timeout=2)

                def delivered() -> float:
                    try:
                        reply = client.request("GET", "/metrics")
                    except (NotRunning, OSError):
                        return -1
                    return sample(reply.body.decode(), "edgeproxy_stanzas_total", partner="northwind.test",
                                  verdict="delivered")

                with trio.fail_after(HANG_GUARD_SECONDS):
                    while await trio.to_thread.run_sync(delivered) < 0:
                        await trio.sleep(0.1)

                async def stream_messages() -> None:
                    i = 0
                    while True:
                        await north.send(message("bob@northwind.test", "alice@contoso.test",
                                                 body=f"{secret_body} {i}", id=f"n{i}"))
                        i += 1
                        await trio.sleep(0.01)

                nursery.start_soon(stream_messages)
                with trio.fail_after(HANG_GUARD_SECONDS):
                    while await trio.to_thread.run_sync(delivered) < 5:
                        await trio.sleep(0.05)
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(DRAIN_BOUND_SECONDS + 5):
                    await proc.wait()
                stats["exit_seconds"] = time.monotonic() - t0
                stats["returncode"] = proc.returncode
                with trio.fail_after(15):
                    while north.stream_errors_received("system-shutdown") < 1:
                        await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
            finally:
                if proc.returncode is None:
                    proc.kill()  # our own child, by handle
                    await proc.wait()
                stderr.close()

    trio.run(scenario)
    assert stats["returncode"] == 0
    assert stats["exit_seconds"] < DRAIN_BOUND_SECONDS
    text = (tmp_path / "serve.err").read_text()
    assert secret_body not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert records, "no event lines"
    for record in records:
        assert record["id"] in DOCUMENTED, record
        assert record["hint"]
    ids = [r["id"] for r in records]
    assert ids[0] == "EP2006"  # no certificate: a clear warning, and the edge still runs
    assert {"EP1000", "EP3005", "EP1003"} <= set(ids)
    assert "EP1004" in ids or "EP1005" in ids


async def test_edgeproxy_stop_closes_every_stream_with_system_shutdown_and_returns(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_lab(tmp_path, drain_bound=3.0) as (lab, _nursery):
            fab, north = lab.peers["fabrikam.test"], lab.peers["northwind.test"]
            await fab.send(message("bob@fabrikam.test", "alice@contoso.test"))
            await north.send(message("bob@northwind.test", "alice@contoso.test"))
            await wait_for(lambda: len(lab.deliveries) == 2)
            done = await lab.cli("stop")
            assert done.returncode == 0, done.stderr.decode()
            assert b"stopped" in done.stdout
            assert lab.done.is_set()  # type: ignore[attr-defined]
            await wait_for(lambda: fab.stream_errors_received("system-shutdown") == 1)
            await wait_for(lambda: north.stream_errors_received("system-shutdown") == 1)
            assert (lab.metrics.value("edgeproxy_stream_errors_total", side="sent",
                                      condition="system-shutdown") or 0) == 2
            refused = await lab.cli("status", "--json")
            assert refused.returncode == 1 and json.loads(refused.stdout)["running"] is False


async def test_serve_freezes_the_startup_objects_once_everything_has_started(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``edgeproxy serve`` moves what the start made out of the garbage collector's view
    (``ops.lifecycle.freeze_startup_objects``) once the server has started — not before (the
    start's own objects would stay in view) and not only at the end."""
    import edgeproxy.app
    from edgeproxy.commands import serve as serve_command

    calls: list[str] = []
    frozen = trio.Event()

    async def fake_run_app(config, *, role, event_log, metrics, task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
        calls.append("starting")
        task_status.started(None)
        with trio.fail_after(5):  # the server runs on: the freeze must come while it does
            await frozen.wait()
        calls.append("serving")

    def freeze() -> None:
        calls.append("frozen")
        frozen.set()

    monkeypatch.setattr(edgeproxy.app, "run_app", fake_run_app)
    monkeypatch.setattr(serve_command, "freeze_startup_objects", freeze)
    from edgeproxy.config import EdgeConfig

    await serve_command.serve(EdgeConfig(), "both", None, None)  # type: ignore[arg-type]  # one worker
    assert calls == ["starting", "frozen", "serving"]
