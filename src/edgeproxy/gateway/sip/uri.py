"""SIP URIs, name-addr header values and Via (RFC 3261 §19.1, §20.10, §20.42, §25.1).

Only what the gateway needs: ``sip:``/``sips:`` URIs with user, password-less host, port, URI
parameters and headers; ``name-addr``/``addr-spec`` values with header parameters (``tag``,
``expires``); Via with ``branch``, ``received`` and ``rport`` (RFC 3581). Percent-encoding of the
user part is kept as received in ``SipUri.user``; ``unquote_user`` decodes it.

Malformed values raise :class:`~edgeproxy.gateway.sip.message.SipParseError` (400, or 416 for a
URI that is not ``sip:``/``sips:``) and nothing else; ports are ASCII digits 1–65535
(``message.parse_uint``), a Via's sent-by host is a hostname or an IP address (§20.42, §25.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from edgeproxy.gateway.sip.lexical import SipParseError, skip_quoted

#: §25.1 ``port = 1*DIGIT`` (ASCII); 0 and values over 65535 are no ports.
_PORT: Final = re.compile(r"[0-9]{1,5}")
#: §20.42 ``sent-by = host [ COLON port ]``; host = hostname / IPv4address / IPv6reference
#: (``_`` tolerated in hostnames, as resolvers do).
_VIA_HOST: Final = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")
#: ``SIP / 2.0 / UDP`` with optional white space around the slashes (§20.42 ``sent-protocol``).
#: The usual Via value, read in one match by ``parse_via``: ``SIP/2.0/transport host[:port]``
#: and parameters free of white space, quotes and commas.
_PLAIN_VIA: Final = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9._-]+)(?::([0-9]{1,5}))?((?:;[^;,\s=\"]+(?:=[^;,\s\"]*)?)*)"
)
_SENT_PROTOCOL: Final = re.compile(
    r"[ \t]*([A-Za-z0-9.!%*_+`'~-]+)[ \t]*/[ \t]*([A-Za-z0-9.!%*_+`'~-]+)[ \t]*/[ \t]*"
    r"([A-Za-z0-9.!%*_+`'~-]+)[ \t]+"
)


def parse_port(text: str, where: str) -> int:
    """A port of ASCII digits, 1–65535; else :class:`SipParseError` quoting ``where``."""
    if _PORT.fullmatch(text) is None or not 0 < int(text) < 65536:
        raise SipParseError(f"bad port in {where[:60]!r}")
    return int(text)


# RFC 3261 §25.1: characters allowed unescaped in the user part: unreserved / user-unreserved.
USER_SAFE = "-_.!~*'()&=+$,;?/"
# Characters allowed unescaped in a URI parameter value (paramchar: param-unreserved / unreserved).
PARAM_SAFE = "-_.!~*'()[]/:&+$"


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str = ""

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key.lower() == name.lower():
                return value if value is not None else ""
        return None

    @property
    def aor(self) -> str:
        """Address of record: ``sip:user@host`` (no port, no parameters; §10.2)."""
        user = f"{self.user}@" if self.user is not None else ""
        return f"{self.scheme}:{user}{self.host.lower()}"

    @property
    def transport(self) -> str:
        return (self.param("transport") or "udp").lower()

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{user}{self.host}{port}{params}{headers}"


def quote_user(text: str) -> str:
    """Percent-encode a user part (UTF-8, RFC 3261 §19.1.2 / RFC 7247 §5)."""
    return quote(text, safe=USER_SAFE)


def unquote_user(text: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError(f"user part {text!r} is not UTF-8 after percent-decoding") from None


@lru_cache(maxsize=4096)  # SipUri is immutable; a conversation's URIs repeat on every request
def parse_uri(text: str) -> SipUri:
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        raise SipParseError(f"not a SIP URI: {text[:60]!r}", 416)
    rest, _, headers = rest.partition("?")
    user: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user = userinfo.partition(":")[0]  # a password is never used (§19.1.1)
        if not user:
            raise SipParseError(f"empty user part in {text[:60]!r}")
    hostport, *raw_params = rest.split(";")
    if hostport.startswith("["):
        host, _, port_text = hostport[1:].partition("]")
        host = f"[{host}]"
        port_text = port_text.lstrip(":")
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise SipParseError(f"no host in {text[:60]!r}")
    port = parse_port(port_text, text) if port_text else None
    params: list[tuple[str, str | None]] = []
    for raw in raw_params:
        if not raw:
            continue
        key, eq, value = raw.partition("=")
        params.append((key, value if eq else None))
    return SipUri(scheme, user, host, port, tuple(params), headers)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``"Display" <uri>;param=value`` (or a bare addr-spec)."""

    uri: SipUri
    display: str = ""
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        return f"{display}<{self.uri}>{params}"


def parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    display = ""
    quoted = ""
    if text.startswith('"'):  # a quoted display name may hold "<" (§25.1 quoted-string)
        end = skip_quoted(text)
        if end < 0:
            raise SipParseError(f"unterminated display name in {text[:60]!r}")
        quoted, text = text[1 : end - 1], text[end:].lstrip()
        if not text.startswith("<"):
            raise SipParseError(f"display name without <uri> in {text[:60]!r}")
    if "<" in text:
        before, _, rest = text.partition("<")
        uri_text, close, after = rest.partition(">")
        if not close:
            raise SipParseError(f"unterminated <uri> in {text[:60]!r}")
        display = quoted or before.strip().strip('"')
    else:
        # addr-spec form: parameters after the URI belong to the header (§20.10)
        uri_text, _, after = text.partition(";")
        after = ";" + after if after else ""
    params: dict[str, str | None] = {}
    for raw in after.split(";"):
        raw = raw.strip()
        if raw:
            key, eq, value = raw.partition("=")
            params[key.strip().lower()] = value.strip().strip('"') if eq else None
    return NameAddr(parse_uri(uri_text), display, params)


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value, honouring quotes and <...> (§7.3.1)."""
    if '"' not in value and "<" not in value and ">" not in value:
        # nothing to honour (the usual Via, CSeq…): str.split, same result as the scan below
        parts = [part.strip() for part in value.split(",")]
        if not parts[-1]:
            parts.pop()
        return parts
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        elif ch == "," and not quoted and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    tail = value[start:].strip()
    if tail:
        out.append(tail)
    return out


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str:
        return self.params.get("branch") or ""


@lru_cache(maxsize=1024)  # one request's Via is parsed by the parser, then by the transaction
def parse_via(value: str) -> Via:
    """One Via value (the first of a comma list): ``SIP/2.0/UDP host:port;branch=z9hG4bK...``
    (§20.42). A malformed sent-protocol, host, port or ``rport`` (RFC 3581) is a
    :class:`SipParseError`. Memoized: callers must not change the returned ``params``.

    The usual value — one Via, ``SIP/2.0/`` and a hostname or IPv4 address, parameters without
    white space — is read in one match (``_plain_via``); anything else by the general rules
    (``_general_via``), which give the same result for the usual value."""
    return _plain_via(value) or _general_via(value)


def _plain_via(value: str) -> Via | None:
    """``parse_via`` of the usual value (see there), None for any other."""
    plain = _PLAIN_VIA.fullmatch(value)
    if plain is None:
        return None
    port_text = plain[3]
    if port_text is not None and not 0 < int(port_text) < 65536:
        return None
    params: dict[str, str | None] = {}
    for raw in plain[4].split(";")[1:]:
        key, eq, val = raw.partition("=")
        params[key.lower()] = val if eq else None
    rport = params.get("rport")
    if rport and (_PORT.fullmatch(rport) is None or not 0 < int(rport) < 65536):
        return None
    return Via(plain[1].upper(), plain[2], int(port_text) if port_text else None, params)


def _general_via(value: str) -> Via:
    values = split_header_list(value) if value else []
    first = values[0] if values else ""
    proto = _SENT_PROTOCOL.match(first)
    if proto is None or proto[1].upper() != "SIP":
        raise SipParseError(f"bad Via {value[:60]!r}")
    sent_by, *raw_params = first[proto.end() :].split(";")
    sent_by = sent_by.strip()
    if sent_by.startswith("["):
        host, close, port_text = sent_by.partition("]")
        host += close
        if port_text and not port_text.startswith(":"):
            raise SipParseError(f"bad Via sent-by {value[:60]!r}")
        port_text = port_text[1:]
    else:
        host, colon, port_text = sent_by.partition(":")
        if colon and not port_text:
            raise SipParseError(f"bad Via sent-by {value[:60]!r}")
    if _VIA_HOST.fullmatch(host) is None:
        raise SipParseError(f"bad Via host {value[:60]!r}")
    port = parse_port(port_text, value) if port_text else None
    return Via(proto[3].upper(), host, port, _via_params(";".join(raw_params), value))


def _via_params(text: str, value: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for raw in text.split(";"):
        raw = raw.strip()
        if raw:
            key, eq, val = raw.partition("=")
            params[key.strip().lower()] = val.strip() if eq else None
    rport = params.get("rport")
    if rport:  # a request carries it empty; a response's holds the port (RFC 3581 §4)
        parse_port(rport, value)
    return params
