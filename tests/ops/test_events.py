"""The event log: catalogue and docs agree, JSON lines with known ids, body redaction, bounds."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from pathlib import Path

import pytest

from edgeproxy.ops import events
from edgeproxy.ops.events import CATALOGUE, Content, EventLog, EventLogHandler, Severity

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"
BODY = "the secret merger is on for Tuesday"


def documented_rows() -> dict[str, tuple[str, str, str, str]]:
    rows: dict[str, tuple[str, str, str, str]] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| (EP\d{4}) \| (.*) \|$", line)
        if m:
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", m[2])]
            assert m[1] not in rows, f"{m[1]} listed twice in docs/events.md"
            rows[m[1]] = tuple(cells)  # type: ignore[assignment]
    return rows


def parse_lines(text: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in text.splitlines()]
    documented = documented_rows()
    for r in records:
        assert r["id"] in documented, f"{r['id']} not in docs/events.md"
        assert r["id"] in CATALOGUE
    return records


def every_event_with_body_fields() -> list[tuple[events.EventClass, dict[str, object]]]:
    """Each event class once, with the content-carrying fields a careless caller might pass."""
    stanza = f"<message from='a@fabrikam.test' to='b@contoso.test'><body>{BODY}</body></message>"
    return [
        (
            e,
            {
                "partner": "fabrikam.test",
                "body": BODY,
                "stanza": stanza.encode(),
                "note": BODY,
                "text": f"peer said: {stanza}",
                "detail": Content(BODY),
                "error": ValueError(f"bad <subject>{BODY}</subject>"),
            },
        )
        for e in CATALOGUE.values()
    ]


def test_docs_list_exactly_the_catalogue_with_meaning_and_hint():
    documented = documented_rows()
    assert set(documented) == set(CATALOGUE)
    for event_id, (name, severity, meaning, hint) in documented.items():
        e = CATALOGUE[event_id]
        assert (name, severity, meaning, hint) == (e.name, e.severity.value, e.meaning, e.hint)


def test_catalogue_ids_and_names_are_unique_and_well_formed():
    names = [e.name for e in CATALOGUE.values()]
    assert len(set(names)) == len(names)
    for e in CATALOGUE.values():
        assert re.fullmatch(r"EP[1-9]\d{3}", e.id)
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", e.name)
        assert e.hint and e.meaning and e.template
    with pytest.raises(TypeError):
        CATALOGUE["EP0000"] = events.STARTED  # type: ignore[index]


def test_every_emitted_line_is_json_with_a_known_id_and_no_body():
    out = io.StringIO()
    with EventLog(out, output="json") as log:
        for e, fields in every_event_with_body_fields():
            log.emit(e, **fields)
    records = parse_lines(out.getvalue())
    assert [r["id"] for r in records] == list(CATALOGUE)
    assert BODY not in out.getvalue()
    assert "Tuesday" not in out.getvalue()
    first = records[0]
    assert first["body"] == f"[redacted {len(BODY)} chars]"
    assert str(first["stanza"]).startswith("[redacted ")
    assert "<body>[redacted]</body>" in str(first["text"])
    assert first["partner"] == "fabrikam.test"


def test_bodies_appear_only_when_body_logging_is_on():
    out = io.StringIO()
    with EventLog(out, output="json", log_message_bodies=True) as log:
        log.emit(events.STANZA_REFUSED, body=BODY, stanza=f"<body>{BODY}</body>".encode())
    (record,) = parse_lines(out.getvalue())
    assert record["body"] == BODY
    assert BODY in str(record["stanza"])


def test_body_logging_can_be_switched_off_at_reload():
    out = io.StringIO()
    with EventLog(out, output="json", log_message_bodies=True) as log:
        log.emit(events.STANZA_REFUSED, body=BODY)
        log.flush()
        log.log_message_bodies = False
        log.emit(events.STANZA_REFUSED, body=BODY)
    first, second = parse_lines(out.getvalue())
    assert first["body"] == BODY
    assert BODY not in json.dumps(second)


def test_record_has_stable_leading_keys_message_and_hint_last():
    out = io.StringIO()
    with EventLog(out, output="json", clock=lambda: 1_700_000_000.25) as log:
        log.emit(events.BIND_FAILED, role="external", address="0.0.0.0:5269", error=OSError(98, "Address in use"))
    (record,) = parse_lines(out.getvalue())
    assert list(record)[:5] == ["ts", "id", "event", "severity", "message"]
    assert list(record)[-1] == "hint"
    assert record["ts"] == "2023-11-14T22:13:20.250Z"
    assert record["severity"] == "error"
    assert record["message"] == "cannot bind external listener on 0.0.0.0:5269: OSError: [Errno 98] Address in use"


def test_reserved_field_names_do_not_overwrite_the_record():
    out = io.StringIO()
    with EventLog(out, output="json") as log:
        log.emit(events.INTERNAL_ERROR, id="x", hint="y", task="t", error="e")
    (record,) = parse_lines(out.getvalue())
    assert record["id"] == "EP1006" and record["field_id"] == "x" and record["field_hint"] == "y"


def test_missing_template_fields_show_as_question_marks():
    out = io.StringIO()
    with EventLog(out, output="json") as log:
        log.emit(events.PARTNER_REFUSED, domain="evil.test")
    (record,) = parse_lines(out.getvalue())
    assert record["message"] == "? stream with evil.test refused: not a partner"


def test_terminal_output_is_readable_text_with_hint():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with EventLog(out) as log:
        log.emit(events.DNS_FAILED, rtype="SRV", name="_xmpp-server._tcp.fabrikam.test", outcome="nxdomain", body=BODY)
    text = out.getvalue()
    assert "WARNING EP4001 dns-failed: SRV lookup of _xmpp-server._tcp.fabrikam.test failed: nxdomain" in text
    assert "hint: `edgeproxy dns check`" in text
    assert BODY not in text


def test_minimum_severity_filters_info():
    out = io.StringIO()
    with EventLog(out, output="json", minimum=Severity.WARNING) as log:
        log.emit(events.STARTED, domains="contoso.test", listeners="")
        log.emit(events.CHANNEL_LOST, peer="127.0.0.1:5000", reason="eof")
    assert [r["id"] for r in parse_lines(out.getvalue())] == ["EP5002"]


class BlockedStream(io.StringIO):
    """A sink that blocks every write until released: a stuck pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(10)
        return super().write(s)


