"""The Control Panel's tool pages: Certificates (the request wizard, the CSR download, the
import with the import checks' precise causes), DNS (the records to publish, the live check)
and Check (the ``edgeproxy check`` lines). Each calls the functions the CLI calls:
``edgeproxy.certs`` (csr, names, check, store), ``edgeproxy.dns`` (records, diagnose) and
``edgeproxy.ops.checks``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio.to_thread
from cryptography.hazmat.primitives import serialization
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from edgeproxy.certs import check as certcheck
from edgeproxy.certs import csr
from edgeproxy.certs.identity import PresentedIdentities
from edgeproxy.certs.names import certificate_names, required_names
from edgeproxy.certs.pem import (
    CertificateError,
    certificates_pem,
    load_certificates,
    private_key_pem,
    public_key_der,
    read_certificates,
    read_private_key,
    write_atomic,
)
from edgeproxy.certs.store import (
    configured_paths,
    friendly_name,
    install_files,
    record_friendly_name,
)
from edgeproxy.dns.diagnose import PartnerTarget, diagnose
from edgeproxy.dns.partners import load_partners
from edgeproxy.dns.records import parse_pool, publication, render
from edgeproxy.dns.resolver import Lookup
from edgeproxy.errors import ConfigError
from edgeproxy.findings import Finding
from edgeproxy.names import InvalidName, normalize_certificate_name
from edgeproxy.ops.checks import run_checks
from edgeproxy.web.auth import Session
from edgeproxy.web.ui import SECURITY_HEADERS, Panel, form_text

#: The pending request's files, next to the configured certificate: the key stays there (0600)
#: until ``import`` installs the certificate issued for it.
REQUEST_KEY, REQUEST_CSR = "request.key", "request.csr"
#: Present when the request's key was created exportable: an admin may then download it (to
#: install the certificate on the pool's other edges); otherwise it never leaves the server.
REQUEST_EXPORTABLE = "request.exportable"
#: Seconds each DNS lookup of the DNS and Check pages may take.
DNS_TIMEOUT = 2.0
#: Bytes an uploaded certificate or chain file may have (the listener bounds the body to 64 KiB).
MAX_UPLOAD_BYTES = 48 * 1024


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def certificate_view(panel: Panel) -> dict[str, Any]:
    """The installed certificate, as ``cert show`` describes it."""
    paths = configured_paths(panel.config)
    try:
        certs = read_certificates(paths.certificate)
    except CertificateError as exc:
        return {"path": str(paths.certificate), "problem": str(exc)}
    leaf, now = certs[0], _now()
    ids = PresentedIdentities.from_certificate(leaf)
    return {
        "path": str(paths.certificate), "problem": "",
        "friendly_name": friendly_name(panel.config, public_key_der(leaf)) or "",
        "subject": certcheck.subject_text(leaf), "issuer": leaf.issuer.rfc4514_string(),
        "not_after": f"{leaf.not_valid_after_utc:%Y-%m-%d}", "days_left": certcheck.days_left(leaf, now),
        "names": ids.all_names(), "required": [(n, ids.covers(n)) for n in required_names(panel.config)],
        "chain": [certcheck.subject_text(c) for c in certs[1:]],
    }


class CertificatePages:
    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        self.directory = configured_paths(panel.config).certificate.parent

    def proposed(self) -> list[str]:
        """The subjectAltNames the wizard proposes: the external FQDN, ``sip.<domain>`` and each
        XMPP domain (the topology)."""
        return certificate_names(self.panel.config)

    def render(self, request: Request, session: Session, *, status: int = 200, **context: Any) -> Response:
        defaults: dict[str, Any] = {
            "values": {"friendly_name": "", "organization": "", "organizational_unit": "", "country": "",
                       "state": "", "locality": "", "extra": "", "key_size": "2048"},
            "chosen": self.proposed(), "errors": {}, "request_pem": "", "import_problems": [],
            "import_warnings": [],
        }
        defaults.update(context)
        pending = (self.directory / REQUEST_CSR).exists()
        exportable = (self.directory / REQUEST_EXPORTABLE).exists()
        return self.panel.render(
            request, session, "certificates.html", status=status, current=certificate_view(self.panel),
            proposed=self.proposed(), key_sizes=csr.KEY_SIZES, fqdn=self.panel.config.edge.external_fqdn,
            pending=pending, exportable=exportable, **defaults)

    async def page(self, request: Request, session: Session) -> Response:
        return self.render(request, session)

    async def request_csr(self, request: Request, session: Session) -> Response:
        form = request.state.form
        values: dict[str, Any] = {name: form_text(form, name) for name in
                  ("friendly_name", "organization", "organizational_unit", "country", "state", "locality",
                   "extra", "key_size")}
        exportable = values["exportable"] = form.get("exportable") == "on"
        chosen = [n for n in form.getlist("san") if isinstance(n, str)]
        errors: dict[str, str] = {}
        extra: list[str] = []
        for name in values["extra"].replace(",", "\n").split():
            try:
                extra.append(normalize_certificate_name(name))
            except InvalidName as exc:
                errors["extra"] = f"subjectAltName {exc.detail}"
        names = list(dict.fromkeys([*(n for n in self.proposed() if n in chosen), *extra]))
        if not names and "extra" not in errors:
            errors["san"] = "a certificate request needs at least one name"
        size = int(values["key_size"]) if values["key_size"].isdigit() else 0
        if size not in csr.KEY_SIZES:
            errors["key_size"] = f"key size must be one of {', '.join(map(str, csr.KEY_SIZES))}"
        subject = csr.SubjectFields(
            common_name=self.panel.config.edge.external_fqdn, organization=values["organization"] or None,
            organizational_unit=values["organizational_unit"] or None, country=values["country"] or None,
            state=values["state"] or None, locality=values["locality"] or None)
        if not errors:
            try:
                csr.validate_subject(subject)
            except ValueError as exc:
                errors["country" if "country" in str(exc) else "subject"] = str(exc).replace("--country", "country")
        if errors:
            return self.render(request, session, status=400, values=values, chosen=chosen, errors=errors)

        def make() -> bytes:
            key = csr.generate_rsa_key(size)
            request_ = csr.build_csr(key, subject, names, friendly_name=values["friendly_name"] or None)
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / REQUEST_KEY, private_key_pem(key), 0o600)
            pem = request_.public_bytes(serialization.Encoding.PEM)
            write_atomic(self.directory / REQUEST_CSR, pem, 0o644)
            marker = self.directory / REQUEST_EXPORTABLE
            if exportable:
                write_atomic(marker, b"", 0o600)
            else:
                marker.unlink(missing_ok=True)
            if values["friendly_name"]:
                record_friendly_name(self.panel.config, public_key_der(key), values["friendly_name"])
            return pem

        try:
            pem = await anyio.to_thread.run_sync(make)
        except (ValueError, CertificateError) as exc:
            return self.render(request, session, status=400, values=values, chosen=chosen,
                               errors={"subject": str(exc)})
        self.panel.audit(session, "certificate", self.panel.config.edge.external_fqdn,
                         f"request created ({size}-bit RSA{', exportable key' if exportable else ''}; "
                         f"names {', '.join(names)})")
        return self.render(request, session, values=values, chosen=chosen, request_pem=pem.decode())

    async def download(self, request: Request, session: Session) -> Response:
        path = self.directory / REQUEST_CSR
        try:
            data = path.read_bytes()
        except OSError:
            return self.panel.refusal(request, session, 404, "No certificate request yet: create one first.")
        return Response(data, media_type="application/pkcs10", headers={
            **SECURITY_HEADERS, "Content-Disposition": 'attachment; filename="edgeproxy-request.csr"'})

    async def download_key(self, request: Request, session: Session) -> Response:
        """The pending request's private key, when it was created exportable (admin, POST with
        the CSRF token: a key is not something a link may fetch)."""
        if not (self.directory / REQUEST_EXPORTABLE).exists():
            return self.panel.refusal(request, session, 403,
                                      "The pending request's key was not created exportable: it stays on this server.")
        try:
            data = (self.directory / REQUEST_KEY).read_bytes()
        except OSError:
            return self.panel.refusal(request, session, 404, "No certificate request yet: create one first.")
        self.panel.audit(session, "certificate", self.panel.config.edge.external_fqdn, "request key exported")
        return Response(data, media_type="application/x-pem-file", headers={
            **SECURITY_HEADERS, "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="edgeproxy-request.key"'})

    async def import_certificate(self, request: Request, session: Session) -> Response:
        form = request.state.form
        problems: list[str] = []
        blobs: dict[str, bytes] = {}
        for name in ("certificate", "chain"):
            upload = form.get(name)
            if isinstance(upload, UploadFile) and upload.filename:
                data = await upload.read(MAX_UPLOAD_BYTES + 1)
                if len(data) > MAX_UPLOAD_BYTES:
                    problems.append(f"{name}: larger than {MAX_UPLOAD_BYTES // 1024} KiB")
                blobs[name] = data
        if "certificate" not in blobs:
            problems.append("choose the certificate file the CA issued")
        if problems:
            return self.render(request, session, status=400, import_problems=problems)
        outcome = await anyio.to_thread.run_sync(self._import, blobs)
        refusals, warnings = outcome
        if refusals:
            return self.render(request, session, status=400, import_problems=refusals, import_warnings=warnings)
        self.panel.audit(session, "certificate", self.panel.config.edge.external_fqdn, "imported")
        notice = "Certificate installed; the running edge takes it on reload." + "".join(
            f" Warning: {w}" for w in warnings)
        return self.panel.redirect("/certificates", notice, session=session)

    def _import(self, blobs: dict[str, bytes]) -> tuple[list[str], list[str]]:
        """``cert import``'s checks and installation; (refusals, warnings)."""
        paths = configured_paths(self.panel.config)
        try:
            certs = load_certificates(blobs["certificate"], "certificate")
            leaf, chain = certs[0], certs[1:]
            if "chain" in blobs:
                chain += load_certificates(blobs["chain"], "chain")
            pending = self.directory / REQUEST_KEY
            key_path = pending if pending.exists() else paths.key
            key = read_private_key(key_path)
        except CertificateError as exc:
            return [str(exc)], []
        problems = certcheck.check_edge_certificate(leaf, key, chain, required_names(self.panel.config), _now())
        refusals = [f"{p.code}: {p.message}" for p in certcheck.errors(problems)]
        warnings = [p.message for p in problems if p.severity == "warning"]
        if refusals:
            return refusals, warnings
        install_files([
            (paths.chain, certificates_pem(chain), 0o644),
            (paths.key, private_key_pem(key), 0o600),
            (paths.certificate, certificates_pem([leaf, *chain]), 0o644),
        ])
        for name in (REQUEST_KEY, REQUEST_CSR, REQUEST_EXPORTABLE):
            (self.directory / name).unlink(missing_ok=True)
        return [], warnings


