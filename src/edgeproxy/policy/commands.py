"""Admin commands: ``partner``, ``gateway``, ``policy``, ``user`` and ``config export|import``.

The names mirror Lync's ``*-CsXmppAllowedPartner``, ``*-CsXmppGatewayConfiguration`` and
``*-CsExternalAccessPolicy`` cmdlets (issue 3 §5). Exit status: 0 ok; 1 refused by validation
(the rule is printed on stderr, nothing is saved); 2 usage error (argparse). Warnings of the
negotiation matrix (SPEC §2.1) are printed on stderr as ``edgeproxy: warning: …`` and the change
is saved.

``--json`` output (stable; documented in ``docs/cli-json.md``) uses the field names of the models
in kebab-case and the enumeration values written as on the command line:

* ``partner get DOMAIN --json`` → one partner object; ``partner get [--filter GLOB] --json`` → an
  array of partner objects sorted by primary domain.
* ``gateway get --json`` → the gateway settings object.
* ``policy get IDENTITY --json`` → one policy object; ``policy get --json`` → array (global first).
* ``user get SIP --json`` → one user object; ``user get --json`` → array sorted by SIP address.
  A user's SIP digest credentials are never shown: ``password-set`` and ``password-algorithms``
  say whether it has a password and for which algorithms.
* ``user contact list USER --json`` → ``{"contacts": [...], "pending": [...]}``.

Secrets never come from the command line, where ``ps`` and the shell history would show them
(issue 14): ``user set-password`` and ``gateway set --dialback-secret-file|--dialback-secret-prompt``
read them from a file (its first line; ``-`` is standard input) or from a prompt that does not
echo and asks twice. ``config export`` leaves the secrets out unless ``--include-secrets``.
"""

from __future__ import annotations

import argparse
import fnmatch
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from edgeproxy.config import EdgeConfig, load_config
from edgeproxy.policy import operations as ops
from edgeproxy.policy.credentials import EMPTY_PASSWORD, credentials_for
from edgeproxy.policy.model import (
    AccessPolicy,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.store import Store
from edgeproxy.policy.transfer import export_bytes, import_bytes
from edgeproxy.policy.validation import (
    ChangeRefused,
    normalize_policy_identity,
    refuse,
    validate_user,
)

EXIT_OK = 0
EXIT_REFUSED = 1

SubParsers = "argparse._SubParsersAction[argparse.ArgumentParser]"
_json = msgspec.json.Encoder(order="deterministic")


def _config_parent() -> argparse.ArgumentParser:
    from edgeproxy.cli import config_option_parent  # cli imports us lazily; avoid a cycle

    return config_option_parent()


@contextmanager
def _session(args: argparse.Namespace) -> Iterator[tuple[EdgeConfig, Store]]:
    config = load_config(getattr(args, "config", None))
    store = Store.open(config.state_dir)
    try:
        yield config, store
    finally:
        store.close()


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(_json.encode(value), indent=2).decode() + "\n")


def _print_record(
    value: msgspec.Struct | dict[str, Any], *, hide: frozenset[str] = frozenset()
) -> None:
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = [(f.encode_name, getattr(value, f.name)) for f in msgspec.structs.fields(value)]
    for name, item in items:
        if name in hide:
            item = "(set, hidden; see --json)"
        elif isinstance(item, tuple | list):
            item = ", ".join(item) if item else "-"
        elif isinstance(item, bool):
            item = "true" if item else "false"
        elif item is None or item == "":
            item = "-"
        print(f"{name}: {item}")


def _print_records(values: list[Any], **kw: Any) -> None:
    for i, value in enumerate(values):
        if i:
            print()
        _print_record(value, **kw)


