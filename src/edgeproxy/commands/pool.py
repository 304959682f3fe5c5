"""``edgeproxy pool status`` and ``edgeproxy pool secret``: the edge pool seen from this host
(``docs/pool.md``).

``status`` reads the configuration's ``[pool]`` table, the store (its generation, and on a
member the primary generation its copy is) and ``<state-dir>/pool-sync.json`` (when the primary
last answered and a copy was last applied, or why it does not answer); it works whether
``edgeproxy serve`` runs or not. ``secret`` prints the pool secret, creating it on a primary (or
a standalone host about to become one) when it does not exist yet; a member never creates one,
since it must hold its primary's.

``--json`` (``docs/cli-json.md``): ``status`` prints ``{"role", "listen", "primary", "replica",
"generation", "primary-generation", "last-answer", "last-applied", "error", "error-since"}``
(times in ISO 8601 UTC, absent values null); ``secret`` prints ``{"path", "secret", "created"}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from edgeproxy.commands.common import (
    EXIT_OK,
    SubParsers,
    add_json_option,
    command_group,
    config_option_parent,
    load_args_config,
)
from edgeproxy.commands.records import print_ordered_json
from edgeproxy.config import EdgeConfig
from edgeproxy.policy.store import Store
from edgeproxy.pool.secret import load_pool_secret
from edgeproxy.pool.syncstate import read_sync_state


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_record(config: EdgeConfig) -> dict[str, object]:
    """What ``pool status --json`` prints (see the module docstring)."""
    pool = config.pool
    with Store.open(config.state_dir) as store:
        generation = store.generation()
        replica = store.replica()
    sync = read_sync_state(config.state_dir) if pool.role == "member" else None
    if sync is not None and sync.primary != pool.primary:
        sync = None  # what another primary said
    return {
        "role": pool.role,
        "listen": pool.listen or None,
        "primary": pool.primary or None,
        "replica": replica is not None,
        "generation": generation,
        "primary-generation": replica.primary_generation if replica is not None else None,
        "last-answer": _iso(sync.last_answer) if sync else None,
        "last-applied": _iso(sync.last_applied) if sync else None,
        "error": sync.error if sync else "",
        "error-since": _iso(sync.error_since) if sync else None,
    }


def _ago(iso: object, now: float) -> str:
    if not isinstance(iso, str):
        return "never"
    seconds = now - dt.datetime.fromisoformat(iso).timestamp()
    return f"{iso} ({max(0, round(seconds))} s ago)"


def _status(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    record = status_record(config)
    if args.json:
        print_ordered_json(record)
        return EXIT_OK
    now = time.time()
    role = record["role"]
    print(f"role: {role}")
    if role == "standalone":
        print("pool: none (this edge is no member of an edge pool)")
    if role == "primary":
        print(f"listen: {record['listen']} (the members fetch the store here)")
    print(f"generation: {record['generation']} (changes committed to this store)")
    if role == "member":
        print(f"primary: {record['primary']}")
        copied = record["primary-generation"]
        print(f"primary-generation: {copied if copied is not None else 'none (no copy received yet)'}")
        print(f"last-answer: {_ago(record['last-answer'], now)}")
        print(f"last-applied: {_ago(record['last-applied'], now)}")
        if record["error"]:
            print(f"error: {record['error']} (since {record['error-since']}); serving the last copy")
        if not record["replica"]:
            print("note: this store is not a replica yet: it becomes one when `edgeproxy serve` starts")
    elif record["replica"]:
        print("note: this store is still a pool member's replica: it becomes writable when"
              " `edgeproxy serve` starts with this role")
    return EXIT_OK


def _secret(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    path = config.pool.secret_path(config)
    existed = path.exists()
    secret = load_pool_secret(config, create=config.pool.role != "member").decode("utf-8")
    if args.json:
        print_ordered_json({"path": str(path), "secret": secret, "created": not existed})
        return EXIT_OK
    made = "created in" if not existed else "in"
    print(f"pool secret {made} {path} (mode 0600); copy this file to every member of the pool:")
    print(secret)
    return EXIT_OK


def register(sub: SubParsers) -> None:
    """``edgeproxy pool …``."""
    group = command_group(sub, "pool", "the edge pool: the store replicated from a primary to its members")
    status = group.add_parser(
        "status",
        parents=[config_option_parent()],
        help="this host's role in its pool, the store generation, the primary generation a "
        "member copies and when its primary last answered",
    )
    add_json_option(status)
    status.set_defaults(handler=_status)
    secret = group.add_parser(
        "secret",
        parents=[config_option_parent()],
        help="print the pool secret (in [pool] secret-file, default <state-dir>/pool.secret), "
        "creating it unless this host is a member; copy the file to every member, mode 0600",
    )
    add_json_option(secret)
    secret.set_defaults(handler=_secret)
