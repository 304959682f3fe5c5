"""The supervisor's decisions and its summed view of the workers (sans-IO parts)."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest

from edgeproxy.errors import ConfigError
from edgeproxy.ops.status import (
    ChannelState,
    ChannelStatus,
    Direction,
    EdgeStatus,
    ListenerStatus,
    QueueStatus,
    Role,
    StreamStatus,
    WorkerState,
    WorkerStatus,
)
from edgeproxy.ops.workerplan import (
    RestartPause,
    worker_argv,
    worker_channel_addresses,
    worker_count,
)
from edgeproxy.workers.aggregate import combined_status, merged_exposition
from edgeproxy.workers.sockets import bind_shared, close_all


def test_auto_is_one_worker_per_usable_cpu_and_a_number_is_itself() -> None:
    assert worker_count("auto", cpus=2) == 2
    assert worker_count("auto", cpus=1) == 1
    assert worker_count("auto", cpus=512) == 64  # never above the configuration's maximum
    assert worker_count(3) == 3


def test_each_worker_channel_listens_on_the_next_port_and_port_zero_stays_free() -> None:
    assert worker_channel_addresses("127.0.0.1:23456", 3) == [
        ("127.0.0.1", 23456), ("127.0.0.1", 23457), ("127.0.0.1", 23458)]
    assert worker_channel_addresses("127.0.0.1:0", 2) == [("127.0.0.1", 0), ("127.0.0.1", 0)]
    with pytest.raises(ConfigError, match="65535"):
        worker_channel_addresses("127.0.0.1:65535", 2)


def test_the_restart_pause_doubles_with_quick_failures_and_resets_after_a_long_run() -> None:
    pause = RestartPause(first=0.5, longest=4.0, reset_after=60.0)
    assert [pause.after_exit(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert pause.after_exit(120.0) == 0.5
    assert pause.after_exit(1.0) == 1.0


def test_a_worker_is_this_program_serving_with_its_hidden_options() -> None:
    argv = worker_argv(config="/etc/edgeproxy.toml", appliance=True, index=1, listen_fds=[5, 6], report_fd=7,
                       channel=("::1", 23457), parent=42)
    assert argv[argv.index("serve"):] == [
        "serve", "--role", "edge", "--config", "/etc/edgeproxy.toml", "--appliance", "--worker-index", "1",
        "--worker-listen-fds", "5,6", "--worker-report-fd", "7", "--worker-channel", "[::1]:23457",
        "--worker-parent", "42",
    ]


def _exposition(stanzas: float, streams: float, created_too: bool = True) -> str:
    registry = CollectorRegistry()
    Info("edgeproxy_build", "edgeproxy version", registry=registry).info({"version": "1"})
    Counter("edgeproxy_stanzas", "Stanzas", ["kind"], registry=registry).labels("message").inc(stanzas)
    Gauge("edgeproxy_streams", "Established S2S streams", registry=registry).set(streams)
    text = generate_latest(registry).decode()
    assert ("_created" in text) is created_too
    return text


def test_metrics_of_the_workers_are_summed_per_sample() -> None:
    text = merged_exposition([_exposition(3, 2), _exposition(4, 5)], own=_exposition(1, 9)).decode()
    lines = text.splitlines()
    assert 'edgeproxy_stanzas_total{kind="message"} 8.0' in lines  # 3 + 4 + the gateway's 1
    assert "edgeproxy_streams 7.0" in lines  # the workers' 2 + 5; the supervisor holds no stream
    assert 'edgeproxy_build_info{version="1"} 1.0' in lines  # once, not three times
    assert "_created" not in text
    assert lines.count("# TYPE edgeproxy_stanzas counter") == 1


def test_the_status_lists_every_worker_its_streams_and_the_worst_channel() -> None:
    own = EdgeStatus(version="1", pid=10, listeners=(
        ListenerStatus(Role.EXTERNAL, "0.0.0.0:5269"), ListenerStatus(Role.ADMIN, "127.0.0.1:9269")))

    def worker_status(index: int, channel: ChannelState, streams: int) -> EdgeStatus:
        return EdgeStatus(
            version="1", pid=100 + index,
            listeners=(ListenerStatus(Role.EXTERNAL, "0.0.0.0:5269"),
                       ListenerStatus(Role.INTERNAL, f"127.0.0.1:{23456 + index}")),
            streams=tuple(StreamStatus(f"s{index}-{n}", "fabrikam.test", Direction.INBOUND, "127.0.0.2:1")
                          for n in range(streams)),
            channel=ChannelStatus(state=channel, unacked=index + 1),
            queues=(QueueStatus("channel", index, 10000),),
        )

    rows = [WorkerStatus(0, 100, WorkerState.RUNNING), WorkerStatus(1, 101, WorkerState.RUNNING),
            WorkerStatus(2, None, WorkerState.RESTARTING)]
    status = combined_status(own, [(rows[0], worker_status(0, ChannelState.CONNECTED, 2)),
                                   (rows[1], worker_status(1, ChannelState.DOWN, 1)), (rows[2], None)])
    assert [(li.role, li.address) for li in status.listeners] == [
        (Role.EXTERNAL, "0.0.0.0:5269"), (Role.INTERNAL, "127.0.0.1:23456"), (Role.INTERNAL, "127.0.0.1:23457"),
        (Role.ADMIN, "127.0.0.1:9269")]
    assert [(s.stream_id, s.worker) for s in status.streams] == [("s0-0", 0), ("s0-1", 0), ("s1-0", 1)]
    assert status.channel.state is ChannelState.DOWN and status.channel.unacked == 3
    assert [q.name for q in status.queues] == ["worker 0: channel", "worker 1: channel"]
    assert [(w.index, w.state, w.streams) for w in status.workers] == [
        (0, WorkerState.RUNNING, 2), (1, WorkerState.RUNNING, 1), (2, WorkerState.RESTARTING, 0)]


def test_shared_listeners_take_one_port_and_the_kernel_spreads_connections_over_them() -> None:
    per_worker = bind_shared([("127.0.0.1", 0)], 2)
    try:
        (first,), (second,) = per_worker
        port = first.getsockname()[1]
        assert second.getsockname()[1] == port
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        accepted = []
        for listener in (first, second):
            listener.setblocking(False)
            count = 0
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
            accepted.append(count)
        for client in clients:
            client.close()
        assert sum(accepted) == 64
        assert min(accepted) > 0, accepted  # 64 source ports all hashed to one socket: (1/2)^63
    finally:
        close_all(per_worker)


def test_shared_listeners_refuse_a_port_something_already_listens_on() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that allows sharing
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError) as refused:
            bind_shared([("127.0.0.1", holder.getsockname()[1])], 2)
        assert refused.value.errno == 98  # EADDRINUSE


def test_the_gateway_sends_each_xmpp_domain_through_one_worker_and_around_one_that_is_away() -> None:
    from edgeproxy.gateway.service import GatewayService

    gateway = GatewayService(sip_domains=("contoso.test",), edges=2)
    first, second = gateway.channels
    for channel in gateway.channels:
        channel._connected = True  # as after its Hello (no sockets in this test)
    domains = [f"d{n}.test" for n in range(20)]
    chosen = {d: gateway.channel_for(f"u@{d}/r") for d in domains}
    assert set(chosen.values()) == {first, second}  # the domains spread over both
    assert all(gateway.channel_for(f"other@{d}") is chosen[d] for d in domains)  # one domain, one edge
    second._connected = False
    assert all(gateway.channel_for(f"u@{d}") is first for d in domains)  # the one still there


async def test_a_worker_that_resets_its_admin_connection_leaves_the_supervisor_running(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The supervisor's poll meets a worker stopping: a reset, a close, garbage. It goes on."""
    import struct
    from functools import partial

    import trio

    from edgeproxy.config import EdgeConfig
    from edgeproxy.workers.supervisor import Supervisor, _Worker

    async def reset(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # an RST: ConnectionResetError, then trio.BrokenResourceError

    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.send_all(b"not http at all")
        await stream.aclose()

    supervisor = Supervisor(EdgeConfig(), workers=2, config_path=None)
    async with trio.open_nursery() as nursery:
        for handler in (reset, garbage):
            (listener,) = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            worker = _Worker(0, ("127.0.0.1", 0), [], admin=("127.0.0.1", listener.socket.getsockname()[1]))
            await supervisor._read_worker(worker)
            assert worker.status is None and worker.metrics == ""
        nursery.cancel_scope.cancel()
