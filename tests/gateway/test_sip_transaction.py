"""Non-INVITE transactions driven with hand-made time (RFC 3261 §17.1.2, §17.2.2)."""

from __future__ import annotations

from edgeproxy.gateway.sip.message import (
    OutgoingRequest,
    SipRequest,
    SipResponse,
    parse_datagram,
    response_to,
    serialize,
)
from edgeproxy.gateway.sip.transaction import (
    T1,
    T2,
    T4,
    ClientTransaction,
    Deliver,
    Retransmit,
    ServerTransaction,
    State,
    TimedOut,
    TimerQueue,
    client_key,
    server_key,
)

RAW = (
    b"MESSAGE sip:bob@sip.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5092;branch=z9hG4bK-7\r\n"
    b"From: <sip:alice@sip.test>;tag=1\r\nTo: <sip:bob@sip.test>\r\n"
    b"Call-ID: c1\r\nCSeq: 4 MESSAGE\r\nContent-Length: 0\r\n\r\n"
)


def request() -> SipRequest:
    message = parse_datagram(RAW)
    assert isinstance(message, SipRequest)
    return message


def response(status: int) -> SipResponse:
    return response_to(request(), status)


def run_timers(
    tx: ClientTransaction | ServerTransaction, until: float
) -> list[tuple[float, object]]:
    out: list[tuple[float, object]] = []
    while tx.deadline is not None and tx.deadline <= until:
        now = tx.deadline
        out.extend((now, a) for a in tx.on_timer(now))
    return out


def test_client_over_udp_retransmits_doubling_up_to_t2_then_times_out_at_64_t1() -> None:
    tx = ClientTransaction(request(), reliable=False, now=0.0)
    events = run_timers(tx, 100.0)
    times = [t for t, a in events if isinstance(a, Retransmit)]
    assert all(a.data == serialize(request()) for _, a in events if isinstance(a, Retransmit))
    assert times[:5] == [T1, 3 * T1, 7 * T1, 15 * T1, 15 * T1 + T2]
    assert all(b - a <= T2 for a, b in zip(times, times[1:], strict=False))
    assert events[-1] == (64 * T1, TimedOut())
    assert tx.state is State.TERMINATED


def test_client_over_tcp_never_retransmits_but_still_times_out() -> None:
    tx = ClientTransaction(request(), reliable=True, now=0.0)
    assert run_timers(tx, 100.0) == [(64 * T1, TimedOut())]


def test_provisional_response_moves_to_proceeding_where_retransmits_are_every_t2() -> None:
    tx = ClientTransaction(request(), reliable=False, now=0.0)
    assert tx.on_response(response(100), 0.1) == []
    assert tx.state is State.PROCEEDING
    tx.on_timer(T1)  # first retransmission, now in Proceeding
    assert tx.deadline == T1 + T2


def test_final_response_is_delivered_once_and_retransmissions_absorbed() -> None:
    tx = ClientTransaction(request(), reliable=False, now=0.0)
    ok = response(200)
    assert tx.on_response(ok, 1.0) == [Deliver(ok)]
    assert tx.state is State.COMPLETED
    assert tx.on_response(ok, 1.2) == []
    assert tx.deadline == 1.0 + T4
    assert run_timers(tx, 10.0) == []
    assert tx.state is State.TERMINATED


def test_final_response_over_tcp_terminates_at_once() -> None:
    tx = ClientTransaction(request(), reliable=True, now=0.0)
    tx.on_response(response(404), 1.0)
    assert tx.state is State.TERMINATED and tx.deadline is None


def test_response_matches_its_client_transaction() -> None:
    tx = ClientTransaction(request(), reliable=False, now=0.0)
    assert client_key(response(200)) == tx.key == ("z9hG4bK-7", "MESSAGE")


