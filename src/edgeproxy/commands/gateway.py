"""``edgeproxy gateway get | set``: the gateway-wide settings (SPEC §3).

``gateway get --json`` → the gateway settings object (``docs/cli-json.md``); without ``--json``
the dialback secret is shown as set and hidden. ``gateway set`` takes the secret from
``--dialback-secret-file`` or ``--dialback-secret-prompt`` (:mod:`edgeproxy.commands.secrets`).
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from edgeproxy.commands.common import EXIT_OK, SubParsers, command_group, config_option_parent
from edgeproxy.commands.records import print_json, print_record, read_configuration, session
from edgeproxy.commands.secrets import add_secret_options, read_secret
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import GATEWAY_INT_SETTINGS, GatewaySettings


def _gateway_get(args: argparse.Namespace) -> int:
    gateway = read_configuration(args).gateway
    if args.json:
        print_json(gateway)
    else:
        print_record(gateway, hide=frozenset({"dialback-secret"}))
    return EXIT_OK


def _gateway_set(args: argparse.Namespace) -> int:
    secret: str | None = None
    if args.dialback_secret_file is not None or args.dialback_secret_prompt:
        secret = read_secret("dialback secret", args.dialback_secret_file)

    def edit(g: GatewaySettings) -> GatewaySettings:
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
        ops.set_gateway(store, edit)
    print("gateway settings saved")
    return EXIT_OK


def register(sub: SubParsers) -> None:
    gsub = command_group(sub, "gateway", "gateway-wide settings (SPEC §3)")
    get = gsub.add_parser("get", parents=[config_option_parent()], help="show the gateway settings")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_gateway_get)
    set_ = gsub.add_parser("set", parents=[config_option_parent()], help="change gateway settings")
    for name in GATEWAY_INT_SETTINGS:
        set_.add_argument("--" + name.replace("_", "-"), type=int, metavar="N")
    secret = set_.add_mutually_exclusive_group()
    add_secret_options(
        secret, "--dialback-secret", "the pool's dialback secret", prompt="--dialback-secret-prompt"
    )
    secret.add_argument(
        "--dialback-secret-prompt",
        action="store_true",
        help="type the dialback secret (twice) at a prompt that does not echo",
    )
    set_.add_argument("--log-message-bodies", action=argparse.BooleanOptionalAction, default=None)
    set_.set_defaults(handler=_gateway_set)
