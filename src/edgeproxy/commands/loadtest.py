"""``edgeproxy loadtest SCENARIO.toml [--target HOST:PORT] [--pid PID] [--out result.json]``."""

from __future__ import annotations

import argparse
import sys

from edgeproxy.commands.common import EXIT_OK, EXIT_USAGE, SubParsers, config_option_parent

EXIT_LOST = 1  # stanzas were lost


def _loadtest(args: argparse.Namespace) -> int:
    import msgspec

    from edgeproxy.loadtest.report import summary_line, write_json, write_plot
    from edgeproxy.loadtest.runner import run_scenario
    from edgeproxy.loadtest.scenario import load_scenario, with_target

    try:
        scenario = load_scenario(args.scenario)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        print(f"edgeproxy loadtest: {args.scenario}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.target:
        host, _, port = args.target.rpartition(":")
        if not host or not port.isdigit():
            print("edgeproxy loadtest: --target wants HOST:PORT", file=sys.stderr)
            return EXIT_USAGE
        scenario = with_target(scenario, host.strip("[]"), int(port))
    result = run_scenario(scenario, pid=args.pid)
    write_json(result, args.out)
    print(summary_line(result))
    if args.plot:
        print(write_plot(result, args.plot))
    if result["lost"]:
        print(f"LOST {result['lost']} stanzas: {result['lost_ids']}", file=sys.stderr)
        return EXIT_LOST
    return EXIT_OK


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "loadtest",
        parents=[config_option_parent()],
        help="simulate partner servers and load a target's S2S federation",
    )
    p.add_argument("scenario", metavar="SCENARIO.toml")
    p.add_argument("--target", metavar="HOST:PORT", help="override the scenario's target address")
    p.add_argument("--pid", type=int, help="the target's pid: sample its CPU and RSS from /proc")
    p.add_argument("--out", default="loadtest-result.json", help="JSON result file")
    p.add_argument("--plot", metavar="PNG", help="rate plot (only if matplotlib is installed)")
    p.set_defaults(handler=_loadtest)