def test_server_absorbs_retransmissions_while_trying_and_repeats_the_final_answer() -> None:
    tx = ServerTransaction(request(), reliable=False, now=0.0)
    assert tx.on_request_retransmission() == []
    ok = response(200)
    tx.send_response(ok, 1.0, serialize(ok))
    assert tx.state is State.COMPLETED
    assert tx.on_request_retransmission() == [Retransmit(serialize(ok))]
    assert tx.deadline == 1.0 + 64 * T1
    run_timers(tx, 100.0)
    assert tx.state is State.TERMINATED


def test_server_in_proceeding_repeats_the_provisional_answer() -> None:
    tx = ServerTransaction(request(), reliable=False, now=0.0)
    trying = response(100)
    tx.send_response(trying, 0.0, serialize(trying))
    assert tx.on_request_retransmission() == [Retransmit(serialize(trying))]


def test_server_absorbs_retransmissions_when_its_answer_was_withheld() -> None:
    tx = ServerTransaction(request(), reliable=False, now=0.0)
    tx.send_response(response(401), 0.0, None)  # not sent (the transport's UDP size rule)
    assert tx.state is State.COMPLETED
    assert tx.on_request_retransmission() == []


def test_server_over_tcp_terminates_with_its_final_answer() -> None:
    tx = ServerTransaction(request(), reliable=True, now=0.0)
    tx.send_response(response(200), 0.0)
    assert tx.state is State.TERMINATED


def test_server_key_uses_branch_sent_by_and_method() -> None:
    assert server_key(request()) == ("z9hG4bK-7", "127.0.0.1:5092", "MESSAGE")
    old = parse_datagram(RAW.replace(b"branch=z9hG4bK-7", b"branch=1234"))
    assert isinstance(old, SipRequest)
    assert server_key(old) == ("c1", "4", "1", "MESSAGE")


def test_a_request_built_as_bytes_runs_the_same_transaction() -> None:
    outgoing = OutgoingRequest(RAW, "z9hG4bK-7", "MESSAGE")
    tx = ClientTransaction(outgoing, reliable=False, now=0.0)
    assert tx.key == ClientTransaction(request(), reliable=False, now=0.0).key
    assert tx.on_timer(T1) == [Retransmit(RAW)]
    assert outgoing.parsed() == request()
    assert OutgoingRequest.of(request()) == OutgoingRequest(serialize(request()), "z9hG4bK-7", "MESSAGE")


def test_timer_queue_gives_each_due_transaction_once_in_deadline_order() -> None:
    timers: TimerQueue[str] = TimerQueue()
    udp = ClientTransaction(request(), reliable=False, now=0.0)  # E at T1, F at 64·T1
    tcp = ClientTransaction(request(), reliable=True, now=0.1)  # F only
    server = ServerTransaction(request(), reliable=False, now=0.0)
    server.send_response(response(200), 0.2, b"x")  # J at 0.2 + 64·T1
    for tx, name in ((udp, "udp"), (tcp, "tcp"), (server, "server")):
        timers.schedule(tx, name)
    timers.schedule(udp, "udp")  # scheduled twice without a change: still due once
    assert timers.due(T1 - 0.01) == []
    assert timers.due(T1) == [(udp, "udp")]
    assert udp.on_timer(T1) == [Retransmit(serialize(request()))]
    timers.schedule(udp, "udp")  # E moved to 3·T1
    tcp.on_response(response(200), 1.0)  # over TCP: terminated, its Timer F entry now stale
    assert timers.due(3 * T1) == [(udp, "udp")]
    udp.on_response(response(200), 1.6)  # Timer K from now; the next E entry is stale
    timers.schedule(udp, "udp")
    assert timers.due(1.6 + T4) == [(udp, "udp")]
    assert timers.due(100.0) == [(server, "server")]
    assert len(timers) == 0


def test_timer_queue_drops_stale_entries_once_they_are_most_of_it() -> None:
    timers: TimerQueue[int] = TimerQueue()
    for n in range(5000):
        tx = ClientTransaction(request(), reliable=True, now=0.0)
        timers.schedule(tx, n)
        tx.on_response(response(200), 0.0)  # answered at once: the Timer F entry is stale
        timers.due(0.0)
    assert len(timers) < 2048
