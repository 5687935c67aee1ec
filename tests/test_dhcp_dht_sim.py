"""
A boot storm over the real overlay and DHT code: 50 simulated nodes
(L{wow.overlay.sim.SimNetwork}, virtual time, random latencies) each run a
L{DhtAllocator} through L{OverlayDhtClient} and ask for an address at the
same moment (L{wow.dhcp.storm}).
"""

from __future__ import annotations

from ipaddress import IPv4Address

from twisted.trial.unittest import SynchronousTestCase

from wow.dhcp.storm import ring, storm


class SimBootStormTests(SynchronousTestCase):
    def check(self, seed: int, **pool: IPv4Address) -> None:
        net = ring(50, seed)
        self.assertEqual(net.ring_errors(), 0, "the simulated ring did not converge")
        result = storm(net, seed, workdir=self.mktemp(), **pool)
        self.assertEqual(result.errors, [])
        self.assertEqual(len(result.bound), 50)
        self.assertEqual(len({lease.ip for lease in result.bound.values()}), 50)
        for i in result.bound:
            owner = result.addresses[i]
            self.assertEqual([(e.value, e.owner) for e in result.lookups[i]], [(owner, owner)])

    def test_boot_storm_in_a_tight_pool(self) -> None:
        # 64 addresses for 50 nodes: most random first picks collide.
        self.check(3, pool_start=IPv4Address("10.128.0.10"),
                   pool_end=IPv4Address("10.128.0.73"))

    def test_boot_storm_in_the_whole_subnet(self) -> None:
        self.check(4)
