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


#: Where the recipe for a load test against one's own edge is written.
DOCS = "docs/loadtest.md"
#: Stream set-up errors meaning the target could not reach the simulated domains' listener to
#: verify their dialback keys (the stanza error conditions the edge answers with).
_UNREACHABLE = ("remote-server-not-found", "remote-server-timeout")
#: Stream set-up errors meaning nothing accepted the connection at the target's address.
_UNREACHABLE_TARGET = ("Connection refused", "ConnectionRefused", "all attempts to connect")
#: Stanza kinds a server may drop without any reply (RFC 6121 §4.3.3 and §8.5.2: presence for a
#: user with no available resource; RFC 6120 §8.2: no error for a headline).
_SILENT_KINDS = ("presence", "headline", "subscribe")


class Diagnosis(msgspec.Struct, frozen=True):
    """One thing the run found wrong: a stable ``problem`` name, the message and what to do."""

    problem: str
    message: str
    hint: str


def _ms(value: object) -> str:
    return f"{value:.1f} ms" if isinstance(value, int | float) else "-"


def _counts(counts: object) -> str:
    assert isinstance(counts, dict)
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _proxy_hint(result: dict[str, object]) -> str:
    partners = result.get("partners") or {}
    assert isinstance(partners, dict)
    listen = partners.get("listen", "LISTEN-HOST:LISTEN-PORT")
    return (
        f"store the simulated domains as partners with proxy-fqdn {listen} (the load tester's "
        f"listener): `edgeproxy loadtest --setup-partners SCENARIO.toml`, or by hand as in {DOCS}"
    )


def diagnose(result: dict[str, object]) -> list[Diagnosis]:
    """What went wrong in a run, each with its most likely cause (empty: nothing lost)."""
    streams = result["streams"]
    assert isinstance(streams, dict)
    found: list[Diagnosis] = []
    wanted, ready = int(streams["wanted"]), int(streams["ready"])
    setup_errors = [str(e) for e in streams.get("setup_errors") or []]
    if ready < wanted:
        first = setup_errors[0] if setup_errors else "no reason recorded"
        if any(cause in e for e in setup_errors for cause in _UNREACHABLE):
            hint = ("the edge could not reach the simulated domains to verify their dialback keys; "
                    + _proxy_hint(result))
        elif any("policy-violation" in e or "not-authorized" in e for e in setup_errors):
            hint = ("the target does not accept the simulated domains as partners; "
                    + _proxy_hint(result))
        elif any(m in e for e in setup_errors for m in _UNREACHABLE_TARGET):
            target = result["target"]
            assert isinstance(target, dict)
            hint = (f"nothing accepts connections at {target['host']}:{target['port']}: is the edge "
                    "running, and is [target] host/port (or --target) one of its [edge] listen addresses?")
        else:
            hint = f"the target refused the simulated streams; see its log and {DOCS}"
        found.append(Diagnosis("streams-not-ready", f"{wanted - ready} of {wanted} streams could not be set up: {first}",
                               hint))
    sent, lost = int(result["sent"]), int(result["lost"])  # type: ignore[call-overload]
    answered = int(result["delivered"]) + int(result["bounced"])  # type: ignore[call-overload]
    if lost and not answered:
        accepted = int(streams.get("inbound_accepted", 0))
        how = ("the edge never connected to the simulated partners' listener" if not accepted
               else "the edge connected to the simulated partners' listener but sent nothing back")
        found.append(Diagnosis(
            "none-answered",
            f"0 of {sent} answered: {how} — are the simulated domains stored as partners with proxy-fqdn?",
            _proxy_hint(result),
        ))
    elif lost:
        by_kind = result.get("lost_by_kind") or {}
        assert isinstance(by_kind, dict)
        silent = [k for k in by_kind if k.split(" ", 1)[0] in _SILENT_KINDS]
        if silent and len(silent) == len(by_kind):
            hint = ("a server drops a presence or headline for a user who is not online without any "
                    "error reply, so they count as lost here; send message or iq kinds to have every "
                    "stanza answered")
        else:
            hint = ("stanzas with no reply within [traffic] drain seconds: raise drain, lower rate, "
                    f"or look in the edge's event log for the listed ids; see {DOCS}")
        found.append(Diagnosis("lost", f"{lost} of {sent} lost ({_counts(by_kind)})", hint))
    unsent = int(result.get("unsent", 0))  # type: ignore[call-overload]
    if unsent:
        found.append(Diagnosis("unsent", f"{unsent} stanzas not sent: their stream was closed by the target",
                               "see streams.errors in the result and the edge's event log"))
    return found


def summary_lines(result: dict[str, object]) -> list[str]:
    """The text summary: the accounting line, the bounces by condition, then each diagnosis."""
    lat = result.get("latency_ms") or {}
    assert isinstance(lat, dict)
    if lat.get("p50") is None:
        why = "nothing was sent" if not result["sent"] else "no stanza was answered"
        latency = f"latency p50 - p99 - ({why})"
    else:
        latency = f"latency p50 {_ms(lat.get('p50'))} p99 {_ms(lat.get('p99'))}"
    lines = [
        f"sent {result['sent']} = delivered {result['delivered']} + bounced {result['bounced']} "
        f"+ lost {result['lost']}; {result['stanzas_per_s']:.0f} stanzas/s; {latency}"
    ]
    bounces = result.get("bounced_by_condition") or {}
    if bounces:
        lines.append(f"bounced by error condition: {_counts(bounces)}")
    for d in diagnose(result):
        lines.append(f"{d.problem}: {d.message} (hint: {d.hint})")
    return lines


def summary_line(result: dict[str, object]) -> str:
    """The first line of :func:`summary_lines` (the accounting)."""
    return summary_lines(result)[0]
