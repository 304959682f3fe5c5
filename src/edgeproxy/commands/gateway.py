"""``edgeproxy gateway get | set``: the gateway-wide settings (one for the whole edge pool).

``gateway get --json`` → the gateway settings object (``docs/cli-json.md``); without ``--json``
the dialback secret is shown as set and hidden. ``gateway set`` takes the secret from
``--dialback-secret-file`` or ``--dialback-secret-prompt`` (:mod:`edgeproxy.commands.secrets`)
and prints the change (``--json``: ``{"kind": "gateway", "before": …, "after": …, …}``).
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from edgeproxy.commands.common import (
    EXIT_OK,
    SubParsers,
    add_json_option,
    command_group,
    config_option_parent,
)
from edgeproxy.commands.records import (
    print_change,
    print_json,
    print_record,
    read_configuration,
    session,
)
from edgeproxy.commands.secrets import add_secret_options, read_secret
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import GATEWAY_INT_SETTINGS, GatewaySettings

#: The ``kind`` of a gateway change in ``--json`` output.
KIND = "gateway"

#: Hidden in text output (``--json`` shows it).
HIDDEN_FIELDS = frozenset({"dialback-secret"})

#: What each whole-number setting is, and its unit (the help of ``gateway set --NAME N``).
INT_SETTING_HELP = {
    "connection_limit": ("simultaneous server-to-server streams, all partners together", ""),
    "partner_connection_limit": (
        "simultaneous streams per partner (a partner's own connection limit overrides it)",
        "",
    ),
    "keepalive_interval": (
        "a partner with keep-alive on must show traffic (whitespace counts) within this, else "
        "its stream is closed; our whitespace keep-alives go at the same pace",
        " seconds",
    ),
    "stream_establishment_timeout": (
        "a stream must finish negotiation and authentication within this",
        " seconds",
    ),
    "stream_inactivity_timeout": (
        "a stream without stanzas for this long is closed cleanly",
        " seconds",
    ),
    "subscription_refresh_interval": (
        "how often the gateway refreshes the SIP presence subscriptions it holds for XMPP "
        "watchers",
        " seconds",
    ),
}

_DEFAULTS = {f.name: f.default for f in msgspec.structs.fields(GatewaySettings)}


def _gateway_get(args: argparse.Namespace) -> int:
    gateway = read_configuration(args).gateway
    if args.json:
        print_json(gateway)
    else:
        print_record(gateway, hide=HIDDEN_FIELDS)
    return EXIT_OK


def _gateway_set(args: argparse.Namespace) -> int:
    secret: str | None = None
    if args.dialback_secret_file is not None or args.dialback_secret_prompt:
        secret = read_secret("dialback secret", args.dialback_secret_file)
    seen: list[GatewaySettings] = []

    def edit(g: GatewaySettings) -> GatewaySettings:
        seen.append(g)
        changes: dict[str, Any] = {
            name: getattr(args, name)
            for name in GATEWAY_INT_SETTINGS
            if getattr(args, name) is not None
        }
        if secret is not None:
            changes["dialback_secret"] = secret
        if args.log_message_bodies is not None:
            changes["log_message_bodies"] = args.log_message_bodies
        return msgspec.structs.replace(g, **changes)

    with session(args) as (_config, store):
        gateway = ops.set_gateway(store, edit)
    return print_change(
        args.json, KIND, "gateway settings saved", seen[-1], gateway, hide=HIDDEN_FIELDS
    )


def register(sub: SubParsers) -> None:
    gsub = command_group(sub, "gateway", "gateway-wide settings, shared by every edge of a pool")
    get = gsub.add_parser(
        "get",
        parents=[config_option_parent()],
        help="show the gateway settings (the dialback secret only with --json)",
    )
    add_json_option(get)
    get.set_defaults(handler=_gateway_get)
    set_ = gsub.add_parser(
        "set",
        parents=[config_option_parent()],
        help="change gateway settings (the ones not given stay as they are)",
    )
    for name in GATEWAY_INT_SETTINGS:
        what, unit = INT_SETTING_HELP[name]
        set_.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            metavar="N",
            help=f"{what} (at least 1; default: {_DEFAULTS[name]}{unit}; unchanged if not given)",
        )
    secret = set_.add_mutually_exclusive_group()
    add_secret_options(
        secret,
        "--dialback-secret",
        "the pool's dialback secret",
        prompt="--dialback-secret-prompt",
        default="the secret is unchanged; a new store gets a random one",
    )
    secret.add_argument(
        "--dialback-secret-prompt",
        action="store_true",
        help="type the dialback secret (twice) at a prompt that does not echo; every edge of a "
        "pool must have the same one (default: unchanged)",
    )
    set_.add_argument(
        "--log-message-bodies",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write message bodies to the logs (default: --no-log-message-bodies; unchanged if "
        "not given)",
    )
    add_json_option(set_)
    set_.set_defaults(handler=_gateway_set)
