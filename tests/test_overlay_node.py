"""
OverlayNode: handshakes with real ECDSA keys, keepalives, failure detection,
routing modes and every kind of bad input, on the in-memory network.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wow.overlay import address as A
from wow.overlay import wire as W
from wow.overlay.identity import NodeIdentity, SimulatedCrypto
from wow.overlay.link import NEAR
from wow.overlay.node import Delivery, OverlayNode, OverlayParams
from wow.overlay.sim import SimNetwork

PARAMS = OverlayParams(keepalive=2.0, dead_after=6.0, probe=1.0, trim_grace=10.0)


def ring(n: int, real_crypto: bool = True, seed: int = 3) -> SimNetwork:
    net = SimNetwork(seed=seed, params=PARAMS, real_crypto=real_crypto)
    first = net.add_node([])
    for _ in range(n - 1):
        net.run_until(net.now + 0.3)
        net.add_node([net.endpoint(first)])
    net.run_until(net.now + 10)
    return net


def drops(net: SimNetwork, reason: str) -> float:
    return net.counters.get("overlay_dropped", reason=reason)


class HandshakeTests(SynchronousTestCase):
    def test_two_nodes_link_with_real_keys(self) -> None:
        net = ring(2)
        a, b = net.by_address.values()
        self.assertEqual(list(a.table.links), [b.me])
        self.assertEqual(list(b.table.links), [a.me])
        # Each side learnt the endpoint the other saw it from (reflexive).
        self.assertEqual(a.reflexive, net.endpoint(a))
        self.assertEqual(b.reflexive, net.endpoint(b))
        self.assertEqual(a.table.links[b.me].public, b.crypto.public)
        net.run_until(net.now + 5)
        self.assertIsNotNone(a.table.links[b.me].rtt)

    def test_ring_of_six_is_correct(self) -> None:
        net = ring(6)
        self.assertEqual(net.ring_errors(), 0)
        for node in net.by_address.values():
            self.assertGreaterEqual(len(node.table.links), 4)
            self.assertTrue(all(lk.kind for lk in node.table.describe()))

    def test_simultaneous_dial_gives_one_link(self) -> None:
        net = SimNetwork(seed=5, params=PARAMS, real_crypto=True)
        a = net.add_node([])
        b = net.add_node([])
        a.dial(net.endpoint(b), b.me)
        b.dial(net.endpoint(a), a.me)
        net.poke(a)
        net.poke(b)
        net.run_until(5)
        self.assertEqual(list(a.table.links), [b.me])
        self.assertEqual(list(b.table.links), [a.me])
        self.assertEqual(net.counters.get("overlay_links_up"), 2)
        self.assertEqual(net.counters.get("overlay_handshakes_refused", reason="simultaneous"), 1)

    def test_forged_signature_refused(self) -> None:
        net = SimNetwork(seed=6, params=PARAMS, real_crypto=True)
        a = net.add_node([])
        liar = NodeIdentity.generate()
        liar.sign = lambda data: NodeIdentity.generate().sign(data)  # type: ignore[method-assign]
        b = net.add_node([net.endpoint(a)], crypto=liar)
        net.run_until(1)
        self.assertEqual(a.table.links, {})
        self.assertGreater(drops(net, "bad-signature"), 0)
        # The liar believed a's genuine REPLY; its first keepalive is answered
        # with "no link" and its half of the link goes too.
        net.run_until(2 * PARAMS.keepalive + 1)
        self.assertEqual(b.table.links, {})

    def test_hello_with_someone_elses_address(self) -> None:
        net = SimNetwork(seed=7, params=PARAMS)
        a = net.add_node([])
        payload = W.encode({"k": NodeIdentity.generate().public, "n": b"x" * 16, "i": 1,
                            "c": False})
        a.datagram_received(W.pack(W.LOCAL, W.HELLO, 1, 0, 12345, 0, payload), ("1.2.3.4", 5),
                            net.now)
        self.assertEqual(drops(net, "bad-identity"), 1)
        self.assertEqual(a.answering, {})

    def test_dialling_itself(self) -> None:
        net = SimNetwork(seed=8, params=PARAMS)
        a = net.add_node([])
        a.dial(net.endpoint(a), None)
        net.poke(a)
        net.run_until(3)
        self.assertEqual(a.table.links, {})
        self.assertEqual(a.dialing, {})
        self.assertEqual(drops(net, "self-dial"), 1)


class LivenessTests(SynchronousTestCase):
    def test_crashed_peer_declared_dead_in_bounded_time(self) -> None:
        net = ring(4)
        victim = list(net.by_address.values())[1]
        net.remove_node(victim, graceful=False)
        t0 = net.now
        net.run_until(t0 + PARAMS.dead_after + 2 * PARAMS.probe + 1)
        for node in net.by_address.values():
            self.assertNotIn(victim.me, node.table.links)
        self.assertEqual(net.ring_errors(), 0)
        self.assertGreater(net.counters.get("overlay_links_down", reason="timeout"), 0)

    def test_shutdown_closes_links_explicitly(self) -> None:
        net = ring(4)
        leaver = list(net.by_address.values())[0]
        net.remove_node(leaver, graceful=True)
        net.run_until(net.now + 0.5)  # much less than dead_after
        for node in net.by_address.values():
            self.assertNotIn(leaver.me, node.table.links)
        self.assertGreater(net.counters.get("overlay_links_down", reason="closed-by-peer"), 0)

    def test_restarted_node_same_key_replaces_link(self) -> None:
        net = ring(3)
        nodes = list(net.by_address.values())
        old = nodes[2]
        net.remove_node(old, graceful=False)
        again = net.add_node([net.endpoint(nodes[0])], crypto=old.crypto)
        net.run_until(net.now + 5)
        self.assertEqual(again.me, old.me)
        self.assertIn(again.me, nodes[0].table.links)
        self.assertEqual(nodes[0].table.links[again.me].endpoint, net.endpoint(again))
        self.assertEqual(net.ring_errors(), 0)


class RoutingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = ring(12, real_crypto=False, seed=11)
        self.got: list[Delivery] = []
        for node in self.net.by_address.values():
            node.register_handler(W.APP_FIRST + 1, self.got.append)

    def test_exact_and_closest(self) -> None:
        net = self.net
        nodes = sorted(net.by_address)
        src = net.by_address[nodes[0]]
        self.assertTrue(src.send_to(nodes[6], W.APP_FIRST + 1, b"hi", W.EXACT))
        net.run_until(net.now + 2)
        self.assertEqual([(d.dst, d.payload, d.mode) for d in self.got],
                         [(nodes[6], b"hi", W.EXACT)])
        self.got.clear()
        key = (nodes[3] + 1) % A.MODULUS  # closest node is nodes[3]
        src.send_to(key, W.APP_FIRST + 1, b"k", W.CLOSEST)
        net.run_until(net.now + 2)
        self.assertEqual(len(self.got), 1)
        self.assertEqual(self.got[0].dst, key)
        self.assertEqual(self.got, [d for d in self.got if net.by_address[nodes[3]]])
        # An exact message to an address nobody has is dropped, counted.
        src.send_to(key, W.APP_FIRST + 1, b"x", W.EXACT)
        net.run_until(net.now + 2)
        self.assertEqual(drops(net, "no-route"), 1)

    def _inject(self, hdr_mode: int, ttl: int, src: int, dst: int) -> OverlayNode:
        """Feed node 0 a routed message as if its first link had sent it."""
        net = self.net
        node = net.by_address[sorted(net.by_address)[0]]
        peer = next(iter(node.table.links.values()))
        node.datagram_received(W.pack(hdr_mode, W.APP_FIRST + 1, ttl, 3, src, dst, b"z"),
                               peer.endpoint, net.now)
        return node

    def test_ttl_exhausted(self) -> None:
        far = sorted(self.net.by_address)[6]
        self._inject(W.EXACT, 0, 42, far)
        self.assertEqual(drops(self.net, "ttl-exhausted"), 1)

    def test_loop(self) -> None:
        me = sorted(self.net.by_address)[0]
        self._inject(W.EXACT, 10, me, sorted(self.net.by_address)[6])
        self.assertEqual(drops(self.net, "loop"), 1)

    def test_unlinked_source_and_unknown_kind(self) -> None:
        net = self.net
        node = net.by_address[sorted(net.by_address)[0]]
        before = drops(net, "not-linked")
        node.datagram_received(W.pack(W.EXACT, W.APP_FIRST + 1, 9, 0, 1, node.me, b""),
                               ("192.0.2.9", 1), net.now)
        self.assertEqual(drops(net, "not-linked"), before + 1)
        peer = next(iter(node.table.links.values()))
        node.datagram_received(W.pack(W.EXACT, W.APP_FIRST + 9, 9, 0, 1, node.me, b""),
                               peer.endpoint, net.now)
        self.assertEqual(drops(net, "no-handler"), 1)

    def test_register_handler_checks_kind(self) -> None:
        node = next(iter(self.net.by_address.values()))
        self.assertRaises(ValueError, node.register_handler, W.DHT, self.got.append)

    def test_greedy_never_revisits(self) -> None:
        # Strictly decreasing distance: hops are bounded by the ring size.
        net = self.net
        nodes = sorted(net.by_address)
        for i, dst in enumerate(nodes):
            net.by_address[nodes[(i * 5) % len(nodes)]].send_to(dst, W.APP_FIRST + 1, b"", W.EXACT)
        net.run_until(net.now + 3)
        self.assertEqual(len(self.got), len(nodes))
        self.assertTrue(all(d.hops < len(nodes) for d in self.got))


class BadInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = ring(3, real_crypto=False, seed=21)
        self.node = next(iter(self.net.by_address.values()))

    def test_reasons_counted(self) -> None:
        n, net = self.node, self.net
        ep = ("192.0.2.1", 9)
        good = W.pack(W.EXACT, W.CTRL, 8, 0, 1, n.me, b"")
        n.datagram_received(good[:20], ep, net.now)
        n.datagram_received(good + b"x" * 1500, ep, net.now)
        n.datagram_received(b"\x07" + good[1:], ep, net.now)
        for reason in ("truncated", "oversized", "bad-version"):
            self.assertEqual(drops(net, reason), 1, reason)

    def test_flood_from_one_source_does_not_starve_peers(self) -> None:
        n, net = self.node, self.net
        peer = next(iter(n.table.links.values()))
        pongs_before = n.sent
        flood = ("192.0.2.66", 6666)
        for i in range(5000):
            n.datagram_received(b"garbage %d" % i, flood, net.now)
            if i % 50 == 0:
                ping = W.pack(W.LOCAL, W.PING, 1, 0, peer.address, n.me, i.to_bytes(4, "big"))
                n.datagram_received(ping, peer.endpoint, net.now)
        # Every peer ping was answered; the flood cost at most its burst.
        self.assertEqual(n.sent - pongs_before, 100)
        self.assertGreater(drops(net, "rate-limited"), 4800)
        self.assertLessEqual(drops(net, "truncated"), PARAMS.stranger_burst)

    def test_source_table_is_bounded(self) -> None:
        n, net = self.node, self.net
        for i in range(PARAMS.source_table + 500):
            n.datagram_received(b"x", (f"198.51.{i >> 8 & 255}.{i & 255}", 1000 + i % 50000),
                                net.now)
        self.assertLessEqual(len(n.strangers), PARAMS.source_table)

    @settings(max_examples=300)
    @given(st.data())
    def test_mutated_messages_never_crash(self, data: st.DataObject) -> None:
        n, net = self.node, self.net
        peer = next(iter(n.table.links.values()))
        samples = [
            W.pack(W.LOCAL, W.HELLO, 1, 0, 5, 0, W.encode({"k": b"k", "n": b"n" * 16, "i": 1})),
            W.pack(W.LOCAL, W.NEIGHBOURS, 1, 0, peer.address, n.me,
                   W.encode({"l": [[A.to_bytes(7), "10.0.0.1", 4789]]})),
            W.pack(W.EXACT, W.DHT, 8, 0, peer.address, n.me,
                   W.encode({"op": "req", "r": 1, "a": "get", "k": b"key"})),
            W.pack(W.EXACT, W.CTRL, 8, 0, peer.address, n.me,
                   W.encode({"op": "ctm", "e": [["10.0.0.1", 4789]], "j": True})),
            W.pack(W.LOCAL, W.CLOSE, 1, 0, peer.address, n.me, W.encode({"r": "x"})),
        ]
        msg = bytearray(data.draw(st.sampled_from(samples)))
        for _ in range(data.draw(st.integers(0, 6))):
            i = data.draw(st.integers(0, len(msg) - 1))
            msg[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(msg)))
        src = data.draw(st.sampled_from([peer.endpoint, ("203.0.113.5", 7)]))
        n.datagram_received(bytes(msg[:cut]), src, net.now)  # must not raise
        self.assertEqual(net.counters.get("overlay_dropped", reason="internal-error"), 0)

    def test_simulated_crypto_rejects_wrong_key(self) -> None:
        a, b = SimulatedCrypto(random.Random(1)), SimulatedCrypto(random.Random(2))
        self.assertFalse(a.verify(b.public, a.sign(b"m"), b"m"))


class TableTests(SynchronousTestCase):
    def test_near_and_shortcuts(self) -> None:
        net = ring(40, real_crypto=False, seed=31)
        net.run_until(net.now + 60)
        self.assertEqual(net.ring_errors(), 0)
        for node in net.by_address.values():
            kinds = [lk.kind for lk in node.table.describe()]
            self.assertEqual(kinds.count(NEAR), 4)
            self.assertGreaterEqual(node.table.estimate_size(), 10)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**64 - 1) | st.binary(max_size=24)
    | st.text(max_size=12) | st.just(b"\x00" * 20) | st.just(b"\x01" * 16),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)
_ops = st.sampled_from(["req", "res", "store", "ack", "reserve", "vote", "commit", "abort",
                        "fetch", "values", "replicate", "ctm", "nope"])


class PayloadFuzzTests(SynchronousTestCase):
    """Random msgpack maps in every kind of message: counted drops, never a crash."""

    def setUp(self) -> None:
        self.net = ring(3, real_crypto=False, seed=23)
        self.node = next(iter(self.net.by_address.values()))
        self.peer = next(iter(self.node.table.links.values()))
        self.stranger = ("203.0.113.9", 9)
        self.node.dial(self.stranger, None)  # so a REPLY from it is decoded

    @settings(max_examples=400)
    @given(st.sampled_from([W.HELLO, W.REPLY, W.CONFIRM, W.REFUSE, W.CLOSE, W.NEIGHBOURS,
                            W.CTRL, W.DHT]),
           st.dictionaries(st.sampled_from(list("knicosrlejxvtaR") + ["op", "rec", "recs"]),
                           _values, max_size=7),
           _ops, st.booleans())
    def test_random_maps(self, kind: int, m: dict, op: str, from_peer: bool) -> None:  # type: ignore[type-arg]
        n, net = self.node, self.net
        if kind in (W.CTRL, W.DHT):
            m["op"] = op
            if op in ("store", "reserve", "commit") and isinstance(m.get("rec"), list):
                m["rec"] = dict(zip("kvotixs", m["rec"], strict=False))
        mode = W.LOCAL if kind in W.LINK_KINDS else W.EXACT
        src = self.peer.address if from_peer else 99
        ep = self.peer.endpoint if from_peer else self.stranger
        n.datagram_received(W.pack(mode, kind, 4, 0, src, n.me, W.encode(m)), ep, net.now)
        net.run_until(net.now + 0.01)
        self.assertEqual(net.counters.get("overlay_dropped", reason="internal-error"), 0)


class HalfOpenLinkTests(SynchronousTestCase):
    """A link must not stay open at one end only (it routes into a hole)."""

    def test_lost_confirm_is_repeated(self) -> None:
        net = SimNetwork(seed=5, params=PARAMS, real_crypto=True)
        transmit = net._transmit
        lost = []

        def lose_first_confirm(src: Any, data: bytes, dst: Any) -> None:
            if not lost and data[1] == (W.LOCAL << 6) | W.CONFIRM:
                lost.append(data)
                return
            transmit(src, data, dst)

        net._transmit = lose_first_confirm  # type: ignore[method-assign]
        a = net.add_node([])
        b = net.add_node([net.endpoint(a)])
        net.run_until(1.0)
        self.assertEqual(len(lost), 1)
        self.assertIn(a.me, b.table.links)
        self.assertNotIn(b.me, a.table.links)  # the dialler's end only
        # b's first keepalive reaches a, which repeats its REPLY; b answers
        # with its CONFIRM again (before, a waited 10 s for its answer to
        # expire, then closed b's link).
        net.run_until(net.now + PARAMS.keepalive + 1.5)
        self.assertIn(b.me, a.table.links)
        self.assertIn(a.me, b.table.links)
        self.assertEqual(net.counters.get("overlay_reply_repeated"), 1)
        self.assertEqual(net.counters.get("overlay_confirm_repeated"), 1)

    def test_no_link_close_reaches_the_forwarding_peer(self) -> None:
        net = ring(3, real_crypto=False)
        x, y, z = net.by_address.values()
        sent: list[tuple[bytes, Any]] = []
        send = x._send

        def record(data: bytes, dst: Any) -> None:
            sent.append((data, dst))
            send(data, dst)

        x._send = record
        # y forwards z's message over a link x does not know (x restarted,
        # say): x answers CLOSE no-link to whoever is at y's endpoint ...
        del x.by_endpoint[net.endpoint(y)]
        x.table.remove(y.me)
        x.datagram_received(W.pack(W.EXACT, W.APP_FIRST, 9, 1, z.me, x.me, b""),
                            net.endpoint(y), net.now)
        (data, dst), = sent
        hdr, _ = W.unpack(data)
        self.assertEqual((hdr.kind, hdr.src, hdr.dst, dst), (W.CLOSE, x.me, 0, net.endpoint(y)))
        # ... and y takes it down (it was addressed to z's address before, and
        # y dropped it: the link stayed open at y's end only).
        net.run_until(net.now + 0.2)
        self.assertGreaterEqual(net.counters.get("overlay_links_down", reason="closed-by-peer"), 1)


class RingMergeTests(SynchronousTestCase):
    def test_interleaved_rings_merge(self) -> None:
        """
        Two rings whose addresses alternate, joined by one far link: every
        near set is consistent, so neighbour lists alone never repair it (the
        state seed 16 of tests/test_overlay_sim.py settled in); lookups of
        our own address from a far link merge them.
        """
        net = SimNetwork(seed=2, latency=(0.01, 0.05))
        cryptos = sorted((SimulatedCrypto(net.rng) for _ in range(24)), key=lambda c: c.address)
        firsts = []
        for members in (cryptos[0::2], cryptos[1::2]):
            first = net.add_node([], crypto=members[0])
            firsts.append(first)
            for crypto in members[1:]:
                net.run_until(net.now + 0.2)
                net.add_node([net.endpoint(first)], crypto=crypto)
        net.run_until(net.now + 30)
        self.assertEqual(net.ring_errors(), 24)
        a, b = firsts[0], net.by_address[cryptos[13].address]
        a.dial(net.endpoint(b), b.me, owned=True)
        net.poke(a)
        net.run_until(net.now + 60)
        self.assertEqual(net.ring_errors(), 0)
