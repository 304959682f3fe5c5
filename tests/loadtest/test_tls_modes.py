"""The harness' TLS modes (issue 8): ``starttls-dialback`` (STARTTLS, then XEP-0220 dialback, the
partner listener answering ``db:verify`` over TLS) and ``starttls-sasl`` (STARTTLS, then SASL
EXTERNAL, XEP-0178, with a certificate per simulated domain from a private CA).

Each mode runs against an in-process edgeproxy (partner rows 13 and 2 for the simulated domains)
and against a real Prosody 0.12 (``starttls`` mode: TLS required, dialback; ``secure`` mode:
``s2s_secure_auth``, certificates checked both ways). Small scenarios; the checks are the ledger
(sent = delivered + bounced + lost, exact per outcome) and that every stream really ran TLS and the
wanted method, from the harness' stream records and the target's own log. Addresses: Prosody
127.0.0.80, partner listener 127.0.0.81, edge 127.0.0.82, dnsmasq 127.0.0.83.
"""

from __future__ import annotations

import io
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio
from cryptography import x509

from edgeproxy.loadtest import LoadTest, load_scenario, parse_scenario
from edgeproxy.loadtest.partner_tls import PartnerTls
from edgeproxy.loadtest.sink import DeliveryProbe
from edgeproxy.net.connector import ConnectorSettings
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import build_snapshot
from fixtures.dnsmasq import start_dnsmasq, xmpp_server
from fixtures.edges import build_edge, run_edge, s2s_contexts
from fixtures.pki import write_domain_certificates
from fixtures.ports import free_port
from fixtures.xmpp_servers import PASSWORD, start_prosody

PROSODY_ADDR = "127.0.0.80"
SIM_ADDR = "127.0.0.81"
EDGE_ADDR = "127.0.0.82"
DNS_ADDR = "127.0.0.83"
SIMS = ("sim1.test", "sim2.test")
REQ, NOS = Negotiation.REQUIRED, Negotiation.NOT_SUPPORTED


def private_pki(directory: Path, domains: tuple[str, ...]) -> Path:
    """``directory``, holding a private CA (``ca.crt``) and ``DOMAIN.crt``/``DOMAIN.key`` (DNS-ID)
    for each domain."""
    write_domain_certificates(directory, domains, "loadtest TLS modes CA")
    return directory


def tls_lines(security: str, pki: Path | None) -> str:
    lines = f'security = "{security}"\n'
    if pki is not None:
        lines += (f'certificate = "{pki}/{{domain}}.crt"\nkey = "{pki}/{{domain}}.key"\n'
                  f'trust = "{pki}/ca.crt"\n')
    return lines


def scenario_text(
    domain: str, target: tuple[str, int], sim_port: int, stanzas: int, security: str,
    pki: Path | None, mix: str, sink: str = "",
) -> str:
    return f"""
name = "tls-{security}"
[target]
domain = "{domain}"
host = "{target[0]}"
port = {target[1]}
[partners]
domains = {list(SIMS)!r}
streams-per-domain = 2
listen-host = "{SIM_ADDR}"
listen-port = {sim_port}
{tls_lines(security, pki)}
[traffic]
stanzas = {stanzas}
rate = 1000
duration = 20
drain = 4
{mix}
{sink}
"""


def mix(domain: str, *, headline: bool) -> str:
    """Cycle: 7 chats to bob (delivered), 1 chat to nobody (bounced), and optionally 1 headline
    to nobody (Prosody drops it silently: lost)."""
    text = f"""
[[traffic.mix]]
kind = "message"
to = "bob@{domain}"
weight = 7
[[traffic.mix]]
kind = "message"
to = "nobody@{domain}"
"""
    if headline:
        text += f'[[traffic.mix]]\nkind = "headline"\nto = "nobody@{domain}"\n'
    return text


def assert_balanced(result: dict, sent: int, outcome: tuple[int, int, int]) -> None:  # type: ignore[type-arg]
    assert result["sent"] == sent, result
    assert result["sent"] == result["delivered"] + result["bounced"] + result["lost"]
    assert (result["delivered"], result["bounced"], result["lost"]) == outcome, result
    assert len(result["lost_ids"]) == result["lost"]


