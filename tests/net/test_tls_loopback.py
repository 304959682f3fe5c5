"""Two edges with real certificates: STARTTLS + SASL EXTERNAL and STARTTLS + dialback."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _edges import partner, set_partners, start_edge
from test_edges_loopback import message

from edgeproxy.certs import selfsigned
from edgeproxy.certs.contexts import TlsRole, tls_context
from edgeproxy.certs.pem import certificates_pem, private_key_pem
from edgeproxy.policy.model import AuthMethod, Negotiation

REQ, NOS = Negotiation.REQUIRED, Negotiation.NOT_SUPPORTED


def contexts(tmp: Path, ca: selfsigned.Authority, domain: str):  # type: ignore[no-untyped-def]
    key = selfsigned.new_ec_key()
    cert = selfsigned.issue(ca, key.public_key(), [domain])
    (tmp / f"{domain}.pem").write_bytes(certificates_pem([cert]))
    (tmp / f"{domain}.key").write_bytes(private_key_pem(key))
    (tmp / "ca.pem").write_bytes(certificates_pem([ca.certificate]))
    args = (tmp / f"{domain}.pem", tmp / f"{domain}.key", tmp / "ca.pem")
    return tls_context(TlsRole.S2S_SERVER, *args), tls_context(TlsRole.S2S_CLIENT, *args)


@pytest.mark.parametrize(
    ("sasl", "dialback", "method"),
    [(REQ, False, AuthMethod.SASL_OVER_TLS), (NOS, True, AuthMethod.TLS_DIALBACK)],
)
async def test_starttls_streams_authenticate_with_the_rows_method(tmp_path: Path, sasl, dialback, method, caplog) -> None:  # type: ignore[no-untyped-def]
    ca = selfsigned.make_authority("Lab CA")
    c_ssl = contexts(tmp_path, ca, "contoso.test")
    f_ssl = contexts(tmp_path, ca, "fabrikam.test")
    caplog.set_level("INFO", logger="edgeproxy.net.listener")
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "c", *c_ssl)
            fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "f", *f_ssl)
            row = {"tls": REQ, "sasl": sasl, "dialback": dialback}
            set_partners(contoso, ("alice",), "c", partner("fabrikam.test", fabrikam.port, **row))
            set_partners(fabrikam, ("bob",), "f", partner("contoso.test", contoso.port, **row))
            await contoso.server.router.send_from_local(message("alice@contoso.test", "bob@fabrikam.test"))
            got = await fabrikam.delivery.receive()
            assert got.to_jid == "bob@fabrikam.test"
            link = contoso.server.router.pool.links[("contoso.test", "fabrikam.test")]
            assert link.session is not None and link.session.conn.tls_active
            assert f"authenticated by {method}" in caplog.text
            nursery.cancel_scope.cancel()
