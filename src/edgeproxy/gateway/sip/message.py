"""SIP messages: a sans-IO parser and serializer with limits (RFC 3261 §7, §18, §20, §25).

Theory of operation
-------------------
A SIP message is a start line, header fields, an empty line and an optional body (RFC 3261 §7).
:class:`SipParser` is fed bytes from a *stream* transport (TCP/TLS) in any chunking and yields
whole messages; there the body length comes only from ``Content-Length`` (§18.3: mandatory on
streams). :func:`parse_datagram` parses one UDP datagram, where a missing ``Content-Length`` means
"the rest of the datagram" and surplus bytes are discarded (§18.3).

Header fields keep their order and original names; lookups are case-insensitive and understand
the compact forms of §7.3.3 (``i`` Call-ID, ``f`` From, ``t`` To, ``v`` Via, ``m`` Contact,
``l`` Content-Length, ``c`` Content-Type, ``s`` Subject, ``o`` Event, ``e`` Content-Encoding,
``k`` Supported, ``u`` Allow-Events). Folded lines (§7.3.1, obsolete but legal) are unfolded.
Comma-separated values are not split here (a Contact list is split by ``uri.split_header_list``).

Malformed input raises :class:`SipParseError` carrying the status to answer with when the
message was a request (400, or 413 / 513 for size limits); the stream parser is dead afterwards
(the transport closes the connection: §18.3 gives no way to resynchronise a stream).

Limits (named, with their origin)
``MAX_HEAD_BYTES`` = 16384
    Start line plus headers. Kamailio's whole-message buffer is 64 KiB (``BUF_SIZE``); real
    heads are under 2 KiB; a REGISTER with many Contacts stays well under 16 KiB.
``MAX_HEADERS`` = 128
    Header fields in one message; SIPp and Lync messages carry under 30.
``MAX_BODY_BYTES`` = 65536
    Body bytes (``Content-Length``). A UDP datagram cannot exceed 65,507 bytes anyway; page-mode
    MESSAGE bodies are far smaller (RFC 3428 §8: 1300 bytes on non-congestion-controlled hops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

MAX_HEAD_BYTES: Final = 16384
MAX_HEADERS: Final = 128
MAX_BODY_BYTES: Final = 65536

SIP_VERSION: Final = "SIP/2.0"

COMPACT_FORMS: Final = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "s": "subject",
    "o": "event",
    "e": "content-encoding",
    "k": "supported",
    "u": "allow-events",
}

REASON_PHRASES: Final = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    488: "Not Acceptable Here",
    489: "Bad Event",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}

_TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


class SipParseError(ValueError):
    """Malformed SIP; ``status`` is the response to send if the message was a request."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


#: Header names seen so far → their canonical key (``canonical`` runs dozens of times per
#: message; real traffic uses a few dozen distinct spellings). Bounded: cleared when full.
_CANONICAL: dict[str, str] = {}
_CANONICAL_MAX: Final = 4096
#: Header names already checked against the token rule (same bound).
_VALID_NAMES: set[str] = set()


def canonical(name: str) -> str:
    """The lookup key of a header name: lower case, compact forms expanded."""
    key = _CANONICAL.get(name)
    if key is None:
        lowered = name.lower()
        key = COMPACT_FORMS.get(lowered, lowered)
        if len(_CANONICAL) >= _CANONICAL_MAX:
            _CANONICAL.clear()
        _CANONICAL[name] = key
    return key


def _valid_name(name: str) -> bool:
    if name in _VALID_NAMES:
        return True
    if not name or not set(name) <= _TOKEN_CHARS:
        return False
    if len(_VALID_NAMES) >= _CANONICAL_MAX:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return True


@dataclass(slots=True)
class Headers:
    """Ordered header fields with case-insensitive, compact-form-aware lookup."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        key = canonical(name)
        for n, v in self.items:
            if (_CANONICAL.get(n) or canonical(n)) == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = canonical(name)
        return [v for n, v in self.items if canonical(n) == key]

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))

    def prepend(self, name: str, value: str) -> None:
        self.items.insert(0, (name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name by one (appended if absent)."""
        self.remove(name)
        self.items.append((name, value))

    def remove(self, name: str) -> None:
        key = canonical(name)
        self.items = [(n, v) for n, v in self.items if canonical(n) != key]

    def remove_first(self, name: str) -> str | None:
        key = canonical(name)
        for i, (n, v) in enumerate(self.items):
            if canonical(n) == key:
                del self.items[i]
                return v
        return None

    def copy(self) -> Headers:
        return Headers(list(self.items))

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None


@dataclass(slots=True)
class SipRequest:
    method: str
    uri: str
    headers: Headers
    body: bytes = b""

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")


@dataclass(slots=True)
class SipResponse:
    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")


SipMessage = SipRequest | SipResponse


def parse_cseq(value: str) -> tuple[int, str]:
    number, _, method = value.strip().partition(" ")
    if not number.isdigit() or not method.strip():
        raise SipParseError(f"bad CSeq {value!r}")
    return int(number), method.strip().upper()


