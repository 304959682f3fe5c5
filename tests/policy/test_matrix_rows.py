"""The 18 rows of the TLS × SASL × dialback negotiation matrix, each through the real
``edgeproxy partner new``: exit status, what stderr says (the refusal, the one warning, or
nothing), and that a refused row stores nothing.

Each row carries why it says what it says. The partner type plays no part in the matrix: the rows
rotate through the three types (in Lync's spelling), and one test checks that every row's verdict
is the same for each type.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _policy_helpers import run_cli_subprocess

from edgeproxy.policy.model import AuthMethod, Negotiation, Partner, PartnerType
from edgeproxy.policy.store import Store
from edgeproxy.policy.validation import ChangeRefused, check_negotiation, validate_partner

R, OPT, N = "required", "optional", "not-supported"
SASL_TLS, TLS_DB, TCP_DB = AuthMethod.SASL_OVER_TLS, AuthMethod.TLS_DIALBACK, AuthMethod.TCP_DIALBACK
ALL = {SASL_TLS, TLS_DB, TCP_DB}

X_SASL_NEEDS_TLS = "refused: SASL needs TLS: with TLS not supported SASL could never be negotiated"
X_NO_METHOD = "refused: SASL or dialback must be enabled"
W_NOT_ENFORCED = (
    "SASL is required, but with TLS optional and dialback on a partner may authenticate by "
    "dialback instead"
)
W_ONLY = "dialback is off, so SASL over TLS is the only way to authenticate: "
W_TLS_IN_EFFECT = W_ONLY + "TLS is optional but in effect required"
W_SASL_IN_EFFECT = W_ONLY + "SASL is optional but in effect required"
W_BOTH_IN_EFFECT = W_ONLY + "TLS and SASL are optional but in effect required"

# (row, TLS, SASL, dialback, methods, refusal, warning, why)
MATRIX = [
    (1, R, R, True, {SASL_TLS}, None, None,
     "the defaults: dialback is unused here but harmless, a fallback once TLS or SASL relaxes"),
    (2, R, R, False, {SASL_TLS}, None, None, "SASL over TLS only, as configured"),
    (3, OPT, R, True, ALL, None, W_NOT_ENFORCED,
     "'SASL required' is not what happens: dialback over TLS or plain TCP is accepted too"),
    (4, OPT, R, False, {SASL_TLS}, None, W_TLS_IN_EFFECT,
     "SASL needs TLS and nothing else is left, so the optional TLS is required"),
    (5, N, R, True, {TCP_DB}, X_SASL_NEEDS_TLS, None,
     "SASL can never run without TLS (Lync's commit check: not saved)"),
    (6, N, R, False, set(), X_SASL_NEEDS_TLS, None, "SASL without TLS, and no method at all"),
    (7, R, OPT, True, {SASL_TLS, TLS_DB}, None, None, "SASL over TLS, else dialback over TLS"),
    (8, R, OPT, False, {SASL_TLS}, None, W_SASL_IN_EFFECT,
     "without dialback the optional SASL is the only method"),
    (9, OPT, OPT, True, ALL, None, None, "every method, as the options say (Lync's flexible row)"),
    (10, OPT, OPT, False, {SASL_TLS}, None, W_BOTH_IN_EFFECT,
     "without dialback both optional settings are required"),
    (11, N, OPT, True, {TCP_DB}, X_SASL_NEEDS_TLS, None,
     "optional SASL without TLS must be not-supported (Lync's commit check)"),
    (12, N, OPT, False, set(), X_SASL_NEEDS_TLS, None, "SASL without TLS, and no method at all"),
    (13, R, N, True, {TLS_DB}, None, None, "dialback over TLS, as configured"),
    (14, R, N, False, set(), X_NO_METHOD, None, "no method is left"),
    (15, OPT, N, True, {TLS_DB, TCP_DB}, None, None, "dialback, over TLS when the partner can"),
    (16, OPT, N, False, set(), X_NO_METHOD, None, "no method is left"),
    (17, N, N, True, {TCP_DB}, None, None, "dialback over TCP: the Google Talk setting"),
    (18, N, N, False, set(), X_NO_METHOD, None, "no method is left"),
]
TYPES = ["Federated", "PublicVerified", "PublicUnverified"]
ROW_IDS = [f"row{r[0]}" for r in MATRIX]


def _lync(value: str) -> str:
    """``not-supported`` as Lync writes it: ``NotSupported``."""
    return "".join(part.capitalize() for part in value.split("-"))


def test_the_table_has_every_combination_once():
    assert sorted((r[1], r[2], r[3]) for r in MATRIX) == sorted(
        (t.value, s.value, d) for t in Negotiation for s in Negotiation for d in (True, False)
    )


@pytest.mark.parametrize("row", MATRIX, ids=ROW_IDS)
def test_partner_new_with_each_row(config_path: Path, state_dir: Path, row):
    number, tls, sasl, dialback, _methods, refusal, warning, _why = row
    kind = TYPES[number % 3]
    # Odd rows in Lync's spelling (NotSupported), even rows in ours (not-supported).
    spell = _lync if number % 2 else str
    result = run_cli_subprocess(
        config_path, "partner", "new", f"row{number}.example", "--type", kind,
        "--tls", spell(tls), "--sasl", spell(sasl), "--dialback" if dialback else "--no-dialback",
    )
    if refusal:
        assert result.code == 1, result
        assert result.err.startswith(f"edgeproxy: {refusal}"), result
        assert result.err.count("\n") == 1 and result.out == ""
        with Store.open(state_dir) as store:
            assert store.read()[1].partners == ()
        return
    assert result.code == 0, result
    if warning:
        assert result.err.startswith(f"edgeproxy: warning: {warning}"), result
        assert result.err.count("\n") == 1
    else:
        assert result.err == ""
    with Store.open(state_dir) as store:
        (stored,) = store.read()[1].partners
    assert (stored.type, stored.tls, stored.sasl, stored.dialback) == (
        PartnerType.parse(kind), Negotiation(tls), Negotiation(sasl), dialback
    )
    assert f"  tls: {tls}" in result.out  # our spelling in the output, whatever the input's


def test_a_partner_with_the_defaults_is_saved_without_a_warning(config_path: Path):
    result = run_cli_subprocess(config_path, "partner", "new", "fabrikam.com")
    assert (result.code, result.err) == (0, "")


@pytest.mark.parametrize("row", MATRIX, ids=ROW_IDS)
def test_each_row_allows_its_methods_whatever_the_partner_type(row):
    number, tls, sasl, dialback, methods, refusal, warning, _why = row
    verdict = check_negotiation(Negotiation(tls), Negotiation(sasl), dialback)
    assert verdict.methods == frozenset(methods)
    if refusal:
        assert verdict.refusal is not None and verdict.refusal.startswith(refusal)
    else:
        assert verdict.refusal is None
    assert [w[: len(warning)] for w in verdict.warnings] == ([warning] if warning else [])
    for kind in PartnerType:
        partner = Partner(f"row{number}.example", type=kind, tls=Negotiation(tls),
                          sasl=Negotiation(sasl), dialback=dialback)
        if refusal:
            with pytest.raises(ChangeRefused, match="^" + refusal):
                validate_partner(partner, (), ("contoso.test",))
        else:
            assert validate_partner(partner, (), ("contoso.test",)) == verdict.warnings


@pytest.mark.parametrize("row", MATRIX, ids=ROW_IDS)
def test_partner_set_to_each_row_says_the_same_and_changes_nothing_when_refused(cli, row):
    _number, tls, sasl, dialback, _methods, refusal, warning, _why = row
    assert cli("partner", "new", "fabrikam.com", "--tls", "required", "--no-dialback").code == 0
    before = cli("partner", "get", "--json").out
    flags = ["--tls", tls, "--sasl", sasl, "--dialback" if dialback else "--no-dialback"]
    result = cli("partner", "set", "fabrikam.com", *flags)
    if refusal:
        assert result.code == 1 and refusal in result.err
        assert cli("partner", "get", "--json").out == before
        return
    assert result.code == 0
    assert (f"warning: {warning}" in result.err) if warning else (result.err == "")
    stored = json.loads(cli("partner", "get", "fabrikam.com", "--json").out)
    assert (stored["tls"], stored["sasl"], stored["dialback"]) == (tls, sasl, dialback)
