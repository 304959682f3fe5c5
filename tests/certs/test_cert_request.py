import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeproxy.certs import selfsigned
from edgeproxy.cli import main
from fixtures.configs import write_config
from fixtures.pki import TestPki, write_pem
from fixtures.tools import require_tool


def _openssl_text(openssl: str, csr: Path) -> str:
    result = subprocess.run(
        [openssl, "req", "-in", str(csr), "-verify", "-noout", "-text"],
        capture_output=True, text=True, check=True,
    )
    assert "verify OK" in result.stdout + result.stderr
    return result.stdout


def _request(tmp_path: Path, *extra: str) -> tuple[Path, Path, int]:
    config = write_config(tmp_path)
    csr, key = tmp_path / "edge.csr", tmp_path / "edge.key"
    status = main([
        "cert", "request", "--config", str(config), "--friendly-name", "Contoso Edge 2025",
        "--org", "Contoso Ltd", "--ou", "IT", "--country", "US", "--state", "Washington",
        "--city", "Redmond", "--out", str(csr), "--key-out", str(key), *extra,
    ])
    return csr, key, status


def test_csr_verified_by_openssl_has_subject_sans_and_key_size(tmp_path):
    openssl = require_tool("openssl", "openssl")
    csr, _, status = _request(tmp_path, "--san", "webconf.contoso.test")
    assert status == 0
    text = _openssl_text(openssl, csr)
    subject = re.search(r"Subject: (.*)", text).group(1)
    for part in ("C = US", "ST = Washington", "L = Redmond", "O = Contoso Ltd", "OU = IT", "CN = access.contoso.test"):
        assert part in subject
    sans = re.search(r"Subject Alternative Name:.*\n\s*(.*)", text).group(1)
    assert [s.strip() for s in sans.split(",")] == [
        "DNS:access.contoso.test", "DNS:sip.contoso.test", "DNS:sip.northwind.test",
        "DNS:contoso.test", "DNS:northwind.test", "DNS:webconf.contoso.test",
    ]
    assert "Public-Key: (2048 bit)" in text
    assert "TLS Web Server Authentication" in text
    assert "Contoso Edge 2025" in text  # friendly name as unstructuredName


def test_csr_key_size_option_gives_3072_bit_key(tmp_path):
    openssl = require_tool("openssl", "openssl")
    csr, _, status = _request(tmp_path, "--key-size", "3072")
    assert status == 0
    assert "Public-Key: (3072 bit)" in _openssl_text(openssl, csr)


def test_no_xmpp_domains_leaves_bare_domains_out_of_the_csr(tmp_path):
    openssl = require_tool("openssl", "openssl")
    csr, _, status = _request(tmp_path, "--no-xmpp-domains")
    assert status == 0
    text = _openssl_text(openssl, csr)
    assert "DNS:sip.contoso.test" in text
    assert "DNS:contoso.test" not in text and "DNS:northwind.test" not in text


