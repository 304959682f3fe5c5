"""S2S contexts skip OpenSSL's chain building (certs.openssl.defer_verification): every peer
certificate still gets through the TLS handshake, and edgeproxy's verdict (certs.peer) still
refuses an untrusted chain, an expired certificate, a missing intermediate and another name —
and accepts a good chain, with its intermediate sent by the peer."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from edgeproxy.certs import selfsigned
from edgeproxy.certs.contexts import TlsRole, tls_context
from edgeproxy.certs.peer import certificate_check
from edgeproxy.certs.pem import certificates_pem, private_key_pem

NOW = dt.datetime.now(dt.UTC)


def write_pair(tmp: Path, name: str, chain: list[x509.Certificate], key: object) -> tuple[Path, Path]:
    cert, key_file = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(certificates_pem(chain))
    key_file.write_bytes(private_key_pem(key))  # type: ignore[arg-type]
    return cert, key_file


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """An in-memory TLS handshake between the two contexts; raises if it fails."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_side=False)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("client", tls_client), ("server", tls_server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return tls_client, tls_server
    raise AssertionError(f"handshake did not finish: {done}")


def verdict_on(tls: ssl.SSLObject, trust_of: ssl.SSLContext) -> object:
    """certs.peer's check on what the peer of ``tls`` presented (leaf, then what it sent with it)."""
    leaf = tls.getpeercert(binary_form=True)
    return certificate_check(leaf, trust_of.peer_trust, intermediates=SENT_WITH.get(leaf, ()))  # type: ignore[attr-defined]


#: The intermediates each peer leaf was sent with (the in-memory handshake has no peer_chain).
SENT_WITH: dict[bytes | None, tuple[bytes, ...]] = {}


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, object]:
    root = selfsigned.make_authority("Root")
    intermediate = selfsigned.make_authority("Intermediate", issuer=root)
    stranger = selfsigned.make_authority("Stranger")
    (tmp_path / "trust.crt").write_bytes(certificates_pem([root.certificate]))
    server_key = selfsigned.new_ec_key()
    server_files = write_pair(tmp_path, "contoso", [selfsigned.issue(root, server_key.public_key(), ["contoso.test"])],
                              server_key)
    server = tls_context(TlsRole.S2S_SERVER, *server_files, tmp_path / "trust.crt")
    return {"tmp": tmp_path, "root": root, "intermediate": intermediate, "stranger": stranger, "server": server}


def client_presenting(lab: dict[str, object], issuer: selfsigned.Authority, *, send: list[x509.Certificate],
                      **issue: object) -> ssl.SSLContext:
    key = selfsigned.new_ec_key()
    leaf = selfsigned.issue(issuer, key.public_key(), ["fabrikam.test"], **issue)  # type: ignore[arg-type]
    from cryptography.hazmat.primitives.serialization import Encoding

    SENT_WITH[leaf.public_bytes(Encoding.DER)] = tuple(c.public_bytes(Encoding.DER) for c in send)
    files = write_pair(lab["tmp"], f"fabrikam-{len(SENT_WITH)}", [leaf, *send], key)  # type: ignore[arg-type]
    return tls_context(TlsRole.S2S_CLIENT, *files, lab["tmp"] / "trust.crt")  # type: ignore[operator]


def test_a_good_chain_with_its_intermediate_is_accepted(lab: dict[str, object]) -> None:
    inter: selfsigned.Authority = lab["intermediate"]  # type: ignore[assignment]
    client = client_presenting(lab, inter, send=[inter.certificate])
    _, server_side = handshake(client, lab["server"])  # type: ignore[arg-type]
    assert verdict_on(server_side, lab["server"])("fabrikam.test") is None  # type: ignore[arg-type, operator]


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("untrusted", "untrusted issuer"),
        ("missing intermediate", "untrusted issuer"),
        ("expired", "expired on"),
        ("another name", "name mismatch"),
    ],
)
def test_an_invalid_certificate_passes_tls_and_is_refused_by_the_verdict(
    lab: dict[str, object], case: str, cause: str
) -> None:
    inter: selfsigned.Authority = lab["intermediate"]  # type: ignore[assignment]
    if case == "untrusted":
        client = client_presenting(lab, lab["stranger"], send=[])  # type: ignore[arg-type]
    elif case == "missing intermediate":
        client = client_presenting(lab, inter, send=[])
    elif case == "expired":
        client = client_presenting(lab, lab["root"], send=[], not_before=NOW - dt.timedelta(days=30),  # type: ignore[arg-type]
                                   not_after=NOW - dt.timedelta(days=1))
    else:
        client = client_presenting(lab, lab["root"], send=[])  # type: ignore[arg-type]
    _, server_side = handshake(client, lab["server"])  # type: ignore[arg-type]
    domain = "litware.test" if case == "another name" else "fabrikam.test"
    problem = verdict_on(server_side, lab["server"])(domain)  # type: ignore[arg-type, operator]
    assert problem is not None and problem.startswith(cause), problem


def test_the_outbound_side_judges_the_server_certificate_the_same_way(lab: dict[str, object]) -> None:
    """The S2S client context (chain building skipped too) lets an untrusted server through TLS;
    the verdict refuses it."""
    tmp: Path = lab["tmp"]  # type: ignore[assignment]
    stranger: selfsigned.Authority = lab["stranger"]  # type: ignore[assignment]
    key = selfsigned.new_ec_key()
    files = write_pair(tmp, "rogue", [selfsigned.issue(stranger, key.public_key(), ["contoso.test"])], key)
    rogue_server = tls_context(TlsRole.S2S_SERVER, *files, tmp / "trust.crt")
    client = client_presenting(lab, lab["root"], send=[])  # type: ignore[arg-type]
    client_side, _ = handshake(client, rogue_server)
    problem = verdict_on(client_side, client)("contoso.test")  # type: ignore[operator]
    assert problem is not None and problem.startswith("untrusted issuer"), problem
