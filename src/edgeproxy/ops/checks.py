"""The checks of ``edgeproxy check`` (and the Control Panel's Check page): the admin's checklist,
without the command line (like ``prosodyctl check``).

One line per check, ``OK|WARN|FAIL <check>: <detail> (hint: …)``, exit status 1 when any line is
FAIL. The checks, in the order an admin fixes things:

1. **config** — the file loads (else a single FAIL and stop) and makes sense: domains and the
   external FQDN are valid DNS names, no listener clashes with the loopback channel, the loopback
   channel is on loopback (else it needs mutual TLS); **limits** — the ``[limits]`` in force
   (``docs/limits.md``), WARN for a setting that removes a protection before authentication.
2. **certificate** — the configured certificate and key exist and match, the chain is in order,
   serverAuth usage (:mod:`edgeproxy.certs.check`); **certificate names** — every XMPP domain and
   the external FQDN covered (RFC 6125); **certificate expiry** — WARN under 30 days, FAIL expired.
3. **trust** — the CA bundle for partner certificates (XEP-0178), or the system store.
4. **listener** — for each external listener and the loopback channel: can we bind it now, or is
   something already listening? A busy address that the edgeproxy answering on ``[admin] listen``
   lists among its own listeners (its ``/status``) is OK: "in use by this edgeproxy (pid N)".
5. **secrets** — the state dir and the secrets at rest in it (the store and its ``-wal``/``-shm``,
   the admin token, the channel secret: :mod:`edgeproxy.ops.atrest`) grant nothing beyond 0750,
   0600 and 0640: FAIL for each one that does, with the ``chmod`` that fixes it — the same files
   for which ``edgeproxy serve`` refuses to start (EP8007).
6. **partners** — the partner list is readable, not empty (there is no default partner),
   no partner claims one of our domains or routes to our own FQDN; then one line per stored
   partner (**partner DOMAIN**): its domains are valid names, its negotiation row is not refused
   and draws no warning, its proxy FQDN is a well-formed ``host[:port]`` that resolves.
7. **dns** — :func:`edgeproxy.dns.diagnose.diagnose`: our SRV and A/AAAA records, and the SRV
   (else A/AAAA) records of each partner without a proxy FQDN, each lookup bounded by
   ``--timeout``.

``--json`` prints the same lines as a JSON array of ``{"check", "status", "message", "hint"}``
(``status``: ``ok`` | ``warning`` | ``error``; docs/cli-json.md).
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import json
import socket
from collections.abc import Callable, Sequence

import idna

from edgeproxy.certs import check as certcheck
from edgeproxy.certs.names import required_names
from edgeproxy.certs.pem import CertificateError, read_certificates, read_private_key
from edgeproxy.certs.store import configured_paths
from edgeproxy.config import EdgeConfig
from edgeproxy.dns.diagnose import PartnerTarget, diagnose
from edgeproxy.dns.partners import PartnerInfo, PartnerList
from edgeproxy.dns.resolver import Lookup
from edgeproxy.findings import Finding, fail, ok, warn
from edgeproxy.names import (
    InvalidName,
    ip_literal,
    listen_address,
    normalize_domain,
    normalize_host_port,
    split_host_port,
)
from edgeproxy.ops.atrest import exposed_secrets, secret_files
from edgeproxy.ops.status import AUTH_LABELS, EdgeStatus
from edgeproxy.policy.model import Partner
from edgeproxy.policy.validation import check_negotiation

#: What the listener check asks when an address is busy: the running edge's status, or None
#: when no edgeproxy answers on ``[admin] listen``.
RunningStatus = Callable[[], EdgeStatus | None]
#: How long the listener check waits for the admin endpoint's ``/status`` (seconds).
STATUS_TIMEOUT = 2.0

CERT_HINT = (
    "`edgeproxy cert self-signed` for a lab; `edgeproxy cert request` then `edgeproxy cert import` "
    "for a public CA"
)


def _valid_dns_name(name: str) -> str | None:
    """None if ``name`` is a usable host/domain name, else why not."""
    try:
        ascii_name = idna.encode(name.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        return str(exc)
    if "." not in ascii_name:
        return "not a fully qualified name (no dot)"
    if len(ascii_name) > 253:
        return "longer than 253 characters"
    return None


# --- configuration -----------------------------------------------------------------------------


def check_config(config: EdgeConfig) -> list[Finding]:
    problems: list[str] = []
    for domain in config.edge.domains:
        why = _valid_dns_name(domain)
        if why:
            problems.append(f"edge.domains: {domain!r} is not a valid domain ({why})")
    why = _valid_dns_name(config.edge.external_fqdn)
    if why:
        problems.append(f"edge.external-fqdn: {config.edge.external_fqdn!r} is not a valid host name ({why})")
    endpoints: list[tuple[str, str, int]] = []
    for key, value in [("edge.listen", v) for v in config.edge.listen] + [
        ("edge.internal-listen", config.edge.internal_listen)
    ]:
        host, port = listen_address(value)
        if not 0 < port < 65536:
            problems.append(f"{key}: port {port} out of range in {value!r}")
        endpoints.append((key, host, port))
    internal = endpoints[-1]
    for key, host, port in endpoints[:-1]:
        wildcard = host in ("0.0.0.0", "::") or internal[1] in ("0.0.0.0", "::")
        if port == internal[2] and (host == internal[1] or wildcard):
            problems.append(f"{key} {host}:{port} clashes with edge.internal-listen {internal[1]}:{internal[2]}")
    if problems:
        return [fail("config", "; ".join(problems), f"edit {config.source}")]
    findings = [
        ok(
            "config",
            f"{config.source}: domains {', '.join(config.edge.domains)}; external FQDN {config.edge.external_fqdn}",
        )
    ]
    try:
        loopback = ipaddress.ip_address(internal[1]).is_loopback
    except ValueError:
        loopback = internal[1] == "localhost"
    if not loopback and not config.edge.internal_tls:  # (refused at load since config.check_rules)
        findings.append(
            warn(
                "config",
                f"edge.internal-listen {config.edge.internal_listen} is not a loopback address",
                "the loopback channel then needs mutual TLS; use 127.0.0.1 when the gateway runs here",
            )
        )
    return findings


# --- limits ------------------------------------------------------------------------------------

#: The default total connection limit of the gateway settings (the store may set another): unauthenticated
#: connections allowed up to it would let strangers fill every slot.
DEFAULT_CONNECTION_LIMIT = 1000


def check_limits(config: EdgeConfig) -> Finding:
    """The limits before authentication (``docs/limits.md``) in one line."""
    lim = config.limits

    def rate(value: int) -> str:
        return "off" if value == 0 else f"{value} B/s"

    detail = (
        f"pre-auth connections {lim.preauth_per_ip} per IP, {lim.preauth_total} in total; dialback"
        f" {lim.dialback_per_stream} pending per stream, {lim.dialback_per_ip} per IP; write timeout"
        f" {lim.write_timeout:g} s; read rate {rate(lim.preauth_rate)} before authentication,"
        f" {rate(lim.inbound_rate)} after"
    )
    if lim.preauth_rate == 0:
        return warn("limits", detail + "; unauthenticated streams are read at any rate",
                    "set [limits] preauth-rate (default 16384)")
    if lim.preauth_total >= DEFAULT_CONNECTION_LIMIT:
        return warn("limits", detail + f"; preauth-total is not below the connection limit ({DEFAULT_CONNECTION_LIMIT})",
                    "unauthenticated connections could take every slot: lower [limits] preauth-total")
    return ok("limits", detail)


# --- certificate -------------------------------------------------------------------------------


def check_certificate(config: EdgeConfig, now: dt.datetime) -> list[Finding]:
    paths = configured_paths(config)
    if not paths.certificate.exists():
        return [fail("certificate", f"{paths.certificate} does not exist", CERT_HINT)]
    try:
        certs = read_certificates(paths.certificate)
    except CertificateError as exc:
        return [fail("certificate", str(exc), CERT_HINT)]
    leaf, chain = certs[0], certs[1:]
    findings: list[Finding] = []
    problems: list[certcheck.Problem] = []
    try:
        key = read_private_key(paths.key)
        problems += certcheck.check_key_match(leaf, key)
    except CertificateError as exc:
        problems.append(certcheck.Problem("key", str(exc)))
    problems += certcheck.check_server_auth(leaf) + certcheck.check_chain(leaf, chain, now)
    subject = certcheck.subject_text(leaf)
    errors = certcheck.errors(problems)
    if errors:
        findings.append(fail("certificate", f"{paths.certificate}: " + "; ".join(p.message for p in errors), CERT_HINT))
    elif problems:
        findings.append(warn("certificate", f"{paths.certificate}: " + "; ".join(p.message for p in problems)))
    else:
        findings.append(ok("certificate", f"{paths.certificate}: {subject}, key matches, {len(chain)} chain"))

    required = required_names(config)
    names = certcheck.check_names(leaf, required)
    if names:
        findings.append(fail("certificate names", names[0].message, "request a certificate with `edgeproxy cert request` (it lists every name)"))
    else:
        findings.append(ok("certificate names", f"covers {', '.join(required)}"))

    validity = certcheck.check_validity(leaf, now)
    until = f"{leaf.not_valid_after_utc:%Y-%m-%d}"
    if not validity:
        findings.append(ok("certificate expiry", f"{certcheck.days_left(leaf, now)} days left (until {until})"))
    elif validity[0].severity == "warning":
        findings.append(warn("certificate expiry", validity[0].message, "renew: `edgeproxy cert request`, then `edgeproxy cert import`"))
    else:
        findings.append(fail("certificate expiry", validity[0].message, "renew: `edgeproxy cert request`, then `edgeproxy cert import`"))
    return findings


def check_trust(config: EdgeConfig) -> Finding:
    if config.tls.trust is None:
        return ok("trust", "system CA store for partner certificates")
    path = config.path(config.tls.trust)
    if not path.exists():
        return warn(
            "trust",
            f"{path} does not exist: partner certificates are checked against the system CA store",
            "point tls.trust at the CA bundle your partners' certificates chain to, or remove the key",
        )
    try:
        cas = read_certificates(path)
    except CertificateError as exc:
        return fail("trust", str(exc), "tls.trust must be a PEM bundle of CA certificates")
    return ok("trust", f"{path}: {len(cas)} CA certificate(s)")


# --- listeners ---------------------------------------------------------------------------------


def _same_endpoint(configured: str, bound: str) -> bool:
    """Whether the configured ``host:port`` is the bound one (a wildcard matches by port)."""
    try:
        (chost, cport), (bhost, bport) = listen_address(configured), listen_address(bound)
    except ValueError:
        return False
    wildcard = {"0.0.0.0", "::", ""}
    return cport == bport and (chost == bhost or chost in wildcard or bhost in wildcard)


def _in_use(check: str, hostport: str, running: RunningStatus | None) -> Finding:
    """An address already bound: fine when the running edgeproxy lists it as its own."""
    status = running() if running is not None else None
    if status is not None:
        own = [li for li in status.listeners if _same_endpoint(hostport, li.address)]
        if own:
            return ok(check, f"in use by this edgeproxy (pid {status.pid}, {own[0].role.value} listener)")
        return warn(
            check,
            f"in use by another process: the running edgeproxy (pid {status.pid}) does not listen there",
            "find the process (ss -ltnp) or change the address",
        )
    return warn(
        check,
        "in use: something is already listening, and no edgeproxy answers on [admin] listen",
        "if edgeproxy is not running, find the process (ss -ltnp) or change the address",
    )


def probe_listener(hostport: str, running: RunningStatus | None = None) -> Finding:
    """Can edgeproxy bind ``hostport`` now? ``running``: asked when the address is busy."""
    host, port = listen_address(hostport)
    check = f"listener {hostport}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return _in_use(check, hostport, running)
            if exc.errno == errno.EACCES:
                return fail(check, "permission denied", "ports below 1024 need root or CAP_NET_BIND_SERVICE")
            if exc.errno == errno.EADDRNOTAVAIL:
                return fail(check, f"{host} is not an address of this host", "fix edge.listen / internal-listen")
            return fail(check, f"cannot bind: {exc.strerror}", "fix edge.listen / internal-listen")
    return ok(check, "free: edgeproxy can bind it (it is not running now)")


# --- secrets at rest ---------------------------------------------------------------------------


def check_secrets(config: EdgeConfig) -> Finding:
    """FAIL naming every secret at rest others may read (see the module docstring), else OK."""
    try:
        exposed = exposed_secrets(config)
    except OSError as exc:
        return fail("secrets", f"cannot examine the state dir: {exc}", "is edge.state-dir readable by this user?")
    if exposed:
        detail = "; ".join(
            f"{secret.what} {secret.path} has mode {problem.mode:04o}, more than {problem.allowed:04o}"
            for secret, problem in exposed
        )
        return fail("secrets", detail + ": edgeproxy serve refuses to start",
                    "; ".join(problem.fix for _, problem in exposed))
    present = [s for s in secret_files(config) if s.path.exists()]
    if not present:
        return ok("secrets", f"{config.state_dir} not created yet (edgeproxy creates it 0750, its secrets 0600/0640)")
    return ok("secrets", ", ".join(f"{s.what} {s.mode:04o} or stricter" for s in present))


# --- partners ----------------------------------------------------------------------------------


def check_partners(config: EdgeConfig, listed: PartnerList) -> Finding:
    if listed.error:
        return fail("partners", listed.error, "is the state dir readable? (edge.state-dir)")
    if not listed.partners:
        return warn(
            "partners",
            "none: no domain can federate (there is no default partner)",
            "edgeproxy partner new DOMAIN",
        )
    ours = {d.lower() for d in config.edge.domains}
    fqdn = config.edge.external_fqdn.rstrip(".").lower()
    problems = []
    for p in listed.partners:
        clash = [d for d in p.domains if d.lower() in ours]
        if clash:
            problems.append(f"partner {p.domain} lists our own domain {', '.join(clash)}")
        if p.proxy_fqdn and split_host_port(p.proxy_fqdn)[0].rstrip(".").lower() == fqdn:
            problems.append(f"partner {p.domain} has our own FQDN {fqdn} as proxy FQDN (a loop)")
    if problems:
        return fail("partners", "; ".join(problems), "edgeproxy partner set / partner remove")
    domains = sum(len(p.domains) for p in listed.partners)
    return ok("partners", f"{len(listed.partners)} partner(s), {domains} domain(s)")


def load_partner_rows(config: EdgeConfig) -> tuple[list[Partner], PartnerList]:
    """The stored partner rows, and the list the other checks read; read-only (a check never
    creates the store: without one there are no partners yet)."""
    from edgeproxy.policy.store import STORE_FILE, Store

    path = config.state_dir / STORE_FILE
    if not path.exists():
        return [], PartnerList(source=f"{path} (not created yet)")
    try:
        with Store(path) as store:
            _, configuration = store.read()
    except Exception as exc:  # noqa: BLE001 - any store failure is a finding, not a crash
        return [], PartnerList(source=str(path), error=f"cannot read {path}: {exc}")
    rows = list(configuration.partners)
    infos = [PartnerInfo(p.domain, tuple(p.additional_domains), p.proxy_fqdn) for p in rows]
    return rows, PartnerList(infos, str(path))


def _proxy_problems(proxy: str, lookup: Lookup | None) -> tuple[str, list[str], list[str]]:
    """(what the proxy FQDN is, errors, warnings): a well-formed ``host[:port]`` that resolves."""
    try:
        host, port = normalize_host_port(proxy, default_port=5269, allow_ip=True)
    except InvalidName as exc:
        return f"proxy-fqdn {proxy}", [f"proxy-fqdn {exc.detail}"], []
    where = f"proxy-fqdn {proxy}"
    if ip_literal(host) is not None:
        return f"{where} (an address: no DNS needed)", [], []
    if lookup is None:
        return f"{where} (not resolved: --no-dns)", [], []
    answer = lookup.addresses(host)
    if answer.outcome == "ok":
        return f"{where} ({host} resolves to {', '.join(answer.values)}; port {port})", [], []
    if answer.outcome == "error":
        return where, [], [f"cannot resolve proxy-fqdn {host}: {answer.detail}"]
    return where, [f"proxy-fqdn {host} does not resolve ({answer.detail})"], []


def check_partner_row(partner: Partner, lookup: Lookup | None) -> Finding:
    """One stored partner: valid domains, its negotiation row, its proxy FQDN."""
    check = f"partner {partner.domain}"
    errors: list[str] = []
    warnings: list[str] = []
    for domain in partner.domains:
        try:
            normalize_domain(domain)
        except InvalidName as exc:
            errors.append(f"domain {exc.detail}")
    verdict = check_negotiation(partner.tls, partner.sasl, partner.dialback)
    if verdict.refusal is not None:
        errors.append(f"negotiation row (tls {partner.tls}, sasl {partner.sasl}, dialback "
                      f"{'on' if partner.dialback else 'off'}) {verdict.refusal}")
    warnings += [w.removeprefix("warning: ") for w in verdict.warnings]
    route = "DNS (SRV, then A/AAAA)"
    if partner.proxy_fqdn:
        route, proxy_errors, proxy_warnings = _proxy_problems(partner.proxy_fqdn, lookup)
        errors += proxy_errors
        warnings += proxy_warnings
    hint = f"edgeproxy partner set {partner.domain} …"
    if errors:
        return fail(check, "; ".join(errors + warnings), hint)
    if warnings:
        return warn(check, "; ".join(warnings), hint)
    methods = ", ".join(AUTH_LABELS[m] for m in sorted(verdict.methods, key=list(AUTH_LABELS).index))
    return ok(check, f"{partner.type}, {len(partner.domains)} domain(s), {methods}; reached by {route}")


# --- all ---------------------------------------------------------------------------------------


def run_checks(
    config: EdgeConfig,
    *,
    lookup: Lookup | None,
    now: dt.datetime | None = None,
    partners: PartnerList | None = None,
    rows: Sequence[Partner] | None = None,
    running: RunningStatus | None = None,
) -> list[Finding]:
    """Every check; ``lookup=None`` skips DNS. Without ``partners`` the stored partner rows are
    read (and checked one by one); ``rows`` are checked when given. ``running``: the running
    edge's status, asked only when a listener address is busy."""
    now = now or dt.datetime.now(dt.UTC)
    findings = check_config(config)
    if findings[0].level == "FAIL":
        return findings
    findings.append(check_limits(config))
    findings += check_certificate(config, now)
    findings.append(check_trust(config))
    findings += [probe_listener(hp, running) for hp in (*config.edge.listen, config.edge.internal_listen)]
    findings.append(check_secrets(config))
    if partners is None:
        stored, partners = load_partner_rows(config)
        rows = stored if rows is None else rows
    findings.append(check_partners(config, partners))
    findings += [check_partner_row(p, lookup) for p in rows or ()]
    if lookup is None:
        findings.append(warn("dns", "not checked (--no-dns)", "edgeproxy dns check"))
    else:
        targets = [PartnerTarget(d, None) for p in partners.partners if not p.proxy_fqdn for d in p.domains]
        findings += diagnose(config, lookup, targets)
    return findings


#: ``Finding.level`` as ``check --json`` writes it.
JSON_STATUS = {"OK": "ok", "WARN": "warning", "FAIL": "error"}


def findings_json(findings: Sequence[Finding]) -> str:
    """The ``check --json`` array: one object per line of the text report."""
    return json.dumps(
        [{"check": f.check, "status": JSON_STATUS[f.level], "message": f.detail, "hint": f.hint} for f in findings],
        ensure_ascii=False,
    )
