"""Real ejabberd 23.01 (litware.test) federating with edgeproxy (contoso.test) — issue 4."""

from __future__ import annotations

from pathlib import Path

import trio
from _interop_lab import EJABBERD, lab
from test_prosody_interop import federate_both_ways

from edgeproxy.policy.model import Negotiation, Partner, PartnerType

NOS, REQ = Negotiation.NOT_SUPPORTED, Negotiation.REQUIRED


async def test_ejabberd_federates_over_tcp_dialback_row_17(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="litware.test", tls=NOS, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(60):
        async with lab(tmp_path, row, server=EJABBERD) as env:
            await federate_both_ways(env, "litware.test")
    assert "authenticated by tcp-dialback" in caplog.text


async def test_ejabberd_federates_over_starttls_and_dialback_row_13(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="litware.test", tls=REQ, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(60):
        async with lab(tmp_path, row, mode="starttls", server=EJABBERD) as env:
            await federate_both_ways(env, "litware.test")
            link = env.edge.router.pool.links[("contoso.test", "litware.test")]
            assert link.session is not None and link.session.conn.tls_active
    assert "authenticated by tls-dialback" in caplog.text


async def test_ejabberd_federates_over_starttls_and_sasl_external_row_2(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="litware.test", tls=REQ, sasl=REQ, dialback=False, type=PartnerType.FEDERATED)
    with trio.fail_after(60):
        async with lab(tmp_path, row, mode="secure", server=EJABBERD) as env:
            await federate_both_ways(env, "litware.test")
    assert "authenticated by sasl-over-tls" in caplog.text