def _read_secret(what: str, path: str | None) -> str:
    """A secret from the first line of ``path`` (``-``: standard input) without its line end, or,
    without a path, typed twice at a prompt that does not echo. Refuses two entries that differ
    and a file that cannot be read; the caller decides whether an empty secret is acceptable."""
    if path is not None:
        try:
            if path == "-":
                line = sys.stdin.readline()
            else:
                with open(path, encoding="utf-8") as f:
                    line = f.readline()
        except OSError as exc:
            raise ChangeRefused(f"refused: cannot read the {what} from {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ChangeRefused(f"refused: the {what} in {path} is not UTF-8 text") from None
        return line.removesuffix("\n").removesuffix("\r")
    try:
        first = getpass.getpass(f"{what}: ")
        second = getpass.getpass(f"{what} (again): ")
    except EOFError:
        raise ChangeRefused(
            f"refused: no {what} given (no terminal to prompt on? use a file, or - for "
            "standard input)"
        ) from None
    if first != second:
        raise ChangeRefused(f"refused: the two {what}s typed differ; nothing saved")
    return first


def _warn(warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        print(f"edgeproxy: {warning}", file=sys.stderr)


def _refused(message: str) -> int:
    print(f"edgeproxy: {message}", file=sys.stderr)
    return EXIT_REFUSED


# -- partner ----------------------------------------------------------------------------------


def _add_partner_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--description", metavar="T")
    p.add_argument("--additional-domain", metavar="D", action="append", dest="additional_domains")
    p.add_argument("--type", choices=[t.value for t in PartnerType])
    p.add_argument("--tls", choices=[n.value for n in Negotiation])
    p.add_argument("--sasl", choices=[n.value for n in Negotiation])
    p.add_argument("--dialback", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--keepalive", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--connection-limit", metavar="N", type=_optional_int)
    p.add_argument("--proxy-fqdn", metavar="HOST", type=_optional_str)


_UNSET = object()


def _optional_int(text: str) -> int | None:
    """An integer, or ``none`` to clear the setting."""
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (or none)") from None


def _optional_str(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _partner_edit(args: argparse.Namespace) -> Callable[[Partner], Partner]:
    def edit(p: Partner) -> Partner:
        changes: dict[str, Any] = {}
        if args.description is not None:
            changes["description"] = args.description
        if args.type is not None:
            changes["type"] = PartnerType(args.type)
        if args.tls is not None:
            changes["tls"] = Negotiation(args.tls)
        if args.sasl is not None:
            changes["sasl"] = Negotiation(args.sasl)
        if args.dialback is not None:
            changes["dialback"] = args.dialback
        if args.keepalive is not None:
            changes["keepalive"] = args.keepalive
        if args.connection_limit is not _UNSET:
            changes["connection_limit"] = args.connection_limit
        if args.proxy_fqdn is not _UNSET:
            changes["proxy_fqdn"] = args.proxy_fqdn
        domains = list(p.additional_domains)
        if getattr(args, "clear_domains", False):
            domains = []
        if args.additional_domains:
            domains = [ops.partner_domain(d) for d in args.additional_domains]
        for d in getattr(args, "add_domains", None) or ():
            d = ops.partner_domain(d)
            if d not in domains:
                domains.append(d)
        for d in getattr(args, "remove_domains", None) or ():
            d = ops.partner_domain(d)
            if d not in domains:
                raise ChangeRefused(f"refused: {d} is not an additional domain of {p.domain}")
            domains.remove(d)
        changes["additional_domains"] = tuple(domains)
        return msgspec.structs.replace(p, **changes)

    return edit


def _partner_new(args: argparse.Namespace) -> int:
    with _session(args) as (config, store):
        domain = ops.partner_domain(args.domain)
        partner = _partner_edit(args)(Partner(domain=domain))
        warnings = ops.new_partner(store, config.edge.domains, partner)
    _warn(warnings)
    print(f"partner {domain} created")
    return EXIT_OK


def _partner_set(args: argparse.Namespace) -> int:
    with _session(args) as (config, store):
        partner, warnings = ops.set_partner(
            store, config.edge.domains, args.domain, _partner_edit(args)
        )
    _warn(warnings)
    print(f"partner {partner.domain} saved")
    return EXIT_OK


def _partner_get(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        _generation, configuration = store.read()
    partners = list(configuration.partners)
    if args.domain is not None:
        domain = ops.partner_domain(args.domain)
        found = [p for p in partners if domain in p.domains]
        if not found:
            return _refused(f"no partner {domain}")
        if args.json:
            _print_json(found[0])
        else:
            _print_record(found[0])
        return EXIT_OK
    if args.filter is not None:
        pattern = args.filter.lower()
        partners = [p for p in partners if any(fnmatch.fnmatchcase(d, pattern) for d in p.domains)]
    if args.json:
        _print_json(partners)
    else:
        _print_records(partners)
    return EXIT_OK


def _partner_remove(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        ops.remove_partner(store, args.domain)
    print(f"partner {ops.partner_domain(args.domain)} removed")
    return EXIT_OK


def _register_partner(sub: Any) -> None:
    group = sub.add_parser("partner", help="XMPP federated partners (SPEC §2)")
    gsub = group.add_subparsers(dest="partner_command", required=True, metavar="COMMAND")
    new = gsub.add_parser("new", parents=[_config_parent()], help="add a partner")
    new.add_argument("domain", metavar="DOMAIN")
    _add_partner_options(new)
    new.set_defaults(handler=_partner_new, connection_limit=_UNSET, proxy_fqdn=_UNSET)
    set_ = gsub.add_parser("set", parents=[_config_parent()], help="change a partner")
    set_.add_argument("domain", metavar="DOMAIN")
    _add_partner_options(set_)
    set_.add_argument("--add-domain", metavar="D", action="append", dest="add_domains")
    set_.add_argument("--remove-domain", metavar="D", action="append", dest="remove_domains")
    set_.add_argument("--clear-domains", action="store_true")
    set_.set_defaults(handler=_partner_set, connection_limit=_UNSET, proxy_fqdn=_UNSET)
    get = gsub.add_parser("get", parents=[_config_parent()], help="show partners")
    which = get.add_mutually_exclusive_group()
    which.add_argument("domain", metavar="DOMAIN", nargs="?")
    which.add_argument("--filter", metavar="GLOB")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_partner_get)
    remove = gsub.add_parser("remove", parents=[_config_parent()], help="remove a partner")
    remove.add_argument("domain", metavar="DOMAIN")
    remove.set_defaults(handler=_partner_remove)


# -- gateway ----------------------------------------------------------------------------------


class _SecretOnArgv(argparse.Action):
    """An option that would take a secret on the command line (``--dialback-secret S``, as it
    was before issue 14, or ``--password S``): a usage error saying how to give it instead."""

    def __init__(self, *args: Any, instead: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.instead = instead

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} would put the secret on the command line, where ps and the "
            f"shell history show it: use {self.instead}"
        )

_GATEWAY_INT_OPTIONS = (
    "connection_limit",
    "partner_connection_limit",
    "keepalive_interval",
    "stream_establishment_timeout",
    "stream_inactivity_timeout",
    "subscription_refresh_interval",
)


def _gateway_get(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        _generation, configuration = store.read()
    if args.json:
        _print_json(configuration.gateway)
    else:
        _print_record(configuration.gateway, hide=frozenset({"dialback-secret"}))
    return EXIT_OK


def _gateway_set(args: argparse.Namespace) -> int:
    secret: str | None = None
    if args.dialback_secret_file is not None or args.dialback_secret_prompt:
        secret = _read_secret("dialback secret", args.dialback_secret_file)

    def edit(g: GatewaySettings) -> GatewaySettings:
        changes: dict[str, Any] = {
            name: getattr(args, name)
            for name in _GATEWAY_INT_OPTIONS
            if getattr(args, name) is not None
        }
        if secret is not None:
            changes["dialback_secret"] = secret
        if args.log_message_bodies is not None:
            changes["log_message_bodies"] = args.log_message_bodies
        return msgspec.structs.replace(g, **changes)

    with _session(args) as (_config, store):
        ops.set_gateway(store, edit)
    print("gateway settings saved")
    return EXIT_OK


def _register_gateway(sub: Any) -> None:
    group = sub.add_parser("gateway", help="gateway-wide settings (SPEC §3)")
    gsub = group.add_subparsers(dest="gateway_command", required=True, metavar="COMMAND")
    get = gsub.add_parser("get", parents=[_config_parent()], help="show the gateway settings")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_gateway_get)
    set_ = gsub.add_parser("set", parents=[_config_parent()], help="change gateway settings")
    for name in _GATEWAY_INT_OPTIONS:
        set_.add_argument("--" + name.replace("_", "-"), type=int, metavar="N")
    secret = set_.add_mutually_exclusive_group()
    secret.add_argument(
        "--dialback-secret-file",
        metavar="PATH",
        help="read the pool's dialback secret from the first line of PATH ('-': standard input)",
    )
    secret.add_argument(
        "--dialback-secret-prompt",
        action="store_true",
        help="type the dialback secret (twice) at a prompt that does not echo",
    )
    secret.add_argument(
        "--dialback-secret", nargs="?", action=_SecretOnArgv, help=argparse.SUPPRESS,
        instead="--dialback-secret-file PATH (first line; - for standard input) or "
        "--dialback-secret-prompt",
    )
    set_.add_argument("--log-message-bodies", action=argparse.BooleanOptionalAction, default=None)
    set_.set_defaults(handler=_gateway_set)


# -- policy -----------------------------------------------------------------------------------


def _policy_edit(args: argparse.Namespace) -> Callable[[AccessPolicy], AccessPolicy]:
    def edit(p: AccessPolicy) -> AccessPolicy:
        changes = {
            name: getattr(args, name)
            for name in ("xmpp", "federation", "public_cloud", "description")
            if getattr(args, name) is not None
        }
        return msgspec.structs.replace(p, **changes)

    return edit


def _policy_new(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        policy = ops.new_policy(store, _policy_edit(args)(AccessPolicy(identity=args.identity)))
    print(f"policy {policy.identity} created")
    return EXIT_OK


def _policy_set(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        policy = ops.set_policy(store, args.identity, _policy_edit(args))
    print(f"policy {policy.identity} saved")
    return EXIT_OK


def _policy_get(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        _generation, configuration = store.read()
    policies = list(configuration.policies)
    if args.identity is not None:
        identity = normalize_policy_identity(args.identity)
        found = [p for p in policies if p.identity == identity]
        if not found:
            return _refused(f"no policy {identity}")
        _print_json(found[0]) if args.json else _print_record(found[0])
        return EXIT_OK
    _print_json(policies) if args.json else _print_records(policies)
    return EXIT_OK


def _policy_remove(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        ops.remove_policy(store, args.identity)
    print(f"policy {normalize_policy_identity(args.identity)} removed")
    return EXIT_OK


def _policy_grant(args: argparse.Namespace) -> int:
    if (args.policy is None) == (not args.none):
        print("edgeproxy policy grant: give either POLICY or --none", file=sys.stderr)
        return 2
    with _session(args) as (config, store):
        user = ops.grant_policy(
            store, config.edge.domains, args.user, None if args.none else args.policy
        )
    print(f"{user.sip}: policy {user.policy or '(none: site or global applies)'}")
    return EXIT_OK


def _add_policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("identity", metavar="IDENTITY", help="global | site:NAME | NAME")
    p.add_argument("--xmpp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--federation", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--public-cloud", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--description", metavar="T")


def _register_policy(sub: Any) -> None:
    group = sub.add_parser("policy", help="external access policies (SPEC §5)")
    gsub = group.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    new = gsub.add_parser("new", parents=[_config_parent()], help="add a site or user policy")
    _add_policy_options(new)
    new.set_defaults(handler=_policy_new)
    set_ = gsub.add_parser("set", parents=[_config_parent()], help="change a policy")
    _add_policy_options(set_)
    set_.set_defaults(handler=_policy_set)
    get = gsub.add_parser("get", parents=[_config_parent()], help="show policies")
    get.add_argument("identity", metavar="IDENTITY", nargs="?")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_policy_get)
    remove = gsub.add_parser("remove", parents=[_config_parent()], help="remove a policy")
    remove.add_argument("identity", metavar="IDENTITY")
    remove.set_defaults(handler=_policy_remove)
    grant = gsub.add_parser("grant", parents=[_config_parent()], help="grant a user policy")
    grant.add_argument("user", metavar="USER")
    grant.add_argument("policy", metavar="POLICY", nargs="?")
    grant.add_argument("--none", action="store_true", help="remove the grant (site/global apply)")
    grant.set_defaults(handler=_policy_grant)


# -- user -------------------------------------------------------------------------------------


def _user_edit(args: argparse.Namespace) -> Callable[[User], User]:
    def edit(u: User) -> User:
        changes = {
            name: getattr(args, name)
            for name in ("name", "site", "sba")
            if getattr(args, name) is not None
        }
        return msgspec.structs.replace(u, **changes)

    return edit


def _user_new(args: argparse.Namespace) -> int:
    with _session(args) as (config, store):
        user = ops.new_user(store, config.edge.domains, _user_edit(args)(User(sip=args.sip)))
    print(f"user {user.sip} created")
    return EXIT_OK


def _user_set(args: argparse.Namespace) -> int:
    with _session(args) as (config, store):
        user = ops.set_user(store, config.edge.domains, args.sip, _user_edit(args))
    print(f"user {user.sip} saved")
    return EXIT_OK


def _user_record(user: User) -> dict[str, Any]:
    """A user as ``user get`` shows it: the model's fields in order, the credentials replaced by
    ``password-set`` and ``password-algorithms`` (the hashes are secrets)."""
    record: dict[str, Any] = msgspec.to_builtins(user)
    credentials = record.pop("credentials", [])
    record["password-set"] = bool(credentials)
    record["password-algorithms"] = sorted({c["algorithm"] for c in credentials})
    return record


def _print_ordered_json(value: Any) -> None:
    """Like ``_print_json``, keeping the key order of the dicts (fields in model order)."""
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def _user_get(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        _generation, configuration = store.read()
    users = [_user_record(u) for u in configuration.users]
    if args.sip is not None:
        sip = ops.normalize_user(User(sip=args.sip)).sip
        found = [u for u in users if u["sip"] == sip]
        if not found:
            return _refused(f"no user {sip}")
        _print_ordered_json(found[0]) if args.json else _print_record(found[0])
        return EXIT_OK
    _print_ordered_json(users) if args.json else _print_records(users)
    return EXIT_OK


def _user_set_password(args: argparse.Namespace) -> int:
    with _session(args) as (config, store):
        sip = ops.normalize_user(User(sip=args.sip)).sip
        _generation, configuration = store.read()
        if not any(u.sip == sip for u in configuration.users):  # before asking for it
            return _refused(
                f"refused: no user {sip}: a password is set for an existing user only "
                "(create it with user new first)"
            )
        password = _read_secret("password", args.password_file)
        if not password:
            return _refused(EMPTY_PASSWORD)
        user = _set_password(store, config.edge.domains, sip, password, args.algorithms)
    algorithms = ", ".join(c.algorithm for c in user.credentials)
    print(f"password of {user.sip} saved (digest hashes only: {algorithms})")
    return EXIT_OK


#: ``user set-password --algorithms``: which digest hashes to store (issue 14).
PASSWORD_ALGORITHMS = {"both": ("MD5", "SHA-256"), "md5": ("MD5",), "sha-256": ("SHA-256",)}


def _set_password(store: Store, domains: Any, sip: str, password: str, algorithms: str) -> User:
    """``ops.set_password``, keeping only the credentials of ``algorithms`` (one transaction).
    MD5 only is for UAs that take the first challenge whatever its algorithm and know only MD5
    (the gateway offers only the algorithms a user has credentials for)."""
    if algorithms == "both":
        return ops.set_password(store, domains, sip, password)
    keep = PASSWORD_ALGORITHMS[algorithms]
    try:
        credentials = tuple(c for c in credentials_for(sip, password) if c.algorithm in keep)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    with store.write() as tx:
        current = tx.user(sip)
        if current is None:
            raise refuse(f"no user {sip}")
        changed = msgspec.structs.replace(current, credentials=credentials)
        validate_user(changed, (p.identity for p in tx.policies()), domains)
        tx.put_user(changed)
    return changed


def _user_clear_password(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        had = ops.clear_password(store, args.sip)
    sip = ops.normalize_user(User(sip=args.sip)).sip
    print(f"password of {sip} cleared" if had else f"{sip} had no password")
    return EXIT_OK


def _user_remove(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
        ops.remove_user(store, args.sip)
    print(f"user {args.sip} removed")
    return EXIT_OK


def _contact_add(args: argparse.Namespace) -> int:
    with _session(args) as (config, store):
        approved = ops.add_contact(store, config.edge.domains, args.user, args.jid)
    print(
        f"contact {args.jid} added"
        + (" (pending subscription request approved)" if approved else "")
    )
    return EXIT_OK


def _contact_remove(args: argparse.Namespace) -> int:
    with _session(args) as (config, store):
        ops.remove_contact(store, config.edge.domains, args.user, args.jid)
    print(f"contact {args.jid} removed")
    return EXIT_OK


def _contact_list(args: argparse.Namespace) -> int:
    sip = ops.normalize_user(User(sip=args.user)).sip
    with _session(args) as (_config, store):
        _generation, configuration = store.read()
    found = [u for u in configuration.users if u.sip == sip]
    if not found:
        return _refused(f"no user {sip}")
    user = found[0]
    if args.json:
        _print_json({"contacts": list(user.contacts), "pending": list(user.pending)})
    else:
        for jid in user.contacts:
            print(jid)
        for jid in user.pending:
            print(f"{jid} (pending)")
    return EXIT_OK


def _register_user(sub: Any) -> None:
    group = sub.add_parser("user", help="local users and their XMPP contacts (SPEC §5)")
    gsub = group.add_subparsers(dest="user_command", required=True, metavar="COMMAND")
    for name, handler, options in (
        ("new", _user_new, True),
        ("set", _user_set, True),
        ("remove", _user_remove, False),
    ):
        p = gsub.add_parser(name, parents=[_config_parent()], help=f"{name} a user")
        p.add_argument("sip", metavar="SIP-ADDRESS")
        if options:
            p.add_argument("--name", metavar="N")
            p.add_argument("--site", metavar="S")
            p.add_argument("--sba", action=argparse.BooleanOptionalAction, default=None)
        p.set_defaults(handler=handler)
    get = gsub.add_parser("get", parents=[_config_parent()], help="show users")
    get.add_argument("sip", metavar="SIP-ADDRESS", nargs="?")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_user_get)
    password = gsub.add_parser(
        "set-password",
        parents=[_config_parent()],
        help="set a user's SIP password (prompted twice, or --password-file; never on argv)",
        allow_abbrev=False,  # --password SECRET must not be taken for --password-file SECRET
    )
    password.add_argument("sip", metavar="SIP-ADDRESS")
    password.add_argument(
        "--password-file",
        metavar="PATH",
        help="read the password from the first line of PATH ('-': standard input)",
    )
    password.add_argument(
        "--password", nargs="?", action=_SecretOnArgv, help=argparse.SUPPRESS,
        instead="--password-file PATH (first line; - for standard input) or the prompt (no option)",
    )
    password.add_argument(
        "--algorithms",
        choices=tuple(PASSWORD_ALGORITHMS),
        default="both",
        help="digest hashes to store (default both; md5 for user agents that know only MD5 "
        "and take the first challenge, e.g. SIPp 3.6, baresip 1.0)",
    )
    password.set_defaults(handler=_user_set_password)
    clear = gsub.add_parser(
        "clear-password", parents=[_config_parent()], help="remove a user's SIP password"
    )
    clear.add_argument("sip", metavar="SIP-ADDRESS")
    clear.set_defaults(handler=_user_clear_password)
    contact = gsub.add_parser("contact", help="a user's authorized XMPP contacts")
    csub = contact.add_subparsers(dest="contact_command", required=True, metavar="COMMAND")
    for name, handler in (("add", _contact_add), ("remove", _contact_remove)):
        p = csub.add_parser(name, parents=[_config_parent()], help=f"{name} a contact")
        p.add_argument("user", metavar="USER")
        p.add_argument("jid", metavar="JID")
        p.set_defaults(handler=handler)
    listing = csub.add_parser("list", parents=[_config_parent()], help="list contacts and pending")
    listing.add_argument("user", metavar="USER")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_contact_list)


# -- config export / import -------------------------------------------------------------------


def _config_export(args: argparse.Namespace) -> int:
    with _session(args) as (_config, store):
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
        return _refused(f"cannot read {args.file}: {exc.strerror}")
    document = import_bytes(data)
    with _session(args) as (config, store):
        warnings = ops.import_configuration(store, config.edge.domains, document)
        _generation, configuration = store.read()
    _warn(warnings)
    print(
        f"imported {len(configuration.partners)} partners, {len(configuration.policies)} policies, "
        f"{len(configuration.users)} users"
    )
    kept = []
    if not document.has_dialback_secret:
        kept.append("the dialback secret")
    if document.users_without_credentials:
        kept.append(f"the passwords of {document.users_without_credentials} user(s)")
    if kept:
        print(
            f"kept from this store: {' and '.join(kept)} (the document has no secrets; "
            "export with --include-secrets to move them)"
        )
    return EXIT_OK


def _subcommands(parser: argparse.ArgumentParser) -> Any | None:
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _register_config(sub: Any) -> None:
    """Add ``export`` and ``import`` to the existing ``config`` group (created if absent)."""
    group = sub.choices.get("config") or sub.add_parser("config", help="the configuration")
    csub = _subcommands(group) or group.add_subparsers(
        dest="config_command", required=True, metavar="COMMAND"
    )
    export = csub.add_parser(
        "export", parents=[_config_parent()], help="write partners, settings, policies and users"
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
        "import", parents=[_config_parent()], help="replace the stored configuration with a file"
    )
    imp.add_argument("file", metavar="FILE", help="an export document ('-' for standard input)")
    imp.set_defaults(handler=_config_import)


def register(sub: Any) -> None:
    """Add the policy command groups (the ``_registrars()`` entry in ``edgeproxy.cli``)."""
    _register_partner(sub)
    _register_gateway(sub)
    _register_policy(sub)
    _register_user(sub)
    _register_config(sub)
