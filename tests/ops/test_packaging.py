"""The systemd unit stays in step with the lifecycle: reload, graceful stop within the drain bound."""

from __future__ import annotations

import configparser
from pathlib import Path

from edgeproxy.ops.lifecycle import DRAIN_BOUND_SECONDS

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "edgeproxy.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_unit_runs_serve_and_reloads_with_sighup_or_the_cli():
    service = unit()["Service"]
    assert service["Type"] == "exec"
    assert service["ExecStart"].endswith("edgeproxy serve")
    assert "HUP" in service["ExecReload"] or "edgeproxy reload" in service["ExecReload"]


def test_unit_stops_with_sigterm_after_the_drain_bound_has_a_margin():
    service = unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert DRAIN_BOUND_SECONDS < float(service["TimeoutStopSec"]) <= DRAIN_BOUND_SECONDS + 30


def test_unit_is_hardened():
    service = unit()["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "RestrictNamespaces": "yes"}.items():
        assert service[key] == value
    assert service["User"] != "root"
