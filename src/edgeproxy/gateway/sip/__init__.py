"""SIP for the gateway: sans-IO messages (``message``, ``uri``), non-INVITE transactions
(``transaction``), the built-in registrar (``registrar``) and the trio transport (``transport``).
"""
