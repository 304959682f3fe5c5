"""XML namespace names used by the XMPP core (RFC 6120) and server dialback (XEP-0220).

Plain ``str`` constants so they compare directly with ``Element.namespace``,
``Stanza.namespace`` and the ``{namespace}local`` attribute keys of the tokenizer.
"""

from __future__ import annotations

from typing import Final

#: The stream wrapper element and ``<stream:features/>``, ``<stream:error/>`` (RFC 6120 §4.8.1).
NS_STREAMS: Final = "http://etherx.jabber.org/streams"
#: Default content namespace of server-to-server streams (RFC 6120 §4.8.3).
NS_SERVER: Final = "jabber:server"
#: Default content namespace of client-to-server streams; appears inside s2s traffic in
#: forwarded/archived messages (XEP-0297, XEP-0313).
NS_CLIENT: Final = "jabber:client"
#: Server dialback elements ``<db:result/>``, ``<db:verify/>`` (XEP-0220 §2.4).
NS_DIALBACK: Final = "jabber:server:dialback"
#: Dialback stream feature (XEP-0220 §2.4.1).
NS_DIALBACK_FEATURE: Final = "urn:xmpp:features:dialback"
#: STARTTLS negotiation: ``<starttls/>``, ``<proceed/>``, ``<failure/>`` (RFC 6120 §5.4).
NS_TLS: Final = "urn:ietf:params:xml:ns:xmpp-tls"
#: SASL negotiation (RFC 6120 §6.4).
NS_SASL: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
#: Stanza error conditions (RFC 6120 §8.3.3).
NS_STANZAS: Final = "urn:ietf:params:xml:ns:xmpp-stanzas"
#: Stream error conditions (RFC 6120 §4.9.3).
NS_STREAM_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-streams"
#: The ``xml:`` prefix (``xml:lang``); bound by definition, never declared (Namespaces in XML §3).
NS_XML: Final = "http://www.w3.org/XML/1998/namespace"
#: The namespace of ``xmlns`` declarations themselves; never used for elements or attributes.
NS_XMLNS: Final = "http://www.w3.org/2000/xmlns/"

__all__ = [
    "NS_CLIENT",
    "NS_DIALBACK",
    "NS_DIALBACK_FEATURE",
    "NS_SASL",
    "NS_SERVER",
    "NS_STANZAS",
    "NS_STREAMS",
    "NS_STREAM_ERRORS",
    "NS_TLS",
    "NS_XML",
    "NS_XMLNS",
]
