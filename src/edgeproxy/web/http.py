"""Small ASGI helpers shared by the admin API and the Control Panel: plain responses, header
access and a bounded request body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class PlainResponse:
    """A complete answer: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


def text(status: int, message: str, *headers: tuple[str, str]) -> PlainResponse:
    """A one-line text/plain answer (the line ends with a newline)."""
    return PlainResponse(status, (message + "\n").encode(), TEXT, headers)


def json_response(status: int, value: object) -> PlainResponse:
    """A JSON answer (msgspec-encoded, one line)."""
    return PlainResponse(status, _json.encode(value) + b"\n", JSON)


async def send_plain(send: Send, response: PlainResponse, *, head_only: bool = False) -> None:
    """Send ``response`` as one ASGI response (no body for HEAD)."""
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else response.body})


def header_map(scope: Scope) -> dict[str, str]:
    """The request headers, names lower case, values decoded as latin-1 (the last one wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def head_size(scope: Scope) -> int:
    """About the size of the request head: target plus every header line."""
    size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
    return size + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))


def peer_of(scope: Scope) -> str:
    """``host:port`` of the client, ``?`` when unknown."""
    client = scope.get("client")
    if not client:
        return "?"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class BodyTooLarge(HTTPException):
    """The request body went over the bound; answered 413 (by the Control Panel's framework
    too, as an HTTP error rather than a failure)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


def bounded_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once more than ``limit`` body bytes came in
    (a chunked body has no Content-Length to refuse up front)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body over {limit} bytes")
        return message

    return wrapped