def assert_tls_streams(result: dict, method: str) -> None:  # type: ignore[type-arg]
    streams = result["streams"]
    assert streams["ready"] == 4, streams
    assert streams["security"] in ("starttls-dialback", "starttls-sasl")
    assert set(streams["tls_versions"]) <= {"TLSv1.2", "TLSv1.3"}, streams["tls_versions"]
    assert sum(streams["tls_versions"].values()) == 4
    assert streams["auth_methods"] == {method: 4}, streams
    assert streams["tls_handshake_ms"]["max"] is not None
    assert sum(streams["inbound_tls_versions"].values()) >= 1, streams  # the target's streams to us


# -- scenario checks ------------------------------------------------------------------------------

BASE = """
[target]
domain = "contoso.test"
[partners]
count = 2
{partners}
[traffic]
stanzas = 1
[[traffic.mix]]
kind = "message"
to = "bob@contoso.test"
"""


def test_sasl_scenario_without_certificates_is_refused_naming_the_fields() -> None:
    text = BASE.format(partners='security = "starttls-sasl"\ncertificate = "/x/{domain}.crt"')
    with pytest.raises(msgspec.ValidationError, match=r"partners\.key, partners\.trust"):
        parse_scenario(text)


def test_tls_files_are_checked_per_domain_and_resolved_against_the_scenario(tmp_path: Path) -> None:
    pki = private_pki(tmp_path / "pki", ("sim1.test",))
    partners = 'security = "starttls-sasl"\ncertificate = "pki/{domain}.crt"\nkey = "pki/{domain}.key"\ntrust = "pki/ca.crt"'
    (tmp_path / "s.toml").write_text(BASE.format(partners=partners))
    with pytest.raises(msgspec.ValidationError, match=r"sim2\.test\.crt \(for sim2\.test\)"):
        load_scenario(tmp_path / "s.toml")
    (pki / "sim2.test.crt").write_bytes((pki / "sim1.test.crt").read_bytes())
    (pki / "sim2.test.key").write_bytes((pki / "sim1.test.key").read_bytes())
    scenario = load_scenario(tmp_path / "s.toml")
    assert scenario.partners.trust == str(tmp_path / "pki" / "ca.crt")


def test_plain_scenario_with_certificates_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="plain"):
        parse_scenario(BASE.format(partners='trust = "/etc/ssl/certs/ca-certificates.crt"'))


def test_dialback_mode_makes_its_own_certificate_per_domain(tmp_path: Path) -> None:
    test = LoadTest(parse_scenario(BASE.format(partners='security = "starttls-dialback"')))
    assert test.tls is not None and test.tls.generated
    assert test.tls.client("sim1.test") is test.tls.client("sim1.test")  # built once, kept
    assert test.tls.client("sim2.test") is not test.tls.client("sim1.test")


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[bytes, bytes]:
    """An in-memory TLS handshake; the DER certificates the client and the server presented."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_side=False)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("client", tls_client), ("server", tls_server)):
            try:
                obj.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    presented_by_client = tls_server.getpeercert(binary_form=True)
    presented_by_server = tls_client.getpeercert(binary_form=True)
    assert presented_by_client is not None and presented_by_server is not None
    return presented_by_client, presented_by_server


def dns_names(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_each_generated_certificate_names_its_domain_only() -> None:
    """A real partner's certificate names its own domain, not every simulated one: a certificate
    naming all of them costs the target memory per stream that grows with the run's size."""
    domains = tuple(f"sim{n}.test" for n in range(1, 6))
    tls = PartnerTls.generate(domains, None)
    as_client, as_server = handshake(tls.client("sim2.test"), tls.server("sim4.test"))
    assert dns_names(as_client) == ["sim2.test"]
    assert dns_names(as_server) == ["sim4.test"]
    # Outbound and inbound, a domain presents the same certificate; every one has the same issuer.
    again_as_client, _ = handshake(tls.client("sim4.test"), tls.server("sim4.test"))
    assert again_as_client == as_server
    issuers = {x509.load_der_x509_certificate(d).issuer for d in (as_client, as_server)}
    assert len(issuers) == 1


# -- against edgeproxy ----------------------------------------------------------------------------


