"""Operations: the event log (``events``), Prometheus metrics (``metrics``), the status model
(``status``), service lifecycle (``lifecycle``) and the admin endpoint (``admin``); the
``status``/``stop``/``reload`` commands that talk to it are ``edgeproxy.commands.ops``.

How the server plugs in (the whole integration surface)::

    metrics = Metrics()
    event_log = EventLog(sys.stderr, log_message_bodies=settings.log_message_bodies,
                         on_emit=metrics.event_logged,
                         on_suppress=metrics.event_suppressed)
    logging.getLogger("edgeproxy").addHandler(EventLogHandler(event_log))  # optional bridge
    edge = Edge(...)          # implements status.StatusSource and lifecycle.Control
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_signals, edge)                     # SIGHUP / SIGTERM, SIGINT
        await nursery.start(partial(serve_admin, config, edge, metrics, edge, event_log=event_log))
        ...
    event_log.close()

* ``StatusSource.status() -> EdgeStatus``: a cheap synchronous snapshot.
* ``Control.reload() -> ReloadOutcome`` (async) and ``Control.request_stop()`` (idempotent; drain
  within ``lifecycle.DRAIN_BOUND_SECONDS``).
* On the hot path: ``metrics.stream_opened/stream_closed(partner, direction, auth)``,
  ``metrics.stanza(partner, flow, kind, verdict)``, ``metrics.bounce(condition)``,
  ``metrics.tls_handshake[_failed]``, ``metrics.dns_lookup``, ``metrics.stanza_latency``,
  ``metrics.stream_establishment``, ``metrics.stream_error``, ``metrics.limit_reached``;
  ``event_log.emit(events.SOME_EVENT, field=value, ...)`` for every warning and error class;
  after a reload, set ``event_log.log_message_bodies`` from the new gateway settings.
"""
