"""``edgeproxy loadtest SCENARIO.toml [--target HOST:PORT] [--setup-partners] [--json] …``.

Simulated partner servers load a target's S2S port; every stanza sent ends up delivered,
bounced or lost, and the summary names the likely cause of what went wrong
(``loadtest.report.diagnose``). Against one's own edge, ``--setup-partners`` first stores the
simulated domains as partners of the edge that ``--config`` describes, reached at the load
tester's listener (``loadtest.own_edge``), so that the edge needs no DNS to answer them
(docs/loadtest.md). Exit status: 0 when every stanza sent was answered (delivered or bounced),
1 when some were lost or no stream could be set up, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time

from edgeproxy.commands.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    SubParsers,
    add_json_option,
    config_option_parent,
    error,
    load_args_config,
)

EXIT_FAILED = 1  # stanzas were lost, or no stream could be set up
DEFAULT_OUT = "loadtest-result.json"


def _note(args: argparse.Namespace, text: str) -> None:
    """A progress note: on stdout, or on stderr (``edgeproxy: …``) when stdout carries JSON."""
    if args.json:
        error(text)
    else:
        print(text)


def _setup_partners(args: argparse.Namespace, scenario: object) -> int | None:
    """Store the simulated domains as the edge's partners; an exit status if that failed."""
    from edgeproxy.commands.ops import AdminClient, NotRunning
    from edgeproxy.commands.records import print_warnings
    from edgeproxy.loadtest.own_edge import ListenPortNeeded, partner_rows, store_partner_rows
    from edgeproxy.names import ip_literal
    from edgeproxy.policy.holder import POLL_INTERVAL
    from edgeproxy.policy.store import Store
    from edgeproxy.policy.validation import ChangeRefused

    config = load_args_config(args)
    try:
        rows = partner_rows(scenario)  # type: ignore[arg-type]
    except ListenPortNeeded as exc:
        error(f"--setup-partners: {exc}")
        return EXIT_USAGE
    store = Store.open(config.state_dir)
    try:
        done = store_partner_rows(store, config.edge.domains, rows)
    except ChangeRefused as exc:
        hint = ""
        if ip_literal(scenario.partners.listen_host) is not None:  # type: ignore[attr-defined]
            hint = ('; a proxy FQDN names a host: set partners.listen-host = "localhost" '
                    "(the edge finds it in /etc/hosts, no DNS server needed)")
        error(f"--setup-partners: {str(exc).removeprefix('refused: ')}{hint}")
        return EXIT_REFUSED
    finally:
        store.close()
    print_warnings(done.warnings)
    proxy = rows[0].proxy_fqdn
    what = ", ".join(f"{verb} {len(ds)}" for verb, ds in (("added", done.added), ("replaced", done.replaced)) if ds)
    _note(args, f"partners {', '.join(r.domain for r in rows[:3])}{' …' if len(rows) > 3 else ''} "
          f"stored in {config.state_dir} ({what}) with proxy-fqdn {proxy}")
    try:
        AdminClient(config, timeout=2).request("GET", "/healthz")
    except (NotRunning, OSError):
        _note(args, "edgeproxy does not answer on its admin address: the partners apply when it starts")
        return None
    wait = 2 * POLL_INTERVAL + 0.5
    _note(args, f"waiting {wait:g} s for the running edge to read its store")
    time.sleep(wait)
    return None


def _remove_partners(args: argparse.Namespace, scenario: object) -> None:
    from edgeproxy.loadtest.own_edge import remove_partner_rows
    from edgeproxy.policy.store import Store

    config = load_args_config(args)
    store = Store.open(config.state_dir)
    try:
        removed = remove_partner_rows(store, scenario.partners.domain_names())  # type: ignore[attr-defined]
    finally:
        store.close()
    _note(args, f"partners removed: {len(removed)}")


def _loadtest(args: argparse.Namespace) -> int:
    import msgspec

    from edgeproxy.loadtest.report import diagnose, summary_lines, write_json, write_plot
    from edgeproxy.loadtest.runner import run_scenario
    from edgeproxy.loadtest.scenario import load_scenario, with_target

    try:
        scenario = load_scenario(args.scenario)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        error(f"loadtest: {args.scenario}: {exc}")
        return EXIT_USAGE
    if args.target:
        host, _, port = args.target.rpartition(":")
        if not host or not port.isdigit():
            error("loadtest: --target wants HOST:PORT")
            return EXIT_USAGE
        scenario = with_target(scenario, host.strip("[]"), int(port))
    if args.setup_partners:
        status = _setup_partners(args, scenario)
        if status is not None:
            return status
    try:
        result = run_scenario(scenario, pid=args.pid)
    except OSError as exc:  # the partner listener could not bind, typically
        error(f"loadtest: {exc.strerror or exc}: partner listener "
              f"{scenario.partners.listen_host}:{scenario.partners.listen_port} (partners.listen-host/-port)")
        return EXIT_FAILED
    finally:
        if args.remove_partners:
            _remove_partners(args, scenario)
    write_json(result, args.out)
    problems = diagnose(result)
    if args.json:
        result["result_file"] = args.out
        result["diagnosis"] = [msgspec.to_builtins(d) for d in problems]
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        for line in summary_lines(result):
            print(line)
        if result["lost"]:
            print(f"lost ids: {' '.join(result['lost_ids'])}")  # type: ignore[arg-type]
        print(f"result written to {args.out}")
    if args.plot:
        _note(args, write_plot(result, args.plot))
    if result["lost"] or result["streams"]["ready"] < result["streams"]["wanted"]:  # type: ignore[index]
        return EXIT_FAILED
    return EXIT_OK


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "loadtest",
        parents=[config_option_parent()],
        help="simulate partner servers and load a target's S2S federation (docs/loadtest.md)",
        description="Simulated partner servers open S2S streams to the target, send the scenario's "
        "stanzas and account for each one: delivered, bounced or lost. Against your own edge, "
        "add --setup-partners (docs/loadtest.md). Exit status 0 when nothing was lost, 1 when "
        "stanzas were lost or streams could not be set up, 2 for a usage error.",
    )
    p.add_argument("scenario", metavar="SCENARIO.toml", help="the scenario file (docs/loadtest.md)")
    p.add_argument("--target", metavar="HOST:PORT",
                   help="the target's S2S address (default: the scenario's [target] host and port)")
    p.add_argument("--setup-partners", action="store_true",
                   help="before the run, store each simulated domain as a Federated partner of the "
                   "edge that --config describes, with proxy-fqdn = the scenario's partners.listen-host"
                   ":listen-port (replacing a partner of the same domain); default: off")
    p.add_argument("--remove-partners", action="store_true",
                   help="after the run, remove the partners --setup-partners stored; default: keep them")
    p.add_argument("--pid", type=int, metavar="PID",
                   help="the target's process id: sample its CPU and RSS from /proc (default: none)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="PATH",
                   help=f"where to write the full JSON result (default {DEFAULT_OUT})")
    p.add_argument("--plot", metavar="PNG",
                   help="also write a rate and latency plot, if matplotlib is installed (default: none)")
    add_json_option(p)
    p.set_defaults(handler=_loadtest)
