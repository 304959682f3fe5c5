"""A byte-rate shaper for inbound streams: a token bucket, pure (the clock is passed in).

Like ejabberd's shapers and Prosody's ``mod_limits``: a stream may read ``rate`` bytes per
second on average and ``burst`` bytes at once; a reader that got ahead waits (it stops reading,
so TCP flow control pushes back on the peer) instead of being cut off. The bucket starts full.
``rate`` 0 means no limit.
"""

from __future__ import annotations


class TokenBucket:
    """``delay_after(n, now)``: how long to wait after reading ``n`` bytes at time ``now``."""

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: int, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._at = now

    def set_rate(self, rate: int, burst: int) -> None:
        """Change the rate (e.g. once the stream has authenticated); tokens are kept, capped."""
        self.rate, self.burst = rate, max(burst, 1)
        self._tokens = min(self._tokens, float(self.burst))

    def delay_after(self, n: int, now: float) -> float:
        if self.rate <= 0:
            return 0.0
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        return -self._tokens / self.rate if self._tokens < 0 else 0.0
