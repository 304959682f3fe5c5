"""The SIP transaction user for our SIP domains: registrar, forwarding to bindings, 480.

Theory of operation
-------------------
:class:`LocalProxy` is the ``handler`` of a :class:`~edgeproxy.gateway.sip.transport.SipTransport`
when the gateway runs its built-in registrar (SPEC §7, the embedded default):

* ``REGISTER`` → :class:`~edgeproxy.gateway.sip.registrar.Registrar` (RFC 3261 §10.3);
* ``OPTIONS`` → 200 (capability ping, §11);
* a request whose Request-URI is in one of our SIP domains → forwarded, as a minimal stateful
  proxy (§16) through ``transport`` — except ``PUBLISH``, which goes to ``on_publish`` (the
  gateway's presence agent, RFC 3903: we are the event state compositor of our users) when
  set — to the user's most recent binding: Request-URI replaced by the contact (§16.5),
  ``Max-Forwards`` decremented (483 at zero, §16.3 step 3), our Via pushed with a fresh branch
  (§16.6 step 8), the final response relayed with our Via removed (§16.7 step 3). No binding →
  ``480 Temporarily Unavailable`` (issue 5). Only the first binding is tried (no forking);
* any other request (an XMPP domain behind the gateway) → ``on_foreign``, the gateway service's
  translation; without one, 404;
* ``INVITE`` and other session methods → 501 (SPEC §1: no audio/video over federation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from edgeproxy.gateway.sip.message import SipParseError, SipRequest, parse_uint_or, response_to
from edgeproxy.gateway.sip.registrar import Registrar
from edgeproxy.gateway.sip.transport import ServerContext, SipTransport
from edgeproxy.gateway.sip.uri import parse_uri

Handler = Callable[[SipRequest, ServerContext], Awaitable[None]]
SESSION_METHODS = frozenset({"INVITE", "BYE", "CANCEL", "PRACK", "UPDATE", "REFER"})


class LocalProxy:
    def __init__(
        self,
        registrar: Registrar,
        transport: SipTransport,
        *,
        on_foreign: Handler | None = None,
        on_publish: Handler | None = None,
    ) -> None:
        self.registrar = registrar
        self.transport = transport
        self.on_foreign = on_foreign
        self.on_publish = on_publish

    async def __call__(self, request: SipRequest, ctx: ServerContext) -> None:
        method = request.method
        try:
            target = parse_uri(request.uri)
        except SipParseError as exc:
            await ctx.respond(response_to(request, exc.status, to_tag="px"))
            return
        if method == "REGISTER":
            response = self.registrar.handle_register(
                request,
                trio.current_time(),
                source=(ctx.source.host, ctx.source.port),
                transport=ctx.source.transport,
            )
            await ctx.respond(response)
        elif method == "OPTIONS":
            await ctx.respond(response_to(request, 200, to_tag="px"))
        elif method in SESSION_METHODS:
            await ctx.respond(response_to(request, 501, to_tag="px"))
        elif (
            method == "PUBLISH" and self.on_publish is not None and self.registrar.is_local(target)
        ):
            await self.on_publish(request, ctx)
        elif self.registrar.is_local(target):
            await self.forward(request, ctx, target.aor)
        elif self.on_foreign is not None:
            await self.on_foreign(request, ctx)
        else:
            await ctx.respond(response_to(request, 404, to_tag="px"))

    async def forward(self, request: SipRequest, ctx: ServerContext, aor: str) -> None:
        bindings = self.registrar.lookup(aor, trio.current_time())
        if not bindings:
            await ctx.respond(response_to(request, 480, to_tag="px"))
            return
        # §20.22: 0-255, ASCII digits (message.parse_uint's grammar); -1: malformed
        max_forwards = parse_uint_or(request.headers.get("Max-Forwards") or "70", -1, maximum=255)
        if max_forwards < 0:
            await ctx.respond(response_to(request, 400, "Bad Max-Forwards", to_tag="px"))
            return
        if max_forwards == 0:
            await ctx.respond(response_to(request, 483, to_tag="px"))
            return
        contact = bindings[0].contact
        dest = self.transport.route(contact, bindings[0].source, bindings[0].transport)
        headers = request.headers.copy()
        headers.set("Max-Forwards", str(max_forwards - 1))
        headers.prepend(
            "Via",
            f"SIP/2.0/{dest.transport.upper()} {self.transport.via_for(dest.transport)}"
            f";branch={self.transport.new_branch()};rport",
        )
        forwarded = SipRequest(request.method, str(contact), headers, request.body)
        response = await self.transport.request(forwarded, dest)
        response.headers.remove_first("Via")
        await ctx.respond(response)
