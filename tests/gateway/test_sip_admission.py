"""Who may send the gateway a request (issue 14, ``gateway/sip/admission.py``), sans-IO: digest
for the users of our domains (401 for REGISTER, 407 otherwise; wrong password, unknown user and
a user without a password 403; the authenticated user must be the From, and the To of a
REGISTER), in-dialog requests of an authenticated SUBSCRIBE's dialog, the next hop's addresses
(with a verified client certificate over TLS) and nobody else."""

from __future__ import annotations

import pytest

from edgeproxy.gateway.sip import digest
from edgeproxy.gateway.sip.admission import Admission, Admitted, Peer
from edgeproxy.gateway.sip.message import SipParseError, SipRequest, SipResponse, parse_datagram
from fixtures.sipauth import PASSWORD, authorization, credentials

DOMAIN = "contoso.test"
UA = Peer("192.0.2.10")
NOW = 1000.0


def users(aor: str):  # type: ignore[no-untyped-def]
    """alice: MD5 only; bob: MD5 and SHA-256; carol: no password; nobody else."""
    name, _, domain = aor.removeprefix("sip:").partition("@")
    if domain != DOMAIN:
        return None
    return {
        "alice": credentials("alice"),
        "bob": credentials("bob", algorithms=("MD5", "SHA-256")),
        "carol": (),
    }.get(name)


def request(
    method: str = "MESSAGE",
    *,
    uri: str = "sip:romeo@montague.example",
    frm: str = "sip:alice@contoso.test",
    to: str | None = None,
    to_tag: str | None = None,
    call_id: str = "c1",
    extra: tuple[str, ...] = (),
) -> SipRequest:
    to = to or (frm if method == "REGISTER" else uri)
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1",
        f"From: <{frm}>;tag=f1",
        f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    parsed = parse_datagram("\r\n".join(lines).encode())
    assert isinstance(parsed, SipRequest)
    return parsed


def answered(
    admission: Admission,
    method: str = "MESSAGE",
    *,
    username: str = "alice",
    password: str = PASSWORD,
    peer: Peer = UA,
    nc: int = 1,
    challenge_from: SipResponse | None = None,
    **options: object,
) -> tuple[SipRequest, SipResponse]:
    """A request challenged, and the same with the digest answer to that challenge (MD5)."""
    first = request(method, **options)  # type: ignore[arg-type]
    challenge = challenge_from or admission.admit(first, peer, NOW)
    assert isinstance(challenge, SipResponse) and challenge.status in (401, 407)
    name = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
    values = challenge.headers.get_all(name)
    value = next(v for v in values if "algorithm=MD5" in v)
    header = "Authorization" if challenge.status == 401 else "Proxy-Authorization"
    auth = authorization(value, method=method, uri=first.uri, username=username, password=password, nc=nc)
    extra = (*options.pop("extra", ()), f"{header}: {auth}")  # type: ignore[misc]
    return request(method, extra=extra, **options), challenge  # type: ignore[arg-type]


@pytest.fixture
def admission() -> Admission:
    return Admission((DOMAIN,), users)


def test_register_is_challenged_401_and_the_right_answer_is_admitted(admission: Admission) -> None:
    second, challenge = answered(admission, "REGISTER", uri=f"sip:{DOMAIN}")
    assert challenge.status == 401
    [value] = challenge.headers.get_all("WWW-Authenticate")  # alice has MD5 only: MD5 only
    assert 'realm="contoso.test"' in value and "algorithm=MD5" in value and 'qop="auth"' in value
    assert challenge.headers.get_all("Proxy-Authenticate") == []
    assert admission.admit(second, UA, NOW + 1) == Admitted("sip:alice@contoso.test", "digest")


def test_other_methods_are_challenged_407_and_admitted_with_proxy_authorization(admission: Admission) -> None:
    for method in ("MESSAGE", "PUBLISH", "SUBSCRIBE"):
        second, challenge = answered(admission, method, call_id=f"c-{method}")
        assert challenge.status == 407
        assert challenge.headers.get_all("Proxy-Authenticate")
        assert admission.admit(second, UA, NOW + 1) == Admitted("sip:alice@contoso.test", "digest")