class SplitDelivery:
    """Everything to the harness' probe except stanzas for carol, which vanish (lost)."""

    def __init__(self, probe: DeliveryProbe) -> None:
        self.probe = probe

    async def deliver(self, item) -> None:  # type: ignore[no-untyped-def]
        if not item.to_jid.startswith("carol@"):
            await self.probe.deliver(item)


async def run_against_edge(tmp_path: Path, security: str, row: Partner, scenario_pki: bool) -> dict:  # type: ignore[type-arg]
    pki = private_pki(tmp_path / "pki", ("contoso.test", *SIMS))
    edge_port, sim_port = free_port(EDGE_ADDR), free_port(SIM_ADDR)
    records = xmpp_server("contoso.test", EDGE_ADDR, edge_port)
    for sim in SIMS:
        records += xmpp_server(sim, SIM_ADDR, sim_port)
    dns = start_dnsmasq(tmp_path / "dns", records, address=DNS_ADDR)
    carol = '[[traffic.mix]]\nkind = "message"\nto = "carol@contoso.test"\n'
    try:
        text = scenario_text("contoso.test", (EDGE_ADDR, edge_port), sim_port, 270, security,
                             pki if scenario_pki else None, mix("contoso.test", headline=False) + carol)
        progress = io.StringIO()
        test = LoadTest(parse_scenario(text), progress=progress)
        config = Configuration(
            gateway=GatewaySettings(dialback_secret="edge-secret"),
            partners=(row,),
            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip="sip:bob@contoso.test"), User(sip="sip:carol@contoso.test")),
        )
        snapshot = build_snapshot(config, ["contoso.test"])
        edge_files = (pki / "contoso.test.crt", pki / "contoso.test.key", pki / "ca.crt")
        edge = build_edge(lambda: snapshot, SplitDelivery(test.delivery_probe()),
                          ConnectorSettings(resolver=(dns.address, dns.port), timeout=10),
                          tls=s2s_contexts(*edge_files))
        async with trio.open_nursery() as nursery:
            await test.start_listener(nursery)
            await run_edge(nursery, edge, EDGE_ADDR, edge_port)
            result = await test.run()
            nursery.cancel_scope.cancel()
        result["progress_text"] = progress.getvalue()
        return result
    finally:
        dns.stop()


# Cycle of 9 (bob×7, nobody, carol interleaved); 270 = 30 cycles.
EDGE_OUTCOME = (210, 30, 30)


