"""A graceful stop's ``system-shutdown`` still takes what the peer sent before it read it (RFC
6120 §4.4: the other party may finish transmitting); any other stream error ends at once."""

from __future__ import annotations

from _s2s_harness import NOS as N
from _s2s_harness import Edge, Pipe, row

from edgeproxy.s2s import CloseStream, SendStanza, StanzaReceived, State, StreamClosed

RAW = b"<message from='alice@contoso.test/x' to='bob@fabrikam.test' type='chat'><body>in flight</body></message>"


def _open() -> Pipe:
    contoso = Edge("contoso.test", (row("fabrikam.test", N, N, True),), "contoso-secret")
    fabrikam = Edge("fabrikam.test", (row("contoso.test", N, N, True),), "fabrikam-secret")
    return Pipe.open(contoso, fabrikam)


def _stanza_in_flight_after(close: CloseStream) -> tuple[Pipe, list[StanzaReceived]]:
    pipe = _open()
    pipe.receiver.send(close)  # fabrikam closes; its bytes have not reached contoso yet
    error = pipe.receiver.data_to_send()
    pipe.initiator.send(SendStanza(RAW, "contoso.test", "fabrikam.test"))  # contoso writes on
    pipe.receiver.receive_data(pipe.initiator.data_to_send())
    got = []
    while (event := pipe.receiver.next_event()) is not None:
        if isinstance(event, StanzaReceived):
            got.append(event)
    pipe.to_a.append(error)  # now contoso reads the error, and closes its half
    pipe.run()
    return pipe, got


def test_a_stanza_sent_before_the_peer_read_system_shutdown_is_still_taken() -> None:
    pipe, got = _stanza_in_flight_after(CloseStream("system-shutdown", "stopping", finish=True))
    assert [e.stanza.raw for e in got] == [RAW]
    assert b"<system-shutdown" in pipe.b_sent and pipe.b_sent.endswith(b"</stream:stream>")
    assert pipe.receiver.state is State.CLOSED  # ended by the peer's closing tag
    assert any(isinstance(e, StreamClosed) for e in pipe.b_events)


def test_after_any_other_stream_error_nothing_more_is_taken() -> None:
    pipe, got = _stanza_in_flight_after(CloseStream("policy-violation", "no"))
    assert got == []
    assert pipe.receiver.state is State.CLOSED
