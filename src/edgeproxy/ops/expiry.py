"""The running edge's certificate expiry, reported at start and on reload (EP2002, EP2001).

A certificate past its ``notAfter`` is ``EP2002 certificate-expired``; one that expires within
``certs.check.EXPIRY_WARNING_DAYS`` days is ``EP2001 certificate-expiring`` — the threshold
``edgeproxy check`` warns at too. A file that cannot be read or parsed is not reported here:
loading the TLS context refuses it with its own event.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from edgeproxy.certs.check import EXPIRY_WARNING_DAYS, days_left
from edgeproxy.ops import events
from edgeproxy.ops.telemetry import Telemetry


def report_expiry(path: Path, telemetry: Telemetry, now: dt.datetime | None = None) -> None:
    """Emit EP2002 or EP2001 for the certificate in ``path`` when it is expired or expiring."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return
    now = now if now is not None else dt.datetime.now(dt.UTC)
    subject = cert.subject.rfc4514_string()
    not_after = cert.not_valid_after_utc
    if not_after < now:
        telemetry.emit(events.CERTIFICATE_EXPIRED, subject=subject, not_after=f"{not_after:%Y-%m-%d}")
    elif days_left(cert, now) < EXPIRY_WARNING_DAYS:
        telemetry.emit(events.CERTIFICATE_EXPIRING, subject=subject, days=days_left(cert, now),
                       not_after=f"{not_after:%Y-%m-%d}")