async def test_starttls_dialback_against_edgeproxy_row_13(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeproxy")
    row = Partner(domain=SIMS[0], additional_domains=SIMS[1:], tls=REQ, sasl=NOS, dialback=True,
                  type=PartnerType.FEDERATED)
    with trio.fail_after(60):
        # No certificates in the scenario: the harness makes a throw-away one (dialback does
        # not need the edge to trust it).
        result = await run_against_edge(tmp_path, "starttls-dialback", row, scenario_pki=False)
    assert_balanced(result, 270, EDGE_OUTCOME)
    assert all(int(i[2:]) % 9 == 2 for i in result["lost_ids"])  # carol: 3rd in the cycle
    assert_tls_streams(result, "tls-dialback")
    streams = result["streams"]
    # The edge verified our keys with db:verify on the partner listener (over TLS: its row
    # requires TLS on the verification stream too), and its reply streams used TLS dialback.
    assert streams["db_verify_answers"].get("valid", 0) >= 2 and "invalid" not in streams["db_verify_answers"]
    assert streams["inbound_auth_methods"] == {"tls-dialback": 2}, streams
    assert "inbound sim1.test -> contoso.test authenticated by tls-dialback" in caplog.text
    assert "authenticated by tcp-dialback" not in caplog.text
    # The progress line (a terminal gets it on stderr): its last state, lost stanzas unfilled.
    last = result["progress_text"].rsplit("\r", 1)[-1]
    assert last.startswith("[" + "#" * 21 + "...] done") and "outstanding 30" in last, last


async def test_starttls_sasl_against_edgeproxy_row_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeproxy")
    row = Partner(domain=SIMS[0], additional_domains=SIMS[1:], tls=REQ, sasl=REQ, dialback=False,
                  type=PartnerType.FEDERATED)
    with trio.fail_after(60):
        result = await run_against_edge(tmp_path, "starttls-sasl", row, scenario_pki=True)
    assert_balanced(result, 270, EDGE_OUTCOME)
    assert_tls_streams(result, "sasl-over-tls")
    streams = result["streams"]
    # The edge's reply stream (bounces) authenticated to our listener by SASL EXTERNAL too.
    assert streams["inbound_auth_methods"] == {"sasl-over-tls": 2}, streams
    assert streams["dialback_verifications"] == 0 and streams["db_verify_answers"] == {}
    assert "inbound sim2.test -> contoso.test authenticated by sasl-over-tls" in caplog.text
    assert "dialback" not in caplog.text.replace("dialback_secret", "")


async def test_starttls_sasl_refuses_a_target_its_trust_does_not_vouch_for(tmp_path: Path) -> None:
    """The harness checks the target's certificate (XEP-0178 §3): with another CA as trust, no
    stream is set up and the cause is named."""
    row = Partner(domain=SIMS[0], additional_domains=SIMS[1:], tls=REQ, sasl=REQ, dialback=False,
                  type=PartnerType.FEDERATED)
    private_pki(tmp_path / "other", ())
    pki = private_pki(tmp_path / "pki", ("contoso.test", *SIMS))
    (pki / "ca.crt").write_bytes((tmp_path / "other" / "ca.crt").read_bytes())  # the wrong CA
    with trio.fail_after(60):
        result = await run_against_edge_with_pki(tmp_path, row, pki)
    streams = result["streams"]
    assert streams["ready"] == 0 and result["sent"] == 0
    assert len(streams["setup_errors"]) == 4
    assert all("untrusted issuer" in e for e in streams["setup_errors"]), streams["setup_errors"]


async def run_against_edge_with_pki(tmp_path: Path, row: Partner, pki: Path) -> dict:  # type: ignore[type-arg]
    """The edge keeps a certificate from its own CA; the scenario trusts ``pki/ca.crt``."""
    edge_pki = private_pki(tmp_path / "edge", ("contoso.test",))
    edge_port, sim_port = free_port(EDGE_ADDR), free_port(SIM_ADDR)
    text = scenario_text("contoso.test", (EDGE_ADDR, edge_port), sim_port, 10, "starttls-sasl", pki,
                         mix("contoso.test", headline=False))
    test = LoadTest(parse_scenario(text))
    snapshot = build_snapshot(
        Configuration(gateway=GatewaySettings(dialback_secret="s"), partners=(row,),
                      policies=(AccessPolicy(identity="global", xmpp=True, federation=True),)),
        ["contoso.test"],
    )
    files = (edge_pki / "contoso.test.crt", edge_pki / "contoso.test.key", edge_pki / "ca.crt")
    edge = build_edge(lambda: snapshot, test.delivery_probe(), ConnectorSettings(timeout=5),
                      tls=s2s_contexts(*files))
    async with trio.open_nursery() as nursery:
        await run_edge(nursery, edge, EDGE_ADDR, edge_port)
        result = await test.run()
        nursery.cancel_scope.cancel()
    return result


# -- against Prosody ------------------------------------------------------------------------------


@dataclass
class ProsodyRun:
    result: dict  # type: ignore[type-arg]
    log: str


@asynccontextmanager
async def prosody_lab(tmp_path: Path, mode: str) -> AsyncIterator[tuple[str, int, int, int, Path]]:
    """dnsmasq + Prosody (fabrikam.test, ``mode``) with certificates from a private CA that also
    issued the simulated domains' certificates; yields (log path, s2s, c2s, sim port, pki)."""
    pki = private_pki(tmp_path / "pki", ("fabrikam.test", *SIMS))
    s2s, c2s, sim_port = free_port(PROSODY_ADDR), free_port(PROSODY_ADDR), free_port(SIM_ADDR)
    records = xmpp_server("fabrikam.test", PROSODY_ADDR, s2s)
    for sim in SIMS:
        records += xmpp_server(sim, SIM_ADDR, sim_port)
    dns = start_dnsmasq(tmp_path / "dns", records, address=DNS_ADDR)
    try:
        prosody = start_prosody(
            "fabrikam.test", PROSODY_ADDR, (dns.address, dns.port), mode=mode, c2s_port=c2s, s2s_port=s2s,
            certs=(pki / "fabrikam.test.crt", pki / "fabrikam.test.key", pki / "ca.crt"),
        )
    except BaseException:
        dns.stop()
        raise
    try:
        yield prosody, s2s, c2s, sim_port, pki  # type: ignore[misc]
    except BaseException:
        print(prosody.log_text()[-8000:])
        raise
    finally:
        prosody.stop()
        dns.stop()


async def run_against_prosody(tmp_path: Path, mode: str, security: str, pki_in_scenario: bool) -> ProsodyRun:
    async with prosody_lab(tmp_path, mode) as (prosody, s2s, c2s, sim_port, pki):
        sink = f'[sink]\nkind = "c2s"\nhost = "{PROSODY_ADDR}"\nport = {c2s}\nuser = "bob"\npassword = "{PASSWORD}"\n'
        text = scenario_text("fabrikam.test", (PROSODY_ADDR, s2s), sim_port, 270, security,
                             pki if pki_in_scenario else None, mix("fabrikam.test", headline=True), sink)
        with trio.fail_after(60):
            result = await LoadTest(parse_scenario(text)).run()
        log = prosody.log_text()  # type: ignore[attr-defined]
    return ProsodyRun(result, log)


def prosody_s2s_sessions(log: str) -> tuple[dict[str, bool], dict[str, bool]]:
    """Prosody's completed incoming and outgoing s2s sessions (by session id, from its log),
    each with whether Prosody logged it as encrypted."""
    encrypted, incoming, outgoing = set(), set(), set()
    for line in log.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        session, message = parts[0].rsplit(" ", 1)[-1], parts[2]
        if message.startswith("Stream encrypted (TLS"):
            encrypted.add(session)
        elif message.startswith("Incoming s2s connection") and message.endswith("complete"):
            incoming.add(session)
        elif message.startswith("Outgoing s2s connection") and message.endswith("complete"):
            outgoing.add(session)
    return {s: s in encrypted for s in incoming}, {s: s in encrypted for s in outgoing}


# Cycle of 9: bob, nobody-chat, headline, bob×6 (interleaved); 270 = 30 cycles. Prosody bounces
# the chat to an unknown user and drops the headline silently: reported lost, by id.
PROSODY_OUTCOME = (210, 30, 30)


async def test_starttls_dialback_against_prosody_starttls_mode(tmp_path: Path) -> None:
    run = await run_against_prosody(tmp_path, "starttls", "starttls-dialback", pki_in_scenario=False)
    result = run.result
    assert_balanced(result, 270, PROSODY_OUTCOME)
    assert all(int(i[2:]) % 9 == 2 for i in result["lost_ids"])
    assert_tls_streams(result, "tls-dialback")
    # Prosody (s2s_require_encryption) verified our keys over TLS on the partner listener.
    assert result["streams"]["dialback_verifications"] >= 1
    streams = result["streams"]
    # Prosody (s2s_require_encryption) verified our keys with db:verify on the partner listener,
    # over a stream it encrypted itself, and sent its bounces over TLS dialback as well.
    assert streams["db_verify_answers"].get("valid", 0) >= 2 and "invalid" not in streams["db_verify_answers"]
    assert streams["inbound_auth_methods"] == {"tls-dialback": 2}, streams
    incoming, outgoing = prosody_s2s_sessions(run.log)
    assert len(incoming) == 4 and all(incoming.values()), incoming
    assert outgoing and all(outgoing.values()), outgoing


async def test_starttls_sasl_against_prosody_secure_mode(tmp_path: Path) -> None:
    run = await run_against_prosody(tmp_path, "secure", "starttls-sasl", pki_in_scenario=True)
    result = run.result
    assert_balanced(result, 270, PROSODY_OUTCOME)
    assert_tls_streams(result, "sasl-over-tls")
    streams = result["streams"]
    assert streams["dialback_verifications"] == 0 and streams["db_verify_answers"] == {}
    # Prosody's reply streams to the partner listener authenticated by SASL EXTERNAL as well.
    assert streams["inbound_auth_methods"] == {"sasl-over-tls": 2}, streams
    incoming, _ = prosody_s2s_sessions(run.log)
    assert len(incoming) == 4 and all(incoming.values()), incoming
    for sim in SIMS:
        assert run.log.count(f"Accepting SASL EXTERNAL identity from {sim}") == 2
