"""Issue 21: a flood of rate-limited events does not wake the event log's writer per event (each
wake-up was a thread switch: a quarter of what refusing a stream cost), and its summary still
comes while the log runs."""

from __future__ import annotations

import io
import threading
import time

import pytest

from edgeproxy.ops import events
from edgeproxy.ops.events import EventLog


class CountingCondition(threading.Condition):
    notified = 0

    def notify(self, n: int = 1) -> None:
        CountingCondition.notified += 1
        super().notify(n)


def test_suppressed_events_wake_the_writer_once_not_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    CountingCondition.notified = 0
    with monkeypatch.context() as patch:
        patch.setattr(events.threading, "Condition", CountingCondition)
        log = EventLog(io.StringIO(), output="json", rate_limit=(5, 0.0001))
    try:
        for i in range(1000):
            log.emit(events.LIMIT_REACHED, limit="partner-connection", value=i, for_partner="")
        assert log.statistics().suppressed == 995
        # 5 written (one wake-up each), the first suppression, at most a summary or two
        assert CountingCondition.notified < 20
    finally:
        log.close()


def test_the_summary_of_suppressed_events_is_written_while_the_log_runs() -> None:
    out = io.StringIO()
    log = EventLog(out, output="json", rate_limit=(1, 0.0001))
    try:
        for i in range(100):
            log.emit(events.LIMIT_REACHED, limit="connection", value=i, for_partner="")
        deadline = time.monotonic() + 10 * events.SUMMARY_INTERVAL
        while '"EP9003"' not in out.getvalue():
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
    finally:
        log.close()
    assert '"count":99' in out.getvalue()
