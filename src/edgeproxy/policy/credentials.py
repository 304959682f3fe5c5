"""SIP digest credentials of the local users (issue 14): from a password to the stored hashes.

Theory of operation
-------------------
The registrar authenticates a user with HTTP digest (RFC 3261 §22.4, RFC 8760 for SHA-256).
Everything the server needs is HA1 = H(username ":" realm ":" password) in lower-case hex; the
password itself is never stored, printed or passed on the command line. A password is turned
into one ``SipCredential`` per algorithm in ``ALGORITHMS`` (MD5 for the UAs that know nothing
else, SHA-256), all for one realm:

* ``username`` is the user part of the user's normalised SIP address (``sip:alice@contoso.test``
  → ``alice``; addresses are stored lower-cased, so a UA must register with that user part);
* ``realm`` is the SIP domain of the address (``contoso.test``, IDNA A-label, lower case): the
  realm the registrar puts in its challenges for that domain.

The username and password are encoded as UTF-8 before hashing (RFC 8760 §3 leaves the charset to
the ``charset`` parameter, whose only value is UTF-8). Setting a password replaces every earlier
credential of the user; clearing it removes them all.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from edgeproxy.policy.model import SipCredential

Algorithm = Literal["MD5", "SHA-256"]
#: The algorithms a password is stored for, weakest first (the order of ``user get``).
ALGORITHMS: tuple[Algorithm, ...] = ("MD5", "SHA-256")
#: Hex digits of each algorithm's HA1.
HA1_LENGTH: dict[str, int] = {"MD5": 32, "SHA-256": 64}
EMPTY_PASSWORD = (
    "refused: the password is empty; an empty password would let anyone who knows the SIP "
    "address register as the user (use user clear-password to remove a password)"
)


def _hash(algorithm: str, data: bytes) -> str:
    if algorithm == "MD5":
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    if algorithm == "SHA-256":
        return hashlib.sha256(data).hexdigest()
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


def digest_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """HA1 = H(username ":" realm ":" password) in lower-case hex (RFC 3261 §22.4, RFC 8760 §3)."""
    return _hash(algorithm, f"{username}:{realm}:{password}".encode())


def digest_identity(sip: str) -> tuple[str, str]:
    """The digest ``(username, realm)`` of a normalised SIP address: its user part and domain."""
    address = sip[4:] if sip.startswith("sip:") else sip
    username, _, realm = address.rpartition("@")
    return username, realm


def credentials_for(sip: str, password: str) -> tuple[SipCredential, ...]:
    """The credentials to store for ``password`` of the user with the normalised ``sip``.

    Raises ``ValueError`` (with ``EMPTY_PASSWORD``) for an empty password.
    """
    if not password:
        raise ValueError(EMPTY_PASSWORD)
    username, realm = digest_identity(sip)
    return tuple(
        SipCredential(algorithm=a, realm=realm, ha1=digest_ha1(a, username, realm, password))
        for a in ALGORITHMS
    )


def password_matches(credential: SipCredential, sip: str, password: str) -> bool:
    """Whether ``password`` is the one ``credential`` was made from (constant-time compare)."""
    username, _realm = digest_identity(sip)
    candidate = digest_ha1(credential.algorithm, username, credential.realm, password)
    return hmac.compare_digest(candidate, credential.ha1)
