"""Two sans-IO cores piped together: every negotiation-matrix row ends in the SPEC's method."""

from __future__ import annotations

import pytest
from _s2s_harness import NOS as N
from _s2s_harness import OPT as O
from _s2s_harness import REQ as R
from _s2s_harness import Edge, Pipe, row

from edgeproxy.policy.model import AuthMethod
from edgeproxy.policy.validation import check_negotiation
from edgeproxy.s2s import (
    Authenticated,
    AuthenticationFailed,
    SendStanza,
    StanzaReceived,
    State,
    StreamClosed,
    StreamReady,
)

ROWS = [
    (tls, sasl, db)
    for tls in (R, O, N)
    for sasl in (R, O, N)
    for db in (True, False)
    if check_negotiation(tls, sasl, db).methods
]
STRONGEST = (AuthMethod.SASL_OVER_TLS, AuthMethod.TLS_DIALBACK, AuthMethod.TCP_DIALBACK)


def edges(tls, sasl, db, *, certs: bool = True) -> tuple[Edge, Edge]:
    contoso = Edge("contoso.test", (row("fabrikam.test", tls, sasl, db),), "contoso-secret")
    fabrikam = Edge("fabrikam.test", (row("contoso.test", tls, sasl, db),), "fabrikam-secret")
    if certs:
        contoso.cert_valid = {"contoso.test"}
        fabrikam.cert_valid = {"fabrikam.test"}
    return contoso, fabrikam


def methods_of(events) -> list[AuthMethod]:
    return [e.method for e in events if isinstance(e, Authenticated)]


@pytest.mark.parametrize(("tls", "sasl", "db"), ROWS, ids=lambda v: str(v))
def test_every_saveable_row_authenticates_with_its_strongest_method(tls, sasl, db) -> None:
    contoso, fabrikam = edges(tls, sasl, db)
    pipe = Pipe.open(contoso, fabrikam)
    expected = next(m for m in STRONGEST if m in check_negotiation(tls, sasl, db).methods)
    assert methods_of(pipe.a_events) == [expected]
    assert methods_of(pipe.b_events) == [expected]
    assert StreamReady(authenticated=True) in pipe.a_events
    assert pipe.initiator.state is State.OPEN
    assert pipe.receiver.authenticated == {("fabrikam.test", "contoso.test")}


@pytest.mark.parametrize(("tls", "sasl", "db"), ROWS, ids=lambda v: str(v))
def test_without_valid_certificates_sasl_rows_fall_back_or_fail(tls, sasl, db) -> None:
    contoso, fabrikam = edges(tls, sasl, db, certs=False)
    pipe = Pipe.open(contoso, fabrikam)
    methods = check_negotiation(tls, sasl, db).methods - {AuthMethod.SASL_OVER_TLS}
    expected = next((m for m in STRONGEST if m in methods), None)
    if expected is None:
        assert methods_of(pipe.b_events) == []
        assert any(isinstance(e, AuthenticationFailed) for e in pipe.a_events) or any(
            isinstance(e, StreamClosed) and e.error == "not-authorized" for e in pipe.b_events
        )
    else:
        assert methods_of(pipe.b_events) == [expected]


def test_stanzas_flow_after_dialback_and_arrive_with_domains() -> None:
    contoso, fabrikam = edges(N, N, True)
    pipe = Pipe.open(contoso, fabrikam)
    raw = b"<message from='alice@contoso.test/x' to='bob@fabrikam.test' type='chat'><body>hi</body></message>"
    pipe.initiator.send(SendStanza(raw, "contoso.test", "fabrikam.test"))
    pipe.inject(pipe.initiator.data_to_send())
    got = [e for e in pipe.b_events if isinstance(e, StanzaReceived)]
    assert len(got) == 1
    assert got[0].stanza.raw == raw
    assert (got[0].from_domain, got[0].to_domain) == ("contoso.test", "fabrikam.test")


def test_tls_dialback_row_negotiates_starttls_before_dialback() -> None:
    contoso, fabrikam = edges(R, N, True)
    pipe = Pipe.open(contoso, fabrikam)
    assert b"<required/></starttls>" in bytes(pipe.b_sent)
    assert pipe.initiator.tls_active and pipe.receiver.tls_active
    assert methods_of(pipe.b_events) == [AuthMethod.TLS_DIALBACK]


def test_sasl_external_sends_empty_authzid_and_restarts_the_stream() -> None:
    contoso, fabrikam = edges(R, R, False)
    pipe = Pipe.open(contoso, fabrikam)
    assert b"mechanism='EXTERNAL'>=</auth>" in bytes(pipe.a_sent)
    assert bytes(pipe.a_sent).count(b"<stream:stream") == 3  # initial, after TLS, after SASL
    assert pipe.receiver.state is State.OPEN


def test_closing_handshake_ends_both_sides() -> None:
    from edgeproxy.s2s import CloseStream

    contoso, fabrikam = edges(N, N, True)
    pipe = Pipe.open(contoso, fabrikam)
    pipe.initiator.send(CloseStream())
    pipe.inject(pipe.initiator.data_to_send())
    assert pipe.receiver.state is State.CLOSED
    assert pipe.initiator.state is State.CLOSED
    assert bytes(pipe.b_sent).endswith(b"</stream:stream>")
