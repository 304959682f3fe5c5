"""SIP digest authentication, server side (RFC 3261 §22, RFC 8760, RFC 7616), sans-IO.

Theory of operation
-------------------
Challenge (RFC 3261 §22.1, §22.3; RFC 8760 §2.4)
    :meth:`DigestAuthenticator.challenges` gives the ``WWW-Authenticate`` / ``Proxy-Authenticate``
    values for one challenge: one per algorithm, ``SHA-256`` first and ``MD5`` second (RFC 8760
    §2.4: in the server's order of preference; MD5 for the user agents that know nothing else),
    all with ``qop="auth"`` and the same nonce. The caller sends them in a 401 (REGISTER: we are
    the registrar) or a 407 (any other request: we act as the proxy of our domain, §22.3).

Nonces without a table (RFC 7616 §3.3: "implementation dependent", a time stamp and a private
key suggested)
    ``nonce = base64url(time-ms ‖ 3 random bytes ‖ HMAC-SHA-256(secret, time-ms ‖ random ‖
    source)[:12])``, 28 characters. The secret is drawn per process (a restart makes every
    outstanding nonce unknown: the UA gets a fresh challenge); the source is the client's IP
    address (not its port: a UA over TCP may open a new connection, one behind a NAT may get a
    new port). A nonce whose MAC does not verify — forged, or issued to another address — is
    answered with a fresh challenge. One older than ``NONCE_LIFETIME`` whose response is
    otherwise right is answered with a fresh challenge with ``stale=true`` (RFC 7616 §3.3:
    the UA retries without asking its user); a wrong response with an old nonce is refused.
    The time is the caller's clock (``trio.current_time()`` in the gateway): monotonic, and
    only compared within the process that issued the nonce.

Verification (RFC 7616 §3.4.1, qop=auth)
    ``response = KD(HA1, nonce ":" nc ":" cnonce ":" qop ":" H(method ":" uri))`` with H the
    credential's algorithm. Only the stored ``HA1 = H(username ":" realm ":" password)`` is
    needed (``SipCredential.ha1``); the comparison is constant-time. ``qop=auth`` is required:
    RFC 2069 responses (no qop, no nonce count) cannot be protected against replay and are
    refused (403). The ``uri`` parameter must be the Request-URI (RFC 7616 §3.4.6), else 400.

Replay (RFC 7616 §3.4: the nonce count)
    A verified response records its nonce's count in :class:`ReplayTable`; each count is
    accepted once (a UA reusing a nonce counts up: 1, 2, 3 …). Requests sent in a burst over
    UDP arrive out of order, so a count below the highest seen is still accepted when it lies
    within the last ``NC_WINDOW`` counts and was not seen (the anti-replay window of IPsec,
    RFC 4303 §3.4.3). A count seen before, or older than the window — a replayed request, or a
    reused nc/cnonce — is not accepted: the UA gets a fresh challenge with ``stale=true`` (a
    real UA simply answers it; whoever replayed a captured request cannot). Only verified responses are recorded, so nobody without the
    password can push a nonce's count up to lock its UA out. The table is bounded
    (``MAX_TRACKED_NONCES``, least recently used out first) without reopening a hole: it
    remembers the newest issue time of every nonce it dropped, and a nonce it does not hold
    that was issued no later than that is treated as used (``stale=true``); a nonce issued
    later cannot have been dropped, so not holding it means it was never used.

Named limits: ``NONCE_LIFETIME`` = 300 s (Kamailio's ``nonce_expire`` default is 30 s, SER's
300 s: a UA reusing a nonce for several requests gets one challenge per 5 minutes);
``MAX_TRACKED_NONCES`` = 100,000 (≈ 10 MB; a UA uses a handful of nonces per lifetime).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

#: Algorithms offered, in order of preference (RFC 8760 §2.4).
ALGORITHMS = ("SHA-256", "MD5")
#: Nonce counts below the highest seen that are still accepted once each (requests of one burst
#: reordered over UDP). IPsec's anti-replay window is 32 or 64 by default (RFC 4303 §3.4.3); a
#: SIP UA reusing its nonce may have a few hundred requests in flight, of which only those
#: reordered past 128 others draw a fresh challenge.
NC_WINDOW: Final = 128
#: Seconds a nonce is accepted after it was issued; later: ``stale=true``.
NONCE_LIFETIME = 300.0
#: Nonces whose last nonce count is remembered (replay protection).
MAX_TRACKED_NONCES = 100_000
_HASHES: dict[str, Callable[..., Any]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
_MAC_BYTES = 12
_RANDOM_BYTES = 3
_NONCE_BYTES = 8 + _RANDOM_BYTES + _MAC_BYTES


class DigestError(ValueError):
    """An ``Authorization`` / ``Proxy-Authorization`` value that does not parse (→ 400)."""


def hash_hex(algorithm: str, text: str) -> str:
    """H(text) in lower-case hex (RFC 7616 §3.4.1; RFC 8760 §2.1 for SHA-256)."""
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def make_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """HA1 = H(username ":" realm ":" password), what a ``SipCredential`` stores."""
    return hash_hex(algorithm, f"{username}:{realm}:{password}")


def response_for(
    algorithm: str, ha1: str, *, nonce: str, nc: str, cnonce: str, qop: str, method: str, uri: str
) -> str:
    """The expected ``response`` for qop=auth (RFC 7616 §3.4.1): KD(HA1, nonce:nc:cnonce:qop:HA2)."""
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    return hash_hex(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


@dataclass(frozen=True, slots=True)
class Credentials:
    """One parsed ``Authorization`` / ``Proxy-Authorization`` (RFC 3261 §25.1 ``credentials``)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"  # RFC 7616 §3.4: absent means MD5
    qop: str | None = None
    nc: str | None = None  # 8 hex digits as sent (it is hashed as sent)
    cnonce: str | None = None


