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
message was a request (400, or 413 / 513 for size limits) and, when the head was found, its raw
bytes (``head``: :func:`response_from_head` builds the answer from them); the stream parser is
dead afterwards (the transport closes the connection: §18.3 gives no way to resynchronise a
stream). Nothing else is raised, whatever the bytes (issue 13; a property test holds it).

Every number is read by an ASCII grammar (:func:`parse_uint`: ``[0-9]{1,10}``), never by
``str.isdigit``/``int`` on arbitrary text: ``str.isdigit`` accepts ``²`` (which ``int`` refuses)
and ``int`` accepts ``３`` and 4,300-digit strings. A request's mandatory headers are checked as
the head is parsed (§8.1.1): the top Via (``uri.parse_via``), From and To (an address with a
scheme), a Call-ID with no white space, and CSeq (a number under 2**31 and the method, §8.1.1.5).

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

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from edgeproxy.gateway.sip import uri as _uri
from edgeproxy.gateway.sip.lexical import SipParseError, skip_quoted

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

#: Methods known to be tokens (a request line's method is checked against the token rule
#: only when it is not one of these).
_METHODS: Final = frozenset(
    ("MESSAGE", "REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL")
)
#: URI schemes known to be tokens (others are checked against the token rule).
_SCHEMES: Final = frozenset(("sip", "sips", "tel"))
_TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