def test_a_user_with_both_credentials_is_offered_sha256_first_then_md5(admission: Admission) -> None:
    challenge = admission.admit(request(frm="sip:bob@contoso.test"), UA, NOW)
    assert isinstance(challenge, SipResponse)
    values = challenge.headers.get_all("Proxy-Authenticate")
    assert [v.split("algorithm=")[1].split(",")[0] for v in values] == ["SHA-256", "MD5"]


def test_an_unknown_user_is_challenged_with_every_algorithm_then_refused_403(admission: Admission) -> None:
    first = request(frm="sip:mallory@contoso.test")
    challenge = admission.admit(first, UA, NOW)
    assert isinstance(challenge, SipResponse) and challenge.status == 407
    assert len(challenge.headers.get_all("Proxy-Authenticate")) == len(digest.ALGORITHMS)
    second, _ = answered(admission, username="mallory", frm="sip:mallory@contoso.test", challenge_from=challenge)
    refused = admission.admit(second, UA, NOW + 1)
    assert isinstance(refused, SipResponse) and refused.status == 403


def test_a_wrong_password_is_403_not_another_challenge(admission: Admission) -> None:
    second, _ = answered(admission, "REGISTER", uri=f"sip:{DOMAIN}", password="wrong")
    refused = admission.admit(second, UA, NOW + 1)
    assert isinstance(refused, SipResponse) and refused.status == 403
    assert refused.headers.get_all("WWW-Authenticate") == []


def test_a_user_without_a_password_gets_403_password_not_set(admission: Admission) -> None:
    second, _ = answered(admission, "REGISTER", uri=f"sip:{DOMAIN}", username="carol",
                         frm="sip:carol@contoso.test")
    refused = admission.admit(second, UA, NOW + 1)
    assert isinstance(refused, SipResponse) and (refused.status, refused.reason) == (403, "Password Not Set")


def test_a_from_outside_our_domains_is_403_without_a_challenge(admission: Admission) -> None:
    refused = admission.admit(request(frm="sip:romeo@montague.example"), UA, NOW)
    assert isinstance(refused, SipResponse) and refused.status == 403
    assert refused.headers.get_all("Proxy-Authenticate") == []


def test_the_authenticated_user_must_be_the_from(admission: Admission) -> None:
    # alice's own answer, in a request claiming to come from bob
    first = request(frm="sip:bob@contoso.test")
    challenge = admission.admit(first, UA, NOW)
    assert isinstance(challenge, SipResponse)
    value = next(v for v in challenge.headers.get_all("Proxy-Authenticate") if "MD5" in v)
    auth = authorization(value, method="MESSAGE", uri=first.uri, username="alice")
    forged = request(frm="sip:bob@contoso.test", extra=(f"Proxy-Authorization: {auth}",))
    refused = admission.admit(forged, UA, NOW + 1)
    assert isinstance(refused, SipResponse) and refused.status == 403
    assert refused.reason == "From Is Not The Authenticated User"


def test_a_register_for_another_user_is_refused(admission: Admission) -> None:
    second, _ = answered(admission, "REGISTER", uri=f"sip:{DOMAIN}", to="sip:bob@contoso.test")
    refused = admission.admit(second, UA, NOW + 1)
    assert isinstance(refused, SipResponse) and refused.status == 403
    assert refused.reason == "To Is Not The Authenticated User"


def test_a_replayed_nonce_count_gets_a_stale_challenge_and_a_higher_one_is_admitted(admission: Admission) -> None:
    second, challenge = answered(admission)
    assert isinstance(admission.admit(second, UA, NOW + 1), Admitted)
    replayed = admission.admit(second, UA, NOW + 2)
    assert isinstance(replayed, SipResponse) and replayed.status == 407
    assert "stale=true" in replayed.headers.get("Proxy-Authenticate")  # type: ignore[operator]
    again, _ = answered(admission, nc=2, challenge_from=challenge)
    assert isinstance(admission.admit(again, UA, NOW + 3), Admitted)


