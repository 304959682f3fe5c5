"""The translating gateway: XMPP ⇄ SIP (SPEC §7).

``translate`` is the pure mapping (RFC 7247 addresses and errors, RFC 7572 IM, RFC 8048
presence); ``sip/`` the sans-IO SIP core (messages, transactions, registrar) and its trio
transport.
"""
