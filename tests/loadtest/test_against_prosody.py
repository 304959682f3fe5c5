"""The harness against a real Prosody 0.12 (fabrikam.test, ``fixtures.xmpp_servers``): simulated
partner domains federate over TCP dialback (Prosody verifies our keys by connecting back to the
partner listener), delivery is seen by the raw c2s sink logged in as bob, bounces come back over
Prosody's own stream, and headlines to an unknown user — which Prosody drops silently — are
reported as lost. In CI (``CI=true``) a missing Prosody fails (``require_tool``)."""

from __future__ import annotations

from pathlib import Path

import trio

from edgeproxy.loadtest import LoadTest, parse_scenario
from fixtures.dnsmasq import start_dnsmasq, xmpp_server
from fixtures.ports import free_port
from fixtures.xmpp_servers import PASSWORD, start_prosody

PROSODY_ADDR = "127.0.0.22"
SIM_ADDR = "127.0.0.31"
SIMS = ("sim1.test", "sim2.test")


def scenario_text(s2s: int, c2s: int, sim_port: int, stanzas: int) -> str:
    return f"""
name = "prosody-small"
[target]
domain = "fabrikam.test"
host = "{PROSODY_ADDR}"
port = {s2s}
[partners]
domains = {list(SIMS)!r}
streams-per-domain = 2
listen-host = "{SIM_ADDR}"
listen-port = {sim_port}
[traffic]
stanzas = {stanzas}
rate = 1000
duration = 20
drain = 4
[[traffic.mix]]
kind = "message"
to = "bob@fabrikam.test"
weight = 7
[[traffic.mix]]
kind = "message"
to = "nobody@fabrikam.test"
[[traffic.mix]]
kind = "headline"
to = "nobody@fabrikam.test"
[sink]
kind = "c2s"
host = "{PROSODY_ADDR}"
port = {c2s}
user = "bob"
password = "{PASSWORD}"
"""


async def test_harness_accounts_for_every_stanza_against_prosody(tmp_path: Path) -> None:
    s2s, c2s, sim_port = free_port(PROSODY_ADDR), free_port(PROSODY_ADDR), free_port(SIM_ADDR)
    records = xmpp_server("fabrikam.test", PROSODY_ADDR, s2s)
    for sim in SIMS:
        records += xmpp_server(sim, SIM_ADDR, sim_port)
    dns = start_dnsmasq(tmp_path / "dns", records)
    prosody = start_prosody("fabrikam.test", PROSODY_ADDR, (dns.address, dns.port), c2s_port=c2s, s2s_port=s2s)
    try:
        with trio.fail_after(45):
            result = await LoadTest(parse_scenario(scenario_text(s2s, c2s, sim_port, 270))).run()
    except BaseException:
        print(prosody.log_text()[-6000:])
        raise
    finally:
        prosody.stop()
        dns.stop()
    assert result["streams"]["ready"] == 4, result["streams"]  # type: ignore[index]
    assert result["streams"]["dialback_verifications"] >= 1  # type: ignore[index]
    assert result["sent"] == 270
    assert result["sent"] == result["delivered"] + result["bounced"] + result["lost"]
    # Cycle of 9: 7 to bob (delivered), 1 chat to nobody (bounced), 1 headline (dropped: lost).
    assert (result["delivered"], result["bounced"], result["lost"]) == (210, 30, 30), result
    assert all(int(i[2:]) % 9 == 2 for i in result["lost_ids"])  # the cycle interleaves: bob, nobody-chat, headline, bob×6