def parse_credentials(value: str) -> Credentials:
    """Parse ``Digest k=v, k="v", …``; :class:`DigestError` if it is not digest or lacks a field.

    Lenient where user agents differ: parameter names are case-insensitive, ``qop`` and
    ``algorithm`` may be quoted (SIPp quotes qop), white space around ``=`` and ``,`` is
    allowed; a quoted string may hold escaped characters (``\\"``)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest credential: {scheme!r}")
    params = _parse_params(rest)
    try:
        username = params["username"]
        realm = params["realm"]
        nonce = params["nonce"]
        uri = params["uri"]
        response = params["response"]
    except KeyError as exc:
        raise DigestError(f"Digest credential without {exc.args[0]}") from None
    algorithm = params.get("algorithm", "MD5")
    canonical = _ALGORITHM_NAMES.get(algorithm.upper(), algorithm)
    return Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response.lower(),
        algorithm=canonical,
        qop=params.get("qop"),
        nc=params.get("nc"),
        cnonce=params.get("cnonce"),
    )


#: One ``name=value`` of the usual credential (see ``_parse_params``): a name of letters,
#: digits, ``-`` and ``_``; a quoted value without escapes or an unquoted one without quotes.
_PLAIN_PARAM: Final = re.compile(r'[ \t,]*([A-Za-z0-9_-]+)[ \t]*=[ \t]*(?:"([^"\\]*)"|([^,"]*))')
#: ``algorithm`` as sent (any case) → as in ``ALGORITHMS``.
_ALGORITHM_NAMES: Final = {a.upper(): a for a in ALGORITHMS}


def _parse_params(text: str) -> dict[str, str]:
    """The parameters of a credential: the usual form read by ``_PLAIN_PARAM`` one match per
    parameter, anything else (escapes, odd names, errors) by ``_scan_params``, which reads the
    usual form the same way."""
    params: dict[str, str] = {}
    pos, n = 0, len(text)
    match = _PLAIN_PARAM.match
    while pos < n:
        found = match(text, pos)
        if found is None:
            if text[pos:].strip(" \t,"):
                return _scan_params(text)
            break
        name, quoted, plain = found.groups()
        name = name.lower()
        if name in params:
            return _scan_params(text)  # repeated: refused there
        params[name] = quoted if quoted is not None else plain.strip()
        pos = found.end()
    return params


def _scan_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise DigestError(f"parameter without value: {text[i:]!r}")
        name = text[i:eq].strip().lower()
        if not name or any(c in name for c in ' \t,"'):
            raise DigestError(f"bad parameter name {name!r}")
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                raise DigestError("unterminated quoted string")
            i += 1
            value = "".join(chars)
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        if name in params:
            raise DigestError(f"parameter {name!r} repeated")
        params[name] = value
    return params


# -- verdicts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The response is right: the request comes from ``username`` of ``realm``."""

    username: str
    realm: str


