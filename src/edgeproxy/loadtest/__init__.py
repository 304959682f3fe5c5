"""The load-testing harness: simulated partner servers against any XMPP server's S2S port.

Harness code lives here only (DESIGN: no harness code inside the library's other packages); it
drives the same sans-IO cores as the edge. Entry points: :class:`LoadTest` (async, in-process),
:func:`run_scenario` (sync) and ``edgeproxy loadtest``.
"""

from edgeproxy.loadtest.accounting import Ledger
from edgeproxy.loadtest.runner import LoadTest, run_scenario
from edgeproxy.loadtest.scenario import Scenario, load_scenario, parse_scenario

__all__ = ["LoadTest", "Ledger", "Scenario", "load_scenario", "parse_scenario", "run_scenario"]
