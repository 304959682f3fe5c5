"""trio drivers for the S2S cores: listener, sessions, connector, pool, router (DESIGN layout).

Only this layer (and the composition root) imports trio; the protocol logic lives in
``edgeproxy.s2s`` and the decisions in ``edgeproxy.policy``.
"""
