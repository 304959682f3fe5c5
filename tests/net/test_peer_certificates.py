"""Peer certificates (SPEC §8, XEP-0178, RFC 6125): what the TLS layer lets through, what SASL
EXTERNAL accepts, and the named cause when it does not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio
from _edges import partner, set_partners, start_edge
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_edges_loopback import message

from edgeproxy.certs import selfsigned
from edgeproxy.certs.contexts import S2SContext, TlsRole, tls_context
from edgeproxy.certs.identity import ID_ON_DNSSRV, ID_ON_XMPPADDR
from edgeproxy.certs.peer import PeerTrust, certificate_check
from edgeproxy.certs.pem import certificates_pem, private_key_pem
from edgeproxy.policy.model import AuthMethod, Negotiation
from edgeproxy.s2s import Authenticated

REQ, OPT, NOS = Negotiation.REQUIRED, Negotiation.OPTIONAL, Negotiation.NOT_SUPPORTED
SERVER_ONLY = (ExtendedKeyUsageOID.SERVER_AUTH,)
NOW = dt.datetime.now(dt.UTC)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def leaf(ca: selfsigned.Authority, names: list[str], **kw: object) -> x509.Certificate:
    return selfsigned.issue(ca, selfsigned.new_ec_key().public_key(), names, **kw)  # type: ignore[arg-type]


def other_name_cert(ca: selfsigned.Authority, type_id: x509.ObjectIdentifier, tag: int, text: str) -> x509.Certificate:
    """A leaf whose only identity is one otherName (SRV-ID: IA5String, XmppAddr: UTF8String)."""
    value = text.encode()
    key = selfsigned.new_ec_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.OtherName(type_id, bytes([tag, len(value)]) + value)]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )


def test_server_auth_only_certificate_proves_the_domain_without_client_auth_eku() -> None:
    ca = selfsigned.make_authority("CA")
    trust = PeerTrust((ca.certificate,), "test")
    check = certificate_check(der(leaf(ca, ["fabrikam.test"], usages=SERVER_ONLY)), trust)
    assert check("fabrikam.test") is None
    assert certificate_check(der(leaf(ca, ["fabrikam.test"], usages=None)), trust)("fabrikam.test") is None


def test_wildcard_srv_id_and_xmppaddr_prove_the_domain_per_rfc6125() -> None:
    ca = selfsigned.make_authority("CA")
    trust = PeerTrust((ca.certificate,), "test")
    wildcard = certificate_check(der(leaf(ca, ["*.fabrikam.test"])), trust)
    assert wildcard("chat.fabrikam.test") is None
    assert "name mismatch" in (wildcard("a.b.fabrikam.test") or "")
    assert "name mismatch" in (wildcard("fabrikam.test") or "")
    srv = certificate_check(der(other_name_cert(ca, ID_ON_DNSSRV, 0x16, "_xmpp-server.fabrikam.test")), trust)
    assert srv("fabrikam.test") is None
    assert "name mismatch" in (srv("litware.test") or "")
    xmpp = certificate_check(der(other_name_cert(ca, ID_ON_XMPPADDR, 0x0C, "fabrikam.test")), trust)
    assert xmpp("fabrikam.test") is None


def test_peer_certificate_failures_name_their_exact_cause() -> None:
    ca = selfsigned.make_authority("Lab CA")
    rogue = selfsigned.make_authority("Rogue CA")
    trust = PeerTrust((ca.certificate,), "test")
    good = der(leaf(ca, ["fabrikam.test"]))
    assert "expired on" in (certificate_check(good, trust, NOW + dt.timedelta(days=4000))("fabrikam.test") or "")
    early = der(leaf(ca, ["fabrikam.test"], not_before=NOW + dt.timedelta(days=2)))
    assert "not yet valid" in (certificate_check(early, trust)("fabrikam.test") or "")
    untrusted = certificate_check(der(leaf(rogue, ["fabrikam.test"])), trust)("fabrikam.test") or ""
    assert untrusted.startswith("untrusted issuer") and "Rogue CA" in untrusted
    self_signed = certificate_check(der(rogue.certificate), trust)("fabrikam.test") or ""
    assert "untrusted issuer: self-signed" in self_signed
    code_signing = der(leaf(ca, ["fabrikam.test"], usages=(ExtendedKeyUsageOID.CODE_SIGNING,)))
    assert "untrusted issuer" in (certificate_check(code_signing, trust)("fabrikam.test") or "")
    assert "name mismatch" in (certificate_check(good, trust)("litware.test") or "")
    assert (certificate_check(None, trust)("fabrikam.test") or "").startswith("no certificate")


def edge_ssl(tmp: Path, name: str, cert: x509.Certificate, key: object, trusted: selfsigned.Authority,  # type: ignore[no-untyped-def]
             chain: tuple[x509.Certificate, ...] = ()):
    (tmp / f"{name}.pem").write_bytes(certificates_pem([cert, *chain]))
    (tmp / f"{name}.key").write_bytes(private_key_pem(key))  # type: ignore[arg-type]
    (tmp / f"{name}-trust.pem").write_bytes(certificates_pem([trusted.certificate]))
    args = (tmp / f"{name}.pem", tmp / f"{name}.key", tmp / f"{name}-trust.pem")
    server, client = tls_context(TlsRole.S2S_SERVER, *args), tls_context(TlsRole.S2S_CLIENT, *args)
    assert isinstance(server, S2SContext) and isinstance(client, S2SContext)
    assert server.verification_deferred and client.verification_deferred
    return server, client


def fabrikam_certificate(kind: str, ca: selfsigned.Authority, rogue: selfsigned.Authority, key: object) -> x509.Certificate:
    public = key.public_key()  # type: ignore[attr-defined]
    if kind == "untrusted issuer":
        return selfsigned.issue(rogue, public, ["fabrikam.test"])
    if kind == "expired":
        return selfsigned.issue(ca, public, ["fabrikam.test"], not_before=NOW - dt.timedelta(days=30),
                                not_after=NOW - dt.timedelta(days=1))
    if kind == "not yet valid":
        return selfsigned.issue(ca, public, ["fabrikam.test"], not_before=NOW + dt.timedelta(days=1))
    if kind == "name mismatch":
        return selfsigned.issue(ca, public, ["other.test"])
    return selfsigned.issue(ca, public, ["fabrikam.test"], usages=SERVER_ONLY)


async def run_pair(tmp: Path, kind: str, row: dict[str, object], caplog, *, to_contoso: bool = True) -> str:  # type: ignore[no-untyped-def]
    """fabrikam.test holds a certificate of ``kind``; a message crosses over STARTTLS from
    fabrikam to contoso (``to_contoso``) or back. Returns the log once it was delivered."""
    ca, rogue = selfsigned.make_authority("Lab CA"), selfsigned.make_authority("Rogue CA")
    c_key, f_key = selfsigned.new_ec_key(), selfsigned.new_ec_key()
    c_ssl = edge_ssl(tmp, "contoso", selfsigned.issue(ca, c_key.public_key(), ["contoso.test"]), c_key, ca)
    f_ssl = edge_ssl(tmp, "fabrikam", fabrikam_certificate(kind, ca, rogue, f_key), f_key, ca)
    caplog.set_level("INFO", logger="edgeproxy.net")
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "c", *c_ssl)
            fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "f", *f_ssl)
            set_partners(contoso, ("alice",), "c", partner("fabrikam.test", fabrikam.port, **row))
            set_partners(fabrikam, ("bob",), "f", partner("contoso.test", contoso.port, **row))
            sender, receiver = (fabrikam, contoso) if to_contoso else (contoso, fabrikam)
            frm, to = ("bob@fabrikam.test", "alice@contoso.test")[:: 1 if to_contoso else -1]
            await sender.server.router.send_from_local(message(frm, to))
            got = await receiver.delivery.receive()
            assert (got.from_jid, got.to_jid) == (frm, to)
            link = sender.server.router.pool.links[(sender.domain, receiver.domain)]
            assert link.session is not None and link.session.conn.tls_active
            nursery.cancel_scope.cancel()
    return str(caplog.text)


async def test_server_auth_only_peer_certificate_authenticates_with_sasl_external(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    log = await run_pair(tmp_path, "serverAuth only", {"tls": REQ, "sasl": REQ, "dialback": False}, caplog)
    assert f"authenticated by {AuthMethod.SASL_OVER_TLS}" in log
    assert "certificate rejected" not in log


@pytest.mark.parametrize("kind", ["untrusted issuer", "expired", "not yet valid", "name mismatch"])
async def test_invalid_peer_certificate_keeps_tls_and_falls_back_to_dialback_naming_the_cause(
    tmp_path: Path, kind: str, caplog  # type: ignore[no-untyped-def]
) -> None:
    # Row 7 (TLS Required, SASL Optional, dialback): EXTERNAL is withheld, TLS dialback goes on.
    log = await run_pair(tmp_path, kind, {"tls": REQ, "sasl": OPT, "dialback": True}, caplog)
    assert f"authenticated by {AuthMethod.TLS_DIALBACK}" in log
    assert f"inbound fabrikam.test: no SASL EXTERNAL, peer certificate rejected: {kind}" in log


async def test_outbound_stream_does_not_offer_our_identity_over_external_to_an_untrusted_peer(
    tmp_path: Path, caplog  # type: ignore[no-untyped-def]
) -> None:
    # contoso -> fabrikam (untrusted certificate), row 7: TLS dialback instead of EXTERNAL.
    log = await run_pair(tmp_path, "untrusted issuer", {"tls": REQ, "sasl": OPT, "dialback": True}, caplog,
                         to_contoso=False)
    assert "outbound contoso.test -> fabrikam.test: no SASL EXTERNAL, peer certificate rejected: untrusted issuer" in log
    assert f"authenticated by {AuthMethod.TLS_DIALBACK}" in log


async def test_sasl_only_row_gives_up_on_an_untrusted_peer_and_bounces_naming_the_cause(
    tmp_path: Path, caplog  # type: ignore[no-untyped-def]
) -> None:
    ca, rogue = selfsigned.make_authority("Lab CA"), selfsigned.make_authority("Rogue CA")
    c_key, f_key = selfsigned.new_ec_key(), selfsigned.new_ec_key()
    c_ssl = edge_ssl(tmp_path, "contoso", selfsigned.issue(ca, c_key.public_key(), ["contoso.test"]), c_key, ca)
    f_ssl = edge_ssl(tmp_path, "fabrikam", selfsigned.issue(rogue, f_key.public_key(), ["fabrikam.test"]), f_key, ca)
    caplog.set_level("INFO", logger="edgeproxy.net")
    row = {"tls": REQ, "sasl": REQ, "dialback": False}  # row 2
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "c", *c_ssl)
            fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "f", *f_ssl)
            set_partners(contoso, ("alice",), "c", partner("fabrikam.test", fabrikam.port, **row))
            set_partners(fabrikam, ("bob",), "f", partner("contoso.test", contoso.port, **row))
            await contoso.server.router.send_from_local(message("alice@contoso.test", "bob@fabrikam.test"))
            back = await contoso.delivery.receive()
            assert back.type == "error" and back.to_jid == "alice@contoso.test"
            assert fabrikam.delivery.statistics().current_buffer_used == 0
            nursery.cancel_scope.cancel()
    assert "SASL EXTERNAL not attempted: untrusted issuer" in caplog.text


async def test_peer_without_certificate_gets_tls_and_dialback_but_no_external(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from _scripted_peer import open_scripted_stream

    ca = selfsigned.make_authority("Lab CA")
    c_key, f_key = selfsigned.new_ec_key(), selfsigned.new_ec_key()
    c_ssl = edge_ssl(tmp_path, "contoso", selfsigned.issue(ca, c_key.public_key(), ["contoso.test"]), c_key, ca)
    f_ssl = edge_ssl(tmp_path, "fabrikam", selfsigned.issue(ca, f_key.public_key(), ["fabrikam.test"]), f_key, ca)
    caplog.set_level("INFO", logger="edgeproxy.net")
    row = {"tls": REQ, "sasl": OPT, "dialback": True}  # row 7
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "c", *c_ssl)
            fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "f", *f_ssl)  # authoritative
            set_partners(contoso, ("alice",), "c", partner("fabrikam.test", fabrikam.port, **row))
            set_partners(fabrikam, ("bob",), "f", partner("contoso.test", contoso.port, **row))
            # The scripted peer's TLS client presents no certificate at all.
            peer = await open_scripted_stream("127.0.0.1", contoso.port, local="fabrikam.test",
                                              remote="contoso.test", policy=fabrikam.holder[0], secret="f")
            assert peer.conn.tls_active and b"<starttls" in peer.raw
            assert b"EXTERNAL" not in peer.raw  # never offered, before or after TLS
            methods = [e.method for e in peer.events if isinstance(e, Authenticated)]
            assert methods == [AuthMethod.TLS_DIALBACK]
            nursery.cancel_scope.cancel()
    assert "inbound fabrikam.test: no SASL EXTERNAL, peer certificate rejected: no certificate" in caplog.text


async def test_intermediate_sent_by_the_peer_completes_the_chain_to_a_root_only_trust_store(
    tmp_path: Path, caplog  # type: ignore[no-untyped-def]
) -> None:
    root = selfsigned.make_authority("Lab Root")
    intermediate = selfsigned.make_authority("Lab Issuing CA", issuer=root)
    c_key, f_key = selfsigned.new_ec_key(), selfsigned.new_ec_key()
    c_ssl = edge_ssl(tmp_path, "contoso", selfsigned.issue(root, c_key.public_key(), ["contoso.test"]), c_key, root)
    f_leaf = selfsigned.issue(intermediate, f_key.public_key(), ["fabrikam.test"], usages=SERVER_ONLY)
    f_ssl = edge_ssl(tmp_path, "fabrikam", f_leaf, f_key, root, chain=(intermediate.certificate,))
    # Without the intermediate the leaf does not chain to the root-only store:
    trust = PeerTrust((root.certificate,), "test")
    assert "untrusted issuer" in (certificate_check(der(f_leaf), trust)("fabrikam.test") or "")
    assert certificate_check(der(f_leaf), trust, intermediates=[der(intermediate.certificate)])("fabrikam.test") is None
    caplog.set_level("INFO", logger="edgeproxy.net")
    row = {"tls": REQ, "sasl": REQ, "dialback": False}  # row 2: EXTERNAL or nothing
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "c", *c_ssl)
            fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "f", *f_ssl)
            set_partners(contoso, ("alice",), "c", partner("fabrikam.test", fabrikam.port, **row))
            set_partners(fabrikam, ("bob",), "f", partner("contoso.test", contoso.port, **row))
            await fabrikam.server.router.send_from_local(message("bob@fabrikam.test", "alice@contoso.test"))
            got = await contoso.delivery.receive()
            assert got.from_jid == "bob@fabrikam.test"
            nursery.cancel_scope.cancel()
    assert f"authenticated by {AuthMethod.SASL_OVER_TLS}" in caplog.text
    assert "certificate rejected" not in caplog.text
