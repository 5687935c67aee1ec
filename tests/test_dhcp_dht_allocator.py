"""
The DHT allocator over the in-memory fake DHT: claims, conflicts, expiry,
release, renewal, decline, restarts, shutdown and a boot storm.
"""

from __future__ import annotations

import json
import os
import random
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wow.dhcp.allocator import BOUND, OFFER_HOLD, OFFERED, IAllocator, Lease
from wow.dhcp.dht_allocator import GRACE, DhtAllocator
from wow.dhcp.dhtclient import DhtClientError, IDhtClient, lease_key
from wow.metrics import Counters
from wow.testing import FakeDht

NET = IPv4Network("10.128.0.0/16")
GW = IPv4Address("10.128.0.1")
A = b"\x02\x00\x00\x00\x00\x0a"
B = b"\x02\x00\x00\x00\x00\x0b"
NODE1 = b"\x01" * 20
NODE2 = b"\x02" * 20


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


class DhtAllocatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.dht = FakeDht(self.clock)
        self.counters = Counters()
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def make(self, node: bytes = NODE1, name: str = "n1", seed: int = 1, **kw: Any
             ) -> DhtAllocator:
        return DhtAllocator(os.path.join(self.dir, name + "-leases.json"), NET, GW,
                            self.dht.client(node), self.clock, self.counters,
                            rng=random.Random(seed), **kw)

    def bind(self, alloc: DhtAllocator, mac: bytes = A, requested: IPv4Address | None = None,
             lease_time: int = 3600) -> Lease:
        offer = result(alloc.offer(mac, None, requested))
        self.assertIsInstance(offer, Lease)
        lease = result(alloc.commit(mac, None, offer.ip, lease_time, "host"))
        self.assertIsInstance(lease, Lease)
        self.assertEqual(lease.state, BOUND)
        return lease  # type: ignore[no-any-return]

    def record(self, address: IPv4Address) -> tuple[bytes, bytes, float] | None:
        return self.dht.live(lease_key(NET, address))

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IAllocator, self.make()))
        self.assertTrue(verifyObject(IDhtClient, self.dht.client(NODE1)))

    def test_key_format(self) -> None:
        self.assertEqual(lease_key(NET, ip("10.128.0.5")), b"dhcp:10.128.0.0/16:10.128.0.5")

    def test_offer_holds_a_short_claim_commit_claims_for_the_lease(self) -> None:
        alloc = self.make()
        offer = result(alloc.offer(A, None, None))
        self.assertEqual(offer.state, OFFERED)
        self.assertTrue(alloc.in_pool(offer.ip))
        value, owner, expires = self.record(offer.ip)  # type: ignore[misc]
        self.assertEqual((value, owner), (NODE1, NODE1))
        self.assertEqual(expires, self.clock.seconds() + OFFER_HOLD)
        lease = result(alloc.commit(A, None, offer.ip, 600, "host"))
        self.assertEqual((lease.ip, lease.state, lease.hostname), (offer.ip, BOUND, "host"))
        self.assertEqual(self.record(offer.ip)[2],  # type: ignore[index]
                         self.clock.seconds() + 600 + GRACE)
        self.assertEqual(result(alloc.lookup(A, None)), lease)
        self.assertEqual(result(alloc.leases()), [lease])

    def test_offered_claim_expires(self) -> None:
        alloc = self.make()
        offer = result(alloc.offer(A, None, None))
        self.clock.advance(OFFER_HOLD + 1)
        self.assertIsNone(self.record(offer.ip))
        # Another node can now have it.
        other = self.make(NODE2, "n2")
        self.assertEqual(result(other.offer(B, None, offer.ip)).ip, offer.ip)

    def test_requested_address_when_free(self) -> None:
        alloc = self.make()
        self.assertEqual(result(alloc.offer(A, None, ip("10.128.7.7"))).ip, ip("10.128.7.7"))

    def test_requested_address_outside_pool_is_ignored(self) -> None:
        alloc = self.make(pool_start=ip("10.128.1.10"), pool_end=ip("10.128.1.20"))
        offer = result(alloc.offer(A, None, ip("10.128.7.7")))
        self.assertTrue(ip("10.128.1.10") <= offer.ip <= ip("10.128.1.20"))
        self.assertIsNone(result(alloc.commit(A, None, ip("10.128.7.7"), 600)))
        self.assertIsNone(result(alloc.commit(A, None, GW, 600)))

    def test_conflict_moves_on_to_another_address(self) -> None:
        other = self.make(NODE2, "n2")
        taken = self.bind(other, B, ip("10.128.3.3"))
        alloc = self.make()
        offer = result(alloc.offer(A, None, taken.ip))
        self.assertNotEqual(offer.ip, taken.ip)
        self.assertEqual(self.counters.get("dhcp_dht_claims", phase="offer", result="taken"), 1)
        # ...and a commit of someone else's address is refused (NAK).
        self.assertIsNone(result(alloc.commit(A, None, taken.ip, 600)))
        self.assertEqual(self.record(taken.ip)[1], NODE2)  # type: ignore[index]

    def test_random_addresses_not_sequential(self) -> None:
        alloc = self.make()
        ips = [self.bind(alloc, bytes([2, 0, 0, 0, 1, i])).ip for i in range(5)]
        self.assertEqual(len(set(ips)), 5)
        self.assertNotEqual(sorted(ips), [ips[0] + i for i in range(5)])

    def test_two_local_clients_never_share_an_address(self) -> None:
        # Same node = same DHT owner: the DHT would let it create twice, so
        # the allocator must keep its own clients apart.
        alloc = self.make()
        a = self.bind(alloc, A, ip("10.128.9.9"))
        b = result(alloc.offer(B, None, a.ip))
        self.assertNotEqual(b.ip, a.ip)
        self.assertIsNone(result(alloc.commit(B, None, a.ip, 600)))

    def test_previous_address_first_after_release(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc)
        self.assertTrue(result(alloc.release(A, None, lease.ip)))
        self.assertIsNone(self.record(lease.ip))
        self.assertEqual(result(alloc.leases()), [])
        # A later DISCOVER (even asking for something else) gets it back.
        again = result(alloc.offer(A, None, ip("10.128.200.200")))
        self.assertEqual(again.ip, lease.ip)

    def test_release_of_an_address_not_held(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc)
        self.assertFalse(result(alloc.release(B, None, lease.ip)))
        self.assertFalse(result(alloc.release(A, None, ip("10.128.99.99"))))
        self.assertIsNotNone(self.record(lease.ip))

    def test_renewal_extends_the_claim(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc, lease_time=600)
        self.clock.advance(300)
        renewed = result(alloc.renew(A, None, lease.ip, 600, "host"))
        self.assertEqual(renewed.expires, self.clock.seconds() + 600)
        self.assertEqual(self.record(lease.ip)[2],  # type: ignore[index]
                         self.clock.seconds() + 600 + GRACE)

    def test_claims_of_bound_leases_are_refreshed_without_the_client(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc, lease_time=600)
        key = lease_key(NET, lease.ip)
        creates = lambda: sum(1 for op, k, _ in self.dht.ops if op == "create" and k == key)  # noqa: E731
        self.assertEqual(creates(), 2)
        # The DHT loses the record: the refresh at half the lease puts it back.
        del self.dht.records[key]
        self.clock.advance(301)
        self.assertEqual(creates(), 3)
        self.assertEqual(self.record(lease.ip)[1], NODE1)  # type: ignore[index]
        # Never beyond the client's lease: at lease end + grace it lapses.
        self.clock.pump([10] * 35)
        self.assertIsNone(self.record(lease.ip))
        self.assertIsNone(result(alloc.lookup(A, None)))
        self.assertEqual(result(alloc.leases()), [])

    def test_refresh_retries_after_a_dht_error(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc, lease_time=600)
        self.dht.fail_next.append("timeout")
        self.clock.advance(300)
        self.assertEqual(self.counters.get("dhcp_dht_claims", phase="refresh", result="error",
                                           reason="timeout"), 1)
        self.clock.advance(10)
        self.assertEqual(self.counters.get("dhcp_dht_claims", phase="refresh", result="ok"), 1)
        self.assertIsNotNone(self.record(lease.ip))

    def test_lost_claim_is_counted_and_the_renewal_naked(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc, lease_time=600)
        key = lease_key(NET, lease.ip)
        self.dht.records[key] = (NODE2, NODE2, self.clock.seconds() + 3600)
        self.clock.advance(300)
        self.assertEqual(self.counters.get("dhcp_dht_conflicts", reason="refresh"), 1)
        self.assertIsNone(result(alloc.commit(A, None, lease.ip, 600)))
        self.assertEqual(self.counters.get("dhcp_dht_conflicts", reason="lost-claim"), 1)
        # The client starts over and gets another address.
        self.assertNotEqual(result(alloc.offer(A, None, lease.ip)).ip, lease.ip)

    def test_decline_quarantines_the_address(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc)
        self.assertTrue(result(alloc.decline(A, None, lease.ip)))
        self.assertIsNone(self.record(lease.ip))
        offer = result(alloc.offer(A, None, lease.ip))
        self.assertNotEqual(offer.ip, lease.ip)
        self.assertIsNone(result(alloc.commit(A, None, lease.ip, 600)))
        self.assertFalse(result(alloc.decline(B, None, offer.ip)))
        # Durable: a restarted node still keeps it out.
        restarted = self.make()
        self.assertIsNone(result(restarted.commit(B, None, lease.ip, 600)))

    def test_restart_after_a_crash_gets_the_same_address(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc)
        # kill -9: no shutdown; the state file and the DHT record survive.
        restarted = self.make(seed=99)
        restarted.start()
        self.assertEqual(self.counters.get("dhcp_dht_claims", phase="restore", result="ok"), 1)
        self.assertEqual(result(restarted.lookup(A, None)).ip, lease.ip)
        self.assertEqual(result(restarted.offer(A, None, None)).ip, lease.ip)
        self.assertEqual(result(restarted.commit(A, None, lease.ip, 3600)).ip, lease.ip)

    def test_clean_shutdown_releases_and_restart_reclaims(self) -> None:
        alloc = self.make()
        alloc.start()
        lease = self.bind(alloc)
        self.assertIsNone(result(alloc.shutdown()))
        self.assertIsNone(self.record(lease.ip))
        restarted = self.make(seed=7)
        restarted.start()
        self.assertEqual(self.record(lease.ip)[1], NODE1)  # type: ignore[index]
        # The host's client INIT-REBOOTs with its address: ACKed.
        self.assertEqual(result(restarted.commit(A, None, lease.ip, 3600)).ip, lease.ip)

    def test_restart_when_the_address_was_taken_meanwhile(self) -> None:
        alloc = self.make()
        lease = self.bind(alloc)
        result(alloc.shutdown())
        other = self.make(NODE2, "n2")
        self.bind(other, B, lease.ip)
        restarted = self.make(seed=7)
        restarted.start()
        self.assertEqual(self.counters.get("dhcp_dht_conflicts", reason="restore"), 1)
        self.assertIsNone(result(restarted.commit(A, None, lease.ip, 3600)))
        self.assertNotEqual(result(restarted.offer(A, None, None)).ip, lease.ip)

    def test_shutdown_does_not_wait_for_a_dead_dht(self) -> None:
        alloc = self.make()
        self.bind(alloc)
        self.dht.down = True
        d = alloc.shutdown(wait=3.0)
        self.assertNoResult(d)
        self.clock.advance(3.0)
        self.assertIsNone(result(d))

    def test_dht_unavailable_fails_without_an_address(self) -> None:
        alloc = self.make()
        self.dht.down = True
        d = alloc.offer(A, None, None)
        self.clock.advance(5)
        failure = result(d)
        self.assertTrue(failure.check(DhtClientError))
        self.assertEqual(self.counters.get("dhcp_dht_claims", phase="offer", result="error",
                                           reason="timeout"), 1)
        self.assertEqual(result(alloc.leases()), [])

    def test_exhausted_pool_is_a_counted_failure(self) -> None:
        pool = dict(pool_start=ip("10.128.0.10"), pool_end=ip("10.128.0.12"))
        other = self.make(NODE2, "n2", **pool)
        for i in range(3):
            self.bind(other, bytes([2, 0, 0, 0, 2, i]))
        alloc = self.make(**pool)
        self.assertIsNone(result(alloc.offer(A, None, None)))
        self.assertEqual(self.counters.get("dhcp_pool_exhausted"), 1)
        self.assertEqual(self.counters.get("dhcp_dht_claims", phase="offer", result="taken"), 3)

    def test_retransmitted_discover_while_claiming_gets_the_same_offer(self) -> None:
        self.dht.latency = (0.1, 0.3)
        alloc = self.make()
        d1 = alloc.offer(A, None, None)
        d2 = alloc.offer(A, None, None)
        self.clock.pump([0.1] * 10)
        self.assertEqual(result(d1), result(d2))
        self.assertEqual(sum(1 for op, _, _ in self.dht.ops if op == "create"), 1)

    def test_corrupt_state_file_is_moved_aside(self) -> None:
        path = os.path.join(self.dir, "n1-leases.json")
        with open(path, "w") as f:
            f.write("{not json")
        alloc = self.make()
        self.assertTrue(os.path.exists(path + ".corrupt"))
        self.assertEqual(self.counters.get("lease_file_errors", reason="corrupt"), 1)
        self.bind(alloc)
        with open(path) as f:
            self.assertEqual(len(json.load(f)["leases"]), 1)

    def test_boot_storm_of_50_nodes_ends_with_unique_addresses(self) -> None:
        """50 nodes boot at once over one DHT with random latencies; their
        claims interleave; in a pool of 64 addresses most first picks collide."""
        self.dht.latency = (0.005, 0.25)
        pool = dict(pool_start=ip("10.128.0.10"), pool_end=ip("10.128.0.73"))
        nodes = [self.make(bytes([i + 1]) * 20, f"n{i}", seed=i, **pool) for i in range(50)]
        bound: dict[int, Lease] = {}
        retries: dict[int, int] = {}

        def boot(i: int) -> None:
            mac = bytes([2, 0, 0, 0, 0, i])

            def offered(offer: Lease | None) -> Deferred[Any] | None:
                if offer is None:
                    # No offer: the client sends DISCOVER again a few seconds later.
                    retries[i] = retries.get(i, 0) + 1
                    self.clock.callLater(4, boot, i)
                    return None
                return nodes[i].commit(mac, None, offer.ip, 3600).addCallback(
                    lambda lease: bound.__setitem__(i, lease) if lease else None)

            nodes[i].offer(mac, None, None).addCallback(offered)

        for i in range(50):
            self.clock.callLater(random.Random(i).uniform(0, 0.05), boot, i)
        self.clock.pump([0.01] * 2000)
        self.assertEqual(len(bound), 50)
        ips = [lease.ip for lease in bound.values()]
        self.assertEqual(len(set(ips)), 50)
        # Each address is claimed in the DHT by the node that got it.
        for i, lease in bound.items():
            self.assertEqual(self.record(lease.ip)[1], bytes([i + 1]) * 20)  # type: ignore[index]
        self.assertGreater(self.counters.get("dhcp_dht_claims", phase="offer", result="taken"),
                           10)
        self.assertLessEqual(sum(retries.values()), 3, retries)

    def test_boot_storm_in_a_large_pool_needs_no_retry(self) -> None:
        self.dht.latency = (0.005, 0.25)
        nodes = [self.make(bytes([i + 1]) * 20, f"n{i}", seed=i) for i in range(50)]
        offers = [nodes[i].offer(bytes([2, 0, 0, 0, 0, i]), None, None) for i in range(50)]
        self.clock.pump([0.05] * 40)
        ips = {result(d).ip for d in offers}
        self.assertEqual(len(ips), 50)
