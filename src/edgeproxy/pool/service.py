"""The pool's entry point for ``edgeproxy serve``: :func:`run_pool`.

``[pool] role``:

* ``standalone`` — no pool: the store is made writable if it was a member's replica (a host
  taken out of its pool), then nothing more;
* ``primary`` — the store is made writable (a promoted member), the pool secret created if
  missing, and the store served to the members on ``[pool] listen`` (``pool.primary``);
* ``member`` — the store becomes a replica of ``[pool] primary`` (changes to what is replicated
  are refused there, naming the primary) and follows the primary's (``pool.member``).

Configuration problems (a missing pool secret on a member, a TLS file that does not load) raise
``ConfigError`` before anything listens or connects; an address the primary cannot bind raises
``OSError``. After ``task_status.started()`` nothing is raised: failures are events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio

from edgeproxy.config import EdgeConfig
from edgeproxy.names import listen_address
from edgeproxy.ops import events
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.store import Store
from edgeproxy.pool.member import Follower
from edgeproxy.pool.primary import Admission, Publisher, serve_member
from edgeproxy.pool.secret import load_pool_secret
from edgeproxy.pool.tls import member_context, primary_context


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
    role = config.pool.role
    if role == "member":
        await _run_member(config, telemetry, on_applied, task_status)
        return
    with Store.open(config.state_dir) as store:
        store.leave_pool()
        if role == "standalone":
            task_status.started()
            return
        await _run_primary(config, telemetry, store, task_status)


async def _run_primary(config: EdgeConfig, telemetry: Telemetry, store: Store,
                       task_status: trio.TaskStatus[None]) -> None:
    secret = load_pool_secret(config, create=True)
    context = primary_context(config)
    host, port = listen_address(config.pool.listen)
    publisher = Publisher(store)
    await publisher.refresh()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    address = f"{bound[0]}:{bound[1]}" if ":" not in bound[0] else f"[{bound[0]}]:{bound[1]}"
    telemetry.emit(events.POOL_SERVING, generation=publisher.generation, address=address,
                   security="mutual TLS and the pool secret" if context else "the pool secret, plain TCP on loopback")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.follow)
        handler = partial(serve_member, context=context, secret=secret, publisher=publisher,
                          telemetry=telemetry, admission=Admission())
        await nursery.start(partial(trio.serve_listeners, handler, listeners))
        task_status.started()


async def _run_member(config: EdgeConfig, telemetry: Telemetry,
                      on_applied: Callable[[], Awaitable[None]] | None,
                      task_status: trio.TaskStatus[None]) -> None:
    secret = load_pool_secret(config, create=False)
    context = member_context(config)
    primary = listen_address(config.pool.primary)
    with Store.open(config.state_dir) as store:
        follower = Follower(store, config.state_dir, primary, config.pool.primary, context, secret,
                            telemetry, interval=config.pool.interval, on_applied=on_applied)
        await follower.run(task_status=task_status)