def test_emit_never_blocks_on_a_stuck_sink_and_counts_overflow():
    out = BlockedStream()
    log = EventLog(out, output="json", capacity=5)
    try:
        for i in range(50):  # would hang here if emit waited for the sink
            log.emit(events.LIMIT_REACHED, limit="connections", value=i, for_partner="")
        stats = log.statistics()
        assert stats.buffered <= 5
        assert stats.dropped >= 50 - 5 - 1
    finally:
        out.release.set()
        log.close()
    records = parse_lines(out.getvalue())
    overflow = [r for r in records if r["id"] == "EP9001"]
    assert overflow and overflow[0]["dropped"] == log.statistics().dropped
    assert len(records) == 50 - log.statistics().dropped + 1


def test_broken_sink_does_not_raise_into_callers():
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    log = EventLog(Broken(), output="json")
    log.emit(events.STARTED, domains="d", listeners="l")
    log.close()
    assert log.statistics().write_errors >= 1


def test_on_emit_sees_each_accepted_event():
    seen: list[str] = []
    with EventLog(io.StringIO(), output="json", on_emit=lambda e: seen.append(e.id)) as log:
        log.emit(events.CHANNEL_LOST, peer="p", reason="r")
        log.emit(events.CONFIG_RELOADED, added=[], removed=["x"], closed=1)
    assert seen == ["EP5002", "EP8001"]


def test_stdlib_logging_warnings_become_known_event_lines():
    out = io.StringIO()
    logger = logging.getLogger("edgeproxy.test.bridge")
    with EventLog(out, output="json") as log:
        handler = EventLogHandler(log)
        logger.addHandler(handler)
        try:
            logger.warning("stanza <message><body>%s</body></message> undeliverable", BODY)
            logger.info("not logged: below warning")
        finally:
            logger.removeHandler(handler)
    (record,) = parse_lines(out.getvalue())
    assert record["id"] == "EP9002" and record["logger"] == "edgeproxy.test.bridge"
    assert BODY not in out.getvalue()


def test_long_values_are_cut_to_keep_lines_bounded():
    out = io.StringIO()
    with EventLog(out, output="json") as log:
        log.emit(events.STREAM_ERROR_RECEIVED, condition="undefined-condition", peer="p", text="x" * 100_000)
    (record,) = parse_lines(out.getvalue())
    assert len(str(record["text"])) < 1100


def test_a_flood_of_one_warning_is_written_up_to_the_burst_then_summarised():
    out = io.StringIO()
    suppressed: list[str] = []
    log = EventLog(out, output="json", rate_limit=(5, 0.0001), on_suppress=lambda e: suppressed.append(e.id))
    try:
        for i in range(1000):
            log.emit(events.LIMIT_REACHED, limit="preauth-total", value=i, for_partner="")
        log.emit(events.STARTED, domains="contoso.test", listeners="x")  # info: never limited
    finally:
        log.close()
    records = parse_lines(out.getvalue())
    assert [r["id"] for r in records].count("EP6001") == 5
    (summary,) = [r for r in records if r["id"] == "EP9003"]
    assert summary["suppressed_id"] == "EP6001" and summary["count"] == 995
    assert len(suppressed) == 995 and log.statistics().suppressed == 995
    assert any(r["id"] == "EP1000" for r in records)


def test_the_rate_limit_refills_so_a_rare_warning_is_always_written():
    out = io.StringIO()
    log = EventLog(out, output="json", rate_limit=(1, 1000.0))
    try:
        for _ in range(3):
            log.emit(events.LIMIT_REACHED, limit="connection", value=1, for_partner="")
            time.sleep(0.01)  # 10 tokens' worth at 1,000/s
    finally:
        log.close()
    assert [r["id"] for r in parse_lines(out.getvalue())].count("EP6001") == 3
