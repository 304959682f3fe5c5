"""SIP URIs, name-addr header values and Via (RFC 3261 §19.1, §20.10, §20.42, §25.1).

Only what the gateway needs: ``sip:``/``sips:`` URIs with user, password-less host, port, URI
parameters and headers; ``name-addr``/``addr-spec`` values with header parameters (``tag``,
``expires``); Via with ``branch``, ``received`` and ``rport`` (RFC 3581). Percent-encoding of the
user part is kept as received in ``SipUri.user``; ``unquote_user`` decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes

from edgeproxy.gateway.sip.message import SipParseError

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

    def with_params(self, *params: tuple[str, str | None]) -> SipUri:
        return SipUri(self.scheme, self.user, self.host, self.port, self.params + params)

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
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise SipParseError(f"bad port in {text[:60]!r}")
        port = int(port_text)
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
    if "<" in text:
        before, _, rest = text.partition("<")
        uri_text, close, after = rest.partition(">")
        if not close:
            raise SipParseError(f"unterminated <uri> in {text[:60]!r}")
        display = before.strip().strip('"')
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


def parse_via(value: str) -> Via:
    """One Via value (the first of a comma list): ``SIP/2.0/UDP host:port;branch=z9hG4bK...``."""
    first = split_header_list(value)[0] if value else ""
    proto, _, rest = first.partition(" ")
    parts = proto.split("/")
    if len(parts) != 3 or parts[0].upper() != "SIP":
        raise SipParseError(f"bad Via {value[:60]!r}")
    sent_by, *raw_params = rest.strip().split(";")
    host, _, port_text = (
        sent_by.strip().rpartition(":")
        if "]" not in sent_by
        else (
            sent_by.partition("]")[0] + "]",
            ":",
            sent_by.partition("]")[2].lstrip(":"),
        )
    )
    if not host:
        host, port_text = sent_by.strip(), ""
    port = int(port_text) if port_text.isdigit() else None
    params: dict[str, str | None] = {}
    for raw in raw_params:
        raw = raw.strip()
        if raw:
            key, eq, val = raw.partition("=")
            params[key.lower()] = val if eq else None
    return Via(parts[2].upper(), host, port, params)