#: Numbers: ASCII digits only, at most ten (every SIP number fits in 32 bits: CSeq < 2**31,
#: delta-seconds, ports, Content-Length, status codes; §25.1 ``DIGIT`` is ASCII %x30-39).
_UINT: Final = re.compile(r"[0-9]{1,10}")
_STATUS: Final = re.compile(r"[1-6][0-9][0-9]")
_CSEQ: Final = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9.!%*_+`'~-]+)")
#: §8.1.1.5: "The sequence number MUST be expressible as a 32-bit unsigned integer and MUST be
#: less than 2**31."
MAX_CSEQ: Final = 2**31 - 1
MAX_UINT32: Final = 2**32 - 1
#: The headers a response copies from its request (§8.2.6.2).
RESPONSE_COPIES: Final = ("via", "from", "to", "call-id", "cseq")
#: Headers a response cannot do without beyond those, by status (§21.4.2 401, §21.4.6 405,
#: §21.4.8 407, §21.4.15 420, §21.4.16 421, §21.4.17 423) and, for a 2xx, by method (RFC 6665
#: §4.2.1.1: a 2xx to SUBSCRIBE has Expires and, creating a dialog, Contact and Record-Route).
REQUIRED_FOR_STATUS: Final = {
    401: ("www-authenticate",),
    405: ("allow",),
    407: ("proxy-authenticate",),
    420: ("unsupported",),
    421: ("require",),
    423: ("min-expires",),
}
REQUIRED_FOR_2XX: Final = {"SUBSCRIBE": ("expires", "contact", "record-route")}


def parse_uint(text: str, what: str, *, maximum: int = MAX_UINT32) -> int:
    """An unsigned decimal of ASCII digits (at most ten, at most ``maximum``), else
    :class:`SipParseError` naming ``what``."""
    text = text.strip()
    if _UINT.fullmatch(text) is None or int(text) > maximum:
        raise SipParseError(f"bad {what} {text[:40]!r}")
    return int(text)


def parse_uint_or(text: str | None, default: int, *, maximum: int = MAX_UINT32) -> int:
    """:func:`parse_uint`, or ``default`` for an absent or malformed value (for fields where
    the RFC says to use a default then, e.g. Expires in a SUBSCRIBE, §20.19)."""
    if text is None:
        return default
    text = text.strip()
    if _UINT.fullmatch(text) is None or int(text) > maximum:
        return default
    return int(text)


def warning_text(text: str) -> str:
    """``text`` fit for a Warning header's quoted-string (§20.43): printable ASCII, no quote or
    backslash, at most 120 characters."""
    cleaned = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text[:120])
    return f'399 edgeproxy "{cleaned}"'


#: Header names seen so far → their canonical key (``canonical`` runs dozens of times per
#: message; real traffic uses a few dozen distinct spellings). Bounded: cleared when full.
_CANONICAL: dict[str, str] = {}
_CANONICAL_MAX: Final = 4096
#: Header names the parser has seen, checked against the token rule → their canonical key
#: (same bound): a field of a known name is parsed without looking at its name again.
_KEYS: dict[str, str] = {}


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


def _is_token(text: str) -> bool:
    """§25.1 ``token``: one or more of ``_TOKEN_CHARS``."""
    return bool(text) and set(text) <= _TOKEN_CHARS


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


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """A request of ours as the bytes we send — serialized once (:meth:`of`) or built from a
    template (``translate.message_to_sip``) — with its client-transaction key: the top Via's
    ``branch`` and the ``method`` (§17.1.3)."""

    data: bytes
    branch: str
    method: str

    @classmethod
    def of(cls, request: SipRequest) -> OutgoingRequest:
        return cls(serialize(request), _uri.parse_via(request.headers.get("Via") or "").branch, request.method)

    def parsed(self) -> SipRequest:
        """The request read back from its bytes (for what is rarely needed: a locally made
        answer copies its headers, §8.1.3.1, §17.1.4)."""
        message = parse_datagram(self.data)
        assert isinstance(message, SipRequest)
        return message


@lru_cache(maxsize=1024)  # pure; read by the parser, then by the transaction layer
def parse_cseq(value: str) -> tuple[int, str]:
    """``CSeq: 1*DIGIT LWS Method`` (§20.16): the number (ASCII, under 2**31) and the method."""
    match = _CSEQ.fullmatch(value.strip())
    if match is None or int(match[1]) > MAX_CSEQ:
        raise SipParseError(f"bad CSeq {value[:60]!r}")
    return int(match[1]), match[2].upper()


def check_address(value: str, name: str) -> None:
    """From/To/Contact-shaped values (§20.10, §20.20, §20.39): ``[display] <URI>;params`` or
    ``URI;params``, the URI having a scheme; any scheme (``tel:`` is legal in From). The
    SIP-URI itself is parsed where it is used (``uri.parse_name_addr``)."""
    text = value.strip()
    if text.startswith('"'):
        end = skip_quoted(text)
        if end < 0:
            raise SipParseError(f"unterminated display name in {name} {value[:60]!r}")
        text = text[end:].lstrip()
        if not text.startswith("<"):
            raise SipParseError(f"display name without <URI> in {name} {value[:60]!r}")
    if "<" in text:
        inner, close, _ = text.partition("<")[2].partition(">")
        if not close:
            raise SipParseError(f"unterminated <URI> in {name} {value[:60]!r}")
    else:
        inner = text.partition(";")[0]
    scheme, colon, rest = inner.strip().partition(":")
    if not colon or not rest or (scheme not in _SCHEMES and not _is_token(scheme)):
        raise SipParseError(f"bad {name} {value[:60]!r}")


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


def minimal_response(response: SipResponse) -> SipResponse:
    """``response`` with only what it cannot do without: the headers copied from the request,
    those its status (or, for a 2xx, its method) requires, the standard reason phrase and no
    body. For answers that must stay small (the transport's UDP amplification rule)."""
    keep = set(RESPONSE_COPIES) | set(REQUIRED_FOR_STATUS.get(response.status, ()))
    if 200 <= response.status < 300:
        method = (response.headers.get("CSeq") or "").strip().rpartition(" ")[2].upper()
        keep |= set(REQUIRED_FOR_2XX.get(method, ()))
    headers = Headers([(n, v) for n, v in response.headers.items if canonical(n) in keep])
    return SipResponse(response.status, REASON_PHRASES.get(response.status, response.reason), headers)


def response_from_head(head: bytes, status: int, *, to_tag: str) -> SipResponse | None:
    """A response to a request whose head did not parse, from its raw header lines (§8.2.6.2:
    Via, From, To — with ``to_tag`` added when it has none — Call-ID, CSeq, copied as they
    are). None when there is nothing to answer: a response, an ACK (§17.1.1.3: never
    answered), or one of the five headers missing (no response could be matched to it)."""
    text = head.decode("utf-8", "replace")
    lines = text.split("\r\n")
    method = lines[0].split(" ", 1)[0]
    if not method or method.startswith("SIP/") or method == "ACK":
        return None
    headers = Headers()
    found: set[str] = set()
    last_kept = False
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":  # folded (§7.3.1): belongs to the field before
            if last_kept and (more := line.strip()):  # a blank continuation adds nothing
                name, value = headers.items[-1]
                headers.items[-1] = (name, f"{value} {more}" if value else more)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        last_kept = False
        if not colon or not _is_token(name):
            continue
        key = canonical(name)
        if key in RESPONSE_COPIES:
            headers.add(name, value.strip())
            found.add(key)
            last_kept = True
    if len(found) != len(RESPONSE_COPIES):
        return None
    for i, (name, value) in enumerate(headers.items):
        if canonical(name) == "to" and ";tag=" not in value.replace(" ", ""):
            headers.items[i] = (name, f"{value};tag={to_tag}")
    return SipResponse(status, REASON_PHRASES.get(status, "Unknown"), headers)


# -- parsing ----------------------------------------------------------------------------------


def _parse_head(head: bytes, max_headers: int) -> tuple[SipMessage, int | None]:
    """Parse start line and headers; return the message (empty body) and Content-Length."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("head is not UTF-8") from None
    lines = text.split("\r\n")
    start = lines[0]
    items: list[tuple[str, str]] = []
    first: dict[str, int] = {}  # canonical name -> index of its first field
    keys = _KEYS
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = keys.get(name)
        if key is None or not colon:  # not a field of a name seen before: the full rules
            key = _unusual_line(line, items, max_headers)
            if key is None:
                continue
        elif len(items) >= max_headers:
            raise SipParseError(f"more than {max_headers} header fields", 513)
        else:
            items.append((name, value.strip()))
        if key not in first:
            first[key] = len(items) - 1
    headers = Headers(items)
    message: SipMessage
    if start.startswith("SIP/2.0 "):
        _, status_text, reason = (start.split(" ", 2) + [""])[:3]
        if _STATUS.fullmatch(status_text) is None:
            raise SipParseError(f"bad status line {start[:60]!r}")
        message = SipResponse(int(status_text), reason, headers)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION:
            if len(parts) == 3 and parts[2].startswith("SIP/"):
                raise SipParseError(f"unsupported version {parts[2]!r}", 505)
            raise SipParseError(f"bad request line {start[:60]!r}")
        method, uri, _ = parts
        if not uri or (method not in _METHODS and not _is_token(method)):
            raise SipParseError(f"bad request line {start[:60]!r}")
        message = SipRequest(method, uri, headers)
    try:
        cseq_at, call_id_at, from_at, to_at, via_at = (
            first["cseq"], first["call-id"], first["from"], first["to"], first["via"]
        )
    except KeyError as exc:
        raise SipParseError(f"missing mandatory header {exc.args[0]}") from None
    cseq_method = parse_cseq(items[cseq_at][1])[1]
    if isinstance(message, SipRequest) and cseq_method != message.method:
        raise SipParseError("CSeq method differs from the request method")
    call_id = items[call_id_at][1]
    if not call_id or " " in call_id or "\t" in call_id:
        raise SipParseError(f"bad Call-ID {call_id[:60]!r}")
    check_address(items[from_at][1], "From")
    check_address(items[to_at][1], "To")
    _uri.parse_via(items[via_at][1])
    length_at = first.get("content-length")
    length: int | None = None
    if length_at is not None:
        length = parse_uint(items[length_at][1], "Content-Length")
    return message, length


def _unusual_line(line: str, items: list[tuple[str, str]], max_headers: int) -> str | None:
    """A head line the fast path of :func:`_parse_head` does not know: an empty line, a
    continuation (folded onto the field before, §7.3.1), a field of a name not seen before
    (checked against the token rule, then known) or a malformed line. Appends a new field to
    ``items`` and returns its key, or returns None."""
    if not line:
        return None
    if line[0] in " \t":
        if not items:
            raise SipParseError("continuation line before any header")
        if more := line.strip():  # a blank continuation adds nothing (found by fuzzing)
            name, value = items[-1]
            items[-1] = (name, f"{value} {more}" if value else more)
        return None
    name, colon, value = line.partition(":")
    name = name.rstrip(" \t")
    if not colon or not _is_token(name):
        raise SipParseError(f"malformed header line {line[:40]!r}")
    if len(items) >= max_headers:
        raise SipParseError(f"more than {max_headers} header fields", 513)
    key = canonical(name)
    if len(_KEYS) >= _CANONICAL_MAX:
        _KEYS.clear()
    _KEYS[name] = key
    items.append((name, value.strip()))
    return key


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
            raise SipParseError("head too large", 513, data[:max_head_bytes])
        raise SipParseError("no empty line after the headers", 400, data)
    if end > max_head_bytes:
        raise SipParseError("head too large", 513, data[:max_head_bytes])
    try:
        message, length = _parse_head(data[:end], max_headers)
    except SipParseError as exc:
        exc.head = data[:end]
        raise
    rest = data[end + 4 :]
    if length is None:
        length = len(rest)
    if length > max_body_bytes:
        raise SipParseError(f"body of {length} bytes over the limit", 413, data[:end])
    if length > len(rest):
        raise SipParseError("datagram shorter than Content-Length", 400, data[:end])
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
                    raise SipParseError("head too large", 513, bytes(self._buffer[: self.max_head_bytes]))
                return None
            head = bytes(self._buffer[:end])
            try:
                message, length = _parse_head(head, self.max_headers)
            except SipParseError as exc:
                exc.head = head
                raise
            if length is None:
                raise SipParseError("Content-Length is mandatory on stream transports", 400, head)
            if length > self.max_body_bytes:
                raise SipParseError(f"body of {length} bytes over the limit", 413, head)
            del self._buffer[: end + 4]
            self._pending, self._need = message, length
        if len(self._buffer) < self._need:
            return None
        message = self._pending
        message.body = bytes(self._buffer[: self._need])
        del self._buffer[: self._need]
        self._pending = None
        return message


