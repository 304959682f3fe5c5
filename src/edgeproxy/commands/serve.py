"""``edgeproxy serve [--role both|edge|gateway]``: run the edge (``edgeproxy.app.EdgeApp``), the
gateway, or both (the default; the loopback channel still crosses loopback) in the foreground
(``edgeproxy.app.run_app``) until SIGTERM/SIGINT or ``edgeproxy stop``.

The event log goes to stderr: JSON lines, or readable lines on a terminal
(``EDGEPROXY_LOG_FORMAT=json|text`` overrides), and every line on stderr is an event: from the
first step (reading the configuration) to the last, standard ``logging`` records of WARNING and
above are routed into the event log (``EP9002``; the plain handlers installed before are
removed), and so are Python's warnings (``logging.captureWarnings``; the one a start used to
print, cryptography's about a few system roots with serial number 0, is silenced where the trust
store is read, ``certs.peer.PeerTrust.load``). The outbound SRV/A lookups ask ``[dns] resolver``;
``EDGEPROXY_DNS_RESOLVER=IP[:PORT]`` overrides it.

A start that fails is one event line naming the cause, and the process exits with the status of
that cause (``ops.exitcodes``, ``docs/exit-codes.md``): nothing else is printed, no traceback.
The configuration is read here (``EP8009`` unreadable, exit 10; ``EP8010`` refused, exit 11); the
rest is found by ``run_app`` (``app``'s docstring gives the order).

``--appliance`` (or ``[edge] appliance = true``): appliance mode — the configuration may lie on a
read-only root, ``<state-dir>/edgeproxy.override.toml`` is merged over it (for reloads too), and
everything the server writes goes under the state dir, temporary files in ``<state-dir>/tmp``
(``ops.lifecycle.enter_appliance_mode``; ``docs/appliance.md``). The event log is on stderr in
any mode: no log file is ever written.

``make run`` works out of the box: on the embedded default configuration, the first start creates
the store with a demo user and shows its password once (``EP8008``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import msgspec
import trio

from edgeproxy.commands.common import SubParsers, config_option_parent
from edgeproxy.config import CONFIG_ENV_VAR, EMBEDDED_DEFAULT, MAX_WORKERS, EdgeConfig, load_config
from edgeproxy.errors import ConfigError
from edgeproxy.ops import events
from edgeproxy.ops.events import DEMO_USER_CREATED, EventLog, EventLogHandler, OutputFormat
from edgeproxy.ops.exitcodes import ExitCode, StartupFailed, leaf
from edgeproxy.ops.lifecycle import freeze_startup_objects, refuse_unusable_state_dir
from edgeproxy.ops.metrics import Metrics
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.ops.workerplan import worker_count
from edgeproxy.policy import operations as ops
from edgeproxy.policy.store import STORE_FILE, Store
from edgeproxy.policy.validation import ChangeRefused


def _output_format() -> OutputFormat:
    value = os.environ.get("EDGEPROXY_LOG_FORMAT", "auto")
    return value if value in ("json", "text") else "auto"  # type: ignore[return-value]


@contextmanager
def events_on_stderr(event_log: EventLog) -> Iterator[None]:
    """While the block runs, ``logging`` records (WARNING and up) and Python's warnings go into
    ``event_log`` as ``EP9002`` and nowhere else; the previous handlers, level and warning filters
    come back after it."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    for handler in saved_handlers:
        root.removeHandler(handler)
    bridge = EventLogHandler(event_log)
    root.addHandler(bridge)
    # The bridge is the only handler and takes warnings and up: below that, no record is built
    # (an info line per stream or stanza would be made only to be dropped).
    root.setLevel(bridge.level)
    with warnings.catch_warnings():
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            root.removeHandler(bridge)
            for handler in saved_handlers:
                root.addHandler(handler)
            root.setLevel(saved_level)


def _config_path(args: argparse.Namespace) -> str | None:
    """The file ``serve`` reads: ``--config``, else ``$EDGEPROXY_CONFIG``, else None (the
    embedded default) — as ``config.load_config`` chooses."""
    return getattr(args, "config", None) or os.environ.get(CONFIG_ENV_VAR) or None


def load_serve_config(args: argparse.Namespace, telemetry: Telemetry) -> EdgeConfig:
    """The configuration, or one event and ``StartupFailed``: ``EP8009`` when the file cannot
    be read (exit 10), ``EP8010`` when it is refused (exit 11)."""
    path = _config_path(args)
    if path is not None:
        try:
            Path(path).read_bytes()
        except OSError as exc:
            error = exc.strerror or str(exc)
            telemetry.emit(events.CONFIG_UNREADABLE, path=path, error=error)
            raise StartupFailed(ExitCode.CONFIG_UNREADABLE, f"cannot read configuration {path}: {error}") from exc
    try:
        return load_config(path, appliance=getattr(args, "appliance", False))
    except ConfigError as exc:
        # Read a moment ago; a file that vanished since is "unreadable" in the refusal's words.
        telemetry.emit(events.CONFIG_INVALID, path=path or EMBEDDED_DEFAULT, error=str(exc))
        raise StartupFailed(ExitCode.CONFIG_INVALID, str(exc)) from exc


def _demo_user_at_first_start(config: EdgeConfig, telemetry: Telemetry) -> None:
    """When ``serve`` runs on the embedded default configuration and its store does not exist
    yet, create the store with the demo user ``sip:alice@contoso.test`` and a generated password,
    and show the password once in the event log (``EP8008 demo-user-created``). Nothing happens
    for an operator's own configuration (``--config`` or ``$EDGEPROXY_CONFIG``), nor for a store
    that exists already — also one that another command created first, or whose demo user was
    removed. Its state dir is checked first (``EP8011``)."""
    if config.source != EMBEDDED_DEFAULT or (config.state_dir / STORE_FILE).exists():
        return
    refuse_unusable_state_dir(config, telemetry)
    try:
        with Store.open(config.state_dir) as store:
            try:
                password = ops.create_demo_user(store, config.edge.domains)
            except ChangeRefused:  # a concurrent first start created it: it shows the password
                return
    except (OSError, sqlite3.Error):
        return  # the store cannot be made here: run_app reports why (EP8005)
    telemetry.emit(DEMO_USER_CREATED, user=ops.DEMO_USER, password=password)


