"""The loopback channel over real WebSockets on 127.0.0.1 (port 0): delivery, acks, back-off,
re-send after reconnect, duplicate suppression, bouncing after the outage bound."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import trio

from edgeproxy.loopback.client import run_loopback_client
from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import Item, Role, Routed, StanzaKind
from edgeproxy.loopback.server import serve_loopback


class Side:
    """One endpoint plus what it delivered and bounced (ids of the stanzas)."""

    def __init__(self, role: Role, **kwargs: float) -> None:
        self.delivered: list[str] = []
        self.bounced: list[tuple[str, str]] = []
        self.bounce_items: list[Item] = []
        self.endpoint = self.make(role, **kwargs)

    def make(self, role: Role, **kwargs: float) -> ChannelEndpoint:
        async def on_items(items: list[Item]) -> None:
            for item in items:
                if isinstance(item, Routed):
                    self.delivered.append(item.id)
                else:
                    self.bounce_items.append(item)

        def on_bounce(items: list[Routed], condition: str) -> None:
            self.bounced.extend((item.id, condition) for item in items)

        return ChannelEndpoint(role, on_items=on_items, on_bounce=on_bounce, **kwargs)  # type: ignore[arg-type]


def stanza(i: int, sender: str = "romeo@montague.example/orchard") -> tuple:
    raw = f"<message to='juliet@contoso.test' id='m{i}'><body>ünï {i}</body></message>".encode()
    return (StanzaKind.MESSAGE, sender, "juliet@contoso.test", "chat", f"m{i}", raw)


async def wait_until(predicate: Callable[[], bool], step: float = 0.01) -> None:
    while not predicate():
        await trio.sleep(step)


async def test_stanzas_cross_the_channel_in_order_both_ways() -> None:
    edge, gateway = Side(Role.EDGE), Side(Role.GATEWAY)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge.endpoint, "127.0.0.1", 0)
            await nursery.start(run_loopback_client, gateway.endpoint, host, port)
            for i in range(3000):
                assert edge.endpoint.submit(*stanza(i))
                assert gateway.endpoint.submit(*stanza(i, "alice@contoso.test"))
            await wait_until(lambda: len(gateway.delivered) == 3000 == len(edge.delivered))
            await wait_until(lambda: edge.endpoint.statistics().queued == 0)
            nursery.cancel_scope.cancel()
    assert gateway.delivered == [f"m{i}" for i in range(3000)]
    assert edge.delivered == [f"m{i}" for i in range(3000)]
    assert gateway.endpoint.sender.queued == 0


async def test_items_queued_before_the_gateway_connects_are_delivered() -> None:
    edge, gateway = Side(Role.EDGE), Side(Role.GATEWAY)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge.endpoint, "127.0.0.1", 0)
            for i in range(50):
                edge.endpoint.submit(*stanza(i))
            await trio.sleep(0.2)
            await nursery.start(run_loopback_client, gateway.endpoint, host, port)
            await wait_until(lambda: len(gateway.delivered) == 50)
            nursery.cancel_scope.cancel()
    assert gateway.delivered == [f"m{i}" for i in range(50)]
    assert edge.bounced == []


async def test_client_retries_with_backoff_until_the_edge_listens() -> None:
    edge, gateway = Side(Role.EDGE), Side(Role.GATEWAY)
    # Find a free port, then start the edge on it only after the client has begun retrying.
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    gateway.endpoint.submit(*stanza(1, "alice@contoso.test"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_loopback_client, gateway.endpoint, "127.0.0.1", port)
            await trio.sleep(0.5)
            assert not gateway.endpoint.statistics().connected
            await nursery.start(serve_loopback, edge.endpoint, "127.0.0.1", port)
            await wait_until(lambda: edge.delivered == ["m1"])
            nursery.cancel_scope.cancel()


async def test_a_second_gateway_connection_replaces_the_first() -> None:
    edge, gw1, gw2 = Side(Role.EDGE), Side(Role.GATEWAY), Side(Role.GATEWAY)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge.endpoint, "127.0.0.1", 0)
            await nursery.start(run_loopback_client, gw1.endpoint, host, port)
            await gw1.endpoint.wait_connected()
            await nursery.start(run_loopback_client, gw2.endpoint, host, port)
            await gw2.endpoint.wait_connected()
            await wait_until(lambda: not gw1.endpoint.statistics().connected)
            edge.endpoint.submit(*stanza(7))
            await wait_until(lambda: gw2.delivered == ["m7"] or gw1.delivered == ["m7"])
            nursery.cancel_scope.cancel()
    assert edge.endpoint.statistics().connections >= 2


async def _kill_restart_stream(*, same_process: bool) -> tuple[Side, Counter[str], int]:
    """Edge sends a stream; the gateway is killed twice mid-stream and restarted."""
    total = 4000
    edge = Side(Role.EDGE, outage_bound=5.0)
    gateway = Side(Role.GATEWAY)
    delivered: Counter[str] = Counter()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge.endpoint, "127.0.0.1", 0)

            async def producer() -> None:
                for i in range(total):
                    edge.endpoint.submit(*stanza(i))
                    if i % 40 == 0:
                        await trio.sleep(0.002)

            nursery.start_soon(producer)
            for kill_at in (800, 2400, None):
                async with trio.open_nursery() as gateway_process:
                    await gateway_process.start(run_loopback_client, gateway.endpoint, host, port)
                    if kill_at is None:
                        await wait_until(
                            lambda g=gateway: (
                                sum(delivered.values()) + len(g.delivered) + len(edge.bounced)
                                >= total
                            )
                        )
                        await wait_until(lambda: edge.endpoint.statistics().queued == 0)
                    else:
                        # Kill with items in flight (sent, not acked yet): mid-stream for sure.
                        await wait_until(
                            lambda k=kill_at, g=gateway: (
                                sum(delivered.values()) + len(g.delivered) >= k
                                and edge.endpoint.statistics().in_flight > 0
                            ),
                            step=0,
                        )
                    gateway_process.cancel_scope.cancel()  # kill: every task dies where it is
                if kill_at is None:
                    break
                if not same_process:
                    # a new gateway process: fresh endpoint, fresh session, no memory
                    delivered.update(gateway.delivered)
                    gateway = Side(Role.GATEWAY)
                await trio.sleep(0.1)  # down for a moment (well under the outage bound)
            nursery.cancel_scope.cancel()
    delivered.update(gateway.delivered)
    return edge, delivered, total


async def test_gateway_connection_killed_mid_stream_delivers_every_stanza_exactly_once() -> None:
    edge, delivered, total = await _kill_restart_stream(same_process=True)
    assert edge.bounced == []
    assert set(delivered) == {f"m{i}" for i in range(total)}
    assert max(delivered.values()) == 1, "a stanza was delivered twice"
    stats = edge.endpoint.statistics()
    assert stats.connections == 3
    # The kills hit mid-stream (items sent and not acked yet). Whether they are then re-sent
    # depends on whether the gateway had read them: its ack leaves in a shielded scope.
    assert stats.sent_items >= total


async def test_gateway_process_restarted_mid_stream_loses_nothing() -> None:
    edge, delivered, total = await _kill_restart_stream(same_process=False)
    accounted = set(delivered) | {sid for sid, _ in edge.bounced}
    assert accounted == {f"m{i}" for i in range(total)}
    assert not set(delivered) & {sid for sid, _ in edge.bounced}
    assert max(delivered.values()) == 1, "a stanza was delivered twice"


async def test_gateway_away_past_the_bound_gets_queued_stanzas_bounced(autojump_clock) -> None:
    edge = Side(Role.EDGE, outage_bound=3.0, max_queued=100)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(edge.endpoint.watch_outage)
            for i in range(10):
                assert edge.endpoint.submit(*stanza(i))
            await trio.sleep(2.0)
            assert edge.bounced == []
            await trio.sleep(2.0)
            assert sorted(edge.bounced) == sorted(
                (f"m{i}", "remote-server-timeout") for i in range(10)
            )
            # still away: new stanzas are refused at once
            assert not edge.endpoint.submit(*stanza(99))
            assert edge.bounced[-1] == ("m99", "service-unavailable")
            nursery.cancel_scope.cancel()


async def test_full_queue_bounces_the_newest_stanza_at_once() -> None:
    edge = Side(Role.EDGE, max_queued=5)
    for i in range(5):
        assert edge.endpoint.submit(*stanza(i))
    assert not edge.endpoint.submit(*stanza(5))
    assert edge.bounced == [("m5", "service-unavailable")]


async def test_bounce_items_reach_the_edge_as_bounces() -> None:
    edge, gateway = Side(Role.EDGE), Side(Role.GATEWAY)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge.endpoint, "127.0.0.1", 0)
            await nursery.start(run_loopback_client, gateway.endpoint, host, port)
            gateway.endpoint.submit(*stanza(3), bounce=("recipient-unavailable", "480"))
            await wait_until(lambda: len(edge.bounce_items) == 1)
            nursery.cancel_scope.cancel()
    item = edge.bounce_items[0]
    assert (item.id, item.condition, item.text) == ("m3", "recipient-unavailable", "480")  # type: ignore[union-attr]


async def test_submit_and_wait_returns_when_the_peer_acks() -> None:
    edge, gateway = Side(Role.EDGE), Side(Role.GATEWAY)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge.endpoint, "127.0.0.1", 0)
            await nursery.start(run_loopback_client, gateway.endpoint, host, port)
            outcome = await gateway.endpoint.submit_and_wait(*stanza(5, "alice@contoso.test"))
            assert outcome is None
            assert edge.delivered == ["m5"]
            nursery.cancel_scope.cancel()


async def test_submit_and_wait_reports_the_bounce_instead_of_calling_on_bounce(
    autojump_clock,
) -> None:
    gateway = Side(Role.GATEWAY, outage_bound=2.0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.endpoint.watch_outage)
            outcome = await gateway.endpoint.submit_and_wait(*stanza(1, "alice@contoso.test"))
            assert outcome == "remote-server-timeout"
            assert await gateway.endpoint.submit_and_wait(*stanza(2)) == "service-unavailable"
            nursery.cancel_scope.cancel()
    assert gateway.bounced == []
