"""Scenario decoding (unknown keys refused), the mix, the ledger identity, /proc sampling."""

from __future__ import annotations

import os

import msgspec
import pytest

from edgeproxy.loadtest.accounting import Ledger, percentile
from edgeproxy.loadtest.procstats import sample
from edgeproxy.loadtest.scenario import StanzaKind, parse_scenario
from edgeproxy.loadtest.stanzas import build_stanza, mix_cycle
from edgeproxy.tokenizer import Stanza, Tokenizer

SCENARIO = """
name = "unit"
[target]
domain = "contoso.test"
[partners]
count = 3
streams-per-domain = 2
[traffic]
stanzas = 10
[[traffic.mix]]
kind = "message"
to = "bob@contoso.test"
weight = 2
[[traffic.mix]]
kind = "iq"
to = "contoso.test"
"""


def test_scenario_decodes_with_defaults_and_generated_domains() -> None:
    s = parse_scenario(SCENARIO)
    assert s.partners.domain_names() == ("sim1.test", "sim2.test", "sim3.test")
    assert s.traffic.mix[0].kind is StanzaKind.MESSAGE and s.traffic.rate == 0


def test_scenario_with_an_unknown_key_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        parse_scenario(SCENARIO.replace("stanzas = 10", "stanzas = 10\nstanza = 3"))


def test_scenario_without_a_mix_is_refused() -> None:
    text = SCENARIO.split("[[traffic.mix]]")[0] + "mix = []\n"
    with pytest.raises(msgspec.ValidationError):
        parse_scenario(text)


def test_mix_cycle_honours_weights_and_every_stanza_parses() -> None:
    s = parse_scenario(SCENARIO)
    cycle = mix_cycle(s.traffic.mix)
    assert [e.kind for e in cycle] == [StanzaKind.MESSAGE, StanzaKind.IQ, StanzaKind.MESSAGE]
    tok = Tokenizer()
    tok.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    for kind in StanzaKind:
        entry = msgspec.structs.replace(s.traffic.mix[0], kind=kind)
        (stanza,) = tok.feed(build_stanza(7, entry, "u1@sim1.test/lt"))
        assert isinstance(stanza, Stanza) and stanza.id == "lt7" and stanza.from_ == "u1@sim1.test/lt"


def test_ledger_counts_each_id_once_and_reports_the_lost_ones() -> None:
    ledger = Ledger()
    for n in range(5):
        ledger.sent(f"lt{n}", 0.0)
    ledger.scan_delivered(b"<message id='lt0'/><message id=\"lt1\"/><message id='lt0'/>", 0.002)
    ledger.saw_bounced("lt2", 0.004)
    ledger.saw_delivered("lt99", 0.005)  # never sent
    summary = ledger.summary()
    assert (summary["sent"], summary["delivered"], summary["bounced"], summary["lost"]) == (5, 2, 1, 2)
    assert summary["lost_ids"] == ["lt3", "lt4"]
    assert summary["unknown_ids_seen"] == 1


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_proc_sample_reads_cpu_and_rss_of_a_live_process() -> None:
    now = sample(os.getpid())
    assert now.rss_kib > 1000 and now.cpu_seconds > 0
