"""The names the edge certificate must carry (SPEC §8).

The external certificate's subjectAltName covers, in this order: the edge's external FQDN,
``sip.<domain>`` for each SIP domain, each XMPP domain itself (partners verify the certificate
against the domain they federate with: RFC 6120 §13.7.1.2, XEP-0178), plus extras the admin
lists. Our XMPP domains are our SIP domains (``edge.domains``). Every name follows the rule for
certificate names of :mod:`edgeproxy.names` (a DNS name, or ``*.`` as the whole leftmost
label): an invalid extra name raises ``InvalidName`` naming the rule, so that it never reaches a
CSR. Names are compared as lower-case A-labels and listed once.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgeproxy.config import EdgeConfig
from edgeproxy.names import normalize_certificate_name


def _unique(names: Iterable[str]) -> list[str]:
    """Each name in canonical form, once, in the order given (InvalidName for a bad one)."""
    return list(dict.fromkeys(normalize_certificate_name(n) for n in names))


def certificate_names(
    config: EdgeConfig, *, extra: Iterable[str] = (), xmpp_domains: bool = True
) -> list[str]:
    """All subjectAltName DNS names for a certificate request, the external FQDN first."""
    domains = config.edge.domains
    names = [config.edge.external_fqdn, *(f"sip.{d}" for d in domains)]
    if xmpp_domains:
        names.extend(domains)
    names.extend(extra)
    return _unique(names)


def required_names(config: EdgeConfig) -> list[str]:
    """The names an imported certificate must cover: every XMPP domain and the external FQDN.

    ``sip.<domain>`` is requested but not required: it serves SIP clients, not XMPP federation.
    """
    return _unique([config.edge.external_fqdn, *config.edge.domains])
