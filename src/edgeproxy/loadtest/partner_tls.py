"""TLS material of the simulated partner domains: one client and one server SSL context each.

The contexts come from the edge's own builder (:func:`edgeproxy.certs.contexts.tls_context`, roles
``S2S_CLIENT`` / ``S2S_SERVER``): they present the domain's certificate in both directions (TLS
client certificate outbound, for SASL EXTERNAL, XEP-0178 §3) and accept any peer certificate at
the TLS layer, the verdict on it being the core's (RFC 6125 identity, chain to
``partners.trust``) through :func:`edgeproxy.certs.peer.peer_certificate_check`.

Files: ``partners.certificate`` / ``partners.key`` (``{domain}`` selects one file per domain, else
one certificate serves every simulated domain). ``starttls-dialback`` without files gets a
throw-away private CA and one certificate naming every simulated domain
(:mod:`edgeproxy.certs.selfsigned`), written to a temporary directory only while the contexts load;
without ``partners.trust`` that CA is also the trust (so no target certificate is trusted: the
listener offers dialback only).
Contexts are built on first use and shared by every domain that uses the same files, so a run
with thousands of domains and one certificate builds two contexts.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from edgeproxy.certs import selfsigned
from edgeproxy.certs.contexts import TlsRole, tls_context
from edgeproxy.certs.pem import certificates_pem, private_key_pem
from edgeproxy.loadtest.scenario import Scenario, domain_file


class PartnerTls:
    """Client and server SSL contexts per simulated domain (built lazily, shared per file pair)."""

    def __init__(self, certificate: str, key: str, trust: str | None, *, generated: bool = False) -> None:
        self.certificate = certificate
        self.key = key
        self.trust = Path(trust) if trust else None
        self.generated = generated
        self._client: dict[tuple[Path, Path], ssl.SSLContext] = {}
        self._server: dict[tuple[Path, Path], ssl.SSLContext] = {}

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
        """A private CA and one certificate for ``domains``, loaded into contexts at once."""
        authority = selfsigned.make_authority("edgeproxy loadtest throw-away CA")
        key = selfsigned.new_ec_key()
        cert = selfsigned.issue(authority, key.public_key(), list(domains))
        with tempfile.TemporaryDirectory(prefix="edgeproxy-loadtest-") as tmp:
            cert_path, key_path = Path(tmp) / "partners.crt", Path(tmp) / "partners.key"
            cert_path.write_bytes(certificates_pem([cert, authority.certificate]))
            key_path.write_bytes(private_key_pem(key))
            if trust is None:
                # Nothing the target presents chains to this CA: the listener then never offers
                # SASL EXTERNAL (dialback it is), and the system store is not parsed for nothing.
                trust = str(Path(tmp) / "ca.crt")
                Path(trust).write_bytes(certificates_pem([authority.certificate]))
            tls = cls(str(cert_path), str(key_path), trust, generated=True)
            tls.client(domains[0])
            tls.server(domains[0])
        return tls

    def _files(self, domain: str) -> tuple[Path, Path]:
        return domain_file(self.certificate, domain), domain_file(self.key, domain)

    def client(self, domain: str) -> ssl.SSLContext:
        """Context for our initiating streams from ``domain`` (we are the TLS client)."""
        files = self._files(domain)
        if (ctx := self._client.get(files)) is None:
            ctx = self._client[files] = tls_context(TlsRole.S2S_CLIENT, *files, self.trust)
        return ctx

    def server(self, domain: str) -> ssl.SSLContext:
        """Context for the partner listener when the target connects to ``domain``."""
        files = self._files(domain)
        if (ctx := self._server.get(files)) is None:
            ctx = self._server[files] = tls_context(TlsRole.S2S_SERVER, *files, self.trust)
        return ctx
