"""A burst from the gateway to one partner larger than the outbound link's queue: the edge holds
the channel back (``OutboundPool.wait_for_room``) instead of bouncing what the queue cannot take.
The real ``EdgeApp`` with its loopback channel, a real client endpoint as the gateway and a
scripted S2S partner (fabrikam.test), all on 127.0.0.1 (see ``test_channel_wiring.py``)."""

from __future__ import annotations

from pathlib import Path

import trio
from _lab import message
from test_channel_wiring import channel_lab, wait_for

from edgeproxy.loopback.frames import StanzaKind
from edgeproxy.net.delivery import Delivery, to_bytes
from edgeproxy.net.pool import LINK_QUEUE_BOUND

BURST = 4 * LINK_QUEUE_BOUND


async def test_a_gateway_burst_beyond_the_link_queue_is_delivered_not_bounced(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with channel_lab(tmp_path) as lab:
            gateway = await lab.connect_gateway()
            for n in range(BURST):  # queued at once: the channel carries them in large batches
                stanza = message("alice@contoso.test", "bob@fabrikam.test", body=f"burst {n}", id=f"b{n}")
                assert gateway.submit(StanzaKind.MESSAGE, "alice@contoso.test", "bob@fabrikam.test", "chat",
                                      f"b{n}", to_bytes(stanza))
            got: list[Delivery] = []

            def bounced() -> list[str]:  # error stanzas the edge sent back over the channel
                return [item.to for item in lab.from_edge if item.type == "error"]

            await wait_for(lambda: bool(got.extend(lab.peer.received())) or len(got) >= BURST or bounced(),
                           timeout=45)
            assert bounced() == []
            assert [d.type for d in got] == ["chat"] * BURST
            assert [f"burst {n}".encode() in d.raw for n, d in enumerate(got)] == [True] * BURST
            assert lab.app.status().channel.state.value == "connected"
