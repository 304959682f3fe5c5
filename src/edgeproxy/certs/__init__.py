"""Certificates: the edge's own certificate (request, self-signed, import checks, install) and the
identities a certificate proves (RFC 6125 DNS-ID / SRV-ID, XEP-0178 XmppAddr)."""