def test_an_answer_from_another_address_is_challenged_again(admission: Admission) -> None:
    second, _ = answered(admission)
    other = admission.admit(second, Peer("192.0.2.99"), NOW + 1)
    assert isinstance(other, SipResponse) and other.status == 407


def test_a_stale_nonce_is_challenged_with_stale_true(admission: Admission) -> None:
    second, _ = answered(admission)
    late = admission.admit(second, UA, NOW + digest.NONCE_LIFETIME + 1)
    assert isinstance(late, SipResponse) and late.status == 407
    assert "stale=true" in late.headers.get("Proxy-Authenticate")  # type: ignore[operator]


def test_a_malformed_authorization_raises_sip_parse_error(admission: Admission) -> None:
    bad = request("REGISTER", uri=f"sip:{DOMAIN}", extra=('Authorization: Digest username="alice, realm',))
    with pytest.raises(SipParseError):
        admission.admit(bad, UA, NOW)


def test_an_in_dialog_request_of_an_authenticated_subscribe_dialog_is_admitted_as_its_user() -> None:
    def owner(req: SipRequest) -> str | None:
        return "sip:alice@contoso.test" if req.call_id == "dialog-1" else None

    admission = Admission((DOMAIN,), users, dialog_owner=owner)
    inside = request("SUBSCRIBE", to_tag="gw1", call_id="dialog-1")
    assert admission.admit(inside, UA, NOW) == Admitted("sip:alice@contoso.test", "dialog")
    # another dialog, or the same dialog claimed by someone else: digest as usual
    other = admission.admit(request("SUBSCRIBE", to_tag="gw1", call_id="dialog-2"), UA, NOW)
    assert isinstance(other, SipResponse) and other.status == 407
    claimed = admission.admit(
        request("SUBSCRIBE", to_tag="gw1", call_id="dialog-1", frm="sip:bob@contoso.test"), UA, NOW
    )
    assert isinstance(claimed, SipResponse) and claimed.status == 407


def test_with_a_next_hop_only_its_addresses_are_admitted_without_digest() -> None:
    admission = Admission((DOMAIN,), users, next_hop_hosts=frozenset({"192.0.2.1"}))
    assert admission.admit(request(), Peer("192.0.2.1"), NOW) == Admitted("sip:alice@contoso.test", "next-hop")
    refused = admission.admit(request(), Peer("192.0.2.2"), NOW)
    assert isinstance(refused, SipResponse) and (refused.status, refused.reason) == (403, "Only The Next Hop")
    # even a right digest answer from elsewhere does not help: only the next hop
    assert isinstance(admission.admit(request("REGISTER", uri=f"sip:{DOMAIN}"), UA, NOW), SipResponse)


def test_a_tls_next_hop_must_present_a_certificate_naming_it() -> None:
    admission = Admission(
        (DOMAIN,), users, next_hop_hosts=frozenset({"192.0.2.1"}), next_hop_tls_name="proxy.contoso.test"
    )
    good = Peer("192.0.2.1", "tls", frozenset({"proxy.contoso.test"}))
    assert isinstance(admission.admit(request(), good, NOW), Admitted)
    for peer in (
        Peer("192.0.2.1", "tcp"),
        Peer("192.0.2.1", "tls"),
        Peer("192.0.2.1", "tls", frozenset({"other.contoso.test"})),
    ):
        refused = admission.admit(request(), peer, NOW)
        assert isinstance(refused, SipResponse) and refused.status == 403


def test_counts_tell_admitted_challenged_and_refused(admission: Admission) -> None:
    second, _ = answered(admission)
    admission.admit(second, UA, NOW + 1)
    admission.admit(request(frm="sip:romeo@montague.example"), UA, NOW)
    assert admission.counts["digest"] == 1
    assert admission.counts["challenged"] == 1
    assert admission.counts["refused"] == 1
