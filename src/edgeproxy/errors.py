"""The edgeproxy exception tree.

Protocol errors carry the XMPP stream-error condition (RFC 6120 §4.9.3) to send to the peer, so
the one place that turns an exception into bytes on the wire never has to guess.
"""

from __future__ import annotations


class EdgeproxyError(Exception):
    """Base of every error edgeproxy raises on purpose."""


class ConfigError(EdgeproxyError):
    """The configuration file (or a configuration change) is invalid; the message names the key."""


class ProtocolError(EdgeproxyError):
    """A peer broke the protocol; ``condition`` is the RFC 6120 stream-error condition to send."""

    condition: str = "undefined-condition"

    def __init__(self, message: str, condition: str | None = None) -> None:
        super().__init__(message)
        if condition is not None:
            self.condition = condition
