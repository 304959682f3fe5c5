"""``edgeproxy serve --workers 2`` as a real process: the workers share the S2S port, verify each
other's dialback keys, are restarted when they die, stop with the supervisor and are seen as one.

Addresses: the edge on 127.0.19.1, the in-process partner edges on 127.0.19.2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from edgeproxy.net.connector import ConnectorSettings
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import build_snapshot
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from fixtures.edges import build_edge, run_edge
from fixtures.serve import ServeProcess, start_serve

EDGE_ADDR = "127.0.19.1"
PARTNER_ADDR = "127.0.19.2"
WORKERS = 2


def _status(serve: ServeProcess) -> dict[str, object]:
    code, body = serve.http_get("/status")
    assert code == 200, body
    return json.loads(body)


def _workers(serve: ServeProcess) -> list[dict[str, object]]:
    return _status(serve)["workers"]  # type: ignore[return-value]


def _wait(predicate, timeout: float = 15.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def serve(tmp_path: Path):  # type: ignore[no-untyped-def]
    process = start_serve(tmp_path / "edge", address=EDGE_ADDR, workers=WORKERS)
    try:
        _wait(lambda: all(w["state"] == "running" and w["pid"] for w in _workers(process))
              and len(_workers(process)) == WORKERS, what="both workers running")
        yield process
    finally:
        process.stop()


def test_the_workers_run_as_separate_processes_and_are_shown_together(serve: ServeProcess) -> None:
    workers = _workers(serve)
    pids = {w["pid"] for w in workers}
    assert len(pids) == WORKERS and serve.pid not in pids
    status = _status(serve)
    internal = [li["address"] for li in status["listeners"] if li["role"] == "internal"]
    assert sorted(internal) == sorted(w["internal"] for w in workers)
    assert [li["role"] for li in status["listeners"]].count("external") == 1
    # each worker's channel to the one gateway came up: its EP5001, counted in its own
    # metrics, summed by the supervisor's /metrics
    _wait(lambda: serve.metric("edgeproxy_events_total", id="EP5001") == WORKERS, what="summed metrics")
    table = subprocess.run([sys.executable, "-m", "edgeproxy", "status", "--config",
                            str(serve.workdir / "edgeproxy.toml")], capture_output=True, text=True, check=True)
    assert f"Edge workers ({WORKERS})" in table.stdout


def test_the_workers_outlive_the_thread_that_started_them(serve: ServeProcess) -> None:
    """trio starts processes from a thread of its cache, which ends after 10 idle seconds: a
    worker tied to its parent *thread* (PR_SET_PDEATHSIG) would stop then."""
    pids = [w["pid"] for w in _workers(serve)]
    time.sleep(13)
    assert [w["pid"] for w in _workers(serve)] == pids
    assert not serve.events("EP1003") and not serve.events("EP1011")


def test_a_killed_worker_is_restarted_on_the_same_channel_and_the_port_keeps_serving(serve: ServeProcess) -> None:
    victim = _workers(serve)[1]
    os.kill(victim["pid"], signal.SIGKILL)  # type: ignore[arg-type]
    exited = serve.wait_for_event("EP1011", index=1, pid=victim["pid"])
    assert exited["status"] == "signal SIGKILL"
    _wait(lambda: (w := _workers(serve)[1])["state"] == "running" and w["pid"] not in (None, victim["pid"]),
          what="worker 1 back")
    again = _workers(serve)[1]
    assert again["restarts"] == 1 and again["internal"] == victim["internal"]
    assert len(serve.events("EP1010")) == WORKERS + 1
    _wait(lambda: _status(serve)["channel"]["state"] == "connected", what="its channel to the gateway")
    serve.assert_serving()


def test_sigterm_stops_every_worker_and_the_supervisor_with_status_0(serve: ServeProcess) -> None:
    pids = [w["pid"] for w in _workers(serve)]
    assert serve.stop() == 0
    assert serve.events("EP1012")
    assert not [pid for pid in pids if _alive(pid)]  # type: ignore[arg-type]


def test_workers_end_when_the_supervisor_is_killed(serve: ServeProcess) -> None:
    pids = [w["pid"] for w in _workers(serve)]
    serve.proc.kill()
    serve.proc.wait(timeout=5)
    _wait(lambda: not [pid for pid in pids if _alive(pid)], timeout=15, what="orphaned workers to end")  # type: ignore[arg-type]


def test_reload_reaches_every_worker(serve: ServeProcess) -> None:
    done = subprocess.run([sys.executable, "-m", "edgeproxy", "reload", "--config",
                           str(serve.workdir / "edgeproxy.toml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"({WORKERS} workers)" in done.stdout
    _wait(lambda: len(serve.events("EP8001")) == WORKERS, what="each worker's EP8001")


def test_a_second_serve_on_the_same_port_is_refused_with_bind_failed(serve: ServeProcess, tmp_path: Path) -> None:
    config = (serve.workdir / "edgeproxy.toml").read_text()
    other = tmp_path / "other"
    other.mkdir()
    (other / "edgeproxy.toml").write_text(config.replace('state-dir = "state"', 'state-dir = "state2"'))
    for workers in ("2", "1"):
        second = subprocess.run(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(other / "edgeproxy.toml"),
             "--workers", workers], capture_output=True, text=True, timeout=60, cwd=other,
            env={**os.environ, "EDGEPROXY_LOG_FORMAT": "json"},
        )
        assert second.returncode == 20, second.stderr
        assert '"EP1001"' in second.stderr and "external" in second.stderr


# -- dialback across workers ----------------------------------------------------------------------

#: Partner domains (12 streams each way: all on one worker by chance, (1/2)^23).
PARTNERS = tuple(f"p{n}.test" for n in range(12))


def _message(frm: str, to: str) -> Element:
    return Element("message", NS_SERVER, {"from": frm, "to": to, "type": "chat", "id": "m1"},
                   [Element("body", NS_SERVER, {}, ["hello"])])


async def test_dialback_keys_of_one_worker_verify_at_the_other_and_partners_are_served_by_both(
    tmp_path: Path,
) -> None:
    """Each partner edge opens a stream to the shared port (it lands on either worker, which
    verifies it with the partner); its message to a user who is not registered comes back as an
    error through the worker that took it, over a new stream whose dialback key the
    partner verifies by connecting to the shared port again — on either worker. Workers holding
    different secrets would fail about half of those verifications."""
    async with trio.open_nursery() as nursery:
        edges = []
        for domain in PARTNERS:
            holder: list = []
            delivery = MemoryDelivery()
            edge = build_edge(lambda h=holder: h[0], delivery, ConnectorSettings(attempt_delay=0.05, timeout=5))
            holder.append(build_snapshot(Configuration(
                gateway=GatewaySettings(dialback_secret=f"{domain}-secret"),
                policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
                users=(User(sip=f"sip:u@{domain}"),)), [domain]))
            port = await run_edge(nursery, edge, PARTNER_ADDR)
            edges.append((domain, edge, delivery, holder, port))
        store = Configuration(
            gateway=GatewaySettings(dialback_secret="contoso-shared-secret"),
            partners=tuple(
                Partner(domain=d, type=PartnerType.FEDERATED, tls=Negotiation.NOT_SUPPORTED,
                        sasl=Negotiation.NOT_SUPPORTED, dialback=True, proxy_fqdn=f"{PARTNER_ADDR}:{port}")
                for d, _e, _d, _h, port in edges),
            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip="sip:alice@contoso.test"),),
        )
        serve = await trio.to_thread.run_sync(partial(
            start_serve, tmp_path / "edge", address=EDGE_ADDR, store=store, workers=WORKERS))
        try:
            for domain, _edge, _delivery, holder, _port in edges:
                holder[0] = build_snapshot(Configuration(
                    gateway=GatewaySettings(dialback_secret=f"{domain}-secret"),
                    partners=(Partner(domain="contoso.test", type=PartnerType.FEDERATED,
                                      tls=Negotiation.NOT_SUPPORTED, sasl=Negotiation.NOT_SUPPORTED,
                                      dialback=True, proxy_fqdn=f"{EDGE_ADDR}:{serve.s2s_port}"),),
                    policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
                    users=(User(sip=f"sip:u@{domain}"),)), [domain])
            with trio.fail_after(60):
                await trio.to_thread.run_sync(lambda: _wait(
                    lambda: _status(serve)["channel"]["state"] == "connected", what="both channels"))
                for domain, edge, _delivery, _holder, _port in edges:
                    await edge.router.send_from_local(_message(f"u@{domain}/r", "alice@contoso.test"))
                for domain, _edge, delivery, _holder, _port in edges:
                    back = await delivery.receive()
                    assert back.type == "error" and back.to_jid == f"u@{domain}/r", back.raw
                    assert b"recipient-unavailable" in back.raw, back.raw
            by_worker: dict[int, set[str]] = {}

            def streams_seen() -> bool:  # the supervisor reads the workers' status every second
                by_worker.clear()
                for stream in _status(serve)["streams"]:
                    by_worker.setdefault(stream["worker"], set()).add(f"{stream['direction']} {stream['partner']}")
                return sum(len(found) for found in by_worker.values()) >= 2 * len(PARTNERS)

            await trio.to_thread.run_sync(partial(_wait, streams_seen, what="every stream in the status"))
            assert set(by_worker) == set(range(WORKERS)), by_worker
            everywhere = set().union(*by_worker.values())
            assert {f"{way} {d}" for d in PARTNERS for way in ("inbound", "outbound")} <= everywhere
        finally:
            await trio.to_thread.run_sync(serve.stop)
            nursery.cancel_scope.cancel()


def test_a_gateway_of_its_own_keeps_a_channel_to_each_worker(tmp_path: Path) -> None:
    """``serve --role gateway`` with the same ``[edge] workers`` connects to internal-listen's
    port + i for each worker i."""
    from fixtures.ports import free_port

    base = next(p for p in (free_port(EDGE_ADDR) for _ in range(50)) if p < 65535 and _free(p + 1))
    workdir = tmp_path / "edge"
    edge = start_serve(workdir, address=EDGE_ADDR, role="edge", workers=WORKERS)
    try:
        config = (workdir / "edgeproxy.toml").read_text()
        assert f'internal-listen = "{EDGE_ADDR}:0"' in config
        edge.stop()
        (workdir / "edgeproxy.toml").write_text(config.replace(f'internal-listen = "{EDGE_ADDR}:0"',
                                                              f'internal-listen = "{EDGE_ADDR}:{base}"'))
        edge = start_serve_again(edge, workers=WORKERS)
        _wait(lambda: sorted(w["internal"] for w in _workers(edge)) == [f"{EDGE_ADDR}:{base}",
                                                                         f"{EDGE_ADDR}:{base + 1}"],
              what="the workers on base and base + 1")
        assert _status(edge)["channel"]["state"] == "not-connected"
        gateway = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(workdir / "edgeproxy.toml"),
             "--role", "gateway", "--workers", str(WORKERS)],
            stdout=subprocess.DEVNULL, stderr=(workdir / "gateway.log").open("wb"), cwd=workdir)
        try:
            _wait(lambda: _status(edge)["channel"]["state"] == "connected",
                  what=f"both channels; gateway: {(workdir / 'gateway.log').read_text()[-3000:]}")
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    finally:
        edge.stop()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((EDGE_ADDR, port))
        except OSError:
            return False
    return True


def start_serve_again(previous: ServeProcess, *, workers: int) -> ServeProcess:
    """The same configuration and state dir, started again."""
    events = previous.workdir / "events.jsonl"
    with events.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(previous.workdir / "edgeproxy.toml"),
             "--role", "edge", "--workers", str(workers)],
            stdout=subprocess.DEVNULL, stderr=err, cwd=previous.workdir)
    again = ServeProcess(proc, previous.workdir, previous.address, previous.s2s_port, previous.internal_port,
                         previous.admin_port, previous.sip_port, events)
    _wait(lambda: _healthy(again), what="serve to answer again")
    return again


def _healthy(serve: ServeProcess) -> bool:
    try:
        return serve.http_get("/healthz")[0] == 200
    except OSError:
        return False


def test_a_worker_that_cannot_start_stops_the_start_with_its_exit_status(tmp_path: Path) -> None:
    """Worker 1's channel port (internal-listen + 1) is taken: it says so (EP1001, internal) and
    the supervisor stops worker 0 and exits with worker 1's status, 20."""
    import socket

    from fixtures.ports import free_port

    base = next(p for p in (free_port(EDGE_ADDR) for _ in range(50)) if p < 65535 and _free(p + 1))
    with socket.socket() as holder:
        holder.bind((EDGE_ADDR, base + 1))
        holder.listen()
        workdir = tmp_path / "edge"
        workdir.mkdir()
        (workdir / "edgeproxy.toml").write_text(
            f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{EDGE_ADDR}:{free_port(EDGE_ADDR)}"]\n'
            f'internal-listen = "{EDGE_ADDR}:{base}"\nstate-dir = "state"\n'
            '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
            f'[admin]\nlisten = "{EDGE_ADDR}:{free_port(EDGE_ADDR)}"\n'
            f'[gateway]\nsip-listen = ["{EDGE_ADDR}:{free_port(EDGE_ADDR, udp_too=True)}"]\nsip-tls-listen = []\n')
        started = subprocess.run(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(workdir / "edgeproxy.toml"),
             "--workers", "2"], capture_output=True, text=True, timeout=90, cwd=workdir,
            env={**os.environ, "EDGEPROXY_LOG_FORMAT": "json"})
    assert started.returncode == 20, started.stderr[-3000:]
    refused = [json.loads(line) for line in started.stderr.splitlines() if '"EP1001"' in line]
    assert [(r["role"], r["address"]) for r in refused] == [("internal", f"{EDGE_ADDR}:{base + 1}")]
    assert "EP1000" not in started.stderr
