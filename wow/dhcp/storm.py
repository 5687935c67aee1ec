"""
A DHCP boot storm over the simulated overlay (L{wow.overlay.sim}).

N simulated nodes form a ring (the real overlay and DHT code, virtual time),
then each runs a L{DhtAllocator} through L{OverlayDhtClient} and asks for an
address at the same moment, DISCOVER then REQUEST as a host's client does
(again a few seconds later when it got no offer or a NAK).  Used by the
tests and by C{bench/dhcp_storm.py}.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.task import Clock

from wow.dhcp.allocator import Lease
from wow.dhcp.dht_allocator import DhtAllocator
from wow.dhcp.dhtclient import DhtEntry, OverlayDhtClient, lease_key
from wow.overlay import address as A
from wow.overlay.node import OverlayNode
from wow.overlay.sim import SimNetwork

NET = IPv4Network("10.128.0.0/16")
GW = IPv4Address("10.128.0.1")
#: A client that got no offer (or a NAK) tries again this much later.
CLIENT_RETRY = 4.0


@dataclass
class StormResult:
    nodes: int
    #: node index -> its bound lease
    bound: dict[int, Lease] = field(default_factory=dict)
    #: virtual seconds from the storm's start until every node was bound
    seconds: float | None = None
    errors: list[Any] = field(default_factory=list)
    #: node index -> what a DHT get of its lease key returned (from another node)
    lookups: dict[int, list[DhtEntry]] = field(default_factory=dict)
    addresses: dict[int, bytes] = field(default_factory=dict)
    claims: dict[str, float] = field(default_factory=dict)
    messages: int = 0


def ring(size: int, seed: int, latency: tuple[float, float] = (0.01, 0.08),
         limit: float = 300.0) -> SimNetwork:
    """A converged ring of C{size} simulated nodes."""
    net = SimNetwork(seed=seed, latency=latency)
    endpoints = [net.endpoint(net.add_node([]))]
    for _ in range(size - 1):
        net.run_until(net.now + 0.2)
        boot = [net.rng.choice(endpoints) for _ in range(2)]
        endpoints.append(net.endpoint(net.add_node(boot)))
    deadline = net.now + limit
    while net.ring_errors() and net.now < deadline:
        net.run_until(net.now + 2)
    net.run_until(net.now + 10)
    return net


def client(net: SimNetwork, node: OverlayNode) -> OverlayDhtClient:
    return OverlayDhtClient(lambda: node.dht, kick=lambda: net.poke(node))


def storm(net: SimNetwork, seed: int, pool_start: IPv4Address | None = None,
          pool_end: IPv4Address | None = None, limit: float = 120.0,
          workdir: str | None = None) -> StormResult:
    """Every node of C{net} asks for an address at once; run until all are bound."""
    clock = Clock()
    clock.advance(net.now)
    workdir = workdir or tempfile.mkdtemp(prefix="wow-storm-")
    os.makedirs(workdir, exist_ok=True)
    nodes = list(net.by_address.values())
    result = StormResult(len(nodes), addresses={i: A.to_bytes(n.me)
                                                for i, n in enumerate(nodes)})
    allocators = [
        DhtAllocator(os.path.join(workdir, f"n{i}.json"), NET, GW, client(net, node), clock,
                     rng=random.Random(seed * 1000 + i), pool_start=pool_start,
                     pool_end=pool_end)
        for i, node in enumerate(nodes)
    ]
    for a in allocators:
        a.counters = net.counters  # one set of counters for the whole storm
    start = net.now
    messages = net.messages

    def boot(i: int) -> None:
        mac = bytes([2, 0, 0, 0, i >> 8, i & 255])

        def retry() -> None:
            net.call_at(net.now + CLIENT_RETRY, lambda: boot(i))

        def acked(lease: Lease | None) -> None:
            if lease is None:
                retry()
            else:
                result.bound[i] = lease

        def offered(offer: Lease | None) -> Any:
            if offer is None:
                retry()
                return None
            return allocators[i].commit(mac, None, offer.ip, 3600).addCallback(acked)

        allocators[i].offer(mac, None, None).addCallback(offered).addErrback(
            lambda f: (result.errors.append(f), retry()))

    for i in range(len(nodes)):
        boot(i)
    deadline = net.now + limit
    while len(result.bound) < len(nodes) and net.now < deadline:
        net.run_until(net.now + 0.05)
        clock.advance(net.now - clock.seconds())
    if len(result.bound) == len(nodes):
        result.seconds = net.now - start
    result.messages = net.messages - messages
    result.claims = {",".join(f"{k}={v}" for k, v in labels.items()): value
                     for labels, value in net.counters.series("dhcp_dht_claims")}

    # The router's view: a get of each key, from another node, names the holder.
    for i, lease in result.bound.items():
        asker = nodes[(i + 7) % len(nodes)]
        client(net, asker).get(lease_key(NET, lease.ip)).addCallback(
            lambda entries, i=i: result.lookups.__setitem__(i, entries))
    net.run_until(net.now + 20)
    return result
