"""The Control Panel's store pages: XMPP Federated Partners, Gateway settings, External access
policies and Users. Each change goes through ``edgeproxy.policy.operations`` (one transaction,
validated by ``edgeproxy.policy.validation``: nothing is stored on a refusal) and its refusal is
shown next to the field it names."""

from __future__ import annotations

import fnmatch
from typing import Any

import msgspec
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import (
    GATEWAY_INT_SETTINGS,
    AccessPolicy,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
)
from edgeproxy.policy.validation import (
    REFUSED_NO_METHOD,
    REFUSED_SASL_NEEDS_TLS,
    ChangeRefused,
    check_negotiation,
    reason,
)
from edgeproxy.web.auth import Session
from edgeproxy.web.ui import Panel, form_text

#: Fields a refusal can name, by a word of its message (checked in this order).
_PARTNER_FIELD_WORDS = (
    ("proxy fqdn", "proxy_fqdn"),
    ("connection", "connection_limit"),
    ("description", "description"),
    ("additional", "additional_domains"),
)


def partner_field(message: str, primary: str) -> str:
    """Which field of the partner form a refusal is about (``form`` when none fits)."""
    if message in (REFUSED_SASL_NEEDS_TLS, REFUSED_NO_METHOD) or "sasl" in message.lower():
        return "negotiation"
    lower = message.lower()
    for word, field in _PARTNER_FIELD_WORDS:
        if word in lower:
            return field
    if "domain" in lower:
        about_primary = bool(primary) and (f"domain {primary} " in message or message.startswith(f"{primary} ")
                                           or f"refused: {primary} " in message)
        return "domain" if about_primary or "primary" in lower else "additional_domains"
    return "form"


#: The order of the negotiation matrix's rows (docs/spec.md §2.1): SASL, then TLS, then dialback.
_MATRIX_ORDER = (Negotiation.REQUIRED, Negotiation.OPTIONAL, Negotiation.NOT_SUPPORTED)


def matrix_row_number(tls: Negotiation, sasl: Negotiation, dialback: bool) -> int:
    """The row's number in the negotiation matrix as the documentation numbers it (1–18)."""
    return _MATRIX_ORDER.index(sasl) * 6 + _MATRIX_ORDER.index(tls) * 2 + (1 if dialback else 2)


def matrix_row(tls: str, sasl: str, dialback: bool) -> dict[str, Any]:
    """The negotiation matrix's verdict for the form's TLS, SASL and dialback: its row number,
    the methods it allows, its refusal or its warnings (``policy.validation.check_negotiation``)."""
    try:
        tls_, sasl_ = Negotiation(tls), Negotiation(sasl)
    except ValueError:
        return {"number": 0, "methods": [], "refusal": "", "warnings": []}
    verdict = check_negotiation(tls_, sasl_, dialback)
    return {"number": matrix_row_number(tls_, sasl_, dialback), "methods": sorted(m.value for m in verdict.methods),
            "refusal": verdict.refusal or "", "warnings": list(verdict.warnings)}


def partner_values(partner: Partner) -> dict[str, Any]:
    """A partner as the form shows it."""
    return {
        "domain": partner.domain, "description": partner.description,
        "additional_domains": "\n".join(partner.additional_domains), "type": partner.type.value,
        "tls": partner.tls.value, "sasl": partner.sasl.value, "dialback": partner.dialback,
        "keepalive": partner.keepalive,
        "connection_limit": "" if partner.connection_limit is None else str(partner.connection_limit),
        "proxy_fqdn": partner.proxy_fqdn or "",
    }


def form_partner_values(form: FormData) -> dict[str, Any]:
    """The partner form as submitted (strings and booleans, not yet validated)."""
    return {
        "domain": form_text(form, "domain"), "description": form_text(form, "description"),
        "additional_domains": form_text(form, "additional_domains"), "type": form_text(form, "type"),
        "tls": form_text(form, "tls"), "sasl": form_text(form, "sasl"),
        "dialback": form.get("dialback") == "on", "keepalive": form.get("keepalive") == "on",
        "connection_limit": form_text(form, "connection_limit"), "proxy_fqdn": form_text(form, "proxy_fqdn"),
    }