def test_key_is_written_0600_as_unencrypted_pkcs8_pem(tmp_path):
    openssl = require_tool("openssl", "openssl")
    _, key, _ = _request(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    subprocess.run([openssl, "pkey", "-in", str(key), "-noout", "-passin", "pass:"], check=True)


def test_key_is_encrypted_with_the_passphrase_file(tmp_path):
    openssl = require_tool("openssl", "openssl")
    phrase = tmp_path / "phrase"
    phrase.write_text("correct horse\n")
    _, key, status = _request(tmp_path, "--passphrase-file", str(phrase))
    assert status == 0
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    ok = subprocess.run([openssl, "pkey", "-in", str(key), "-noout", "-passin", f"file:{phrase}"])
    assert ok.returncode == 0
    wrong = subprocess.run(
        [openssl, "pkey", "-in", str(key), "-noout", "-passin", "pass:wrong"], capture_output=True
    )
    assert wrong.returncode != 0


def test_request_refuses_to_overwrite_an_existing_key(tmp_path, capsys):
    _, key, _ = _request(tmp_path)
    before = key.read_bytes()
    _, _, status = _request(tmp_path)
    assert status == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert key.read_bytes() == before


def test_bad_country_code_is_a_usage_error(tmp_path, capsys):
    config = write_config(tmp_path)
    status = main([
        "cert", "request", "--config", str(config), "--friendly-name", "x", "--country", "USA",
        "--out", str(tmp_path / "a.csr"), "--key-out", str(tmp_path / "a.key"),
    ])
    assert status == 2
    assert "two-letter" in capsys.readouterr().err
    assert not (tmp_path / "a.key").exists()


def test_certificate_signed_from_the_csr_by_a_test_ca_imports_cleanly(tmp_path, capsys):
    csr_path, key, _ = _request(tmp_path)
    pki = TestPki()
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    # like a public CA today: names copied from the CSR, serverAuth only (no clientAuth)
    issued = selfsigned.sign_csr(pki.intermediate, csr, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    cert = write_pem(tmp_path / "issued.pem", issued)
    chain = write_pem(tmp_path / "chain-in.pem", pki.intermediate.certificate)
    config = tmp_path / "edgeproxy.toml"
    capsys.readouterr()
    status = main(["cert", "import", str(cert), "--key", str(key), "--chain", str(chain), "--config", str(config)])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.err == ""  # no warning either
    installed = tmp_path / "certs" / "edge.pem"
    assert installed.read_bytes().startswith(cert.read_bytes())
    assert stat.S_IMODE((tmp_path / "certs" / "edge.key").stat().st_mode) == 0o600
    # `cert show` recognises the key's friendly name and the covered domains
    assert main(["cert", "show", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "friendly name: Contoso Edge 2025" in shown
    assert "covered: contoso.test" in shown and "covered: northwind.test" in shown
    assert "NOT covered" not in shown


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in a child process."""
    return subprocess.run([sys.executable, "-m", "edgeproxy", *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("san", "rule"),
    [
        ("bad name", '"bad name": a DNS label may contain only letters, digits and hyphens (RFC 1035 §2.3.1)'),
        ("192.0.2.7", '"192.0.2.7": an IP address is not a domain name'),
        ("a.*.contoso.test", '"a.*.contoso.test": a wildcard \'*\' may only be the whole leftmost label'),
        ("*.test", '"*.test": a wildcard must stand over at least two labels'),
    ],
)
def test_a_bad_extra_name_is_a_usage_error_naming_the_rule_and_writes_nothing(tmp_path, san, rule):
    config = write_config(tmp_path)
    csr, key = tmp_path / "edge.csr", tmp_path / "edge.key"
    result = _cli("cert", "request", "--config", str(config), "--friendly-name", "x", "--san", san,
                  "--out", str(csr), "--key-out", str(key))
    assert result.returncode == 2
    assert result.stderr.startswith(f"edgeproxy: --san {rule}")
    assert result.stderr.count("\n") == 1  # one line: no traceback, no second message
    assert not csr.exists() and not key.exists()
    result = _cli("cert", "self-signed", "--config", str(config), "--san", san, "--out-dir", str(tmp_path / "ss"))
    assert result.returncode == 2 and f"edgeproxy: --san {rule}" in result.stderr
    assert not (tmp_path / "ss").exists()


def test_a_wildcard_and_an_internationalized_name_go_into_the_csr_in_canonical_form(tmp_path):
    config = write_config(tmp_path)
    csr = tmp_path / "edge.csr"
    result = _cli("cert", "request", "--config", str(config), "--friendly-name", "x",
                  "--san", "*.Contoso.TEST", "--san", "Bücher.test", "--no-xmpp-domains",
                  "--out", str(csr), "--key-out", str(tmp_path / "edge.key"))
    assert result.returncode == 0, result.stderr
    request = x509.load_pem_x509_csr(csr.read_bytes())
    sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "access.contoso.test", "sip.contoso.test", "sip.northwind.test", "*.contoso.test", "xn--bcher-kva.test",
    ]


def test_request_self_signed_and_show_print_json(tmp_path):
    config = write_config(tmp_path, domains=["contoso.test"])
    csr, key = tmp_path / "edge.csr", tmp_path / "edge.key"
    result = _cli("cert", "request", "--config", str(config), "--friendly-name", "Edge 1",
                  "--out", str(csr), "--key-out", str(key), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "csr": str(csr), "key": str(key), "key-size": 2048, "encrypted": False,
        "subject": "CN=access.contoso.test", "friendly-name": "Edge 1",
        "names": ["access.contoso.test", "sip.contoso.test", "contoso.test"],
    }
    out_dir = tmp_path / "ss"
    made = json.loads(_cli("cert", "self-signed", "--config", str(config), "--out-dir", str(out_dir), "--days", "30",
                           "--json").stdout)
    assert made["names"] == ["access.contoso.test", "sip.contoso.test", "contoso.test"] and made["days"] == 30
    assert Path(made["certificate"]).exists() and Path(made["ca-certificate"]).exists()
    shown = _cli("cert", "show", made["certificate"], "--config", str(config), "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["names"] == ["access.contoso.test", "sip.contoso.test", "contoso.test"]
    assert document["required"] == [{"name": "access.contoso.test", "covered": True},
                                    {"name": "contoso.test", "covered": True}]
    assert document["expired"] is False and 28 <= document["days-left"] <= 30
    assert document["chain"] == [] and document["friendly-name"] is None
