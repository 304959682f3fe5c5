"""The loopback channel's shared secret (issue 14): where it is kept and how it is proven.

Theory of operation
-------------------
**At rest.** One file in the state dir, read by both roles: ``channel_secret_path(state_dir)`` is
``<state-dir>/channel.secret``; :func:`load_channel_secret` creates it at first start (random,
mode 0600 whatever the umask, in a state dir created 0750 if missing: :mod:`edgeproxy.secretfiles`)
and refuses one that others can read (``SecretFileError``). A gateway on another host needs a copy of the edge's file (same content,
mode 0600) in its own state dir.

**On the wire** (the exchange itself is driven by ``endpoint.py``). After the two ``Hello``
frames — each carrying ``NONCE_BYTES`` fresh random bytes — each side sends ``Auth(mac)`` with

    mac = HMAC-SHA256(secret, field(PROOF_LABEL) || field(prover role)
                              || field(edge nonce) || field(gateway nonce)
                              || field(edge session) || field(gateway session))

where ``field(x)`` is ``x`` prefixed with its length as two big-endian bytes (so no two inputs
share an encoding). The fields are in a fixed order (edge's before gateway's), not "mine, then
yours", so both sides compute the same bytes for a given prover. What each element buys:

* the **label** (it names the protocol version) keeps the MAC from being valid for anything
  else keyed with this secret;
* the **prover's role**: the edge's own proof sent back to it (a reflection) is not a gateway's;
* **both nonces**: a proof is bound to one connection — the verifier's fresh nonce makes a proof
  recorded on another connection (a replay) worthless;
* **both sessions**: the proof covers which processes the Hellos say are talking (what the
  resume state — ``peer_session``/``received`` — refers to).

The verifier recomputes the expected MAC and compares with :func:`hmac.compare_digest`
(constant time). Pure functions: no I/O, no clock, no trio (DESIGN §1).

Scope: the proof authenticates the *opening* of a connection; the frames after it are not
MAC'd. Someone able to sit in the middle of the TCP connection could relay an authenticated
opening; on 127.0.0.1 that takes holding the internal port before the edge binds it (it binds at
start and holds it) or root. Between hosts, ``[edge] internal-tls`` (mutual TLS) protects the
connection itself, and the secret is still required on top of it (defence in depth: a
certificate from the trust anchors alone does not make a gateway).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Final

from edgeproxy.errors import ProtocolError
from edgeproxy.loopback.frames import Hello, Role
from edgeproxy.secretfiles import PRIVATE, channel_secret_path, ensure_private_dir, ensure_secret

#: Domain separation for the proof (RFC 2104 keys only the MAC; the label fixes its purpose).
PROOF_LABEL: Final = b"edgeproxy loopback channel proof v2"
#: The close frame's reason for a peer whose proof is wrong or missing (WebSocket code 1008).
AUTH_FAILED: Final = "channel authentication failed"


class ChannelAuthError(ProtocolError):
    """The peer's proof of the channel secret is wrong or missing; the connection is refused."""

    condition = "not-authorized"


def load_channel_secret(state_dir: Path) -> bytes:
    """The channel secret, created at first use; raises ``SecretFileError`` / ``OSError``."""
    ensure_private_dir(state_dir)  # 0750 when missing, as the store creates it
    return ensure_secret(channel_secret_path(state_dir), PRIVATE).encode("ascii")


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def channel_proof(secret: bytes, prover: Role, edge: Hello, gateway: Hello) -> bytes:
    """The MAC ``prover`` sends for the connection whose Hellos are ``edge`` and ``gateway``."""
    message = b"".join(
        _field(part)
        for part in (
            PROOF_LABEL,
            prover.value.encode("ascii"),
            edge.nonce,
            gateway.nonce,
            edge.session.encode("utf-8"),
            gateway.session.encode("utf-8"),
        )
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def check_proof(secret: bytes, prover: Role, edge: Hello, gateway: Hello, mac: bytes) -> None:
    """Raise :class:`ChannelAuthError` unless ``mac`` is ``prover``'s proof for these Hellos."""
    if not mac:
        raise ChannelAuthError(f"{AUTH_FAILED}: the {prover.value} sent no proof")
    if not hmac.compare_digest(channel_proof(secret, prover, edge, gateway), mac):
        raise ChannelAuthError(f"{AUTH_FAILED}: wrong proof from the {prover.value}")


__all__ = [
    "AUTH_FAILED",
    "PROOF_LABEL",
    "ChannelAuthError",
    "channel_proof",
    "check_proof",
    "load_channel_secret",
]
