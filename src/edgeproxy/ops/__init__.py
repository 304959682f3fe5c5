"""Operations: the event log (``events``), Prometheus metrics (``metrics``), the status model
(``status``), service lifecycle helpers (``lifecycle``) and the admin endpoint (``admin``).

The server plugs in through a small surface: it implements ``status.StatusSource`` and
``lifecycle.Control``, calls the ``metrics.Metrics`` facade and ``events.EventLog.emit``, and
starts ``admin.serve_admin`` and ``lifecycle.serve_signals`` in its nursery.
"""