async def serve(
    config: EdgeConfig,
    role: str,
    event_log: EventLog,
    metrics: Metrics,
    *,
    workers: int | Literal["auto"] | None = None,
    config_path: str | None = None,
) -> None:
    """Run until SIGTERM/SIGINT or ``edgeproxy stop``; returns after the graceful shutdown.
    Raises ``StartupFailed`` (possibly inside exception groups) when the start fails.

    ``workers`` (``--workers``, else ``[edge] workers``): above 1, roles ``both`` and ``edge``
    run a supervisor with that many edge worker processes (``edgeproxy.workers``), which read
    ``config_path`` themselves."""
    if workers is not None:  # --workers overrides the file (a separate gateway reads it too)
        config = msgspec.structs.replace(config, edge=msgspec.structs.replace(config.edge, workers=workers))
    count = worker_count(config.edge.workers)
    async with trio.open_nursery() as nursery:
        if count > 1 and role != "gateway":
            from edgeproxy.workers.supervisor import Supervisor  # only when there are workers

            supervisor = Supervisor(config, workers=count, role=role, config_path=config_path,
                                    event_log=event_log, metrics=metrics)
            await nursery.start(supervisor.run)
        else:
            from edgeproxy.app import run_app  # the server: only `serve` pays for importing it

            await nursery.start(partial(run_app, config, role=role, event_log=event_log, metrics=metrics))
        freeze_startup_objects()


def _with_event_log(args: argparse.Namespace, body: Callable[[EdgeConfig, EventLog, Metrics, Telemetry], None]) -> int:
    """Read the configuration and run ``body`` with the event log on stderr; the exit status:
    0, or the start failure's own (its event already written, no traceback)."""
    metrics = Metrics()
    event_log = EventLog(sys.stderr, output=_output_format(), on_emit=metrics.event_logged,
                         on_suppress=metrics.event_suppressed)
    telemetry = Telemetry(metrics, event_log)
    try:
        with events_on_stderr(event_log):
            body(load_serve_config(args, telemetry), event_log, metrics, telemetry)
    except KeyboardInterrupt:
        return ExitCode.OK
    except BaseException as exc:  # noqa: BLE001 - a start failure is its event and exit status
        failed = leaf(exc, StartupFailed)
        if failed is None:
            raise
        return failed.exit_code
    finally:
        event_log.close()
    return ExitCode.OK


def _serve_worker(args: argparse.Namespace) -> int:
    """An edge worker process started by the supervisor (``edgeproxy.workers.worker``)."""
    from edgeproxy.workers.worker import die_with_parent, run_worker

    die_with_parent(args.worker_parent)

    def body(config: EdgeConfig, event_log: EventLog, metrics: Metrics, telemetry: Telemetry) -> None:
        del telemetry
        trio.run(partial(
            run_worker, config, index=args.worker_index,
            listen_fds=[int(fd) for fd in args.worker_listen_fds.split(",") if fd],
            report_fd=args.worker_report_fd, channel=args.worker_channel, parent=args.worker_parent,
            event_log=event_log, metrics=metrics,
        ))

    return _with_event_log(args, body)


def _serve(args: argparse.Namespace) -> int:
    if args.worker_index is not None:
        return _serve_worker(args)

    def body(config: EdgeConfig, event_log: EventLog, metrics: Metrics, telemetry: Telemetry) -> None:
        if config.edge.appliance:
            sys.dont_write_bytecode = True  # no caches beside the package for what is imported next
        _demo_user_at_first_start(config, telemetry)
        trio.run(partial(serve, config, args.role, event_log, metrics, workers=args.workers,
                         config_path=_config_path(args)))

    return _with_event_log(args, body)


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "serve", parents=[config_option_parent()], help="run the edge (S2S listener, loopback channel)"
    )
    p.add_argument(
        "--role", choices=("both", "edge", "gateway"), default="both",
        help="both (default): edge and gateway in one process; edge or gateway: one side only",
    )
    p.add_argument(
        "--appliance", action="store_true",
        help="appliance mode, as [edge] appliance = true (default: off): the configuration may be on a"
        " read-only filesystem and <state-dir>/edgeproxy.override.toml is merged over it; everything"
        " the server writes goes under the state dir (an absolute path), temporary files in"
        " <state-dir>/tmp",
    )
    p.add_argument(
        "--workers", type=_workers_value, default=None, metavar="N|auto",
        help="edge worker processes sharing the external listeners, as [edge] workers (default: the"
        " configuration's, which defaults to 1): a number from 1 to 64, or auto for one per CPU;"
        " the gateway stays one process with a channel to each worker",
    )
    # The options of a worker process, given by its supervisor only (edgeproxy.workers).
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-listen-fds", default="", help=argparse.SUPPRESS)
    p.add_argument("--worker-report-fd", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--worker-channel", default="", help=argparse.SUPPRESS)
    p.add_argument("--worker-parent", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(handler=_serve)


def _workers_value(text: str) -> int | Literal["auto"]:
    """``--workers``: ``auto`` or a number from 1 to ``MAX_WORKERS``."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to {MAX_WORKERS} or auto") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{value} is not a number from 1 to {MAX_WORKERS} (or auto)")
    return value
