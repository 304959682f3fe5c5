"""The ``edgeproxy`` sub-commands: argparse and printing, one module per command group.

Each module adds its commands with ``register(sub)`` (``edgeproxy.cli.build_parser`` calls them
in help order); a command's handler is ``args.handler(args) -> int``, the exit status (0 ok,
1 refused by validation or a failed check, 2 usage error). The logic they drive lives in the
package of its concept; only this package and the entry point (``edgeproxy.cli``) use argparse,
and nothing here imports the entry point.

* ``common``   — exit statuses, the ``--config`` option after a sub-command, ``--json`` and the
  shape of a change in JSON (``change_json``), ``edgeproxy: …`` errors and
  ``edgeproxy: warning: …`` warnings.
* ``serve``    — ``serve``: the server in the foreground (``edgeproxy.app``), the demo user.
* ``config``   — ``config show-default | validate | export | import``.
* ``certs``    — ``cert request | import | self-signed | show``.
* ``dns``      — ``dns records | check``.
* ``checks``   — ``check``: the admin's checklist (configuration, certificate, listeners, …).
* ``partners``, ``gateway``, ``policies``, ``users`` — the store commands, on the helpers of
  ``records`` (store session, records and changes in text and ``--json``) and ``secrets``
  (file or prompt).
* ``ops``      — ``status | stop | reload``: clients of the admin endpoint.
* ``loadtest`` — ``loadtest``: simulated partner servers against a target.
"""
