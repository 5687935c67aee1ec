"""
The replicated DHT on the in-memory network: owner-signed values, TTLs,
k replicas, re-replication, and create's exactly-one-winner guarantee,
including when a replica dies in the middle of the operation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wow.overlay import address as A
from wow.overlay.dht import PUT, DhtError, Record, signed_data
from wow.overlay.node import OverlayNode, OverlayParams
from wow.overlay.sim import SimNetwork

PARAMS = OverlayParams(keepalive=2.0, dead_after=6.0, probe=1.0, trim_grace=10.0,
                       dht_republish=20.0)


def ring(n: int, seed: int, real_crypto: bool = False) -> SimNetwork:
    net = SimNetwork(seed=seed, params=PARAMS, real_crypto=real_crypto)
    first = net.add_node([])
    for _ in range(n - 1):
        net.run_until(net.now + 0.2)
        net.add_node([net.endpoint(first)])
    net.run_until(net.now + 15)
    assert net.ring_errors() == 0
    return net


class Outcome:
    def __init__(self, d: Any) -> None:
        self.result: Any = None
        self.error: str | None = None
        self.done = False
        d.addCallbacks(self._ok, self._fail)

    def _ok(self, r: Any) -> None:
        self.result, self.done = r, True

    def _fail(self, f: Any) -> None:
        f.trap(DhtError)
        self.error, self.done = f.value.reason, True


def call(net: SimNetwork, node: OverlayNode, d: Any, wait: float = 10) -> Outcome:
    o = Outcome(d)
    net.poke(node)
    net.run_until(net.now + wait)
    assert o.done
    return o


def holders(net: SimNetwork, key: bytes) -> list[int]:
    return [a for a, n in net.by_address.items() if n.dht.live(key, net.now)]


class DhtTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = ring(12, seed=41)
        self.nodes = list(self.net.by_address.values())

    def test_put_get_across_nodes_on_k_replicas(self) -> None:
        net, (a, b) = self.net, self.nodes[:2]
        self.assertTrue(call(net, a, a.dht.put(b"name", b"v1", 60)).result)
        self.assertTrue(call(net, a, a.dht.put(b"name", b"v2", 60)).result)
        got = call(net, b, b.dht.get(b"name")).result
        self.assertEqual(sorted(v.value for v in got), [b"v1", b"v2"])
        self.assertTrue(all(v.owner == a.me for v in got))
        # Exactly the k nodes closest to the key hold it.
        target = A.digest(b"name")
        closest = sorted(net.by_address, key=lambda x: A.ring_distance(x, target))[:3]
        self.assertEqual(sorted(holders(net, b"name")), sorted(closest))

    def test_create_exists_renew_and_delete_owner_only(self) -> None:
        net, (a, b, c) = self.net, self.nodes[:3]
        self.assertTrue(call(net, a, a.dht.create(b"ip:10.0.0.5", b"a", 60)).result)
        self.assertEqual(call(net, b, b.dht.create(b"ip:10.0.0.5", b"b", 60)).error, "exists")
        self.assertEqual(call(net, b, b.dht.put(b"ip:10.0.0.5", b"b", 60)).error, "exists")
        # The same owner renews (and may change its value).
        self.assertTrue(call(net, a, a.dht.create(b"ip:10.0.0.5", b"a2", 120)).result)
        got = call(net, c, c.dht.get(b"ip:10.0.0.5")).result
        self.assertEqual([(v.value, v.owner) for v in got], [(b"a2", a.me)])
        self.assertGreater(got[0].ttl_left, 100)
        # b's delete is signed by b: it can only delete b's values.
        call(net, b, b.dht.delete(b"ip:10.0.0.5"))
        self.assertEqual(len(call(net, c, c.dht.get(b"ip:10.0.0.5")).result), 1)
        self.assertTrue(call(net, a, a.dht.delete(b"ip:10.0.0.5")).result)
        self.assertEqual(call(net, c, c.dht.get(b"ip:10.0.0.5")).result, [])
        # Now b may create it.
        self.assertTrue(call(net, b, b.dht.create(b"ip:10.0.0.5", b"b", 60)).result)

    def test_ttl_expires(self) -> None:
        net, a = self.net, self.nodes[0]
        call(net, a, a.dht.put(b"short", b"x", 5), wait=1)
        self.assertEqual(len(call(net, a, a.dht.get(b"short"), wait=1).result), 1)
        net.run_until(net.now + 6)
        self.assertEqual(call(net, a, a.dht.get(b"short")).result, [])

    def test_limits(self) -> None:
        a = self.nodes[0]
        self.assertRaises(ValueError, a.dht.put, b"k", b"x" * 2000, 60)
        self.assertRaises(ValueError, a.dht.put, b"", b"x", 60)
        self.assertRaises(ValueError, a.dht.put, b"k", b"x", 0)

    def test_forged_record_refused(self) -> None:
        net, (a, b) = self.net, self.nodes[:2]
        now = net.now
        issued = int(now * 1000)
        # b signs a record claiming to be a's.
        forged = Record(b"k", b"evil", a.crypto.public, a.me, 60, issued, PUT,
                        b.crypto.sign(signed_data(PUT, b"k", b"evil", 60, issued)))
        for node in self.nodes:
            self.assertEqual(node.dht.apply(forged, now), "bad-signature")
        self.assertGreater(net.counters.get("overlay_dropped", reason="bad-signature"), 0)

    def test_values_survive_replica_loss(self) -> None:
        net = self.net
        a = self.nodes[0]
        for i in range(20):
            call(net, a, a.dht.put(b"k%d" % i, b"v%d" % i, 600), wait=0.5)
        net.run_until(net.now + 5)
        # Kill two of the three replicas of every key, one at a time with
        # time to re-replicate in between.
        for key in (b"k3", b"k11"):
            for _ in range(2):
                victims = [h for h in holders(net, key) if net.by_address[h] is not a]
                net.remove_node(net.by_address[victims[0]], graceful=False)
                net.run_until(net.now + PARAMS.dead_after + 5)
        for i in range(20):
            got = call(net, a, a.dht.get(b"k%d" % i), wait=3).result
            self.assertEqual([v.value for v in got], [b"v%d" % i], i)


    def test_new_nodes_near_a_key_receive_it(self) -> None:
        net = self.net
        a = self.nodes[0]
        for i in range(10):
            call(net, a, a.dht.put(b"j%d" % i, b"v", 600), wait=0.5)
        for _ in range(12):
            net.add_node([net.endpoint(a)])
            net.run_until(net.now + 0.5)
        net.run_until(net.now + 15)
        self.assertEqual(net.ring_errors(), 0)
        for i in range(10):
            key = b"j%d" % i
            target = A.digest(key)
            closest = sorted(net.by_address, key=lambda x: A.ring_distance(x, target))[:3]
            self.assertTrue(set(closest) <= set(holders(net, key)), i)


class RealCryptoDhtTests(SynchronousTestCase):
    def test_put_get_with_ecdsa(self) -> None:
        net = ring(5, seed=43, real_crypto=True)
        a, b = list(net.by_address.values())[:2]
        self.assertTrue(call(net, a, a.dht.create(b"x", b"1", 60)).result)
        self.assertEqual(call(net, b, b.dht.create(b"x", b"2", 60)).error, "exists")
        self.assertEqual([v.value for v in call(net, b, b.dht.get(b"x")).result], [b"1"])


class ConcurrentCreateTests(SynchronousTestCase):
    """Two nodes create the same key at the same moment: exactly one wins."""

    def race(self, seed: int, kill_replica: bool) -> tuple[list[Outcome], SimNetwork]:
        net = ring(12, seed=seed)
        key = b"dhcp:10.1.2.%d" % seed
        target = A.digest(key)
        order = sorted(net.by_address, key=lambda x: A.ring_distance(x, target))
        root, replicas = order[0], order[:3]
        # Two creators far from the key, so the requests race through the ring.
        c1, c2 = (net.by_address[a] for a in order[-2:])
        outcomes = [Outcome(c1.dht.create(key, b"one", 300)),
                    Outcome(c2.dht.create(key, b"two", 300))]
        net.poke(c1)
        net.poke(c2)
        if kill_replica:
            # A non-root replica dies while the reservations are in flight.
            victim = net.by_address[replicas[1 + seed % 2]]
            net.call_at(net.now + 0.06, lambda: net.remove_node(victim, graceful=False))
        net.run_until(net.now + 30)
        self.assertTrue(all(o.done for o in outcomes))
        winners = [o for o in outcomes if o.result is True]
        losers = [o for o in outcomes if o.error is not None]
        self.assertEqual((len(winners), len(losers)), (1, 1), [o.error for o in outcomes])
        self.assertEqual(losers[0].error, "exists")
        # Everyone now reads the winner's value only.
        reader = net.by_address[root]
        got = call(net, reader, reader.dht.get(key)).result
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].value, b"one" if outcomes[0].result else b"two")
        return outcomes, net

    def test_exactly_one_winner(self) -> None:
        for seed in range(50, 56):
            self.race(seed, kill_replica=False)

    def test_exactly_one_winner_when_a_replica_dies(self) -> None:
        for seed in range(60, 66):
            self.race(seed, kill_replica=True)


class LoneSeedTests(SynchronousTestCase):
    """
    The first node of an overlay (no bootstrap configured) is, while alone,
    the sole replica of every key: it must be able to create (so its DHCP
    clients get addresses), and the nodes that join later must still see
    its records and lose a create race against them.
    """

    def test_lone_seed_creates_and_joiners_see_its_claim(self) -> None:
        net = SimNetwork(seed=7, params=PARAMS)
        seed = net.add_node([], params=replace(PARAMS, seed=True))
        net.run_until(net.now + 1)
        self.assertTrue(call(net, seed, seed.dht.create(b"dhcp:n:10.0.0.9", b"s", 600)).result)
        joiners = [net.add_node([net.endpoint(seed)]) for _ in range(4)]
        net.run_until(net.now + 20)
        self.assertEqual(net.ring_errors(), 0)
        late = joiners[-1]
        outcome = call(net, late, late.dht.create(b"dhcp:n:10.0.0.9", b"j", 600))
        self.assertEqual(outcome.error, "exists")
        got = call(net, late, late.dht.get(b"dhcp:n:10.0.0.9")).result
        self.assertEqual([(v.value, v.owner) for v in got], [(b"s", seed.me)])
        # Once linked, the seed needs a majority like everyone else.
        self.assertFalse(seed.dht.alone())

    def test_lone_node_told_to_join_never_decides_alone(self) -> None:
        net = SimNetwork(seed=8, params=PARAMS)
        # Its bootstrap never answers: it is not the whole overlay, only cut off.
        node = net.add_node([("10.255.0.1", 4789)])
        net.run_until(net.now + 1)
        self.assertFalse(node.dht.alone())
        outcome = call(net, node, node.dht.create(b"dhcp:n:10.0.0.9", b"x", 600), wait=20)
        self.assertIsNotNone(outcome.error)
