"""The pool's entry point for ``edgeproxy serve``: :func:`run_pool`.

``[pool] role``: ``standalone`` — nothing to do; ``primary`` — serve the store to the members on
``[pool] listen``; ``member`` — follow the primary's store and apply each new generation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from edgeproxy.config import EdgeConfig
from edgeproxy.ops.telemetry import Telemetry


async def run_pool(
    config: EdgeConfig,
    telemetry: Telemetry,
    *,
    on_applied: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run this edge's part of the pool until cancelled (a ``nursery.start``-able task).

    ``task_status.started()`` once a primary listens, once a member's first attempt to reach
    the primary is done (reached or not: a member serves its last copy), at once when
    standalone (and then returns). ``on_applied`` is awaited after a member applied a new copy
    of the primary's store (the edge applies it at once: ``EdgeApp.refresh_policy``).
    """
    task_status.started()
