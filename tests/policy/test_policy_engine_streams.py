"""SPEC §2.1 stream level and §3 limits: partner lookup, features, methods, connection limits."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeproxy.policy.engine import (
    admit_stream,
    allowed_methods,
    auth_method_allowed,
    check_inbound_stream,
    inbound_offer,
    outbound_methods,
    partner_connection_limit,
    partner_for_domain,
)
from edgeproxy.policy.model import (
    AuthMethod,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
)
from edgeproxy.policy.snapshot import build_snapshot

R, OPT, N = Negotiation.REQUIRED, Negotiation.OPTIONAL, Negotiation.NOT_SUPPORTED
SASL, TLSDB, TCPDB = AuthMethod.SASL_OVER_TLS, AuthMethod.TLS_DIALBACK, AuthMethod.TCP_DIALBACK


def snapshot_of(*partners, **gateway):
    return build_snapshot(
        Configuration(
            gateway=GatewaySettings(dialback_secret="s" * 32, **gateway), partners=partners
        ),
        ["contoso.test"],
    )


def test_partner_for_domain_finds_primary_and_additional_domains_case_and_idna_insensitive():
    p = Partner("fabrikam.com", additional_domains=("corp.fabrikam.com", "xn--bcher-kva.de"))
    snap = snapshot_of(p)
    for domain in ("fabrikam.com", "FABRIKAM.com", "corp.fabrikam.com", "bücher.de", "BÜCHER.DE"):
        assert partner_for_domain(snap, domain) is p
    assert partner_for_domain(snap, "sub.fabrikam.com") is None  # sub-domains are not implied
    assert partner_for_domain(snap, "gmail.com") is None  # there is no default partner


# Per stream TLS state, the subset of the row's methods usable now.
STREAM_METHODS = [
    # tls, sasl, dialback, methods before TLS, methods after TLS
    (R, R, True, set(), {SASL}),
    (OPT, R, True, {TCPDB}, {SASL, TLSDB}),
    (N, R, True, {TCPDB}, set()),
    (R, OPT, True, set(), {SASL, TLSDB}),
    (OPT, N, True, {TCPDB}, {TLSDB}),
    (N, N, True, {TCPDB}, set()),
    (R, N, True, set(), {TLSDB}),
    (OPT, OPT, False, set(), {SASL}),
]


@pytest.mark.parametrize(("tls", "sasl", "dialback", "plain", "secured"), STREAM_METHODS)
def test_allowed_methods_depend_on_the_streams_tls_state(tls, sasl, dialback, plain, secured):
    p = Partner("fabrikam.com", tls=tls, sasl=sasl, dialback=dialback)
    snap = snapshot_of(p)
    assert allowed_methods(snap, p, tls_active=False) == plain
    assert allowed_methods(snap, p, tls_active=True) == secured
    for method in AuthMethod:
        assert auth_method_allowed(snap, p, method, False) is (method in plain)
        assert auth_method_allowed(snap, p, method, True) is (method in secured)


def test_inbound_offer_follows_the_partners_row():
    required = Partner("a.example", tls=R, sasl=R, dialback=True)
    optional = Partner("b.example", tls=OPT, sasl=OPT, dialback=True)
    plain = Partner("c.example", tls=N, sasl=N, dialback=True)
    snap = snapshot_of(required, optional, plain)
    before = inbound_offer(snap, required, tls_active=False)
    assert (before.starttls, before.starttls_required, before.dialback) == (True, True, False)
    after = inbound_offer(snap, required, tls_active=True)
    assert (after.sasl_external, after.dialback) == (True, False)
    before = inbound_offer(snap, optional, tls_active=False)
    assert (before.starttls, before.starttls_required, before.dialback) == (True, False, True)
    after = inbound_offer(snap, optional, tls_active=True)
    assert (after.sasl_external, after.dialback) == (True, True)
    before = inbound_offer(snap, plain, tls_active=False)
    assert (before.starttls, before.dialback, before.sasl_external) == (False, True, False)


def test_offer_without_from_is_what_at_least_one_partner_could_use():
    snap = snapshot_of(Partner("a.example", tls=R, sasl=R, dialback=False))
    before = inbound_offer(snap, None, tls_active=False)
    assert (before.starttls, before.starttls_required, before.dialback) == (True, True, False)
    assert inbound_offer(snap, None, tls_active=True).sasl_external
    snap = snapshot_of(
        Partner("a.example", tls=R, sasl=R, dialback=False),
        Partner("gtalk.example", tls=N, sasl=N, dialback=True),
    )
    before = inbound_offer(snap, None, tls_active=False)
    assert (before.starttls, before.starttls_required, before.dialback) == (True, False, True)
    empty = snapshot_of()
    assert inbound_offer(empty, None, tls_active=False).starttls is False


def test_outbound_prefers_the_strongest_allowed_method():
    snap = snapshot_of(
        p := Partner("a.example", tls=OPT, sasl=OPT, dialback=True),
        q := Partner("b.example", tls=R, sasl=N, dialback=True),
    )
    assert outbound_methods(snap, p) == (SASL, TLSDB, TCPDB)
    assert outbound_methods(snap, q) == (TLSDB,)


def test_inbound_stream_header_checks():
    snap = snapshot_of(Partner("fabrikam.com"))
    assert check_inbound_stream(snap, "fabrikam.com", "contoso.test") is None
    assert check_inbound_stream(snap, None, "contoso.test") is None
    assert check_inbound_stream(snap, "gmail.com", "contoso.test").condition == "policy-violation"
    refused = check_inbound_stream(snap, "fabrikam.com", "other.test")
    assert refused.condition == "host-unknown" and refused.stream_level


def test_connection_limits_global_default_per_partner_default_and_override():
    default = Partner("a.example")
    own = Partner("b.example", connection_limit=3)
    snap = snapshot_of(default, own)
    assert snap.gateway.connection_limit == 1000
    assert partner_connection_limit(snap, default) == 20
    assert partner_connection_limit(snap, own) == 3
    assert admit_stream(snap, default, total_open=0, partner_open=19) is None
    assert admit_stream(snap, default, 0, 20).condition == "resource-constraint"
    assert admit_stream(snap, own, 0, 2) is None
    assert admit_stream(snap, own, 0, 3) is not None
    assert admit_stream(snap, default, 999, 0) is None
    assert admit_stream(snap, default, 1000, 0).stream_level
    small = snapshot_of(default, connection_limit=5, partner_connection_limit=2)
    assert admit_stream(small, default, 5, 0) is not None
    assert admit_stream(small, default, 1, 2) is not None


def test_policy_package_never_imports_trio():
    code = (
        "import importlib, pkgutil, sys\n"
        "import edgeproxy.policy as pkg\n"
        "for m in pkgutil.iter_modules(pkg.__path__):\n"
        "    importlib.import_module('edgeproxy.policy.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'trio' or n.startswith('trio.'))\n"
        "assert not bad, bad\n"
        "print(len(list(pkgutil.iter_modules(pkg.__path__))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 9
