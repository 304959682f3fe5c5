"""The outbound policy is decided once, by the edge, and a SIP sender still hears the verdict.

A SIP MESSAGE becomes a stanza the gateway queues on the loopback channel without judging it;
the edge's router decides the outbound policy (SPEC §6) and refuses with a *nack* — a ``Bounce``
naming the item — written before the ack that covers it (``loopback/endpoint.py``, "Nacks before
acks"). The gateway's wait for the item ends with the condition, and SIPp gets the mapped status
instead of a 200 for a message that went nowhere. Real ``edgeproxy serve`` (role ``both``), real
SIPp over UDP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from _sipp import run_sipp, sipp_command

from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
)
from fixtures.serve import ServeProcess, start_serve
from fixtures.sipauth import user

SERVER, UA = "127.0.4.1", "127.0.4.2"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    fabrikam = Partner(domain="fabrikam.test", tls=Negotiation.NOT_SUPPORTED,
                       sasl=Negotiation.NOT_SUPPORTED, dialback=True, type=PartnerType.FEDERATED,
                       proxy_fqdn="127.0.4.9:1")  # nobody listens: nothing here reaches it
    store = Configuration(
        gateway=GatewaySettings(dialback_secret="policy-once-secret"),
        partners=(fabrikam,),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),
                  AccessPolicy(identity="no-xmpp")),
        users=(user("alice"), user("dave", policy="no-xmpp")),
    )
    process = start_serve(tmp_path_factory.mktemp("policy-once"), address=SERVER, store=store)
    yield process
    process.stop()


async def send_message(serve: ServeProcess, tmp_path: Path, sender: str, to: str) -> str:
    service, domain = to.split("@")
    return await run_sipp(
        sipp_command(
            "message_uac.xml", UA, "-s", service,
            "-key", "from_user", sender, "-key", "from_domain", "contoso.test",
            "-key", "domain", domain, "-key", "text", "policy once",
            remote=f"{SERVER}:{serve.sip_port}",
        ),  # fmt: skip
        tmp_path / f"{sender}-{service}.log",
    )


async def test_a_message_to_a_domain_that_is_no_partner_gets_404_from_the_edges_verdict(
    serve: ServeProcess, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        log = await send_message(serve, tmp_path, "alice", "mallory@unknown.test")
    assert "STATUS 404" in log  # remote-server-not-found (§2: not a partner), decided at the edge
    serve.assert_serving()


async def test_a_message_from_a_user_without_xmpp_access_gets_403(
    serve: ServeProcess, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        log = await send_message(serve, tmp_path, "dave", "bob@fabrikam.test")
    assert "STATUS 403" in log  # forbidden (§6 outbound: sender has no XMPP access)


async def test_a_message_the_edge_allows_is_still_answered_200(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """Taken by the edge (queued for fabrikam.test): the nacks ahead did not hold its ack."""
    with trio.fail_after(40):
        log = await send_message(serve, tmp_path, "alice", "bob@fabrikam.test")
    assert "STATUS 200" in log
