"""SPEC §2.1: the 18-row negotiation matrix, in the engine's rules and through the CLI."""

from __future__ import annotations

import json

import pytest

from edgeproxy.policy.model import AuthMethod, Negotiation
from edgeproxy.policy.validation import check_negotiation

R, OPT, N = "required", "optional", "not-supported"
SASL_TLS, TLS_DB, TCP_DB = "SASL over TLS", "TLS dialback", "TCP dialback"
W_DIALBACK = "dialback is never used when TLS and SASL are both required"
W_SASL_TLS = "SASL needs TLS, optional TLS may make negotiation fail"
X_SASL_TLS = "SASL needs TLS and dialback is off"
X_SASL_DB = "SASL or dialback must be enabled"

# The SPEC table, written out row by row: (#, TLS, SASL, dialback, methods, refusal, warning).
MATRIX = [
    (1, R, R, True, {SASL_TLS}, None, W_DIALBACK),
    (2, R, R, False, {SASL_TLS}, None, None),
    (3, OPT, R, True, {SASL_TLS, TLS_DB, TCP_DB}, None, W_SASL_TLS),
    (4, OPT, R, False, {SASL_TLS}, None, W_SASL_TLS),
    (5, N, R, True, {TCP_DB}, None, W_SASL_TLS),
    (6, N, R, False, set(), X_SASL_TLS, None),
    (7, R, OPT, True, {SASL_TLS, TLS_DB}, None, None),
    (8, R, OPT, False, {SASL_TLS}, None, None),
    (9, OPT, OPT, True, {SASL_TLS, TLS_DB, TCP_DB}, None, W_SASL_TLS),
    (10, OPT, OPT, False, {SASL_TLS}, None, W_SASL_TLS),
    (11, N, OPT, True, {TCP_DB}, None, W_SASL_TLS),
    (12, N, OPT, False, set(), X_SASL_TLS, None),
    (13, R, N, True, {TLS_DB}, None, None),
    (14, R, N, False, set(), X_SASL_DB, None),
    (15, OPT, N, True, {TLS_DB, TCP_DB}, None, None),
    (16, OPT, N, False, set(), X_SASL_DB, None),
    (17, N, N, True, {TCP_DB}, None, None),
    (18, N, N, False, set(), X_SASL_DB, None),
]
NAMES = {
    AuthMethod.SASL_OVER_TLS: SASL_TLS,
    AuthMethod.TLS_DIALBACK: TLS_DB,
    AuthMethod.TCP_DIALBACK: TCP_DB,
}
ROW_IDS = [f"row{r[0]}" for r in MATRIX]
REFUSED_ROWS = [r for r in MATRIX if r[5] is not None]
SAVED_ROWS = [r for r in MATRIX if r[5] is None]


def _flags(tls: str, sasl: str, dialback: bool) -> list[str]:
    return ["--tls", tls, "--sasl", sasl, "--dialback" if dialback else "--no-dialback"]


def test_matrix_has_every_combination_once():
    assert len({(r[1], r[2], r[3]) for r in MATRIX}) == 18


@pytest.mark.parametrize("row", MATRIX, ids=ROW_IDS)
def test_each_matrix_row_allows_exactly_the_listed_methods(row):
    _, tls, sasl, dialback, methods, refusal, warning = row
    verdict = check_negotiation(Negotiation(tls), Negotiation(sasl), dialback)
    assert {NAMES[m] for m in verdict.methods} == methods
    assert (verdict.refusal is not None) == (refusal is not None)
    if refusal:
        assert refusal in verdict.refusal
        assert verdict.refusal.startswith("refused:")
    assert [w for w in verdict.warnings if warning and warning in w] or warning is None
    assert len(verdict.warnings) == (1 if warning else 0)


@pytest.mark.parametrize("row", REFUSED_ROWS, ids=[f"row{r[0]}" for r in REFUSED_ROWS])
def test_refused_row_through_cli_exits_1_names_rule_and_changes_nothing(cli, row):
    _, tls, sasl, dialback, _methods, refusal, _warning = row
    assert cli("partner", "new", "existing.example", "--tls", "optional").code == 0
    before = cli("partner", "get", "--json").out

    created = cli("partner", "new", "fabrikam.com", *_flags(tls, sasl, dialback))
    assert created.code == 1
    assert refusal in created.err
    assert cli("partner", "get", "--json").out == before

    changed = cli("partner", "set", "existing.example", *_flags(tls, sasl, dialback))
    assert changed.code == 1
    assert refusal in changed.err
    assert cli("partner", "get", "--json").out == before


@pytest.mark.parametrize("row", SAVED_ROWS, ids=[f"row{r[0]}" for r in SAVED_ROWS])
def test_saved_row_through_cli_prints_its_warning_and_is_stored(cli, row):
    _, tls, sasl, dialback, _methods, _refusal, warning = row
    result = cli("partner", "new", "fabrikam.com", *_flags(tls, sasl, dialback))
    assert result.code == 0
    if warning:
        assert f"warning: {warning}" in result.err
    else:
        assert "warning" not in result.err
    stored = json.loads(cli("partner", "get", "fabrikam.com", "--json").out)
    assert (stored["tls"], stored["sasl"], stored["dialback"]) == (tls, sasl, dialback)


@pytest.mark.parametrize("row", SAVED_ROWS, ids=[f"row{r[0]}" for r in SAVED_ROWS])
def test_saved_row_through_partner_set_prints_its_warning_and_is_stored(cli, row):
    _, tls, sasl, dialback, _methods, _refusal, warning = row
    assert cli("partner", "new", "fabrikam.com", "--tls", "required", "--no-dialback").code == 0
    result = cli("partner", "set", "fabrikam.com", *_flags(tls, sasl, dialback))
    assert result.code == 0
    assert (f"warning: {warning}" in result.err) if warning else ("warning" not in result.err)
    stored = json.loads(cli("partner", "get", "fabrikam.com", "--json").out)
    assert (stored["tls"], stored["sasl"], stored["dialback"]) == (tls, sasl, dialback)
