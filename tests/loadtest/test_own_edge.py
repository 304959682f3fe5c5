"""``edgeproxy loadtest`` against one's own running edge, the way docs/loadtest.md says.

A real ``edgeproxy serve`` (edge and gateway) on 127.0.31.1 with no resolver of its own; the load
tester's partner listener on ``localhost`` (a free port), a name the edge resolves from
/etc/hosts. With ``--setup-partners`` the simulated domains are
stored as partners whose proxy FQDN is that listener, so the edge needs no DNS to verify their
dialback keys and to answer them: every stanza comes back delivered (iq pings answered) or
bounced (messages for a user who is not registered over SIP), none is lost. Without it, the
summary says why no stream could be set up and what to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.loadtest.report import diagnose
from edgeproxy.policy.model import AccessPolicy, Configuration, GatewaySettings, User
from fixtures.ports import free_port
from fixtures.serve import ServeProcess, start_serve

EDGE_ADDR = "127.0.31.1"
#: The load tester's listener: a name the edge resolves without any DNS server (/etc/hosts).
SIM_HOST, SIM_ADDR = "localhost", "127.0.0.1"
SIMS = ("sim1.test", "sim2.test")
STANZAS = 60


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[ServeProcess]:
    store = Configuration(
        gateway=GatewaySettings(dialback_secret="own-edge-dialback-secret"),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(User(sip="sip:bob@contoso.test"),),
    )
    serve = start_serve(tmp_path / "edge", address=EDGE_ADDR, store=store)
    try:
        yield serve
    finally:
        serve.stop()


def write_scenario(path: Path, edge: ServeProcess) -> Path:
    """The scenario of docs/loadtest.md, aimed at ``edge``."""
    path.write_text(f"""
name = "own-edge"
[target]
domain = "contoso.test"
host = "{EDGE_ADDR}"
port = {edge.s2s_port}
[partners]
domains = {list(SIMS)!r}
listen-host = "{SIM_HOST}"
listen-port = {free_port(SIM_ADDR)}
[traffic]
stanzas = {STANZAS}
duration = 20
drain = 5
[[traffic.mix]]
kind = "message"
to = "bob@contoso.test"
[[traffic.mix]]
kind = "iq"
to = "contoso.test"
""")
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args], capture_output=True, text=True,
                          timeout=90, cwd=cwd)


def test_the_documented_recipe_loses_nothing(edge: ServeProcess, tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "own-edge.toml", edge)
    config = str(edge.workdir / "edgeproxy.toml")
    done = cli("loadtest", str(scenario), "--config", config, "--setup-partners", "--remove-partners",
               "--json", "--out", str(tmp_path / "result.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["streams"]["ready"] == len(SIMS), result["streams"]
    assert (result["sent"], result["lost"], result["diagnosis"]) == (STANZAS, 0, [])
    # Half are iq pings the edge answers; half messages for bob, who has no SIP registration.
    assert result["delivered"] == STANZAS // 2 and result["bounced"] == STANZAS // 2
    assert sum(result["bounced_by_condition"].values()) == STANZAS // 2
    assert "?" not in result["bounced_by_condition"]
    assert json.loads((tmp_path / "result.json").read_text())["lost"] == 0
    assert "proxy-fqdn" in done.stderr  # the note on what was stored goes to stderr with --json
    # --remove-partners took the stored rows away again.
    listed = cli("partner", "get", "--json", "--config", config, cwd=tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


@pytest.mark.parametrize(("rows", "cause"), [
    ("none", "policy-violation"),  # the edge has no partner row for the simulated domains
    ("without proxy-fqdn", "remote-server-not-found"),  # rows, but sim1.test is in no DNS
])
def test_without_usable_partner_rows_the_summary_names_the_cause(
    edge: ServeProcess, tmp_path: Path, rows: str, cause: str
) -> None:
    scenario = write_scenario(tmp_path / "own-edge.toml", edge)
    config = str(edge.workdir / "edgeproxy.toml")
    if rows != "none":
        for sim in SIMS:
            stored = cli("partner", "new", sim, "--type", "federated", "--tls", "not-supported", "--sasl",
                         "not-supported", "--dialback", "--config", config, cwd=tmp_path)
            assert stored.returncode == 0, stored.stderr
        time.sleep(2.5)  # the running edge reads its store within 2 s (no reload needed)
    done = cli("loadtest", str(scenario), "--out", str(tmp_path / "result.json"), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("sent 0 = delivered 0 + bounced 0 + lost 0; 0 stanzas/s; "
                        "latency p50 - p99 - (nothing was sent)")
    assert lines[1].startswith("streams-not-ready: 2 of 2 streams could not be set up: ")
    assert cause in lines[1]
    assert "proxy-fqdn" in lines[1] and "--setup-partners" in lines[1] and "docs/loadtest.md" in lines[1]
    assert "None" not in done.stdout


def _result(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "target": {"domain": "contoso.test", "host": EDGE_ADDR, "port": 5269},
        "partners": {"domains": list(SIMS), "listen": f"{SIM_HOST}:5270"},
        "streams": {"wanted": 2, "ready": 2, "setup_errors": [], "inbound_accepted": 0},
        "sent": 10, "delivered": 0, "bounced": 0, "lost": 10, "unsent": 0,
        "lost_by_kind": {"message to bob@contoso.test": 10},
    }
    return {**base, **changes}


def test_nothing_answered_points_at_the_partner_rows() -> None:
    (found,) = diagnose(_result())
    assert found.problem == "none-answered"
    assert found.message.startswith("0 of 10 answered: the edge never connected to the simulated partners' listener")
    assert f"proxy-fqdn {SIM_HOST}:5270" in found.hint


def test_lost_presences_are_explained_as_dropped_without_a_reply() -> None:
    (found,) = diagnose(_result(delivered=5, lost=5, lost_by_kind={"presence to bob@contoso.test": 5}))
    assert found.problem == "lost" and found.message == "5 of 10 lost (presence to bob@contoso.test 5)"
    assert "without any error reply" in found.hint
