"""
The routing table: which links are ring neighbours, which are shortcuts,
and where a message goes next.

Near neighbours are the C{near} closest linked nodes on each side (clockwise
successors and anticlockwise predecessors).  Shortcuts follow Chord: for a
network of about N nodes (estimated from the spread of the near neighbours)
the node wants a link to the node closest to C{self + 2**160 / 2**j} for
j = 1 .. ceil(log2 N).  Routing is greedy on ring distance over every link,
which is the same in both directions, so the links other nodes made to us
serve as our anticlockwise shortcuts for free.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from wow.overlay import address as A
from wow.overlay.link import NEAR, OTHER, SHORTCUT, Link

M = A.MODULUS
HALF = A.HALF


class RoutingTable:
    def __init__(self, me: int, near: int = 2) -> None:
        self.me = me
        self.near = near
        self.links: dict[int, Link] = {}
        #: Linked addresses in ascending order (bisect finds neighbours of
        #: any point of the ring in O(log n)).
        self._sorted: list[int] = []
        self._dirty = True
        self._succ: list[int] = []
        self._pred: list[int] = []
        self._shortcuts: set[int] = set()
        self._targets: list[int] = []
        self._size = 1
        self._fingers = 1
        self._dirty_shortcuts = True
        #: The neighbour list as sent on the wire, rebuilt after changes.
        self.entries_cache: bytes | None = None

    # -- membership ---------------------------------------------------------

    def add(self, link: Link) -> None:
        if link.address not in self.links:
            bisect.insort(self._sorted, link.address)
        self.links[link.address] = link
        self._dirty = True

    def remove(self, address: int) -> Link | None:
        link = self.links.pop(address, None)
        if link is not None:
            i = bisect.bisect_left(self._sorted, address)
            del self._sorted[i]
            self._dirty = True
        return link

    def _refresh(self) -> None:
        """Recompute the near neighbours and the size estimate (cheap, O(near))."""
        if not self._dirty:
            return
        me = self.me
        s = self._sorted
        count = len(s)
        n = min(self.near, count)
        i = bisect.bisect_right(s, me)
        # With fewer than 2n links (small rings) a node may be both a
        # successor and a predecessor.
        self._succ = [s[(i + j) % count] for j in range(n)]
        self._pred = [s[(i - 1 - j) % count] for j in range(n)]
        if count >= 2 * self.near:
            span = (self._succ[-1] - me) % M + (me - self._pred[-1]) % M
            self._size = max(2 * n + 1, int(M * 2 * n / span)) if span else 1
        else:
            self._size = count + 1
        self._fingers = max(1, min(A.BITS, math.ceil(math.log2(self._size))
                                   if self._size > 1 else 1))
        self._dirty = False
        self._dirty_shortcuts = True
        self.entries_cache = None

    def _refresh_shortcuts(self) -> None:
        """Recompute finger targets, shortcuts and link kinds (O(log N · log links))."""
        self._refresh()
        if not self._dirty_shortcuts:
            return
        me = self.me
        self._targets = [(me + (M >> j)) % M for j in range(1, self._fingers + 1)]
        near = set(self._succ) | set(self._pred)
        self._shortcuts = set()
        for t in self._targets:
            best = self.closest_link(t)
            if best is not None and best not in near:
                self._shortcuts.add(best)
        for a, link in self.links.items():
            link.kind = NEAR if a in near else SHORTCUT if a in self._shortcuts else OTHER
        self._dirty_shortcuts = False

    # -- views ------------------------------------------------------------

    def successors(self) -> list[int]:
        self._refresh()
        return self._succ

    def predecessors(self) -> list[int]:
        self._refresh()
        return self._pred

    def successor(self) -> int | None:
        s = self.successors()
        return s[0] if s else None

    def predecessor(self) -> int | None:
        p = self.predecessors()
        return p[0] if p else None

    def near_set(self) -> set[int]:
        self._refresh()
        return set(self._succ) | set(self._pred)

    def wanted(self) -> set[int]:
        """Links this node needs: near neighbours and the best shortcut per target."""
        self._refresh_shortcuts()
        return set(self._succ) | set(self._pred) | self._shortcuts

    def finger_targets(self) -> list[int]:
        self._refresh_shortcuts()
        return self._targets

    def estimate_size(self) -> int:
        """N from how much of the ring the near neighbours span."""
        self._refresh()
        return self._size

    def finger_count(self) -> int:
        self._refresh()
        return self._fingers

    def would_be_near(self, address: int) -> bool:
        """Whether a node at C{address} would be one of our near neighbours."""
        if address == self.me or address in self.links:
            return False
        self._refresh()
        me = self.me
        n = self.near
        cw = (address - me) % M
        if len(self._succ) < n or cw < (self._succ[-1] - me) % M:
            return True
        acw = (me - address) % M
        return len(self._pred) < n or acw < (me - self._pred[-1]) % M

    # -- routing ----------------------------------------------------------

    def closest_link(self, target: int, exclude: int | None = None) -> int | None:
        s = self._sorted
        count = len(s)
        if count == 0:
            return None
        i = bisect.bisect_left(s, target)
        best = None
        best_d = M
        # The closest is next to the target's position; look two each side
        # so that an excluded address never hides the runner-up.
        for j in (i - 2, i - 1, i, i + 1):
            a = s[j % count]
            if a == exclude:
                continue
            d = (a - target) % M
            if d > HALF:
                d = M - d
            if d < best_d:
                best, best_d = a, d
        return best

    def next_hop(self, target: int, exclude: int | None = None,
                 self_candidate: bool = True) -> int | None:
        """
        The link address to forward to, or None to deliver here.

        Greedy: the linked node strictly closer to C{target} than this node
        (when C{self_candidate}) and closest of all.  Strictly decreasing
        distance means a message can never loop.
        """
        best = self.closest_link(target, exclude)
        if best is None:
            return None
        if not self_candidate:
            return best
        if A.ring_distance(best, target) < A.ring_distance(self.me, target):
            return best
        return None

    def describe(self) -> Iterable[Link]:
        self._refresh_shortcuts()
        return self.links.values()
