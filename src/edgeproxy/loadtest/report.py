"""Result output: the JSON file, and a PNG of rate and latency over time only when matplotlib is
installed (the optional extra ``plot``, not a core dependency: without it the plot is skipped
with a note)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec


def write_json(result: dict[str, object], path: str | Path) -> None:
    Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")


def write_plot(result: dict[str, object], path: str | Path, title: str | None = None) -> str:
    """Write a PNG of the run's timeline: sent and settled (delivered + bounced) stanzas per
    second above, p50/p99 latency of the stanzas settled in each second below (log scale).
    Returns a note saying what happened (skipped when matplotlib is absent: ``pip install
    edgeproxy[plot]``)."""
    if importlib.util.find_spec("matplotlib") is None:
        return "plot skipped: matplotlib is not installed (pip install 'edgeproxy[plot]')"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result.get("timeline") or []
    assert isinstance(timeline, list)
    seconds = [row["second"] for row in timeline]
    fig, (rate, latency) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, dpi=80)
    rate.plot(seconds, [row["sent"] for row in timeline], label="sent/s")
    rate.plot(seconds, [row["done"] for row in timeline], label="delivered+bounced/s")
    rate.set_ylabel("stanzas/s")
    rate.legend(loc="upper right", fontsize="small")
    rate.set_title(title or str(result.get("scenario", "")), fontsize="medium")
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        points = [(row["second"], row[key]) for row in timeline if row.get(key) is not None]
        if points:
            latency.plot(*zip(*points, strict=True), marker=".", label=f"{label} latency")
    latency.set_ylabel("ms (settled in that second)")
    latency.set_xlabel("s since start of run")
    if any(row.get("p50_ms") for row in timeline):
        latency.set_yscale("log")
        latency.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
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
