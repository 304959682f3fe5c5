"""Sans-IO sequencing with acks on completion (the gateway's mode)."""

from __future__ import annotations

from edgeproxy.loopback.frames import Hello, Role, StanzaKind
from edgeproxy.loopback.reliable import Receiver, Sender


def _sender(n: int) -> Sender:
    sender = Sender("edge-1")
    sender.on_window(100)
    for i in range(n):
        sender.submit(StanzaKind.MESSAGE, "a@x", "b@y", "chat", f"m{i}", b"<message/>")
    return sender


def test_ack_covers_only_the_contiguous_completed_prefix() -> None:
    sender, receiver = _sender(4), Receiver()
    batch = sender.next_batch()
    assert batch is not None
    assert [i.seq for i in receiver.accept(batch)] == [1, 2, 3, 4]
    assert not receiver.complete(2)  # 1 still running
    assert receiver.processed == 0
    assert receiver.complete(1)
    assert receiver.processed == 2
    receiver.complete(4)
    assert receiver.processed == 2


def test_items_still_running_across_a_reconnect_are_not_handed_twice() -> None:
    sender, receiver = _sender(3), Receiver()
    batch = sender.next_batch()
    assert batch is not None
    receiver.accept(batch)
    receiver.complete(1)
    receiver.on_disconnected(handling_survives=True)
    hello = Hello(1, Role.GATEWAY, "gw-1", "edge-1", receiver.processed, 100)
    sender.on_connected(hello)
    resent = sender.next_batch()
    assert resent is not None and [i.seq for i in resent.items] == [2, 3]
    assert receiver.accept(resent) == []  # duplicates of items being handled


def test_a_new_receiver_gets_everything_not_completed() -> None:
    sender, receiver = _sender(3), Receiver()
    batch = sender.next_batch()
    assert batch is not None
    receiver.accept(batch)
    receiver.complete(1)
    sender.on_ack(receiver.processed)
    sender.on_disconnected()
    successor = Receiver()  # the gateway restarted: new session, nothing remembered
    sender.on_connected(Hello(1, Role.GATEWAY, "gw-2", "", 0, 100))
    resent = sender.next_batch()
    assert resent is not None
    assert [i.seq for i in successor.accept(resent)] == [2, 3]


def test_ack_may_free_items_waiting_to_be_re_sent() -> None:
    sender = _sender(3)
    sender.next_batch()
    sender.on_disconnected()
    sender.on_connected(Hello(1, Role.GATEWAY, "gw-1", "", 0, 1))  # window of one
    assert sender.next_batch() is not None
    assert sender.on_ack(3) == 3  # completions acked before the re-send caught up
    assert sender.queued == 0
