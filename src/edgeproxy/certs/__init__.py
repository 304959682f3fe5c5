"""Certificates and TLS: the edge's own certificate (request, self-signed, import checks, install),
the identities a certificate proves (RFC 6125 DNS-ID / SRV-ID, XEP-0178 XmppAddr), the one TLS
context builder for every surface (``contexts``), the verdict on a peer's certificate (``peer``)
and the handshake helper the S2S, SIP and channel drivers share (``handshake``)."""
