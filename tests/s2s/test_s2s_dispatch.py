"""The S2S core's dispatch table and its one output path."""

from __future__ import annotations

import pytest
from _s2s_harness import NOS, REQ, Edge, cert_check_for, row

from edgeproxy.s2s import CloseStream, KeepAlive, Role, S2SConnection
from edgeproxy.s2s.connection import _HANDLERS, _checked
from edgeproxy.s2s.states import ACCEPTS, Kind, State

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='fabrikam.test' to='contoso.test' version='1.0'>"
)


def test_every_kind_a_state_accepts_has_a_handler_of_its_role() -> None:
    for (role, _state), kinds in ACCEPTS.items():
        assert kinds <= _HANDLERS[role].keys()
    assert Kind.OTHER not in _HANDLERS[Role.RECEIVING] | _HANDLERS[Role.INITIATING]


def test_a_missing_or_never_reached_handler_fails_the_import_check() -> None:
    tables = {role: dict(table) for role, table in _HANDLERS.items()}
    del tables[Role.RECEIVING][Kind.STANZA]
    with pytest.raises(TypeError, match="missing"):
        _checked(tables)
    tables = {role: dict(table) for role, table in _HANDLERS.items()}
    tables[Role.INITIATING][Kind.STANZA] = S2SConnection._on_stanza
    with pytest.raises(TypeError, match="never reached"):
        _checked(tables)
    with pytest.raises(TypeError, match="every role"):
        _checked({Role.RECEIVING: _HANDLERS[Role.RECEIVING]})


def test_driver_actions_leave_through_data_to_send_behind_the_core_replies() -> None:
    conn = Edge("contoso.test", (row("fabrikam.test", NOS, NOS, True),), "s3cret").receiving()
    conn.receive_data(HEADER)
    assert conn.send(KeepAlive()) is None
    conn.send(CloseStream())
    out = conn.data_to_send()
    assert out.startswith(b"<?xml") and out.endswith(b"</stream:features> </stream:stream>")
    assert conn.data_to_send() == b""


def test_no_keep_alive_passes_between_starttls_and_the_end_of_the_tls_handshake() -> None:
    """RFC 6120 §5.4.3.3: after <starttls/> no byte but TLS; our receiving edge refuses one."""
    fabrikam = Edge("fabrikam.test", (row("contoso.test", REQ, NOS, True),), "s3cret")
    conn = fabrikam.initiating("contoso.test")
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(HEADER.replace(b"from='fabrikam.test' to='contoso.test'",
                                     b"from='contoso.test' to='fabrikam.test' id='i1'"))
    conn.receive_data(b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
                      b"<required/></starttls></stream:features>")
    assert conn.data_to_send().endswith(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert conn.state is State.AWAIT_PROCEED
    conn.send(KeepAlive())
    assert conn.data_to_send() == b""
    conn.receive_data(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert conn.state is State.TLS_HANDSHAKE
    conn.send(KeepAlive())
    assert conn.data_to_send() == b""
    conn.tls_established(cert_check_for({"contoso.test"}))
    conn.data_to_send()  # the new stream header
    conn.send(KeepAlive())
    assert conn.data_to_send() == b" "
