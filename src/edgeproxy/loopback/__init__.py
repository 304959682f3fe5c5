"""The loopback channel between the edge and the translating gateway (SPEC §1).

``frames`` is the wire format, ``reliable`` the sans-IO sequencing/ack/resend state, ``server``
(edge side) and ``client`` (gateway side) the trio-websocket drivers.
"""
