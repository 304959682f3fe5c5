import datetime as dt
import re
import stat

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeproxy.certs import selfsigned
from edgeproxy.cli import main
from fixtures.configs import snapshot_tree, write_config
from fixtures.pki import TestPki, write_pem

NAMES = ["access.contoso.test", "sip.contoso.test", "contoso.test", "northwind.test"]
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def edge(tmp_path):
    """A configured edge that already has a (self-signed) certificate installed."""
    config = write_config(tmp_path)
    assert main(["cert", "self-signed", "--config", str(config)]) == 0
    return config


def _import(config, cert, key, *extra):
    return main(["cert", "import", str(cert), "--key", str(key), "--config", str(config), *extra])


def _bad_case(name, pki, tmp_path):
    """(certificate file, key file, chain file) for one refusal case."""
    chain = write_pem(tmp_path / "chain.in", pki.intermediate.certificate)
    if name == "wrong key":
        cert, _ = pki.leaf(NAMES)
        return write_pem(tmp_path / "c.pem", cert), write_pem(tmp_path / "k.pem", selfsigned.new_ec_key()), chain
    if name == "expired":
        cert, key = pki.leaf(NAMES, not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=2))
    elif name == "not yet valid":
        cert, key = pki.leaf(NAMES, not_before=NOW + dt.timedelta(days=3), not_after=NOW + dt.timedelta(days=300))
    elif name == "missing XMPP domain":
        cert, key = pki.leaf(["access.contoso.test", "sip.contoso.test", "contoso.test"])
    elif name == "no serverAuth":
        cert, key = pki.leaf(NAMES, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    elif name == "chain out of order":
        cert, key = pki.leaf(NAMES)
        chain = write_pem(tmp_path / "chain.in", pki.root.certificate, pki.intermediate.certificate)
    else:
        raise AssertionError(name)
    return write_pem(tmp_path / "c.pem", cert), write_pem(tmp_path / "k.pem", key), chain


REFUSALS = {
    "wrong key": ["key-mismatch", "private key does not match"],
    "expired": ["(expired)", "certificate expired on"],
    "not yet valid": ["(not-yet-valid)", "not yet valid: valid from"],
    "missing XMPP domain": ["(missing-names)", "does not cover northwind.test"],
    "no serverAuth": ["(no-server-auth)", "lacks serverAuth", "has: clientAuth"],
    "chain out of order": ["(chain-order)", "chain out of order", "Test Root CA", "position 2"],
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_import_refuses_with_exact_cause_and_installs_nothing(case, edge, tmp_path, capsys):
    pki = TestPki()
    cert, key, chain = _bad_case(case, pki, _inbox(tmp_path))
    before = snapshot_tree(tmp_path / "certs"), snapshot_tree(tmp_path / "var")
    capsys.readouterr()
    assert _import(edge, cert, key, "--chain", str(chain)) == 1
    err = capsys.readouterr().err
    for needle in REFUSALS[case]:
        assert needle in err
    assert err.count("refused (") == 1  # exactly this cause, no collateral complaints
    assert "nothing was installed" in err
    assert (snapshot_tree(tmp_path / "certs"), snapshot_tree(tmp_path / "var")) == before
    assert not [p for p in (tmp_path / "certs").iterdir() if p.name.endswith(".tmp")]


def _inbox(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir(exist_ok=True)
    return inbox


def test_import_accepts_full_chain_in_one_file_without_client_auth(edge, tmp_path, capsys):
    pki = TestPki()
    cert, key = pki.leaf(NAMES, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    inbox = _inbox(tmp_path)
    full = write_pem(inbox / "fullchain.pem", cert, pki.intermediate.certificate)
    keyfile = write_pem(inbox / "k.pem", key)
    assert _import(edge, full, keyfile) == 0
    installed = (tmp_path / "certs" / "edge.pem").read_bytes()
    assert installed == full.read_bytes()
    assert (tmp_path / "certs" / "chain.pem").read_bytes() == write_pem(inbox / "x", pki.intermediate.certificate).read_bytes()
    assert stat.S_IMODE((tmp_path / "certs" / "edge.key").stat().st_mode) == 0o600
    assert "installed" in capsys.readouterr().out


def test_import_accepts_wildcard_for_sip_names_but_requires_each_domain(edge, tmp_path, capsys):
    pki = TestPki()
    # *.contoso.test covers access.contoso.test; the bare domains must still be listed
    cert, key = pki.leaf(["*.contoso.test", "contoso.test", "northwind.test"])
    inbox = _inbox(tmp_path)
    assert _import(edge, write_pem(inbox / "c.pem", cert), write_pem(inbox / "k.pem", key)) == 0


def test_import_without_key_uses_installed_key_and_refuses_mismatch(edge, tmp_path, capsys):
    pki = TestPki()
    cert, _ = pki.leaf(NAMES)
    inbox = _inbox(tmp_path)
    status = main(["cert", "import", str(write_pem(inbox / "c.pem", cert)), "--config", str(edge)])
    assert status == 1
    assert "key-mismatch" in capsys.readouterr().err


def test_import_of_encrypted_key_needs_the_passphrase(edge, tmp_path, capsys):
    config = edge
    csr, key = tmp_path / "r.csr", tmp_path / "r.key"
    phrase = tmp_path / "phrase"
    phrase.write_text("s3cret\n")
    assert main(["cert", "request", "--config", str(config), "--friendly-name", "e", "--out", str(csr),
                 "--key-out", str(key), "--passphrase-file", str(phrase)]) == 0
    from cryptography import x509

    pki = TestPki()
    issued = selfsigned.sign_csr(pki.intermediate, x509.load_pem_x509_csr(csr.read_bytes()))
    cert = write_pem(_inbox(tmp_path) / "c.pem", issued, pki.intermediate.certificate)
    capsys.readouterr()
    assert _import(config, cert, key) == 1
    assert "encrypted: pass --passphrase-file" in capsys.readouterr().err
    assert _import(config, cert, key, "--passphrase-file", str(phrase)) == 0
    # installed for the service: decrypted, 0600
    assert (tmp_path / "certs" / "edge.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_self_signed_refuses_to_replace_existing_certificate_without_force(edge, capsys):
    assert main(["cert", "self-signed", "--config", str(edge)]) == 1
    assert "use --force" in capsys.readouterr().err
    assert main(["cert", "self-signed", "--config", str(edge), "--force"]) == 0


def test_self_signed_out_dir_writes_ca_and_edge_certificate(tmp_path):
    config = write_config(tmp_path)
    out = tmp_path / "lab"
    assert main(["cert", "self-signed", "--config", str(config), "--out-dir", str(out)]) == 0
    from edgeproxy.certs.pem import read_certificates

    leaf = read_certificates(out / "edge.pem")[0]
    ca = read_certificates(out / "edge-ca.pem")[0]
    leaf.verify_directly_issued_by(ca)
    assert stat.S_IMODE((out / "edge-ca.key").stat().st_mode) == 0o600
    assert not (tmp_path / "certs").exists()


def test_show_reports_uncovered_domain_and_days_left(tmp_path, capsys):
    config = write_config(tmp_path)
    pki = TestPki()
    cert, _ = pki.leaf(["access.contoso.test", "contoso.test"], days=10)
    path = write_pem(tmp_path / "c.pem", cert)
    assert main(["cert", "show", str(path), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "covered: contoso.test" in out
    assert "NOT covered: northwind.test" in out
    assert re.search(r"\((9|10) days left\)", out)


def test_show_without_certificate_fails_with_hint(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["cert", "show", "--config", str(config)]) == 1
    assert "edgeproxy cert self-signed" in capsys.readouterr().err
