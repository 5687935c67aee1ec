"""
An in-memory network with a virtual clock for many L{OverlayNode}s.

One heap of events (datagram deliveries and node wake-ups) ordered by
virtual time; each datagram gets a latency drawn from a configurable range
and may be lost.  The nodes are the real overlay and DHT code; only the
signature scheme is swapped for L{SimulatedCrypto} (see its docstring), and
only when asked.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any

from wow.metrics import Counters
from wow.overlay import address as A
from wow.overlay import wire as W
from wow.overlay.identity import ICrypto, NodeIdentity, SimulatedCrypto
from wow.overlay.link import Endpoint
from wow.overlay.node import Delivery, OverlayNode, OverlayParams

PROBE_KIND = W.APP_FIRST

_DELIVER = 0
_TICK = 1
_CALL = 2


class SimNetwork:
    def __init__(self, seed: int = 1, latency: tuple[float, float] = (0.01, 0.05),
                 loss: float = 0.0, params: OverlayParams | None = None,
                 real_crypto: bool = False) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.loss = loss
        self.params = params or OverlayParams()
        self.real_crypto = real_crypto
        self.counters = Counters()
        self.nodes: dict[Endpoint, OverlayNode] = {}
        self.by_address: dict[int, OverlayNode] = {}
        self._events: list[tuple[float, int, int, Any, Any, Any]] = []
        self._seq = 0
        self._sched: dict[Endpoint, float] = {}
        self._next_ip = 1
        self.messages = 0
        self.probes: dict[int, int] = {}

    # -- events -------------------------------------------------------------

    def _push(self, when: float, typ: int, a: Any, b: Any = None, c: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, typ, a, b, c))

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        self._push(when, _CALL, fn)

    def _reschedule(self, ep: Endpoint, node: OverlayNode) -> None:
        w = node.next_wakeup()
        if w is None:
            return
        s = self._sched.get(ep)
        if s is None or w < s or s <= self.now:
            self._sched[ep] = w
            self._push(w, _TICK, ep)

    def run_until(self, t: float) -> None:
        events = self._events
        nodes = self.nodes
        while events and events[0][0] <= t:
            when, _, typ, a, b, c = heapq.heappop(events)
            self.now = when
            if typ == _DELIVER:
                node = nodes.get(a)
                if node is not None:
                    node.datagram_received(b, c, when)
                    self._reschedule(a, node)
            elif typ == _TICK:
                node = nodes.get(a)
                if node is not None and self._sched.get(a) == when:
                    node.tick(when)
                    self._reschedule(a, node)
            else:
                a()
        self.now = max(self.now, t)

    # -- nodes ----------------------------------------------------------------

    def _transmit(self, src: Endpoint, data: bytes, dst: Endpoint) -> None:
        self.messages += 1
        if self.loss and self.rng.random() < self.loss:
            return
        # A fixed latency per pair of hosts plus a little jitter: mostly FIFO,
        # occasionally reordered, like a real path.
        lo, hi = self.latency
        base = lo + (hi - lo) * ((zlib.crc32(f"{src}{dst}".encode()) & 0xFFFF) / 0xFFFF)
        self._push(self.now + base + 0.001 * self.rng.random(), _DELIVER, dst, data, src)

    def add_node(self, bootstrap: list[Endpoint], crypto: ICrypto | None = None,
                 params: OverlayParams | None = None) -> OverlayNode:
        n = self._next_ip
        self._next_ip += 1
        ep = (f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", 4789)
        if crypto is None:
            crypto = NodeIdentity.generate() if self.real_crypto else SimulatedCrypto(self.rng)
        node = OverlayNode(
            crypto,
            send=partial(self._transmit, ep),
            clock=lambda: self.now,
            params=params or self.params,
            counters=self.counters,
            bootstrap=bootstrap,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node.local_endpoint = ep
        node.register_handler(PROBE_KIND, self._on_probe)
        self.nodes[ep] = node
        self.by_address[node.me] = node
        node.start()
        self._reschedule(ep, node)
        return node

    def remove_node(self, node: OverlayNode, graceful: bool = True) -> None:
        ep = node.local_endpoint
        assert ep is not None
        if graceful:
            node.stop()
        self.nodes.pop(ep, None)
        self.by_address.pop(node.me, None)
        self._sched.pop(ep, None)

    def endpoint(self, node: OverlayNode) -> Endpoint:
        assert node.local_endpoint is not None
        return node.local_endpoint

    def poke(self, node: OverlayNode) -> None:
        """Reschedule a node after calling its API from outside an event."""
        self._reschedule(self.endpoint(node), node)

    # -- measurements ---------------------------------------------------------

    def ring_errors(self) -> int:
        """How many nodes have a wrong successor or predecessor."""
        order = sorted(self.by_address)
        n = len(order)
        if n < 2:
            return 0
        bad = 0
        for i, a in enumerate(order):
            node = self.by_address[a]
            if node.table.successor() != order[(i + 1) % n] or \
                    node.table.predecessor() != order[(i - 1) % n]:
                bad += 1
        return bad

    def _on_probe(self, d: Delivery) -> None:
        pid = int.from_bytes(d.payload[:8], "big")
        self.probes[pid] = d.hops

    def send_probe(self, src: OverlayNode, dst: int, pid: int) -> None:
        src.send_to(dst, PROBE_KIND, pid.to_bytes(8, "big"), W.EXACT)
        self.poke(src)

    def random_node(self) -> OverlayNode:
        return self.by_address[self.rng.choice(list(self.by_address))]


def expected_root(addresses: list[int], key: bytes) -> int:
    t = A.digest(key)
    return min(addresses, key=lambda a: A.ring_distance(a, t))
