"""Which names a certificate proves, and whether they cover a domain.

Theory of operation (RFC 6125 §6, XEP-0178 §3, RFC 6120 §13.7.1.2):

* A certificate presents identifiers in its subjectAltName: **DNS-ID** (``dNSName``), **SRV-ID**
  (``otherName`` id-on-dnsSRV, 1.3.6.1.5.5.7.8.7, e.g. ``_xmpp-server.example.com``) and
  **XmppAddr** (``otherName`` id-on-xmppAddr, 1.3.6.1.5.5.7.8.5, a UTF8String JID).
* A reference identity (the domain we expect) matches a DNS-ID exactly (case-insensitive,
  compared as A-labels), or a wildcard DNS-ID whose ``*`` is the whole left-most label and stands
  for exactly one label (``*.example.com`` matches ``a.example.com``, not ``example.com`` nor
  ``a.b.example.com``; RFC 6125 §6.4.3). Partial-label wildcards (``f*.example.com``) and wildcards
  over internationalised labels are not accepted.
* An SRV-ID matches when its service is ``_xmpp-server`` and its name equals the domain; an
  XmppAddr matches when it equals the domain (a domain JID).
* The subject CN is not consulted: every certificate we deal with carries a subjectAltName, and
  RFC 6125 §6.4.4 allows CN only when none is present.

The functions here are pure; they are used for our own certificate (does it cover every XMPP
domain?) and for peer certificates under SASL EXTERNAL (does it prove the partner's domain?).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import idna
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
ID_ON_DNSSRV = ObjectIdentifier("1.3.6.1.5.5.7.8.7")
XMPP_SERVER_SERVICE = "_xmpp-server"


def normalize_domain(name: str) -> str:
    """Lower-case A-label form of a domain (trailing dot removed); wildcards pass through."""
    name = name.strip().rstrip(".")
    if name.startswith("*."):
        # one level only: a name of many "*." labels is no valid wildcard anyway (RFC 6125
        # §6.4.3), and recursing once per label let a 2 KB dNSName raise RecursionError
        # (found by fuzzing)
        rest = name[2:]
        return "*." + (rest.lower() if rest.startswith("*") else normalize_domain(rest))
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except idna.IDNAError:
        return name.lower()


def dns_id_matches(presented: str, reference: str) -> bool:
    """RFC 6125 §6.4: does the presented DNS-ID match the reference domain?"""
    p = normalize_domain(presented)
    r = normalize_domain(reference)
    if not p or not r:
        return False
    if "*" not in p:
        return p == r
    label, _, rest = p.partition(".")
    if label != "*" or "*" in rest or "." not in rest:
        return False
    head, _, tail = r.partition(".")
    return bool(head) and not head.startswith("xn--") and tail == rest


def _der_string(value: bytes) -> str | None:
    """Decode a DER UTF8String / IA5String (the otherName values we care about)."""
    if len(value) < 2 or value[0] not in (0x0C, 0x16):
        return None
    length = value[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or len(value) < 2 + n:
            return None
        length = int.from_bytes(value[2 : 2 + n], "big")
        offset = 2 + n
    body = value[offset : offset + length]
    if len(body) != length:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class PresentedIdentities:
    """The identifiers a certificate presents, normalised."""

    dns_ids: tuple[str, ...]
    srv_ids: tuple[str, ...]
    xmpp_addrs: tuple[str, ...]

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PresentedIdentities:
        """The identities ``cert`` presents. Never raises: a certificate whose extensions cannot
        be parsed (cryptography decodes them lazily: a malformed or repeated extension raises on
        first access; found by fuzzing) presents none — it proves no name."""
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return cls((), (), ())
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
            return cls((), (), ())
        dns_ids = tuple(normalize_domain(n) for n in san.get_values_for_type(x509.DNSName))
        srv: list[str] = []
        xmpp: list[str] = []
        for other in san.get_values_for_type(x509.OtherName):
            text = _der_string(other.value)
            if text is None:
                continue
            if other.type_id == ID_ON_DNSSRV:
                srv.append(text.lower())
            elif other.type_id == ID_ON_XMPPADDR:
                xmpp.append(text)
        return cls(dns_ids, tuple(srv), tuple(xmpp))

    def all_names(self) -> list[str]:
        return [*self.dns_ids, *self.srv_ids, *self.xmpp_addrs]

    def covers(self, domain: str) -> bool:
        """XEP-0178 / RFC 6125: does any identifier prove ``domain`` for XMPP server use?"""
        ref = normalize_domain(domain)
        if any(dns_id_matches(p, ref) for p in self.dns_ids):
            return True
        for srv in self.srv_ids:
            service, _, name = srv.partition(".")
            if service == XMPP_SERVER_SERVICE and normalize_domain(name) == ref:
                return True
        return any(normalize_domain(x) == ref for x in self.xmpp_addrs if "@" not in x and "/" not in x)


def uncovered(cert: x509.Certificate, names: Iterable[str]) -> list[str]:
    """The names (in order) that the certificate does not cover."""
    ids = PresentedIdentities.from_certificate(cert)
    return [n for n in names if not ids.covers(n)]
