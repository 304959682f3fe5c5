"""One view of several edge worker processes: the status and the metrics summed (sans-IO).

With ``[edge] workers`` above 1 each worker answers ``/status`` and ``/metrics`` for itself on a
private admin listener; the supervisor's admin endpoint serves them together:

* ``combined_status``: the supervisor's own status (its pid, the admin and SIP listeners) with
  every worker's external and internal listeners, streams (each marked with its worker), queues
  (named ``worker N: …``) and a ``workers`` table. The channel state is the worst of the
  workers' channels: a gateway that is connected to some workers only is not "connected".
* ``merged_exposition``: Prometheus text expositions summed sample by sample (same name and
  labels): counters, gauges and histogram buckets of the workers and the supervisor (whose
  gateway counts its own SIP and channel traffic) add up to the host's figures. ``*_created``
  samples (the time a series was created) are left out, and an ``info`` series is kept once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from edgeproxy.ops.status import (
    ChannelState,
    ChannelStatus,
    EdgeStatus,
    ListenerStatus,
    QueueStatus,
    Role,
    WorkerStatus,
)

#: Channel states from the worst to the best: the combined channel shows the worst one.
_CHANNEL_ORDER = (
    ChannelState.DOWN,
    ChannelState.NOT_CONNECTED,
    ChannelState.NOT_CONFIGURED,
    ChannelState.DRAINING,
    ChannelState.CONNECTED,
)


def _worst_channel(channels: Sequence[ChannelStatus]) -> ChannelStatus:
    if not channels:
        return ChannelStatus(state=ChannelState.NOT_CONNECTED)
    worst = min(channels, key=lambda c: _CHANNEL_ORDER.index(c.state))
    return msgspec.structs.replace(worst, unacked=sum(c.unacked for c in channels))


def combined_status(own: EdgeStatus, workers: Sequence[tuple[WorkerStatus, EdgeStatus | None]]) -> EdgeStatus:
    """The supervisor's ``own`` status with each worker's (None: not known yet) folded in."""
    external = [li for li in own.listeners if li.role is Role.EXTERNAL]
    others = [li for li in own.listeners if li.role is not Role.EXTERNAL]
    internal: list[ListenerStatus] = []
    streams = []
    queues: list[QueueStatus] = []
    channels: list[ChannelStatus] = []
    rows: list[WorkerStatus] = []
    for worker, status in workers:
        if status is None:
            rows.append(worker)
            continue
        for listener in status.listeners:
            if listener.role is Role.EXTERNAL and listener not in external:
                external.append(listener)
            elif listener.role is Role.INTERNAL:
                internal.append(listener)
        streams += [msgspec.structs.replace(s, worker=worker.index) for s in status.streams]
        queues += [msgspec.structs.replace(q, name=f"worker {worker.index}: {q.name}") for q in status.queues]
        channels.append(status.channel)
        rows.append(msgspec.structs.replace(worker, streams=len(status.streams)))
    return msgspec.structs.replace(
        own,
        listeners=(*external, *internal, *others),
        streams=tuple(streams),
        channel=_worst_channel(channels),
        queues=(*queues, *own.queues),
        workers=tuple(rows),
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample_line(name: str, labels: dict[str, str], value: float) -> str:
    if labels:
        inside = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
        return f"{name}{{{inside}}} {floatToGoString(value)}"
    return f"{name} {floatToGoString(value)}"


#: The supervisor's own families that describe an edge process's state, which only the workers
#: know (the supervisor runs the gateway, not an edge): left out of its own exposition.
EDGE_STATE_FAMILIES = frozenset({
    "edgeproxy_gateway_channel_state",
    "edgeproxy_gateway_channel_unacked",
    "edgeproxy_queue_depth",
    "edgeproxy_streams",
})


def merged_exposition(workers: Iterable[str], own: str = "") -> bytes:
    """The workers' Prometheus text expositions and the supervisor's ``own`` (without
    ``EDGE_STATE_FAMILIES``) summed per sample (see the module docstring)."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    sources = [(text, frozenset[str]()) for text in workers]
    if own:
        sources.append((own, EDGE_STATE_FAMILIES))
    for text, excluded in sources:
        for family in text_string_to_metric_families(text):
            if family.name in excluded or family.name.endswith("_created"):
                continue  # (the text format exposes a counter's creation time as a gauge)
            _doc, _type, samples = families.setdefault(family.name, (family.documentation, family.type, {}))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if family.type == "info" or sample.name.endswith("_info"):
                    samples[key] = max(samples.get(key, 0.0), sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    lines: list[str] = []
    for name in sorted(families):
        doc, kind, samples = families[name]
        exposed_kind = "gauge" if kind == "info" else kind
        lines.append(f"# HELP {name} {doc.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        lines.append(f"# TYPE {name} {exposed_kind}")
        lines += [_sample_line(sample, dict(labels), value) for (sample, labels), value in samples.items()]
    return ("\n".join(lines) + "\n").encode()
