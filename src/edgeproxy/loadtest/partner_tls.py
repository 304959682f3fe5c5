"""TLS material of the simulated partner domains: one client and one server SSL context each.

The contexts come from the edge's own builder (:func:`edgeproxy.certs.contexts.tls_context`, roles
``S2S_CLIENT`` / ``S2S_SERVER``): they present the domain's certificate in both directions (TLS
client certificate outbound, for SASL EXTERNAL, XEP-0178 §3) and accept any peer certificate at
the TLS layer, the verdict on it being the core's (RFC 6125 identity, chain to
``partners.trust``) through :func:`edgeproxy.certs.peer.peer_certificate_check`.

Files: ``partners.certificate`` / ``partners.key`` (``{domain}`` selects one file per domain, else
one certificate serves every simulated domain); contexts are then shared by every domain that uses
the same files, so a run with thousands of domains and one certificate builds two contexts.

``starttls-dialback`` without files gets a throw-away private CA (:mod:`edgeproxy.certs.selfsigned`)
and, like real partners, **one certificate per simulated domain naming that domain only**, sent
with the CA. A certificate naming every simulated domain would make each inbound stream of the
server under test hold a certificate that grows with the run (100 names at 10,000 streams), which
no real partner sends and which costs the target memory per stream. The certificates share one key
(an ECDSA P-256 signature per domain is the whole cost) and are issued on a domain's first use,
then kept with its two contexts for the run; their files exist only in a temporary directory while
a context loads. Without ``partners.trust`` that CA is also the trust (so no target certificate is
trusted: the listener offers dialback only).
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edgeproxy.certs import selfsigned
from edgeproxy.certs.contexts import TlsRole, tls_context
from edgeproxy.certs.pem import certificates_pem, private_key_pem
from edgeproxy.loadtest.scenario import Scenario, domain_file

#: The generated CA's name (what a target logs as the untrusted issuer of the partners).
GENERATED_CA_NAME = "edgeproxy loadtest throw-away CA"


@dataclass
class GeneratedIssuer:
    """The throw-away CA, the key every generated certificate certifies, and the certificates
    issued so far (one per simulated domain, naming that domain only)."""

    authority: selfsigned.Authority
    key: ec.EllipticCurvePrivateKey
    issued: dict[str, x509.Certificate] = field(default_factory=dict)

    @classmethod
    def new(cls) -> GeneratedIssuer:
        return cls(selfsigned.make_authority(GENERATED_CA_NAME), selfsigned.new_ec_key())

    def certificate(self, domain: str) -> x509.Certificate:
        """``domain``'s certificate (DNS-ID ``domain`` alone), issued on first use."""
        if (cert := self.issued.get(domain)) is None:
            cert = self.issued[domain] = selfsigned.issue(self.authority, self.key.public_key(), [domain])
        return cert

    @contextmanager
    def files(self, domain: str, trust: Path | None) -> Iterator[tuple[Path, Path, Path]]:
        """Certificate (leaf then CA), key and trust files of ``domain`` while the block runs;
        the trust is ``trust`` when given, else the CA."""
        with tempfile.TemporaryDirectory(prefix="edgeproxy-loadtest-") as tmp:
            cert_path, key_path = Path(tmp) / "partner.crt", Path(tmp) / "partner.key"
            cert_path.write_bytes(certificates_pem([self.certificate(domain), self.authority.certificate]))
            key_path.write_bytes(private_key_pem(self.key))
            if trust is None:
                # Nothing the target presents chains to this CA: the listener then never offers
                # SASL EXTERNAL (dialback it is), and the system store is not parsed for nothing.
                trust = Path(tmp) / "ca.crt"
                trust.write_bytes(certificates_pem([self.authority.certificate]))
            yield cert_path, key_path, trust


class PartnerTls:
    """Client and server SSL contexts per simulated domain (built lazily; with files, shared per
    file pair; generated, one pair per domain)."""

    def __init__(self, certificate: str, key: str, trust: str | None, *,
                 issuer: GeneratedIssuer | None = None) -> None:
        self.certificate = certificate
        self.key = key
        self.trust = Path(trust) if trust else None
        self.issuer = issuer
        self._contexts: dict[tuple[TlsRole, object], ssl.SSLContext] = {}

    @property
    def generated(self) -> bool:
        """True when the certificates are this run's throw-away ones (no files given)."""
        return self.issuer is not None

    @classmethod
    def for_scenario(cls, scenario: Scenario) -> PartnerTls | None:
        """The scenario's TLS material (None for ``plain``)."""
        p = scenario.partners
        if not p.security.tls:
            return None
        if p.certificate and p.key:
            return cls(p.certificate, p.key, p.trust)
        return cls.generate(p.domain_names(), p.trust)

    @classmethod
    def generate(cls, domains: tuple[str, ...], trust: str | None) -> PartnerTls:
        """A private CA and a certificate per domain; the first domain's contexts are built at
        once (so that a problem shows before the run starts), the others on first use."""
        tls = cls("", "", trust, issuer=GeneratedIssuer.new())
        tls.client(domains[0])
        tls.server(domains[0])
        return tls

    def _context(self, role: TlsRole, domain: str) -> ssl.SSLContext:
        if self.issuer is not None:
            source: object = domain
        else:
            source = (domain_file(self.certificate, domain), domain_file(self.key, domain))
        if (ctx := self._contexts.get((role, source))) is None:
            if self.issuer is not None:
                with self.issuer.files(domain, self.trust) as files:
                    ctx = tls_context(role, *files)
            else:
                cert, key = domain_file(self.certificate, domain), domain_file(self.key, domain)
                ctx = tls_context(role, cert, key, self.trust)
            self._contexts[(role, source)] = ctx
        return ctx

    def client(self, domain: str) -> ssl.SSLContext:
        """Context for our initiating streams from ``domain`` (we are the TLS client)."""
        return self._context(TlsRole.S2S_CLIENT, domain)

    def server(self, domain: str) -> ssl.SSLContext:
        """Context for the partner listener when the target connects to ``domain``."""
        return self._context(TlsRole.S2S_SERVER, domain)
