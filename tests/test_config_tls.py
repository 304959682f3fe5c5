"""TLS keys of the configuration (issue 5): ``[edge] internal-tls`` and its files, ``[gateway]
sip-tls-listen`` and ``channel-certificate``/``-key`` — refused combinations name their rule
(``config.check_rules``), and ``gateway.tls.gateway_tls`` turns the keys into listeners/contexts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeproxy.cli import main
from edgeproxy.config import EdgeConfig, load_config, parse_config
from edgeproxy.errors import ConfigError
from edgeproxy.gateway.tls import gateway_tls
from fixtures.private_ca import PrivateCa


def parse(text: str, base_dir: Path | str = ".") -> EdgeConfig:
    return parse_config(text, source="test.toml", base_dir=str(base_dir))


def test_the_embedded_default_has_no_channel_tls_and_derives_sip_tls() -> None:
    config = load_config()
    assert config.edge.internal_tls is False
    assert (config.edge.internal_certificate, config.edge.internal_key, config.edge.internal_trust) == (None,) * 3
    assert config.gateway.sip_tls_listen is None
    assert (config.gateway.channel_certificate, config.gateway.channel_key) == (None, None)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ('[edge]\ninternal-listen = "0.0.0.0:23456"\n',
         r"edge.internal-listen 0.0.0.0:23456 is not a loopback address: set \[edge\] internal-tls = true"),
        ('[edge]\ninternal-listen = "10.1.2.3:23456"\n', "edge.internal-listen 10.1.2.3:23456 is not a loopback"),
        ('[edge]\ninternal-listen = "edge.contoso.test:23456"\n', "edge.internal-listen edge.contoso.test:23456 is not a loopback"),
        ('[gateway]\nedge-address = "192.0.2.7:23456"\n',
         r"gateway.edge-address 192.0.2.7:23456 is not a loopback address: set \[edge\] internal-tls"),
        ('[gateway]\nedge-address = "nowhere"\n', "gateway.edge-address 'nowhere' is not host:port"),
        ('[edge]\ninternal-tls = true\n[tls]\ntrust = ""\n',
         r"edge.internal-tls needs trust anchors in edge.internal-trust \(or tls.trust\)"),
        ('[edge]\ninternal-tls = true\ninternal-certificate = "i.pem"\n',
         "edge.internal-certificate and edge.internal-key go together"),
        ('[edge]\ninternal-tls = true\n[gateway]\nchannel-key = "g.key"\n',
         "gateway.channel-certificate and gateway.channel-key go together"),
        ('[gateway]\nchannel-certificate = "g.pem"\nchannel-key = "g.key"\n',
         r"gateway.channel-certificate is set but \[edge\] internal-tls is false: it would have no effect"),
        ('[edge]\ninternal-trust = "ca.pem"\n', r"edge.internal-trust is set but \[edge\] internal-tls is false"),
        ('[gateway]\nsip-listen = ["127.0.0.1:5060", "127.0.0.2:5060"]\nsip-tls-listen = ["127.0.0.1:5061"]\n',
         "gateway.sip-tls-listen has 1 addresses for 2 in gateway.sip-listen"),
        ('[gateway]\nsip-listen = ["127.0.0.1:5060"]\nsip-tls-listen = ["127.0.0.1:5060"]\n',
         "gateway.sip-tls-listen 127.0.0.1:5060 is also in gateway.sip-listen: TCP already listens there"),
        ('[gateway]\nsip-listen = ["127.0.0.1:65535"]\n',
         r"gateway.sip-listen 127.0.0.1:65535: port \+ 1 for SIP over TLS is not a port; set gateway.sip-tls-listen"),
    ],
)
def test_refused_combinations_name_their_rule(text: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rf"^test.toml: {rule}"):
        parse(text)


@pytest.mark.parametrize(
    "text",
    [
        '[edge]\ninternal-listen = "10.1.2.3:23456"\ninternal-tls = true\n',
        '[edge]\ninternal-listen = "[::1]:23456"\n',
        '[edge]\ninternal-listen = "localhost:23456"\n',
        '[edge]\ninternal-listen = "127.0.0.9:23456"\n[gateway]\nedge-address = "127.0.0.9:23456"\n',
        '[edge]\ninternal-tls = true\ninternal-trust = "internal-ca.pem"\ninternal-certificate = "i.pem"\n'
        'internal-key = "i.key"\n[tls]\ntrust = ""\n[gateway]\nchannel-certificate = "g.pem"\nchannel-key = "g.key"\n',
        '[gateway]\nsip-listen = ["127.0.0.1:65535"]\nsip-tls-listen = []\n',
        '[gateway]\nsip-listen = ["127.0.0.1:5060", "127.0.0.2:5060"]\nsip-tls-listen = ["127.0.0.1:5071", "127.0.0.2:5071"]\n',
    ],
)
def test_accepted_combinations(text: str) -> None:
    parse(text)


def test_config_validate_reports_the_rule_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edgeproxy.toml"
    path.write_text('[edge]\ninternal-listen = "0.0.0.0:23456"\n')
    assert main(["config", "validate", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"edgeproxy: {path}: edge.internal-listen 0.0.0.0:23456 is not a loopback address" in err


def _with_certificate(tmp_path: Path) -> PrivateCa:
    pki = PrivateCa(tmp_path)
    pki.write_ca()
    pki.write_leaf("edge", "gateway.contoso.test", "127.0.0.105")
    return pki


TLS = '[tls]\ncertificate = "edge.pem"\nkey = "edge.key"\ntrust = "ca.pem"\n'


def test_sip_tls_is_the_sip_port_plus_one_when_the_certificate_exists(tmp_path: Path) -> None:
    _with_certificate(tmp_path)
    tls = gateway_tls(parse(TLS + '[gateway]\nsip-listen = ["127.0.0.105:5060"]\n', tmp_path))
    assert tls.sip is not None and (tls.sip.host, tls.sip.port) == ("127.0.0.105", 5061)
    assert tls.channel is None  # no [edge] internal-tls


def test_without_a_certificate_the_gateway_serves_udp_and_tcp_only(tmp_path: Path) -> None:
    tls = gateway_tls(parse('[gateway]\nsip-listen = ["127.0.0.105:5060"]\n', tmp_path))
    assert tls.sip is None


def test_an_explicit_sip_tls_listen_is_used_and_an_empty_one_means_no_tls(tmp_path: Path) -> None:
    _with_certificate(tmp_path)
    explicit = gateway_tls(parse(TLS + '[gateway]\nsip-listen = ["127.0.0.105:5060"]\nsip-tls-listen = ["127.0.0.105:5071"]\n',
                                 tmp_path))
    assert explicit.sip is not None and explicit.sip.port == 5071
    assert gateway_tls(parse(TLS + '[gateway]\nsip-tls-listen = []\n', tmp_path)).sip is None


def test_an_explicit_sip_tls_listen_without_a_certificate_refuses_to_start(tmp_path: Path) -> None:
    config = parse('[gateway]\nsip-listen = ["127.0.0.105:5060"]\nsip-tls-listen = ["127.0.0.105:5061"]\n', tmp_path)
    with pytest.raises(ConfigError, match="gateway.sip-tls-listen needs the \\[tls\\] certificate and key"):
        gateway_tls(config)


def test_channel_tls_contexts_come_from_the_configured_files(tmp_path: Path) -> None:
    pki = _with_certificate(tmp_path)
    pki.write_leaf("gw", "gateway.contoso.test")
    config = parse('[edge]\ninternal-tls = true\n' + TLS + '[gateway]\nchannel-certificate = "gw.pem"\nchannel-key = "gw.key"\n',
                   tmp_path)
    tls = gateway_tls(config)
    assert tls.channel is not None and tls.channel.check_hostname
    missing = parse('[edge]\ninternal-tls = true\n' + TLS + '[gateway]\nchannel-certificate = "no.pem"\nchannel-key = "gw.key"\n',
                    tmp_path)
    with pytest.raises(ConfigError, match="gateway.channel-certificate .*no.pem does not exist"):
        gateway_tls(missing)