@dataclass(frozen=True, slots=True)
class Challenge:
    """Answer with a fresh challenge; ``stale``: the password was right, the nonce was not."""

    stale: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """Refuse the request: ``status`` (403, or 400 for a malformed credential) and a reason."""

    status: int
    reason: str


Verdict = Accepted | Challenge | Refused


_WINDOW_MASK: Final = (1 << NC_WINDOW) - 1


class ReplayTable:
    """Which nonce counts each recently used nonce has had (the highest, and which of the
    ``NC_WINDOW`` below it; see the module docstring), bounded."""

    def __init__(self, max_nonces: int = MAX_TRACKED_NONCES) -> None:
        self.max_nonces = max_nonces
        #: nonce → (issued ms, highest nc, bit i set: highest − i seen)
        self._last: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        #: The newest issue time (ms) of a nonce dropped from the table; -1: none dropped.
        self.dropped_up_to = -1

    def __len__(self) -> int:
        return len(self._last)

    def advance(self, nonce: str, issued_ms: int, nc: int) -> bool:
        """Record ``nc`` for ``nonce`` if it was not seen and is within the window; False: a
        replay (or too old to tell)."""
        entry = self._last.get(nonce)
        if entry is None:
            if issued_ms <= self.dropped_up_to:
                return False  # it may have been used and dropped: cannot tell, so no
            while len(self._last) >= self.max_nonces:
                _, (dropped_ms, _, _) = self._last.popitem(last=False)
                self.dropped_up_to = max(self.dropped_up_to, dropped_ms)
            highest, seen = nc, 1
        else:
            _, highest, seen = entry
            if nc > highest:
                seen = ((seen << (nc - highest)) | 1) & _WINDOW_MASK
                highest = nc
            else:
                behind = highest - nc
                if behind >= NC_WINDOW or seen >> behind & 1:
                    return False
                seen |= 1 << behind
        self._last[nonce] = (issued_ms, highest, seen)
        self._last.move_to_end(nonce)
        return True

    def forget_older_than(self, issued_ms: int) -> None:
        """Drop the entries of nonces issued before ``issued_ms`` (expired: refused anyway)."""
        while self._last:
            nonce, (ms, _, _) = next(iter(self._last.items()))
            if ms >= issued_ms:
                break
            del self._last[nonce]
            self.dropped_up_to = max(self.dropped_up_to, ms)


#: Nonces whose MAC check is remembered (``DigestAuthenticator.nonce_issued``): one per UA
#: reusing its nonce; 4,096 × ~200 bytes ≈ 0.8 MB at most.
NONCE_MEMO = 4096