# -- DNS and Check ------------------------------------------------------------------------------


def _lookup(panel: Panel) -> Lookup:
    return Lookup(panel.config.dns_resolver(), timeout=DNS_TIMEOUT)


def finding_rows(findings: list[Finding]) -> list[dict[str, str]]:
    return [{"level": f.level, "check": f.check, "detail": f.detail, "hint": f.hint or "", "line": f.line()}
            for f in findings]


class DiagnosticPages:
    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    async def dns(self, request: Request, session: Session) -> Response:
        pools_text = request.query_params.get("pools", "").strip()
        errors: dict[str, str] = {}
        lines: list[str] = []
        warnings: list[str] = []
        try:
            pools = [parse_pool(p) for p in pools_text.split()]
            plan = publication(self.panel.config, pools)
            lines, warnings = render(plan), list(plan.warnings)
        except ValueError as exc:
            errors["pools"] = str(exc).replace("--pool ", "")
            pools = []
        findings: list[dict[str, str]] = []
        if request.query_params.get("check") and not errors:
            def live() -> list[Finding]:
                listed = load_partners(self.panel.config)
                targets = [PartnerTarget(d, p.proxy_fqdn) for p in listed.partners for d in p.domains]
                return diagnose(self.panel.config, _lookup(self.panel), targets, pools=pools or None,
                                timeout=DNS_TIMEOUT)
            try:
                findings = finding_rows(await anyio.to_thread.run_sync(live))
            except ConfigError as exc:
                errors["check"] = str(exc)
        return self.panel.render(request, session, "dns.html", lines=lines, warnings=warnings, errors=errors,
                                 pools=pools_text, findings=findings, checked=bool(request.query_params.get("check")))

    async def check(self, request: Request, session: Session) -> Response:
        with_dns = request.query_params.get("dns", "1") != "0"
        status = self.panel.status_source.status()  # here: the status source lives in the trio thread

        def run() -> list[Finding]:
            lookup = _lookup(self.panel) if with_dns else None
            return run_checks(self.panel.config, lookup=lookup, running=lambda: status)

        try:
            findings = finding_rows(await anyio.to_thread.run_sync(run))
        except ConfigError as exc:
            findings = [{"level": "FAIL", "check": "config", "detail": str(exc), "hint": "", "line": str(exc)}]
        counts = {level: sum(1 for f in findings if f["level"] == level) for level in ("OK", "WARN", "FAIL")}
        return self.panel.render(request, session, "check.html", findings=findings, counts=counts,
                                 with_dns=with_dns)


def routes(panel: Panel) -> list[BaseRoute]:
    """The tool pages' routes (under ``/ui``)."""
    certs, diagnostics = CertificatePages(panel), DiagnosticPages(panel)
    return [
        Route("/certificates", panel.page(certs.page), methods=["GET"]),
        Route("/certificates/request", panel.page(certs.request_csr, change=True), methods=["POST"]),
        Route("/certificates/request.csr", panel.page(certs.download), methods=["GET"]),
        Route("/certificates/request.key", panel.page(certs.download_key, change=True), methods=["POST"]),
        Route("/certificates/import", panel.page(certs.import_certificate, change=True), methods=["POST"]),
        Route("/dns", panel.page(diagnostics.dns), methods=["GET"]),
        Route("/check", panel.page(diagnostics.check), methods=["GET"]),
    ]


