"""DNS for XMPP federation: SRV ordering (RFC 2782), the records to publish, lookups and checks.

Note: this package is ``edgeproxy.dns``; dnspython is the top-level ``dns`` package, which absolute
imports (``from __future__ import annotations`` + ``import dns.resolver``) reach unambiguously.
"""
