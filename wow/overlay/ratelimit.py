"""
Per-source token buckets in a bounded table.

A flood of garbage from one UDP source must not starve other peers: every
datagram costs its source a token before any parsing or cryptography, and a
source without tokens is dropped cheaply.  The table holds at most C{size}
sources; the least recently seen one is forgotten first, so spoofing many
sources cannot grow memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class TokenBuckets:
    def __init__(self, rate: float, burst: float, size: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self._table: OrderedDict[Hashable, list[float]] = OrderedDict()

    def allow(self, source: Hashable, now: float, cost: float = 1.0) -> bool:
        """Take C{cost} tokens from C{source}'s bucket if it has them."""
        entry = self._table.get(source)
        if entry is None:
            if len(self._table) >= self.size:
                self._table.popitem(last=False)
            entry = [self.burst, now]
            self._table[source] = entry
        else:
            self._table.move_to_end(source)
            tokens = entry[0] + (now - entry[1]) * self.rate
            entry[0] = tokens if tokens < self.burst else self.burst
            entry[1] = now
        if entry[0] >= cost:
            entry[0] -= cost
            return True
        return False

    def __len__(self) -> int:
        return len(self._table)
