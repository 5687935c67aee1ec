"""
A boot storm over the real overlay and DHT code: 50 simulated nodes
(L{wow.overlay.sim.SimNetwork}, virtual time, random latencies) each run a
L{DhtAllocator} through L{OverlayDhtClient} and ask for an address at the
same moment.
"""

from __future__ import annotations

import os
import random
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wow.dhcp.allocator import Lease
from wow.dhcp.dht_allocator import DhtAllocator
from wow.dhcp.dhtclient import DhtEntry, OverlayDhtClient, lease_key
from wow.overlay import address as A
from wow.overlay.node import OverlayNode
from wow.overlay.sim import SimNetwork

NET = IPv4Network("10.128.0.0/16")
GW = IPv4Address("10.128.0.1")


class SimBootStormTests(SynchronousTestCase):
    def ring(self, size: int, seed: int) -> SimNetwork:
        net = SimNetwork(seed=seed, latency=(0.01, 0.08))
        endpoints = [net.endpoint(net.add_node([]))]
        for _ in range(size - 1):
            net.run_until(net.now + 0.2)
            boot = [net.rng.choice(endpoints) for _ in range(2)]
            endpoints.append(net.endpoint(net.add_node(boot)))
        deadline = net.now + 300
        while net.ring_errors() and net.now < deadline:
            net.run_until(net.now + 2)
        self.assertEqual(net.ring_errors(), 0, "the simulated ring did not converge")
        net.run_until(net.now + 10)
        return net

    def client(self, net: SimNetwork, node: OverlayNode) -> OverlayDhtClient:
        return OverlayDhtClient(lambda: node.dht, kick=lambda: net.poke(node))

    def storm(self, pool: dict[str, IPv4Address], seed: int) -> None:
        net = self.ring(50, seed)
        clock = Clock()
        clock.advance(net.now)
        workdir = self.mktemp()
        os.makedirs(workdir)
        nodes = list(net.by_address.values())
        allocators = [
            DhtAllocator(os.path.join(workdir, f"n{i}.json"), NET, GW, self.client(net, node),
                         clock, rng=random.Random(seed * 100 + i), **pool)  # type: ignore[arg-type]
            for i, node in enumerate(nodes)
        ]
        bound: dict[int, Lease] = {}
        errors: list[Any] = []

        def boot(i: int) -> None:
            mac = bytes([2, 0, 0, 0, 0, i])

            def offered(offer: Lease | None) -> Any:
                if offer is None:
                    net.call_at(net.now + 4, lambda: boot(i))  # the client retries
                    return None
                return allocators[i].commit(mac, None, offer.ip, 3600).addCallback(
                    lambda lease: bound.__setitem__(i, lease) if lease else boot(i))

            allocators[i].offer(mac, None, None).addCallback(offered).addErrback(errors.append)

        for i in range(50):
            boot(i)
        deadline = net.now + 120
        while len(bound) < 50 and net.now < deadline:
            net.run_until(net.now + 0.1)
            clock.advance(net.now - clock.seconds())
        self.assertEqual(errors, [])
        self.assertEqual(len(bound), 50)
        self.assertEqual(len({lease.ip for lease in bound.values()}), 50)

        # The router's view: a get of each key from some other node names the holder.
        found: dict[int, list[DhtEntry]] = {}
        for i, lease in bound.items():
            asker = nodes[(i + 7) % 50]
            self.client(net, asker).get(lease_key(NET, lease.ip)).addCallback(
                lambda entries, i=i: found.__setitem__(i, entries))
        net.run_until(net.now + 20)
        for i in bound:
            owner = A.to_bytes(nodes[i].me)
            self.assertEqual([(e.value, e.owner) for e in found[i]], [(owner, owner)])

    def test_boot_storm_in_a_tight_pool(self) -> None:
        self.storm({"pool_start": IPv4Address("10.128.0.10"),
                    "pool_end": IPv4Address("10.128.0.73")}, seed=3)

    def test_boot_storm_in_the_whole_subnet(self) -> None:
        self.storm({}, seed=4)
