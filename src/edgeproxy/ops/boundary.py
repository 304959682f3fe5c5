"""The failure boundary: where input enters, an exception ends that input, never the process.

Theory of operation
-------------------
Every place where bytes from outside enter the server is a *surface* (``Surface``): an S2S
connection (inbound or outbound, before and after TLS), a dialback verification stream, a SIP
datagram, a SIP TCP/TLS connection, a loopback-channel frame and each item in it, an admin HTTP
request and a DNS answer. The handler of one such input runs inside :func:`contain`, or ends in an ``except*
Exception`` that calls :func:`report` (a stream's own driver): any ``Exception`` it raises — including one wrapped in a trio
``ExceptionGroup`` — is caught there and

1. the peer gets the protocol's answer through the caller's ``answer`` callback (stream error
   ``internal-server-error`` or ``bad-format``, SIP 400/500, a channel nack or bounce, HTTP 500,
   a failed lookup), itself guarded: an answer that fails is given up, not raised;
2. event ``EP1007 input-failed`` names the surface, the peer and the cause, and
   ``edgeproxy_input_failures_total{surface}`` counts it;
3. :func:`contain` returns False and the caller ends that one connection/datagram/frame.

Cancellation (``trio.Cancelled``) and ``KeyboardInterrupt``/``SystemExit`` are
``BaseException``\\s and pass through untouched, so shutdown still works. Expected protocol
failures (a reset, a bad TLS handshake, a parse error with its own answer) are handled by the
drivers before they reach here; what reaches the boundary is the unexpected — a parser that raised
the wrong thing, a library error nobody mapped, a bug. The rule is written down in
``docs/design.md`` and held by ``tests/hardening/test_failure_boundaries.py``, which injects a
raising handler at each surface.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("edgeproxy.boundary")


class _FailureMetrics(Protocol):
    def input_failed(self, surface: str) -> None: ...


class Telemetry(Protocol):
    """What the boundary reports to (``ops.telemetry.Telemetry`` is one); a protocol, so that
    this module imports nothing of the drivers it guards."""

    @property
    def metrics(self) -> _FailureMetrics: ...

    def emit_input_failed(self, surface: str, peer: str, error: str, answer: str) -> None: ...


class Surface(enum.StrEnum):
    """Where input enters; the ``surface`` label of the metric and event field."""

    S2S_INBOUND = "s2s-inbound"
    S2S_OUTBOUND = "s2s-outbound"
    DIALBACK_VERIFY = "dialback-verify"
    SIP_DATAGRAM = "sip-datagram"
    SIP_CONNECTION = "sip-connection"
    CHANNEL_FRAME = "channel-frame"
    CHANNEL_ITEM = "channel-item"
    ADMIN_REQUEST = "admin-request"
    DNS_ANSWER = "dns-answer"


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of a (nested) exception group, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """``TypeName: message`` of the first leaf, bounded (event fields are bounded anyway)."""
    leaf = first_error(exc)
    text = str(leaf)
    return f"{type(leaf).__name__}: {text[:300]}" if text else type(leaf).__name__


def report(telemetry: Telemetry | None, surface: Surface, peer: str, exc: BaseException, answer: str) -> None:
    """Count and log one contained failure (EP1007); never raises."""
    try:
        log.debug("%s from %s failed", surface, peer, exc_info=first_error(exc))
        if telemetry is not None:
            telemetry.metrics.input_failed(surface.value)
            telemetry.emit_input_failed(surface.value, peer, describe(exc), answer)
    except Exception:  # noqa: BLE001 - reporting must never turn into a second failure
        log.exception("reporting a contained failure failed")


Answer = Callable[[BaseException], Awaitable[None]]


async def contain(
    surface: Surface,
    peer: str,
    telemetry: Telemetry | None,
    handler: Callable[[], Awaitable[object]],
    *,
    answer: Answer | None = None,
    answer_name: str = "closed",
) -> bool:
    """Run ``handler``; True if it returned, False if it raised (answered, reported, contained)."""
    failure: BaseException | None = None
    try:
        await handler()
    except* Exception as group:
        failure = group
    if failure is None:
        return True
    report(telemetry, surface, peer, failure, answer_name)
    if answer is not None:
        try:
            await answer(first_error(failure))
        except* Exception as group:
            log.debug("answering a contained failure on %s failed: %s", surface, describe(group))
    return False