def partner_changes(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The Partner fields from the form's values, and the errors of fields that do not parse
    (a choice that is not one, a limit that is not a number); the rules are the operations'."""
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {
        "description": values["description"],
        "additional_domains": tuple(d for d in values["additional_domains"].replace(",", "\n").split() if d),
        "dialback": values["dialback"], "keepalive": values["keepalive"],
        "proxy_fqdn": values["proxy_fqdn"] or None,
    }
    for name, kind in (("type", PartnerType), ("tls", Negotiation), ("sasl", Negotiation)):
        try:
            changes[name] = kind.parse(values[name])
        except ValueError as exc:
            errors[name] = str(exc)
    limit = values["connection_limit"]
    if not limit:
        changes["connection_limit"] = None
    elif limit.lstrip("-").isdigit():
        changes["connection_limit"] = int(limit)
    else:
        errors["connection_limit"] = f"{limit!r} is not a whole number (leave it empty for the gateway's limit)"
    return changes, errors


class PartnerPages:
    """List, New, Edit, Remove."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    async def list(self, request: Request, session: Session) -> Response:
        query = request.query_params.get("q", "").strip().lower()
        configuration = await self.panel.in_store(lambda s: s.read()[1])
        partners = [p for p in configuration.partners
                    if not query or any(fnmatch.fnmatch(d, f"*{query}*") for d in p.domains)
                    or query in p.description.lower()]
        rows = [(p, matrix_row(p.tls.value, p.sasl.value, p.dialback)) for p in sorted(partners, key=lambda p: p.domain)]
        return self.panel.render(request, session, "partners.html", rows=rows, q=query,
                                 total=len(configuration.partners))

    async def new(self, request: Request, session: Session) -> Response:
        if request.method == "GET":
            return self.form(request, session, partner_values(Partner(domain="")), {}, new=True)
        values = form_partner_values(request.state.form)
        changes, errors = partner_changes(values)
        if not values["domain"]:
            errors["domain"] = "the primary domain is required"
        if errors:
            return self.form(request, session, values, errors, new=True, status=400)
        domains = self.panel.config.edge.domains
        try:
            partner = ops.partner_domain(values["domain"])
        except ChangeRefused as exc:
            return self.form(request, session, values, {"domain": reason(exc)}, new=True, status=400)
        try:
            stored, warnings = await self.panel.in_store(
                lambda s: ops.new_partner(s, domains, Partner(domain=partner, **changes)))
        except ChangeRefused as exc:
            return self.form(request, session, values, {partner_field(str(exc), partner): reason(exc)},
                             new=True, status=400)
        self.panel.audit(session, "partner", stored.domain, "created")
        notice = f"Partner {stored.domain} created." + "".join(f" Warning: {w}" for w in warnings)
        return self.panel.redirect("/partners", notice, session=session)

    async def edit(self, request: Request, session: Session) -> Response:
        domain = request.path_params["domain"]
        if request.method == "GET":
            current = await self.panel.in_store(lambda s: s.read()[1])
            found = next((p for p in current.partners if p.domain == domain), None)
            if found is None:
                return self.panel.refusal(request, session, 404, f"No partner {domain}.")
            return self.form(request, session, partner_values(found), {}, new=False)
        values = form_partner_values(request.state.form)
        values["domain"] = domain
        changes, errors = partner_changes(values)
        if errors:
            return self.form(request, session, values, errors, new=False, status=400)
        domains = self.panel.config.edge.domains
        try:
            _before, after, warnings = await self.panel.in_store(
                lambda s: ops.set_partner(s, domains, domain, lambda p: msgspec.structs.replace(p, **changes)))
        except ChangeRefused as exc:
            return self.form(request, session, values, {partner_field(str(exc), domain): reason(exc)},
                             new=False, status=400)
        self.panel.audit(session, "partner", after.domain, "changed")
        notice = f"Partner {after.domain} saved." + "".join(f" Warning: {w}" for w in warnings)
        return self.panel.redirect("/partners", notice, session=session)

    async def remove(self, request: Request, session: Session) -> Response:
        domain = request.path_params["domain"]
        try:
            removed = await self.panel.in_store(lambda s: ops.remove_partner(s, domain))
        except ChangeRefused as exc:
            return self.panel.refusal(request, session, 400, reason(exc))
        self.panel.audit(session, "partner", removed.domain, "removed")
        return self.panel.redirect("/partners", f"Partner {removed.domain} removed.", session=session)

    def form(self, request: Request, session: Session, values: dict[str, Any], errors: dict[str, str], *,
             new: bool, status: int = 200) -> Response:
        return self.panel.render(
            request, session, "partner_form.html", status=status, values=values, errors=errors, new=new,
            types=[t.value for t in PartnerType], negotiations=[n.value for n in Negotiation],
            row=matrix_row(values["tls"], values["sasl"], values["dialback"]),
        )


# -- gateway settings --------------------------------------------------------------------------

GATEWAY_LABELS = {
    "connection_limit": ("Connection limit", "simultaneous server-to-server streams, all partners together"),
    "partner_connection_limit": ("Partner connection limit", "simultaneous streams per partner"),
    "keepalive_interval": ("Keep-alive interval (s)", "a partner with keep-alive on must show traffic within this"),
    "stream_establishment_timeout": ("Stream establishment timeout (s)", "negotiation and authentication"),
    "stream_inactivity_timeout": ("Stream inactivity timeout (s)", "a stream without stanzas is closed"),
    "subscription_refresh_interval": ("Subscription refresh interval (s)", "presence subscriptions refreshed"),
}


def gateway_field(message: str) -> str:
    lower = message.lower()
    if "dialback secret" in lower:
        return "dialback_secret"
    if "partner connection limit" in lower or "partner-connection-limit" in lower:
        return "partner_connection_limit"
    for name in GATEWAY_INT_SETTINGS:
        if name.replace("_", "-") in lower or name.replace("_", " ") in lower:
            return name
    return "form"


class GatewayPage:
    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    async def page(self, request: Request, session: Session) -> Response:
        if request.method == "GET":
            settings = await self.panel.in_store(lambda s: s.read()[1].gateway)
            return self.render(request, session, self.values(settings), {})
        form = request.state.form
        values: dict[str, Any] = {name: form_text(form, name) for name in GATEWAY_INT_SETTINGS}
        values["log_message_bodies"] = form.get("log_message_bodies") == "on"
        errors: dict[str, str] = {}
        changes: dict[str, Any] = {"log_message_bodies": values["log_message_bodies"]}
        for name in GATEWAY_INT_SETTINGS:
            if values[name].lstrip("-").isdigit():
                changes[name] = int(values[name])
            else:
                errors[name] = f"{values[name]!r} is not a whole number"
        secret = request.state.form.get("dialback_secret")
        if isinstance(secret, str) and secret:
            changes["dialback_secret"] = secret
        if errors:
            return self.render(request, session, values, errors, status=400)
        try:
            await self.panel.in_store(
                lambda s: ops.set_gateway(s, lambda g: msgspec.structs.replace(g, **changes)))
        except ChangeRefused as exc:
            return self.render(request, session, values, {gateway_field(str(exc)): reason(exc)}, status=400)
        self.panel.audit(session, "gateway", "settings", "changed" + (" (dialback secret replaced)"
                                                                       if "dialback_secret" in changes else ""))
        return self.panel.redirect("/gateway", "Gateway settings saved.", session=session)

    @staticmethod
    def values(settings: GatewaySettings) -> dict[str, Any]:
        values: dict[str, Any] = {name: str(getattr(settings, name)) for name in GATEWAY_INT_SETTINGS}
        values["log_message_bodies"] = settings.log_message_bodies
        return values

    def render(self, request: Request, session: Session, values: dict[str, Any], errors: dict[str, str], *,
               status: int = 200) -> Response:
        return self.panel.render(request, session, "gateway.html", status=status, values=values, errors=errors,
                                 labels=GATEWAY_LABELS, int_settings=GATEWAY_INT_SETTINGS)


# -- external access policies and users -----------------------------------------------------


class PolicyPages:
    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    async def list(self, request: Request, session: Session, *, errors: dict[str, str] | None = None,
                   values: dict[str, Any] | None = None, status: int = 200) -> Response:
        configuration = await self.panel.in_store(lambda s: s.read()[1])
        granted: dict[str, int] = {}
        for user in configuration.users:
            if user.policy:
                granted[user.policy] = granted.get(user.policy, 0) + 1
        return self.panel.render(
            request, session, "policies.html", status=status, policies=configuration.policies,
            users=configuration.users, granted=granted, errors=errors or {},
            values=values or {"identity": "", "description": "", "xmpp": True, "federation": False,
                              "public_cloud": False})

    async def new(self, request: Request, session: Session) -> Response:
        form = request.state.form
        values = {"identity": form_text(form, "identity"), "description": form_text(form, "description"),
                  "xmpp": form.get("xmpp") == "on", "federation": form.get("federation") == "on",
                  "public_cloud": form.get("public_cloud") == "on"}
        try:
            policy = await self.panel.in_store(lambda s: ops.new_policy(s, AccessPolicy(**values)))
        except ChangeRefused as exc:
            return await self.list(request, session, errors={"identity": reason(exc)}, values=values, status=400)
        self.panel.audit(session, "policy", policy.identity, "created")
        return self.panel.redirect("/policies", f"Policy {policy.identity} created.", session=session)

    async def set(self, request: Request, session: Session) -> Response:
        identity = request.path_params["identity"]
        form = request.state.form
        changes = {"xmpp": form.get("xmpp") == "on", "federation": form.get("federation") == "on",
                   "public_cloud": form.get("public_cloud") == "on", "description": form_text(form, "description")}
        try:
            policy = await self.panel.in_store(
                lambda s: ops.set_policy(s, identity, lambda p: msgspec.structs.replace(p, **changes)))
        except ChangeRefused as exc:
            return self.panel.refusal(request, session, 400, reason(exc))
        self.panel.audit(session, "policy", policy.identity, "changed")
        return self.panel.redirect("/policies", f"Policy {policy.identity} saved.", session=session)

    async def remove(self, request: Request, session: Session) -> Response:
        identity = request.path_params["identity"]
        try:
            await self.panel.in_store(lambda s: ops.remove_policy(s, identity))
        except ChangeRefused as exc:
            return self.panel.refusal(request, session, 400, reason(exc))
        self.panel.audit(session, "policy", identity, "removed")
        return self.panel.redirect("/policies", f"Policy {identity} removed.", session=session)

    async def grant(self, request: Request, session: Session) -> Response:
        form = request.state.form
        sip, identity = form_text(form, "sip"), form_text(form, "policy")
        domains = self.panel.config.edge.domains
        try:
            user = await self.panel.in_store(lambda s: ops.grant_policy(s, domains, sip, identity or None))
        except ChangeRefused as exc:
            return await self.list(request, session, errors={"grant": reason(exc)}, status=400)
        what = f"policy {identity} granted" if identity else "back to the site or global policy"
        self.panel.audit(session, "user", user.sip, what)
        back = "/users" if form.get("back") == "users" else "/policies"
        return self.panel.redirect(back, f"{user.sip}: {what}.", session=session)

    async def users(self, request: Request, session: Session) -> Response:
        configuration = await self.panel.in_store(lambda s: s.read()[1])
        return self.panel.render(request, session, "users.html", users=configuration.users,
                                 policies=configuration.policies)


class UserPages:
    """One user: XMPP contacts (add, remove; a pending request is approved by adding it) and the
    SIP password (set or clear), through the operations ``user contact`` and ``user
    set-password | clear-password`` use."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    async def page(self, request: Request, session: Session, *, errors: dict[str, str] | None = None,
                   status: int = 200) -> Response:
        sip = request.path_params["sip"]
        configuration = await self.panel.in_store(lambda s: s.read()[1])
        user = next((u for u in configuration.users if u.sip == sip), None)
        if user is None:
            return self.panel.refusal(request, session, 404, f"No user {sip}.")
        return self.panel.render(request, session, "user.html", status=status, user=user, errors=errors or {},
                                 policies=configuration.policies)

    async def contact(self, request: Request, session: Session) -> Response:
        sip, form = request.path_params["sip"], request.state.form
        jid, action = form_text(form, "jid"), form_text(form, "action")
        domains = self.panel.config.edge.domains
        try:
            if action == "remove":
                await self.panel.in_store(lambda s: ops.remove_contact(s, domains, sip, jid))
                done = f"contact {jid} removed"
            else:
                approved = await self.panel.in_store(lambda s: ops.add_contact(s, domains, sip, jid))
                done = f"contact {jid} added" + (" (its pending request approved)" if approved else "")
        except ChangeRefused as exc:
            return await self.page(request, session, errors={"jid": reason(exc)}, status=400)
        self.panel.audit(session, "user", sip, done)
        return self.panel.redirect(f"/users/{sip}", f"{sip}: {done}.", session=session)

    async def password(self, request: Request, session: Session) -> Response:
        sip, form = request.path_params["sip"], request.state.form
        domains = self.panel.config.edge.domains
        if form.get("clear") == "1":
            try:
                had = await self.panel.in_store(lambda s: ops.clear_password(s, sip))
            except ChangeRefused as exc:
                return await self.page(request, session, errors={"password": reason(exc)}, status=400)
            done = "SIP password cleared" if had else "had no SIP password"
        else:
            first, second = form.get("password"), form.get("password_again")
            if not isinstance(first, str) or first != second:
                return await self.page(request, session, errors={"password": "the two passwords differ; nothing saved"},
                                       status=400)
            try:
                await self.panel.in_store(lambda s: ops.set_password(s, domains, sip, first))
            except ChangeRefused as exc:
                return await self.page(request, session, errors={"password": reason(exc)}, status=400)
            done = "SIP password set (digest hashes only)"
        self.panel.audit(session, "user", sip, done)
        return self.panel.redirect(f"/users/{sip}", f"{sip}: {done}.", session=session)


