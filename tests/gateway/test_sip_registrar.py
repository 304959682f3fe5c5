"""The built-in registrar, pure (RFC 3261 §10.3). The SIPp interop test is test_sip_interop.py."""

from __future__ import annotations

import pytest

from edgeproxy.gateway.sip.message import SipRequest, parse_datagram
from edgeproxy.gateway.sip.registrar import Registrar


def register(
    contact: str | None = "<sip:bob@127.0.0.1:5091>",
    *,
    expires: str | None = "3600",
    user: str = "bob",
    domain: str = "sip.test",
    call_id: str = "reg-1",
    cseq: int = 1,
) -> SipRequest:
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5096;branch=z9hG4bK-r",
        f"From: <sip:{user}@{domain}>;tag=1",
        f"To: <sip:{user}@{domain}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    message = parse_datagram(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, SipRequest)
    return message


def test_register_binds_the_contact_until_it_expires() -> None:
    registrar = Registrar(["sip.test"])
    response = registrar.handle_register(register(), 100.0)
    assert response.status == 200
    assert response.headers.get("Contact") == "<sip:bob@127.0.0.1:5091>;expires=3600"
    [binding] = registrar.lookup("sip:bob@sip.test", 200.0)
    assert str(binding.contact) == "sip:bob@127.0.0.1:5091"
    assert registrar.lookup("sip:bob@sip.test", 100.0 + 3600) == []


def test_unregistered_user_has_no_binding() -> None:
    assert Registrar(["sip.test"]).lookup("sip:carol@sip.test", 0.0) == []


def test_expires_zero_removes_the_binding() -> None:
    registrar = Registrar(["sip.test"])
    registrar.handle_register(register(), 0.0)
    response = registrar.handle_register(register(expires="0", cseq=2), 1.0)
    assert response.status == 200 and response.headers.get("Contact") is None
    assert registrar.lookup("sip:bob@sip.test", 1.0) == []


def test_contact_parameter_overrides_the_expires_header() -> None:
    registrar = Registrar(["sip.test"])
    response = registrar.handle_register(register("<sip:bob@h:1>;expires=120"), 0.0)
    assert response.headers.get("Contact") == "<sip:bob@h:1>;expires=120"


def test_too_brief_interval_is_refused_with_min_expires() -> None:
    response = Registrar(["sip.test"]).handle_register(register(expires="10"), 0.0)
    assert response.status == 423
    assert response.headers.get("Min-Expires") == "60"


def test_long_interval_is_shortened_to_the_maximum() -> None:
    registrar = Registrar(["sip.test"], max_expires=600)
    response = registrar.handle_register(register(expires="99999"), 0.0)
    assert response.headers.get("Contact") == "<sip:bob@127.0.0.1:5091>;expires=600"


def test_star_removes_every_binding() -> None:
    registrar = Registrar(["sip.test"])
    registrar.handle_register(register("<sip:bob@a:1>, <sip:bob@b:2>"), 0.0)
    assert len(registrar.lookup("sip:bob@sip.test", 1.0)) == 2
    assert registrar.handle_register(register("*", expires="0", cseq=2), 1.0).status == 200
    assert registrar.lookup("sip:bob@sip.test", 1.0) == []


def test_star_with_nonzero_expires_is_a_bad_request() -> None:
    assert Registrar(["sip.test"]).handle_register(register("*"), 0.0).status == 400


def test_foreign_domain_is_not_served() -> None:
    registrar = Registrar(["sip.test"])
    assert registrar.handle_register(register(domain="elsewhere.test"), 0.0).status == 404


def test_stale_register_with_an_older_cseq_is_ignored() -> None:
    registrar = Registrar(["sip.test"])
    registrar.handle_register(register(cseq=5), 0.0)
    registrar.handle_register(register(expires="0", cseq=3), 1.0)
    assert len(registrar.lookup("sip:bob@sip.test", 1.0)) == 1


def test_query_over_tcp_lists_current_bindings() -> None:
    registrar = Registrar(["sip.test"])
    registrar.handle_register(register(), 0.0)
    response = registrar.handle_register(register(None, expires=None, cseq=2), 600.0, transport="tcp")
    assert response.headers.get("Contact") == "<sip:bob@127.0.0.1:5091>;expires=3000"


def test_query_over_udp_lists_no_binding_it_did_not_name() -> None:
    # Deviation from §10.3 step 8 (issue 13): no amplification towards an unauthenticated source.
    registrar = Registrar(["sip.test"])
    registrar.handle_register(register(), 0.0)
    response = registrar.handle_register(register(None, expires=None, cseq=2), 600.0)
    assert response.status == 200
    assert response.headers.get_all("Contact") == []
    assert len(registrar.lookup("sip:bob@sip.test", 600.0)) == 1  # the binding is still there


def test_register_over_udp_lists_only_the_contacts_it_named() -> None:
    registrar = Registrar(["sip.test"])
    others = ", ".join(f"<sip:bob@h{i}:1>" for i in range(5))
    registrar.handle_register(register(others), 0.0, transport="tcp")
    response = registrar.handle_register(register("<sip:bob@h9:1>", cseq=2), 0.0)
    assert response.headers.get_all("Contact") == ["<sip:bob@h9:1>;expires=3600"]
    full = registrar.handle_register(register("<sip:bob@h9:1>", cseq=3), 0.0, transport="tcp")
    assert len(full.headers.get_all("Contact")) == 6


def test_binding_limit_per_user_is_enforced() -> None:
    registrar = Registrar(["sip.test"], max_bindings_per_aor=2)
    contacts = ", ".join(f"<sip:bob@h{i}:1>" for i in range(3))
    assert registrar.handle_register(register(contacts), 0.0).status == 403
    assert registrar.lookup("sip:bob@sip.test", 0.0) == []


def test_malformed_expires_is_a_bad_request() -> None:
    assert Registrar(["sip.test"]).handle_register(register(expires="soon"), 0.0).status == 400


@pytest.mark.parametrize("expires", ["²", "３", "36OO", "1" * 11, "-1", "1e3"])
def test_expires_that_is_not_ascii_digits_is_a_bad_request_with_a_warning(expires: str) -> None:
    response = Registrar(["sip.test"]).handle_register(register(expires=expires), 0.0)
    assert response.status == 400
    assert "Expires" in (response.headers.get("Warning") or "")


@pytest.mark.parametrize("param", ["²", "３", "9" * 5000])
def test_contact_expires_parameter_that_is_not_ascii_digits_is_a_bad_request(param: str) -> None:
    response = Registrar(["sip.test"]).handle_register(register(f"<sip:bob@h:1>;expires={param}"), 0.0)
    assert response.status == 400
