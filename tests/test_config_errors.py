"""``edgeproxy config validate`` says what is wrong in words: the file, the key and the rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy.config import parse_config


def validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``edgeproxy config validate`` on a file of ``text`` whose state lives in ``tmp_path``."""
    state = f'state-dir = "{tmp_path / "var"}"\n'
    text = text.replace("[edge]\n", f"[edge]\n{state}", 1) if "[edge]\n" in text else f"[edge]\n{state}{text}"
    path = tmp_path / "edgeproxy.toml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy", "config", "validate", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gateway]\nmax-queued = 0\n", "[gateway] max-queued: must be an integer ≥ 1, got 0"),
        ("[gateway]\nqueue-wait = 5000\n", "[gateway] queue-wait: must be a number ≤ 3600, got 5000"),
        ("[gateway]\noutage-bound = 0\n", "[gateway] outage-bound: must be a number > 0, got 0"),
        ('[gateway]\nmax-queued = "many"\n', '[gateway] max-queued: must be an integer, got "many"'),
        ("[edge]\ninternal-tls = 1\n", "[edge] internal-tls: must be true or false, got 1"),
        ('[edge]\nlisten = "0.0.0.0:5269"\n', '[edge] listen: must be a list [...], got "0.0.0.0:5269"'),
        ('[edge]\nlisten = ["5269"]\n',
         '[edge] listen (item 1): must be "HOST:PORT" (e.g. "127.0.0.1:5269", "[::1]:5269",'
         ' "edge.example.com:5269"), got "5269"'),
        ('[edge]\nlistn = ["0.0.0.0:5269"]\n', '[edge]: unknown key "listn" (did you mean listen?)'),
        ("[limit]\npreauth-per-ip = 3\n", 'unknown table or key "limit" at the top level (did you mean limits?)'),
    ],
)
def test_a_value_of_the_wrong_kind_is_named_by_file_table_key_and_rule(tmp_path, text, message):
    result = validate(tmp_path, text)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"edgeproxy: {tmp_path / 'edgeproxy.toml'}: {message}\n"
    assert "Expected `" not in result.stderr and "$." not in result.stderr  # no msgspec jargon


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[edge]\ndomains = ["bad domain"]\n',
         '[edge] domains: "bad domain": a DNS label may contain only letters, digits and hyphens (RFC 1035 §2.3.1)'),
        ('[edge]\ndomains = ["contoso.test", "1.2.3.4"]\n',
         '[edge] domains (item 2): "1.2.3.4": an IP address is not a domain name'),
        ('[edge]\nexternal-fqdn = "access..contoso.test"\n', '[edge] external-fqdn: "access..contoso.test": a DNS label cannot be empty'),
        ('[edge]\nlisten = ["edge_1.contoso.test:5269"]\n',
         '[edge] listen: "edge_1.contoso.test:5269": a DNS label may contain only letters, digits and hyphens'),
        ('[edge]\nlisten = ["127.0.0.1:70000"]\n', '[edge] listen: "127.0.0.1:70000": the port must be a number from 1 to 65535'),
        ('[gateway]\nsip-domains = ["x-.contoso.test"]\n', '[gateway] sip-domains: "x-.contoso.test": a DNS label cannot begin or end with a hyphen'),
        ('[dns]\nresolver = "dns.contoso.test"\n', '[dns] resolver: "dns.contoso.test": a resolver is an IP address'),
        ('[dns]\nresolver = "127.0.0.1:0"\n', '[dns] resolver: "127.0.0.1:0": the port must be a number from 1 to 65535'),
    ],
)
def test_a_name_that_breaks_a_rule_is_refused_with_the_rule(tmp_path, text, message):
    result = validate(tmp_path, text)
    assert result.returncode == 1
    assert result.stderr.startswith(f"edgeproxy: {tmp_path / 'edgeproxy.toml'}: {message}")


def test_a_valid_file_is_ok_and_its_domains_are_shown_in_canonical_form(tmp_path):
    result = validate(
        tmp_path,
        '[edge]\ndomains = ["Contoso.TEST", "Bücher.test."]\nlisten = ["[::1]:0", "localhost:5269"]\n'
        '[dns]\nresolver = "127.0.0.53"\n',
    )
    assert result.returncode == 0, result.stderr
    assert "OK (domains: contoso.test, xn--bcher-kva.test)" in result.stdout


def test_the_resolver_key_and_its_environment_override():
    config = parse_config('[dns]\nresolver = "[::1]:5353"\n', source="t.toml", base_dir=".")
    assert config.dns_resolver({}) == ("::1", 5353)
    assert config.dns_resolver({"EDGEPROXY_DNS_RESOLVER": "127.0.0.2"}) == ("127.0.0.2", 53)
    assert config.dns_resolver({"EDGEPROXY_DNS_RESOLVER": ""}) == ("::1", 5353)
    default = parse_config("", source="t.toml", base_dir=".")
    assert default.dns.resolver == "" and default.dns_resolver({}) is None
    with pytest.raises(Exception, match='EDGEPROXY_DNS_RESOLVER: "ns.test": a resolver is an IP address'):
        default.dns_resolver({"EDGEPROXY_DNS_RESOLVER": "ns.test"})


def test_the_embedded_default_has_the_resolver_key_empty(tmp_path):
    shown = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "config", "show-default"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert '[dns]\n' in shown and '\nresolver = ""\n' in shown
