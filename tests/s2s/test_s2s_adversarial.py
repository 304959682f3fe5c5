"""Malformed and hostile peers against the receiving core; every refusal is checked on the wire."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys

from _s2s_harness import NOS, OPT, REQ, Edge, Pipe, cert_check_for, row

from edgeproxy.s2s import (
    DialbackVerdict,
    DialbackVerifyNeeded,
    S2SConnection,
    StartTls,
    StreamClosed,
    dialback_key,
)

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='%s' to='contoso.test' version='1.0'>"
)


def contoso(*partners) -> Edge:
    return Edge("contoso.test", partners or (row("fabrikam.test", NOS, NOS, True),), "s3cret")


def feed(conn: S2SConnection, data: bytes) -> tuple[bytes, list]:
    conn.receive_data(data)
    out = conn.data_to_send()
    events = []
    while (e := conn.next_event()) is not None:
        events.append(e)
    return out, events


def closed_with(events: list) -> str | None:
    return next((e.error for e in events if isinstance(e, StreamClosed)), None)


def dialback_authenticated(edge: Edge, origin: bytes = b"fabrikam.test") -> S2SConnection:
    conn = edge.receiving()
    feed(conn, HEADER % origin)
    _, events = feed(conn, b"<db:result from='%s' to='contoso.test'>k</db:result>" % origin)
    need = next(e for e in events if isinstance(e, DialbackVerifyNeeded))
    conn.send(DialbackVerdict(need.originating, need.receiving, True))
    assert conn.data_to_send().endswith(b"type='valid'/>")
    return conn


def test_xep0185_key_is_hmac_sha256_of_hashed_secret_in_hex() -> None:
    secret_hash = hashlib.sha256(b"s3cret").hexdigest().encode()
    want = hmac.new(secret_hash, b"fabrikam.test contoso.test D60000229F", hashlib.sha256).hexdigest()
    assert dialback_key("s3cret", "fabrikam.test", "contoso.test", "D60000229F") == want


def test_domain_not_in_partner_list_is_refused_with_policy_violation() -> None:
    out, events = feed(contoso().receiving(), HEADER % b"evil.test")
    assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in out
    assert closed_with(events) == "policy-violation"


def test_stream_to_a_domain_we_do_not_serve_is_host_unknown() -> None:
    out, events = feed(contoso().receiving(), (HEADER % b"fabrikam.test").replace(b"contoso", b"nope"))
    assert b"<host-unknown " in out and closed_with(events) == "host-unknown"


def test_tls_required_partner_skipping_starttls_gets_policy_violation() -> None:
    conn = contoso(row("fabrikam.test", REQ, NOS, True)).receiving()
    out, _ = feed(conn, HEADER % b"fabrikam.test")
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in out
    assert b"urn:xmpp:features:dialback" not in out
    out, events = feed(conn, b"<db:result from='fabrikam.test' to='contoso.test'>k</db:result>")
    assert b"<policy-violation " in out and b"TLS is required" in out
    assert closed_with(events) == "policy-violation"


def test_spoofed_from_on_an_authenticated_stream_is_invalid_from() -> None:
    conn = dialback_authenticated(contoso())
    out, events = feed(conn, b"<message from='mallory@litware.test' to='bob@contoso.test'/>")
    assert b"<invalid-from " in out and closed_with(events) == "invalid-from"


def test_forged_dialback_key_is_answered_invalid_and_the_stream_closed() -> None:
    fabrikam = Edge("fabrikam.test", (row("contoso.test", NOS, NOS, True),), "other")
    pipe = Pipe(fabrikam, contoso(), fabrikam.initiating("contoso.test"), contoso().receiving())
    pipe.initiator.initiate()
    pipe.to_b.append(pipe.initiator.data_to_send())
    pipe.verify_answers = False  # the authoritative server said: not our key
    pipe.run()
    assert b"<db:result from='contoso.test' to='fabrikam.test' type='invalid'/>" in pipe.b_sent
    assert b"<not-authorized " in pipe.b_sent
    assert pipe.receiver.authenticated == set()


def test_authoritative_core_answers_db_verify_valid_only_for_its_own_keys() -> None:
    conn = contoso().receiving()
    feed(conn, HEADER % b"fabrikam.test")
    good = dialback_key("s3cret", "fabrikam.test", "contoso.test", "abc")
    out, _ = feed(conn, b"<db:verify from='fabrikam.test' to='contoso.test' id='abc'>%s</db:verify>" % good.encode())
    assert b"type='valid'" in out
    out, _ = feed(conn, b"<db:verify from='fabrikam.test' to='contoso.test' id='abd'>%s</db:verify>" % good.encode())
    assert b"type='invalid'" in out


def test_dialback_for_a_domain_we_do_not_host_is_item_not_found() -> None:
    conn = contoso().receiving()
    feed(conn, HEADER % b"fabrikam.test")
    out, events = feed(conn, b"<db:result from='fabrikam.test' to='other.test'>k</db:result>")
    assert b"type='error'" in out and b"<item-not-found " in out
    assert closed_with(events) is None


def test_several_domain_pairs_on_one_stream_are_authenticated_separately() -> None:
    edge = contoso(row("fabrikam.test", NOS, NOS, True, additional_domains=("chat.fabrikam.test",)))
    conn = dialback_authenticated(edge)
    out, events = feed(conn, b"<db:result from='chat.fabrikam.test' to='contoso.test'>k</db:result>")
    need = next(e for e in events if isinstance(e, DialbackVerifyNeeded))
    conn.send(DialbackVerdict(need.originating, need.receiving, True))
    assert conn.data_to_send().endswith(b"type='valid'/>")
    assert conn.remote_domains == {"fabrikam.test", "chat.fabrikam.test"}
    _, events = feed(conn, b"<message from='a@chat.fabrikam.test' to='b@contoso.test'/>")
    assert closed_with(events) is None


def test_stanza_before_authentication_is_not_authorized() -> None:
    conn = contoso().receiving()
    feed(conn, HEADER % b"fabrikam.test")
    out, events = feed(conn, b"<message from='a@fabrikam.test' to='b@contoso.test'/>")
    assert b"<not-authorized " in out and closed_with(events) == "not-authorized"


def test_bytes_after_starttls_are_refused() -> None:
    conn = contoso(row("fabrikam.test", OPT, NOS, True)).receiving()
    feed(conn, HEADER % b"fabrikam.test")
    out, events = feed(conn, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message/>")
    assert b"<proceed" not in out and closed_with(events) == "policy-violation"


def test_bytes_after_proceed_are_refused_by_the_initiator() -> None:
    fabrikam = Edge("fabrikam.test", (row("contoso.test", REQ, NOS, True),), "x")
    conn = fabrikam.initiating("contoso.test")
    conn.initiate()
    feed(conn, (HEADER % b"contoso.test").replace(b" version='1.0'>", b" id='i1' version='1.0'>"))
    out, _ = feed(conn, b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
    assert out == b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    out, events = feed(conn, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x01")
    assert not any(isinstance(e, StartTls) for e in events)
    assert closed_with(events) == "policy-violation"


def test_tokenizer_errors_become_their_stream_error_condition() -> None:
    conn = contoso().receiving()
    feed(conn, HEADER % b"fabrikam.test")
    out, events = feed(conn, b"<!-- comment -->")
    condition = closed_with(events)
    assert condition in ("restricted-xml", "not-well-formed", "bad-format")
    assert f"<{condition} ".encode() in out


def test_header_with_wrong_namespace_or_version_is_refused() -> None:
    out, events = feed(contoso().receiving(), (HEADER % b"fabrikam.test").replace(b"'jabber:server'", b"'jabber:client'"))
    assert closed_with(events) == "invalid-namespace"
    assert out.startswith(b"<?xml") and b"<stream:error>" in out  # our header comes first
    _, events = feed(contoso().receiving(), (HEADER % b"fabrikam.test").replace(b"'1.0'>", b"'2.0'>"))
    assert closed_with(events) == "unsupported-version"


def test_sasl_authzid_other_than_the_stream_from_is_invalid_authzid() -> None:
    conn = contoso(row("fabrikam.test", REQ, REQ, False)).receiving()
    feed(conn, HEADER % b"fabrikam.test")
    _, events = feed(conn, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert StartTls(server_side=True) in events
    conn.tls_established(cert_check_for({"fabrikam.test"}))
    out, _ = feed(conn, HEADER % b"fabrikam.test")
    assert b"<mechanism>EXTERNAL</mechanism>" in out
    authzid = base64.b64encode(b"litware.test")
    out, _ = feed(conn, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>%s</auth>" % authzid)
    assert b"<invalid-authzid/>" in out
    authzid = base64.b64encode(b"fabrikam.test")
    out, _ = feed(conn, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>%s</auth>" % authzid)
    assert b"<success " in out


def test_peer_without_from_gets_the_union_offer_and_its_row_is_enforced_later() -> None:
    edge = contoso(row("fabrikam.test", REQ, NOS, True), row("litware.test", NOS, NOS, True))
    conn = edge.receiving()
    out, _ = feed(conn, (HEADER % b"x").replace(b"from='x' ", b""))
    assert b"<starttls" in out and b"urn:xmpp:features:dialback" in out
    out, events = feed(conn, b"<db:result from='fabrikam.test' to='contoso.test'>k</db:result>")
    assert closed_with(events) == "policy-violation"  # fabrikam's row needs TLS first


def test_sans_io_core_never_imports_trio() -> None:
    code = (
        "import sys, edgeproxy.s2s, edgeproxy.xmpp.jid, edgeproxy.policy.engine;"
        "sys.exit(1 if 'trio' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
