"""The SIP lexical layer shared by the message parser and the URI/header grammar: the parse
error every SIP parser raises (``SipParseError``, with the status to answer and the raw head) and
token-level helpers (RFC 3261 §25.1). Its own module so that ``message`` and ``uri`` both build on
it without importing each other."""

from __future__ import annotations

__all__ = ["SipParseError", "skip_quoted"]


class SipParseError(ValueError):
    """Malformed SIP; ``status`` is the response to send if the message was a request, ``head``
    the raw start line and headers when they were found (to answer from, see
    :func:`response_from_head`)."""

    def __init__(self, message: str, status: int = 400, head: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.head = head


def skip_quoted(text: str) -> int:
    """Index just after the quoted-string ``text`` starts with (§25.1: backslash escapes), or -1."""
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i + 1
        i += 1
    return -1
