"""Result output: the JSON file, and a PNG of rate and latency over time only when matplotlib is
already installed (it is not a dependency: without it the plot is skipped with a note)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec


def write_json(result: dict[str, object], path: str | Path) -> None:
    Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")


def write_plot(result: dict[str, object], path: str | Path) -> str:
    """Write a PNG of sent/done per second; returns a note saying what happened."""
    if importlib.util.find_spec("matplotlib") is None:
        return "plot skipped: matplotlib is not installed (not a dependency of edgeproxy)"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result.get("timeline") or []
    assert isinstance(timeline, list)
    seconds = [row["second"] for row in timeline]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(seconds, [row["sent"] for row in timeline], label="sent/s")
    ax.plot(seconds, [row["done"] for row in timeline], label="delivered+bounced/s")
    ax.set_xlabel("s")
    ax.legend()
    fig.savefig(path)
    plt.close(fig)
    return f"plot written to {path}"


def summary_line(result: dict[str, object]) -> str:
    lat = result.get("latency_ms") or {}
    assert isinstance(lat, dict)
    return (
        f"sent {result['sent']} = delivered {result['delivered']} + bounced {result['bounced']} "
        f"+ lost {result['lost']}; {result['stanzas_per_s']:.0f} stanzas/s; "
        f"p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms"
    )
