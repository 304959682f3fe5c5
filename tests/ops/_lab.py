"""A small federation lab for the server-level ops tests: the real ``EdgeApp`` for contoso.test
(from a config file and a store, on 127.0.0.1 port 0) and scripted partner edges (in-process
``EdgeServer``s, real sockets) that send through their own router."""

from __future__ import annotations

import socket
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio

from edgeproxy.certs import selfsigned
from edgeproxy.certs.pem import certificates_pem, private_key_pem
from edgeproxy.net.connector import ConnectorSettings
from edgeproxy.net.delivery import Delivery, MemoryDelivery
from edgeproxy.net.edge import EdgeServer
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
)
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.policy.store import Store
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from fixtures.edges import build_edge, run_edge, s2s_contexts
from fixtures.sipauth import user as sip_user

REQ, NOS = Negotiation.REQUIRED, Negotiation.NOT_SUPPORTED
SASL_ROW = {"tls": REQ, "sasl": REQ, "dialback": False}
TCP_DIALBACK_ROW = {"tls": NOS, "sasl": NOS, "dialback": True}
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(frm: str, to: str, body: str = "hello", id: str = "m1") -> Element:
    return Element("message", NS_SERVER, {"from": frm, "to": to, "type": "chat", "id": id},
                   [Element("body", NS_SERVER, {}, [body])])


def partner(domain: str, port: int, row: dict[str, object]) -> Partner:
    return Partner(domain=domain, type=PartnerType.FEDERATED, proxy_fqdn=f"127.0.0.1:{port}", **row)  # type: ignore[arg-type]


def configuration(domain: str, users: tuple[str, ...], secret: str, *partners: Partner,
                  log_message_bodies: bool = False) -> Configuration:
    return Configuration(
        gateway=GatewaySettings(dialback_secret=secret, log_message_bodies=log_message_bodies),
        partners=partners,
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        # issue 14: every user has the test SIP password (MD5: what SIPp and baresip answer)
        users=tuple(sip_user(u, domain) for u in users),
    )


def write_store(state_dir: Path, config: Configuration) -> None:
    with Store.open(state_dir) as store, store.write() as tx:
        tx.replace_all(config)


@dataclass
class Certs:
    """A private CA and a certificate per domain, as files in ``directory``."""

    directory: Path
    authority: selfsigned.Authority = field(default_factory=lambda: selfsigned.make_authority("Lab CA"))

    def files(self, domain: str) -> tuple[Path, Path, Path]:
        cert, key = self.directory / f"{domain}.pem", self.directory / f"{domain}.key"
        if not cert.exists():
            private = selfsigned.new_ec_key()
            cert.write_bytes(certificates_pem([selfsigned.issue(self.authority, private.public_key(), [domain])]))
            key.write_bytes(private_key_pem(private))
        ca = self.directory / "ca.pem"
        ca.write_bytes(certificates_pem([self.authority.certificate]))
        return cert, key, ca

    def contexts(self, domain: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        return s2s_contexts(*self.files(domain))


@dataclass
class Peer:
    """A scripted partner: a real edge for ``domain`` whose stanzas we send through its router."""

    domain: str
    server: EdgeServer
    delivery: MemoryDelivery
    port: int
    holder: list[PolicySnapshot]
    telemetry: Telemetry

    def federate_with(self, domain: str, port: int, row: dict[str, object], users: tuple[str, ...]) -> None:
        config = configuration(self.domain, users, f"{self.domain}-secret", partner(domain, port, row))
        self.holder[0] = build_snapshot(config, [self.domain])

    async def send(self, stanza: Element) -> None:
        await self.server.router.send_from_local(stanza)

    def received(self) -> list[Delivery]:
        got = []
        while True:
            try:
                got.append(self.delivery._receive.receive_nowait())  # noqa: SLF001 - test peek
            except trio.WouldBlock:
                return got

    def stream_errors_received(self, condition: str) -> float:
        value = self.telemetry.metrics.value(
            "edgeproxy_stream_errors_total", side="received", condition=condition
        )
        return value or 0.0


async def start_peer(nursery: trio.Nursery, domain: str, certs: Certs | None = None) -> Peer:
    holder = [build_snapshot(configuration(domain, ("bob",), f"{domain}-secret"), [domain])]
    delivery = MemoryDelivery()
    telemetry = Telemetry()
    server = build_edge(lambda: holder[0], delivery, ConnectorSettings(attempt_delay=0.05, timeout=5),
                        tls=certs.contexts(domain) if certs else (None, None), telemetry=telemetry)
    return Peer(domain, server, delivery, await run_edge(nursery, server, "127.0.0.1"), holder, telemetry)


def write_config(
    directory: Path, *, admin_port: int = 0, listen_port: int = 0, certs: Certs | None = None,
    private_channel_ports: bool = False,
) -> Path:
    """An edgeproxy.toml for contoso.test on 127.0.0.1 (state in ``directory/state``)."""
    tls = ""
    if certs is not None:
        cert, key, ca = certs.files("contoso.test")
        tls = f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\ntrust = "{ca}"\n'
    else:
        tls = '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
    path = directory / "edgeproxy.toml"
    path.write_text(
        '[edge]\ndomains = ["contoso.test"]\n'
        f'listen = ["127.0.0.1:{listen_port}"]\nstate-dir = "state"\n'
        f"{tls}"
        f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
    )
    if private_channel_ports:
        # a `serve` process runs edge and gateway: not on the fixed defaults (23456 for the
        # channel, 5060 for SIP), so nothing else on this host can clash with it
        text = path.read_text().replace(
            'state-dir = "state"\n',
            f'state-dir = "state"\ninternal-listen = "127.0.0.1:{free_port()}"\n', 1)
        path.write_text(text + f'[gateway]\nsip-listen = ["127.0.0.1:{free_port()}"]\n')
    return path
