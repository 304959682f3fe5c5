"""What an S2S stream keeps of its peer's certificate after the verdict: many streams presenting
one certificate (a partner's streams) share its identities instead of holding a copy each."""

from __future__ import annotations

import gc
import tracemalloc

from cryptography.hazmat.primitives.serialization import Encoding

from edgeproxy.certs import selfsigned
from edgeproxy.certs.peer import IDENTITY_CACHE_SIZE, PeerTrust, certificate_check

#: Domains the shared certificate names (a load-test partner's certificate names every simulated one).
NAMES = [f"sim{n}.test" for n in range(1, 101)]
STREAMS = 200


def certificate_der(ca: selfsigned.Authority, names: list[str]) -> bytes:
    return selfsigned.issue(ca, selfsigned.new_ec_key().public_key(), names).public_bytes(Encoding.DER)


def test_verdicts_on_one_certificate_share_its_identities() -> None:
    ca = selfsigned.make_authority("CA")
    trust = PeerTrust((ca.certificate,), "test")
    der = certificate_der(ca, NAMES)
    certificate_check(der, trust)  # the first verdict on a certificate keeps its identities
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [certificate_check(der, trust) for _ in range(STREAMS)]
        gc.collect()
        per_stream = (tracemalloc.get_traced_memory()[0] - before) / STREAMS
    finally:
        tracemalloc.stop()
    assert all(check("sim100.test") is None for check in kept)
    assert "name mismatch" in (kept[0]("other.test") or "")
    # A copy of 100 normalised names is ~7 KiB; what remains per verdict is the closure.
    assert per_stream < 1024, f"{per_stream:.0f} bytes kept per verdict"


def test_identity_cache_is_bounded_and_verdicts_stay_right_after_eviction() -> None:
    ca = selfsigned.make_authority("CA")
    trust = PeerTrust((ca.certificate,), "test")
    first = certificate_check(certificate_der(ca, ["a.test"]), trust)
    for n in range(IDENTITY_CACHE_SIZE + 1):  # pushes a.test's identities out of the cache
        certificate_check(certificate_der(ca, [f"d{n}.test"]), trust)
    from edgeproxy.certs import peer

    assert len(peer._IDENTITIES) == IDENTITY_CACHE_SIZE
    assert first("a.test") is None
    assert "name mismatch" in (first("b.test") or "")
    assert certificate_check(certificate_der(ca, ["a.test"]), trust)("a.test") is None