class DigestAuthenticator:
    """Issues nonces and checks digest responses (see the module docstring)."""

    def __init__(
        self,
        secret: bytes | None = None,
        *,
        lifetime: float = NONCE_LIFETIME,
        max_nonces: int = MAX_TRACKED_NONCES,
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.lifetime = lifetime
        self.replay = ReplayTable(max_nonces)
        #: (nonce, source) → issue time of nonces whose MAC was checked: a UA reusing its nonce
        #: (nc 2, 3, …) costs no HMAC per request. At most ``NONCE_MEMO`` entries, oldest out.
        self._issued: dict[tuple[str, str], int] = {}

    # -- nonces -----------------------------------------------------------------------------

    def _mac(self, head: bytes, source: str) -> bytes:
        return hmac.digest(self._secret, head + source.encode(), "sha256")[:_MAC_BYTES]

    def new_nonce(self, now: float, source: str) -> str:
        head = struct.pack(">q", int(now * 1000)) + os.urandom(_RANDOM_BYTES)
        return base64.urlsafe_b64encode(head + self._mac(head, source)).decode("ascii").rstrip("=")

    def nonce_issued(self, nonce: str, source: str) -> int | None:
        """The issue time (ms) of ``nonce`` if we issued it to ``source``, else None."""
        key = (nonce, source)
        issued = self._issued.get(key)
        if issued is None:
            issued = self._check_nonce(nonce, source)
            if issued is not None:
                if len(self._issued) >= NONCE_MEMO:
                    del self._issued[next(iter(self._issued))]
                self._issued[key] = issued
        return issued

    def _check_nonce(self, nonce: str, source: str) -> int | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_BYTES:
            return None
        head, mac = raw[: 8 + _RANDOM_BYTES], raw[8 + _RANDOM_BYTES :]
        if not hmac.compare_digest(mac, self._mac(head, source)):
            return None
        return int(struct.unpack(">q", head[:8])[0])

    def challenges(
        self,
        realm: str,
        now: float,
        source: str,
        *,
        stale: bool = False,
        algorithms: tuple[str, ...] = ALGORITHMS,
    ) -> list[str]:
        """The challenge header values, one per algorithm of ``algorithms`` (kept in
        ``ALGORITHMS`` order: SHA-256 first), all with one nonce."""
        nonce = self.new_nonce(now, source)
        tail = ", stale=true" if stale else ""
        return [
            f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{tail}'
            for algorithm in ALGORITHMS
            if algorithm in algorithms
        ]

    # -- verification -----------------------------------------------------------------------

    def verify(
        self,
        credentials: Credentials,
        *,
        method: str,
        request_uri: str,
        realm: str,
        ha1: str | None,
        now: float,
        source: str,
    ) -> Verdict:
        """Check ``credentials`` for a request (``method``, ``request_uri``) from ``source``
        against ``ha1`` — the user's stored HA1 for ``credentials.algorithm`` in ``realm``, or
        None when there is none (an unknown user: refused like a wrong password, after the
        same nonce checks)."""
        if credentials.realm != realm:
            return Challenge()  # an answer to someone else's challenge
        if credentials.algorithm not in _HASHES:
            return Challenge()
        issued = self.nonce_issued(credentials.nonce, source)
        if issued is None:
            return Challenge()  # not ours, another address's, or from before a restart
        if credentials.qop is None or credentials.nc is None or credentials.cnonce is None:
            return Refused(403, "Digest Without qop=auth")
        if credentials.qop.lower() != "auth":
            return Refused(403, "Only qop=auth Is Supported")
        nc = _parse_nc(credentials.nc)
        if nc is None:
            return Refused(400, "Bad Nonce Count")
        if credentials.uri != request_uri:
            return Refused(400, "Digest URI Is Not The Request-URI")
        if ha1 is None:
            return Refused(403, "Forbidden")
        expected = response_for(
            credentials.algorithm,
            ha1.lower(),
            nonce=credentials.nonce,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
            qop=credentials.qop,
            method=method,
            uri=credentials.uri,
        )
        if not hmac.compare_digest(
            expected.encode(), credentials.response.encode("utf-8", "replace")
        ):
            return Refused(403, "Forbidden")
        now_ms = int(now * 1000)
        oldest = now_ms - int(self.lifetime * 1000)
        if issued < oldest:
            return Challenge(stale=True)
        self.replay.forget_older_than(oldest)
        if not self.replay.advance(credentials.nonce, issued, nc):
            return Challenge(stale=True)  # replayed (this nc seen, or older than the window)
        return Accepted(credentials.username, credentials.realm)


def _parse_nc(text: str) -> int | None:
    """``nc-value = 8LHEX`` (RFC 7616 §3.4): ASCII hex only."""
    if len(text) != 8 or not all(c in "0123456789abcdefABCDEF" for c in text):
        return None
    return int(text, 16)
