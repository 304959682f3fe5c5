"""``edgeproxy config show-default | validate | export | import``: the configuration file, and the
stored configuration (partners, gateway settings, policies, users) as one document.

``config export`` leaves the secrets (the dialback secret, the users' SIP digest hashes) out
unless ``--include-secrets``; ``config import`` then keeps this store's secrets
(:mod:`edgeproxy.policy.transfer`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edgeproxy.commands.common import (
    EXIT_OK,
    WARNING_PREFIX,
    SubParsers,
    add_json_option,
    command_group,
    config_option_parent,
    load_args_config,
    refused,
)
from edgeproxy.commands.records import print_ordered_json, print_warnings, session
from edgeproxy.config import default_config_text
from edgeproxy.policy import operations as ops
from edgeproxy.policy.transfer import export_bytes, import_bytes


def _config_show_default(args: argparse.Namespace) -> int:
    sys.stdout.write(default_config_text())
    return EXIT_OK


def _config_check(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    if args.json:
        print_ordered_json(
            {"source": str(config.source), "valid": True, "domains": list(config.edge.domains)}
        )
        return EXIT_OK
    print(f"configuration {config.source}: OK (domains: {', '.join(config.edge.domains)})")
    return EXIT_OK


def _config_export(args: argparse.Namespace) -> int:
    with session(args) as (_config, store):
        _generation, configuration = store.read()
    data = export_bytes(configuration, include_secrets=args.include_secrets)
    if args.out is None or args.out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        # Owner-only permissions whether or not it holds the secrets: it still maps the
        # federation (partners, users, contacts).
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return EXIT_OK


def _config_import(args: argparse.Namespace) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        return refused(f"cannot read {args.file}: {exc.strerror}")
    document = import_bytes(data)
    with session(args) as (config, store):
        warnings = ops.import_configuration(store, config.edge.domains, document)
        _generation, configuration = store.read()
    print_warnings(warnings)
    counts = {
        "partners": len(configuration.partners),
        "policies": len(configuration.policies),
        "users": len(configuration.users),
    }
    kept_secret = not document.has_dialback_secret
    kept_credentials = document.users_without_credentials
    if args.json:
        print_ordered_json(
            {
                "imported": counts,
                "kept-from-store": {
                    "dialback-secret": kept_secret,
                    "credentials": kept_credentials,
                },
                "warnings": [w.removeprefix(WARNING_PREFIX) for w in warnings],
            }
        )
        return EXIT_OK
    print(
        f"imported {counts['partners']} partners, {counts['policies']} policies, "
        f"{counts['users']} users"
    )
    kept = []
    if kept_secret:
        kept.append("the dialback secret")
    if kept_credentials:
        kept.append(f"the passwords of {kept_credentials} user(s)")
    if kept:
        print(
            f"kept from this store: {' and '.join(kept)} (the document has no secrets; "
            "export with --include-secrets to move them)"
        )
    return EXIT_OK


def register(sub: SubParsers) -> None:
    csub = command_group(sub, "config", "the configuration file")
    show = csub.add_parser(
        "show-default", parents=[config_option_parent()],
        help="print the embedded default configuration",
    )
    show.set_defaults(handler=_config_show_default)
    check = csub.add_parser(
        "validate", parents=[config_option_parent()],
        help="load the configuration and report errors",
    )
    add_json_option(check)
    check.set_defaults(handler=_config_check)
    export = csub.add_parser(
        "export", parents=[config_option_parent()],
        help="write partners, settings, policies and users",
    )
    export.add_argument("--out", metavar="FILE", help="file to write (default: standard output)")
    export.add_argument(
        "--include-secrets",
        action="store_true",
        help="also write the dialback secret and the users' SIP digest hashes (treat the file "
        "as a secret)",
    )
    export.set_defaults(handler=_config_export)
    imp = csub.add_parser(
        "import", parents=[config_option_parent()],
        help="replace the stored configuration with a file",
        description="Replace the stored partners, gateway settings, policies and users with an "
        "export document's. Every item is checked first: if any is not valid, nothing is "
        "changed and each problem is listed with its item and field "
        "(partners[2] (fabrikam.com): connection-limit: …; items count from 0). Lync's "
        "spellings of the partner settings (Federated, PublicVerified, NotSupported …) are "
        "read as ours.",
    )
    imp.add_argument("file", metavar="FILE", help="an export document ('-' for standard input)")
    add_json_option(imp)
    imp.set_defaults(handler=_config_import)
