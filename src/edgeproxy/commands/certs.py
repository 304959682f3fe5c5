"""``edgeproxy cert request | import | self-signed | show``.

Each takes ``--json`` (the shapes are in ``docs/cli-json.md``): the same facts as the text, as
one object on stdout; a refusal prints nothing on stdout and says why on stderr."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgeproxy.certs import check, csr, selfsigned
from edgeproxy.certs.identity import PresentedIdentities
from edgeproxy.certs.names import certificate_names, required_names
from edgeproxy.certs.pem import (
    CertificateError,
    certificates_pem,
    private_key_pem,
    public_key_der,
    read_certificates,
    read_passphrase,
    read_private_key,
    write_atomic,
)
from edgeproxy.certs.store import (
    CertPaths,
    configured_paths,
    friendly_name,
    install_files,
    record_friendly_name,
)
from edgeproxy.commands.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    SubParsers,
    add_json_option,
    command_group,
    config_option_parent,
    error,
    load_args_config,
)
from edgeproxy.commands.records import print_json
from edgeproxy.config import EdgeConfig
from edgeproxy.names import InvalidName, normalize_certificate_name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def checked_sans(names: list[str]) -> list[str] | None:
    """The ``--san`` names in canonical form; None after printing the rule one of them breaks
    (a DNS name, or ``*.`` as the whole leftmost label)."""
    try:
        return [normalize_certificate_name(n) for n in names]
    except InvalidName as exc:
        error(f"--san {exc.detail}")
        return None


# --- request -----------------------------------------------------------------------------------


def cmd_request(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    subject = csr.SubjectFields(
        common_name=config.edge.external_fqdn,
        organization=args.org,
        organizational_unit=args.ou,
        country=args.country,
        state=args.state,
        locality=args.city,
    )
    extra = checked_sans(args.san)
    if extra is None:
        return EXIT_USAGE
    names = certificate_names(config, extra=extra, xmpp_domains=args.xmpp_domains)
    out, key_out = Path(args.out), Path(args.key_out)
    for path in (out, key_out):
        if path.exists() and not args.force:
            error(f"{path} exists; refusing to overwrite it (use --force)")
            return EXIT_REFUSED
    try:
        passphrase = read_passphrase(args.passphrase_file)
        key = csr.generate_rsa_key(args.key_size)
        request = csr.build_csr(key, subject, names, friendly_name=args.friendly_name)
    except (ValueError, CertificateError) as exc:
        error(str(exc))
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_REFUSED
    write_atomic(key_out, private_key_pem(key, passphrase), 0o600)
    write_atomic(out, request.public_bytes(serialization.Encoding.PEM), 0o644)
    record_friendly_name(config, public_key_der(key), args.friendly_name)
    if args.json:
        print_json({
            "csr": str(out), "key": str(key_out), "key-size": args.key_size, "encrypted": bool(passphrase),
            "subject": request.subject.rfc4514_string(), "names": names, "friendly-name": args.friendly_name,
        })
        return EXIT_OK
    print(f"wrote certificate request {out} ({args.key_size}-bit RSA key in {key_out}, mode 0600"
          f"{', encrypted' if passphrase else ''})")
    print(f"subject: {request.subject.rfc4514_string()}")
    print(f"names:   {', '.join(names)}")
    print("send the request to your CA, then: edgeproxy cert import CERT --key "
          f"{key_out}{' --passphrase-file FILE' if passphrase else ''} [--chain FILE]")
    return EXIT_OK


# --- import ------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    paths = configured_paths(config)
    try:
        certs = read_certificates(Path(args.certificate))
        leaf, chain = certs[0], certs[1:]
        if args.chain:
            chain += read_certificates(Path(args.chain))
        key_path = Path(args.key) if args.key else paths.key
        if not key_path.exists():
            raise CertificateError(f"no private key: {key_path} does not exist (pass --key KEY)")
        key = read_private_key(key_path, read_passphrase(args.passphrase_file))
    except CertificateError as exc:
        error(f"refused: {exc}")
        return EXIT_REFUSED
    problems = check.check_edge_certificate(leaf, key, chain, required_names(config), _now())
    refusals = check.errors(problems)
    warnings = [p.message for p in problems if p.severity == "warning"]
    for message in warnings:
        error(f"warning: {message}")
    if refusals:
        for p in refusals:
            error(f"refused ({p.code}): {p.message}")
        error("nothing was installed")
        return EXIT_REFUSED
    install_files(
        [
            (paths.chain, certificates_pem(chain), 0o644),
            (paths.key, private_key_pem(key), 0o600),
            (paths.certificate, certificates_pem([leaf, *chain]), 0o644),
        ]
    )
    if args.json:
        print_json({
            "certificate": str(paths.certificate), "key": str(paths.key), "chain": len(chain),
            "subject": check.subject_text(leaf), "days-left": check.days_left(leaf, _now()),
            "warnings": warnings,
        })
        return EXIT_OK
    print(f"installed {paths.certificate} (certificate + {len(chain)} chain), {paths.key} (0600)")
    print(f"subject {check.subject_text(leaf)}, {check.days_left(leaf, _now())} days left")
    print("the running edge takes it on reload (edgeproxy reload, or restart the service)")
    return EXIT_OK


# --- self-signed -------------------------------------------------------------------------------


def cmd_self_signed(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    paths = CertPaths.in_directory(Path(args.out_dir)) if args.out_dir else configured_paths(config)
    if not args.force:
        existing = [p for p in (paths.certificate, paths.key) if p.exists()]
        if existing:
            error(f"{existing[0]} exists; refusing to overwrite it (use --force)")
            return EXIT_REFUSED
    extra = checked_sans(args.san)
    if extra is None:
        return EXIT_USAGE
    names = certificate_names(config, extra=extra)
    authority = selfsigned.make_authority(f"edgeproxy private CA for {config.edge.external_fqdn}")
    key = selfsigned.new_ec_key()
    leaf = selfsigned.issue(authority, key.public_key(), names, days=args.days)
    install_files(
        [
            (paths.ca_key, private_key_pem(authority.key), 0o600),
            (paths.ca_certificate, certificates_pem([authority.certificate]), 0o644),
            (paths.chain, b"", 0o644),
            (paths.key, private_key_pem(key), 0o600),
            (paths.certificate, certificates_pem([leaf]), 0o644),
        ]
    )
    if args.json:
        print_json({
            "certificate": str(paths.certificate), "key": str(paths.key),
            "ca-certificate": str(paths.ca_certificate), "names": names, "days": args.days,
        })
        return EXIT_OK
    print(f"wrote {paths.certificate} and {paths.key} for {', '.join(names)} ({args.days} days)")
    print(f"private CA: {paths.ca_certificate} (give it to partners that must trust this edge)")
    return EXIT_OK


# --- show --------------------------------------------------------------------------------------


def describe(config: EdgeConfig, leaf: x509.Certificate, now: dt.datetime) -> list[str]:
    ids = PresentedIdentities.from_certificate(leaf)
    lines = []
    name = friendly_name(config, public_key_der(leaf))
    if name:
        lines.append(f"friendly name: {name}")
    left = check.days_left(leaf, now)
    lines += [
        f"subject:    {check.subject_text(leaf)}",
        f"issuer:     {leaf.issuer.rfc4514_string()}",
        f"serial:     {leaf.serial_number:x}",
        f"valid:      {leaf.not_valid_before_utc:%Y-%m-%d} .. {leaf.not_valid_after_utc:%Y-%m-%d}"
        f" ({'expired' if left < 0 else f'{left} days left'})",
        f"names:      {', '.join(ids.all_names()) or 'none'}",
    ]
    for n in required_names(config):
        lines.append(f"  {'covered' if ids.covers(n) else 'NOT covered'}: {n}")
    return lines


def describe_json(config: EdgeConfig, path: Path, certs: list[x509.Certificate], now: dt.datetime) -> dict[str, object]:
    """The ``cert show --json`` object: what :func:`describe` says, as fields."""
    leaf = certs[0]
    ids = PresentedIdentities.from_certificate(leaf)
    left = check.days_left(leaf, now)
    return {
        "certificate": str(path),
        "friendly-name": friendly_name(config, public_key_der(leaf)),
        "subject": check.subject_text(leaf),
        "issuer": leaf.issuer.rfc4514_string(),
        "serial": f"{leaf.serial_number:x}",
        "not-before": leaf.not_valid_before_utc.isoformat(),
        "not-after": leaf.not_valid_after_utc.isoformat(),
        "days-left": left,
        "expired": left < 0,
        "names": ids.all_names(),
        "required": [{"name": n, "covered": ids.covers(n)} for n in required_names(config)],
        "chain": [check.subject_text(c) for c in certs[1:]],
    }


def cmd_show(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    path = Path(args.certificate) if args.certificate else configured_paths(config).certificate
    try:
        certs = read_certificates(path)
    except CertificateError as exc:
        error(f"{exc} (hint: edgeproxy cert self-signed, or cert request + cert import)")
        return EXIT_REFUSED
    if args.json:
        print_json(describe_json(config, path, certs, _now()))
        return EXIT_OK
    print(f"certificate: {path}")
    for line in describe(config, certs[0], _now()):
        print(line)
    if len(certs) > 1:
        print(f"chain:      {'; '.join(check.subject_text(c) for c in certs[1:])}")
    return EXIT_OK


# --- registration ------------------------------------------------------------------------------


def register(sub: SubParsers) -> None:
    cs = command_group(sub, "cert", "the edge certificate: request, import, self-signed, show")
    parent = [config_option_parent()]

    req = cs.add_parser("request", parents=parent, help="write a key and a certificate signing request")
    san_help = (
        "an extra subjectAltName: a DNS name, or *.DOMAIN (the wildcard only as the whole leftmost"
        " label); repeatable (default: none beyond the external FQDN, sip.DOMAIN and each DOMAIN)"
    )
    req.add_argument("--friendly-name", required=True, metavar="N",
                     help="a name for the key, shown by cert show (required)")
    req.add_argument("--key-size", type=int, default=2048, choices=csr.KEY_SIZES,
                     help="RSA key size in bits (default: 2048)")
    req.add_argument("--org", metavar="O", help="subject organization O (default: none)")
    req.add_argument("--ou", metavar="U", help="subject organizational unit OU (default: none)")
    req.add_argument("--country", metavar="C", help="subject country C, two letters (default: none)")
    req.add_argument("--state", metavar="S", help="subject state or province ST (default: none)")
    req.add_argument("--city", metavar="L", help="subject locality L (default: none)")
    req.add_argument("--san", action="append", default=[], metavar="NAME", help=san_help)
    req.add_argument(
        "--no-xmpp-domains", dest="xmpp_domains", action="store_false",
        help="do not add each XMPP domain itself as a name (default: added)",
    )
    req.add_argument("--out", required=True, metavar="CSR", help="where to write the request, PEM (required)")
    req.add_argument("--key-out", required=True, metavar="KEY",
                     help="where to write the private key, PEM, mode 0600 (required)")
    req.add_argument("--passphrase-file", metavar="F",
                     help="encrypt the key with the first line of F (default: not encrypted)")
    req.add_argument("--force", action="store_true", help="overwrite existing output files (default: refuse)")
    add_json_option(req)
    req.set_defaults(handler=cmd_request)

    imp = cs.add_parser("import", parents=parent, help="check and install an issued certificate")
    imp.add_argument("certificate", metavar="CERT", help="PEM: the certificate, optionally followed by its chain")
    imp.add_argument("--key", metavar="KEY", help="its private key (default: the installed key)")
    imp.add_argument("--chain", metavar="FILE",
                     help="intermediate certificates, issuer of the leaf first (default: those after the leaf in CERT)")
    imp.add_argument("--passphrase-file", metavar="F",
                     help="the key's passphrase is the first line of F (default: the key is not encrypted)")
    add_json_option(imp)
    imp.set_defaults(handler=cmd_import)

    ss = cs.add_parser("self-signed", parents=parent, help="a private CA and an edge certificate (labs, tests)")
    ss.add_argument("--out-dir", metavar="DIR",
                    help="write here instead of the configured tls paths (default: the [tls] paths)")
    ss.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    ss.add_argument("--san", action="append", default=[], metavar="NAME", help=san_help)
    ss.add_argument("--force", action="store_true", help="replace an existing certificate (default: refuse)")
    add_json_option(ss)
    ss.set_defaults(handler=cmd_self_signed)

    show = cs.add_parser("show", parents=parent, help="subject, names, covered domains, days left")
    show.add_argument("certificate", nargs="?", metavar="CERT", help="default: the installed certificate")
    add_json_option(show)
    show.set_defaults(handler=cmd_show)