def routes(panel: Panel) -> list[BaseRoute]:
    """The store pages' routes (under ``/ui``)."""
    from edgeproxy.web import tools

    partners, gateway, policies = PartnerPages(panel), GatewayPage(panel), PolicyPages(panel)
    users = UserPages(panel)
    return [
        Route("/partners", panel.page(partners.list), methods=["GET"]),
        Route("/partners/new", panel.page(partners.new, change=True), methods=["GET", "POST"]),
        Route("/partners/{domain}", panel.page(partners.edit, change=True), methods=["GET", "POST"]),
        Route("/partners/{domain}/remove", panel.page(partners.remove, change=True), methods=["POST"]),
        Route("/gateway", panel.page(gateway.page, change=True), methods=["GET", "POST"]),
        Route("/policies", panel.page(policies.list), methods=["GET"]),
        Route("/policies/new", panel.page(policies.new, change=True), methods=["POST"]),
        Route("/policies/grant", panel.page(policies.grant, change=True), methods=["POST"]),
        Route("/policies/{identity}", panel.page(policies.set, change=True), methods=["POST"]),
        Route("/policies/{identity}/remove", panel.page(policies.remove, change=True), methods=["POST"]),
        Route("/users", panel.page(policies.users), methods=["GET"]),
        Route("/users/{sip}", panel.page(users.page), methods=["GET"]),
        Route("/users/{sip}/contacts", panel.page(users.contact, change=True), methods=["POST"]),
        Route("/users/{sip}/password", panel.page(users.password, change=True), methods=["POST"]),
        *tools.routes(panel),
    ]