def serialize(message: SipMessage) -> bytes:
    """Bytes of a message; ``Content-Length`` is always (re)written from the body (§20.14)."""
    if isinstance(message, SipRequest):
        start = f"{message.method} {message.uri} {SIP_VERSION}"
    else:
        start = f"{SIP_VERSION} {message.status} {message.reason}"
    lines = [start]
    for name, value in message.headers.items:
        if canonical(name) != "content-length":
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(message.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + message.body


def response_to(
    request: SipRequest, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> SipResponse:
    """A response copying Via, From, To, Call-ID and CSeq from the request (§8.2.6.2)."""
    headers = Headers()
    for name, value in request.headers.items:
        key = canonical(name)
        if key == "via" or key in ("from", "call-id", "cseq"):
            headers.add(name, value)
        elif key == "to":
            if to_tag and ";tag=" not in value.replace(" ", ""):
                value = f"{value};tag={to_tag}"
            headers.add(name, value)
    return SipResponse(status, reason or REASON_PHRASES.get(status, "Unknown"), headers)


# -- parsing ----------------------------------------------------------------------------------


def _parse_head(head: bytes, max_headers: int) -> tuple[SipMessage, int | None]:
    """Parse start line and headers; return the message (empty body) and Content-Length."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("head is not UTF-8") from None
    lines = text.split("\r\n")
    start = lines[0]
    headers = Headers()
    first: dict[str, int] = {}  # canonical name -> index of its first field
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not headers.items:
                raise SipParseError("continuation line before any header")
            name, value = headers.items[-1]
            headers.items[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _valid_name(name):
            raise SipParseError(f"malformed header line {line[:40]!r}")
        if len(headers.items) >= max_headers:
            raise SipParseError(f"more than {max_headers} header fields", 513)
        first.setdefault(canonical(name), len(headers.items))
        headers.add(name, value.strip())
    message: SipMessage
    if start.startswith(SIP_VERSION + " "):
        _, status_text, reason = (start.split(" ", 2) + [""])[:3]
        if len(status_text) != 3 or not status_text.isdigit() or not 100 <= int(status_text) <= 699:
            raise SipParseError(f"bad status line {start[:60]!r}")
        message = SipResponse(int(status_text), reason, headers)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION:
            if len(parts) == 3 and parts[2].startswith("SIP/"):
                raise SipParseError(f"unsupported version {parts[2]!r}", 505)
            raise SipParseError(f"bad request line {start[:60]!r}")
        method, uri, _ = parts
        if not method or not set(method) <= _TOKEN_CHARS or not uri:
            raise SipParseError(f"bad request line {start[:60]!r}")
        message = SipRequest(method, uri, headers)
    for required in ("via", "from", "to", "call-id", "cseq"):
        if required not in first:
            raise SipParseError(f"missing mandatory header {required}")
    cseq_method = parse_cseq(headers.items[first["cseq"]][1])[1]
    if isinstance(message, SipRequest) and cseq_method != message.method:
        raise SipParseError("CSeq method differs from the request method")
    length_at = first.get("content-length")
    length_text = headers.items[length_at][1] if length_at is not None else None
    length: int | None = None
    if length_text is not None:
        if not length_text.isdigit():
            raise SipParseError(f"bad Content-Length {length_text!r}")
        length = int(length_text)
    return message, length


def parse_datagram(
    data: bytes,
    *,
    max_head_bytes: int = MAX_HEAD_BYTES,
    max_headers: int = MAX_HEADERS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> SipMessage:
    """Parse one UDP datagram (RFC 3261 §18.3)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > max_head_bytes:
            raise SipParseError("head too large", 513)
        raise SipParseError("no empty line after the headers")
    if end > max_head_bytes:
        raise SipParseError("head too large", 513)
    message, length = _parse_head(data[:end], max_headers)
    rest = data[end + 4 :]
    if length is None:
        length = len(rest)
    if length > max_body_bytes:
        raise SipParseError(f"body of {length} bytes over the limit", 413)
    if length > len(rest):
        raise SipParseError("datagram shorter than Content-Length")
    message.body = rest[:length]
    return message


class SipParser:
    """Incremental parser for a stream transport; ``feed`` then ``next_message`` until None."""

    def __init__(
        self,
        *,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_headers: int = MAX_HEADERS,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        self._pending: SipMessage | None = None
        self._need = 0
        self._dead = False

    def feed(self, data: bytes) -> None:
        if self._dead:
            raise SipParseError("parser is dead after an error")
        self._buffer += data
        # The buffer never holds more than one head and one body beyond what is consumed.
        limit = self.max_head_bytes + 4 + self.max_body_bytes
        if self._pending is None and len(self._buffer) > limit + 65536:
            self._dead = True
            raise SipParseError("peer sends faster than it is read", 513)

    def next_message(self) -> SipMessage | None:
        if self._dead:
            raise SipParseError("parser is dead after an error")
        try:
            return self._next()
        except SipParseError:
            self._dead = True
            raise

    def _next(self) -> SipMessage | None:
        if self._pending is None:
            # RFC 3261 §7.5: ignore CRLFs before a start line (also used as keep-alives, RFC 5626).
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
            end = self._buffer.find(b"\r\n\r\n", 0, self.max_head_bytes + 4)
            if end < 0:
                if len(self._buffer) > self.max_head_bytes:
                    raise SipParseError("head too large", 513)
                return None
            message, length = _parse_head(bytes(self._buffer[:end]), self.max_headers)
            if length is None:
                raise SipParseError("Content-Length is mandatory on stream transports")
            if length > self.max_body_bytes:
                raise SipParseError(f"body of {length} bytes over the limit", 413)
            del self._buffer[: end + 4]
            self._pending, self._need = message, length
        if len(self._buffer) < self._need:
            return None
        message = self._pending
        message.body = bytes(self._buffer[: self._need])
        del self._buffer[: self._need]
        self._pending = None
        return message
