"""The sans-IO digest core (gateway/sip/digest.py): challenges, nonces bound to time and source,
verification for MD5 and SHA-256 (RFC 7616 / RFC 8760 test vectors), replay protection with a
bounded table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.gateway.sip.digest import (
    NC_WINDOW,
    Accepted,
    Challenge,
    Credentials,
    DigestAuthenticator,
    DigestError,
    Refused,
    ReplayTable,
    _parse_params,
    _scan_params,
    make_ha1,
    parse_credentials,
    response_for,
)

REALM, USER, PASSWORD, URI, SOURCE = (
    "contoso.test",
    "alice",
    "s3cret",
    "sip:contoso.test",
    "192.0.2.7",
)


def answer(
    auth: DigestAuthenticator,
    *,
    algorithm: str = "MD5",
    password: str = PASSWORD,
    nonce: str | None = None,
    nc: str = "00000001",
    cnonce: str = "c0ffee",
    method: str = "REGISTER",
    uri: str = URI,
    now: float = 100.0,
    source: str = SOURCE,
) -> tuple[Credentials, str]:
    nonce = nonce if nonce is not None else auth.new_nonce(now, source)
    ha1 = make_ha1(algorithm, USER, REALM, password)
    response = response_for(
        algorithm, ha1, nonce=nonce, nc=nc, cnonce=cnonce, qop="auth", method=method, uri=uri
    )
    return Credentials(USER, REALM, nonce, uri, response, algorithm, "auth", nc, cnonce), nonce


def check(
    auth: DigestAuthenticator,
    creds: Credentials,
    *,
    algorithm: str = "MD5",
    now: float = 100.0,
    source: str = SOURCE,
    method: str = "REGISTER",
) -> object:
    return auth.verify(
        creds,
        method=method,
        request_uri=URI,
        realm=REALM,
        ha1=make_ha1(algorithm, USER, REALM, PASSWORD),
        now=now,
        source=source,
    )


def test_rfc7616_example_responses_for_md5_and_sha256() -> None:
    # RFC 7616 §3.9.1 (HTTP, but the computation is the same): Mufasa / "Circle of Life".
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    for algorithm, expected in (
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ):
        ha1 = make_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
        got = response_for(
            algorithm,
            ha1,
            nonce=nonce,
            nc="00000001",
            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            qop="auth",
            method="GET",
            uri="/dir/index.html",
        )
        assert got == expected


def test_challenges_offer_sha256_first_then_md5_with_one_nonce() -> None:
    values = DigestAuthenticator().challenges(REALM, 1.0, SOURCE)
    assert [v.split("algorithm=")[1].split(",")[0] for v in values] == ["SHA-256", "MD5"]
    assert len({v.split('nonce="')[1].split('"')[0] for v in values}) == 1
    assert all('qop="auth"' in v and f'realm="{REALM}"' in v and "stale" not in v for v in values)
    stale = DigestAuthenticator().challenges(REALM, 1.0, SOURCE, stale=True)
    assert all(v.endswith("stale=true") for v in stale)
    only_md5 = DigestAuthenticator().challenges(REALM, 1.0, SOURCE, algorithms=("MD5",))
    assert len(only_md5) == 1 and "algorithm=MD5" in only_md5[0]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_right_password_is_accepted(algorithm: str) -> None:
    auth = DigestAuthenticator()
    creds, _ = answer(auth, algorithm=algorithm)
    assert check(auth, creds, algorithm=algorithm) == Accepted(USER, REALM)


def test_wrong_password_is_refused_403() -> None:
    auth = DigestAuthenticator()
    creds, _ = answer(auth, password="guess")
    verdict = check(auth, creds)
    assert isinstance(verdict, Refused) and verdict.status == 403


def test_unknown_user_is_refused_like_a_wrong_password() -> None:
    auth = DigestAuthenticator()
    creds, _ = answer(auth)
    verdict = auth.verify(
        creds, method="REGISTER", request_uri=URI, realm=REALM, ha1=None, now=100.0, source=SOURCE
    )
    assert verdict == Refused(403, "Forbidden")


def test_nonce_from_another_source_or_secret_gets_a_fresh_challenge() -> None:
    auth = DigestAuthenticator()
    creds, _ = answer(auth, source="198.51.100.1")
    assert check(auth, creds) == Challenge(stale=False)
    other, _ = answer(DigestAuthenticator())  # issued by another process (a restart)
    assert check(auth, other) == Challenge(stale=False)
    forged, _ = answer(auth, nonce="AAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert check(auth, forged) == Challenge(stale=False)


def test_nonce_older_than_its_lifetime_is_stale_only_with_the_right_password() -> None:
    auth = DigestAuthenticator(lifetime=300.0)
    creds, _ = answer(auth, now=100.0)
    assert check(auth, creds, now=399.0) == Accepted(USER, REALM)
    late, _ = answer(auth, now=100.0, cnonce="x")
    assert check(auth, late, now=401.0) == Challenge(stale=True)
    wrong, _ = answer(auth, now=100.0, password="guess")
    assert isinstance(check(auth, wrong, now=401.0), Refused)


def test_replayed_nonce_count_is_not_accepted_and_counting_up_is() -> None:
    auth = DigestAuthenticator()
    creds, nonce = answer(auth)
    assert check(auth, creds) == Accepted(USER, REALM)
    assert check(auth, creds) == Challenge(stale=True)  # the same request again
    second, _ = answer(auth, nonce=nonce, nc="00000002", method="MESSAGE")
    assert check(auth, second, method="MESSAGE") == Accepted(USER, REALM)
    older, _ = answer(auth, nonce=nonce, nc="00000002", cnonce="other", method="MESSAGE")
    assert check(auth, older, method="MESSAGE") == Challenge(stale=True)


def test_counts_reordered_in_a_burst_are_accepted_once_each_within_the_window() -> None:
    """Over UDP a UA's requests with one nonce arrive out of order: a count below the highest
    is accepted once if it lies within NC_WINDOW (RFC 4303 §3.4.3's anti-replay window)."""
    table = ReplayTable()
    assert table.advance("n", 1, 1) and table.advance("n", 1, 5)
    assert table.advance("n", 1, 3) and table.advance("n", 1, 2) and table.advance("n", 1, 4)
    assert not any(table.advance("n", 1, nc) for nc in (1, 2, 3, 4, 5))  # each once
    assert table.advance("n", 1, 5 + NC_WINDOW)
    assert not table.advance("n", 1, 5)  # now older than the window: cannot tell, so no
    assert table.advance("n", 1, 6)  # the oldest count still inside it, never seen
    assert table.advance("n", 1, 5 + 3 * NC_WINDOW)  # a jump past the whole window
    assert not table.advance("n", 1, 5 + NC_WINDOW)


def test_a_wrong_response_does_not_advance_the_nonce_count() -> None:
    auth = DigestAuthenticator()
    creds, nonce = answer(auth)
    attack, _ = answer(auth, nonce=nonce, nc="ffffffff", password="guess")
    assert isinstance(check(auth, attack), Refused)
    assert check(auth, creds) == Accepted(USER, REALM)


def test_replay_table_is_bounded_and_a_dropped_nonce_is_not_accepted_again() -> None:
    table = ReplayTable(max_nonces=2)
    assert table.advance("a", 1, 1) and table.advance("b", 2, 1) and table.advance("c", 3, 1)
    assert len(table) == 2 and table.dropped_up_to == 1
    assert not table.advance("a", 1, 5)  # dropped: it may have been used, so no
    assert table.advance("d", 4, 1)  # issued after every dropped nonce: never used
    assert len(table) == 2


def test_authenticator_replay_table_stays_within_its_bound() -> None:
    auth = DigestAuthenticator(max_nonces=3)
    first, _ = answer(auth, now=10.0)
    assert check(auth, first, now=10.0) == Accepted(USER, REALM)
    for i in range(5):
        creds, _ = answer(auth, now=11.0 + i)
        assert check(auth, creds, now=11.0 + i) == Accepted(USER, REALM)
    assert len(auth.replay) == 3
    again, _ = answer(auth, nonce=first.nonce, nc="00000002")
    assert check(auth, again, now=20.0) == Challenge(stale=True)


def test_qop_auth_and_the_request_uri_are_required() -> None:
    auth = DigestAuthenticator()
    creds, _ = answer(auth)
    no_qop = Credentials(USER, REALM, creds.nonce, URI, creds.response, "MD5")
    assert isinstance(check(auth, no_qop), Refused)
    other_uri, _ = answer(auth, uri="sip:elsewhere.test")
    assert check(auth, other_uri) == Refused(400, "Digest URI Is Not The Request-URI")
    bad_nc, _ = answer(auth, nc="1")
    assert check(auth, bad_nc) == Refused(400, "Bad Nonce Count")
    wrong_realm = Credentials(
        USER, "fabrikam.test", creds.nonce, URI, creds.response, "MD5", "auth", "00000001", "c0ffee"
    )
    assert check(auth, wrong_realm) == Challenge(stale=False)


def test_parse_credentials_as_sipp_and_baresip_send_them() -> None:
    sipp = (
        'Digest username="alice",realm="contoso.test",cnonce="6b8b4567",nc=00000001,'
        'qop="auth",uri="sip:contoso.test",nonce="abc",response="0123ABCD",algorithm=MD5'
    )
    creds = parse_credentials(sipp)
    assert (creds.username, creds.qop, creds.nc, creds.response, creds.algorithm) == (
        "alice",
        "auth",
        "00000001",
        "0123abcd",
        "MD5",
    )
    baresip = (
        'Digest username="bob", realm="contoso.test", nonce="n", uri="sip:x@y", '
        'response="r", algorithm=sha-256, cnonce="c", qop=auth, nc=00000002'
    )
    assert parse_credentials(baresip).algorithm == "SHA-256"
    escaped = parse_credentials(
        'Digest username="a\\"b", realm="r", nonce="n", uri="u", response="x"'
    )
    assert escaped.username == 'a"b' and escaped.algorithm == "MD5" and escaped.qop is None


@pytest.mark.parametrize(
    "value",
    [
        "Basic YWxpY2U6cw==",
        'Digest username="alice", realm="r"',
        'Digest username="alice, realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="x"',
        "Digest realm",
    ],
)
def test_parse_credentials_refuses_what_is_not_a_digest_credential(value: str) -> None:
    with pytest.raises(DigestError):
        parse_credentials(value)


_PARAM_PIECES = st.sampled_from(
    ['username', 'realm', 'nonce', 'Qop', 'nc', 'x-y_1', '=', '"', '\\"', '\\', ',', ' ', '\t',
     '\u00a0', 'alice', '00000001', 'sip:a@b', 'a b', ';', '']
)


def _outcome(parse: object, text: str) -> object:
    try:
        return parse(text)  # type: ignore[operator]
    except DigestError:
        return DigestError


@given(st.lists(_PARAM_PIECES, max_size=16).map("".join))
def test_the_usual_credential_is_read_the_same_way_by_both_paths(text: str) -> None:
    # _parse_params reads the usual form one regular-expression match per parameter and leaves
    # anything else to the character scan: the result (or the refusal) must be the scan's
    assert _outcome(_parse_params, text) == _outcome(_scan_params, text)


def test_parse_credentials_reads_a_usual_credential_without_the_scan() -> None:
    text = 'username="alice",realm="contoso.test",nc=00000001,qop="auth" ,  uri="sip:x@y", response=ab '
    assert _parse_params(text) == _scan_params(text) == {
        "username": "alice", "realm": "contoso.test", "nc": "00000001", "qop": "auth",
        "uri": "sip:x@y", "response": "ab",
    }
