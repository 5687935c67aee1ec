"""
Choosing a relay: a node both sides already hold direct links to.

When no direct path opens, traffic takes exactly one extra hop through a
common neighbour (never a long greedy overlay path).  The peer's "connect to
me" answer lists the overlay addresses it holds direct links to; we pick the
common one with the smallest round trip through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def choose_relay(my_links: Mapping[int, float | None], peer_links: Iterable[int],
                 exclude: Iterable[int] = ()) -> int | None:
    """
    @param my_links: our direct links: overlay address → RTT in seconds
        (L{None} if unmeasured).
    @param peer_links: overlay addresses the peer holds direct links to.
    @param exclude: relays to avoid (e.g. ones that just failed).
    @return: the relay's overlay address, or L{None} when there is no
        common neighbour.
    """
    banned = set(exclude)
    common = [a for a in set(peer_links) if a in my_links and a not in banned]
    if not common:
        return None
    return min(common, key=lambda a: (my_links[a] is None, my_links[a] or 0.0, a))
