"""The load test's PNG: rate and latency over time from the ledger's per-second timeline.

matplotlib is the optional extra ``plot`` (also in ``test``): in CI it must be there; locally the
PNG test is skipped without it.
"""

from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import pytest

from edgeproxy.loadtest import report
from edgeproxy.loadtest.accounting import Ledger
from fixtures.tools import unavailable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _ledger() -> Ledger:
    """Three seconds of traffic: 10 sent per second, settled 5 ms (second 0) .. 25 ms later."""
    led = Ledger(start=100.0)
    n = 0
    for sec in range(3):
        for i in range(10):
            now = 100.0 + sec + i * 0.05
            led.sent(f"lt{n}", now)
            settle = led.saw_bounced if i == 9 else led.saw_delivered
            settle(f"lt{n}", now + 0.005 * (1 + 2 * sec))
            n += 1
    led.sent(f"lt{n}", 103.5)  # never settled: lost
    return led


def test_timeline_rows_carry_per_second_latency() -> None:
    rows = _ledger().timeline_rows()
    assert [r["second"] for r in rows] == [0, 1, 2, 3]
    assert [r["sent"] for r in rows] == [10, 10, 10, 1]
    assert [r["done"] for r in rows] == [10, 10, 10, 0]
    assert [round(r["p50_ms"], 3) for r in rows[:3]] == [5.0, 15.0, 25.0]
    assert rows[3]["p50_ms"] is None and rows[3]["p99_ms"] is None


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The PNG's chunks (type, body), each CRC checked."""
    assert data[:8] == PNG_SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_write_plot_writes_a_valid_png(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        unavailable("matplotlib not installed: it is in the test extras (pip install -e '.[test]')")
    led = _ledger()
    result = {"scenario": "unit", "timeline": led.timeline_rows(), **led.summary()}
    out = tmp_path / "run.png"
    note = report.write_plot(result, out, title="unit run")
    assert note == f"plot written to {out}"
    chunks = _chunks(out.read_bytes())
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert (width, height) == (640, 400)  # 8 x 5 inches at 80 dpi
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(set(pixels)) > 2  # something was drawn, not a blank canvas


def test_write_plot_without_matplotlib_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None)
    out = tmp_path / "run.png"
    assert report.write_plot({"timeline": []}, out).startswith("plot skipped")
    assert not out.exists()


def test_settle_span_runs_from_first_send_to_last_settling() -> None:
    summary = _ledger().summary()
    assert summary["settle_span_s"] == pytest.approx(102.475 - 100.0)
    assert Ledger().summary()["settle_span_s"] is None
