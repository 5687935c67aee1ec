"""Tests for L{wow.security.crlflood}: CRLs flooded along overlay links, newer-only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wow.datapath import pieces as P
from wow.metrics import Counters
from wow.overlay import datapath as D
from wow.security.crlflood import CRL_KIND, CrlFlood


@dataclass
class Delivery:
    src: int
    payload: bytes


class Table:
    def __init__(self, links: list[int]) -> None:
        self.links = dict.fromkeys(links)


class FakeOverlay:
    """Links to other fake overlays; messages are delivered piece by piece at once."""

    def __init__(self, me: int, net: dict[int, FakeOverlay]) -> None:
        self.me = me
        self.net = net
        self.node = type("Node", (), {})()
        self.node.table = Table([])
        self.handlers: dict[int, Any] = {}
        self.sent: list[tuple[int, int]] = []
        self.observers: list[Any] = []

    def register_handler(self, kind: int, handler: Any) -> None:
        self.handlers[kind] = handler

    def add_observer(self, observer: Any) -> None:
        self.observers.append(observer)

    def send_message(self, address: int, kind: int, msg_id: int, message: bytes) -> bool:
        self.sent.append((address, kind))
        for piece in P.split(msg_id, message, D.PIECE_PAYLOAD):
            self.net[address].handlers[kind](Delivery(self.me, piece))
        return True


class FloodTests(SynchronousTestCase):
    def ring(self, n: int) -> tuple[list[FakeOverlay], list[list[bytes]], Counters]:
        net: dict[int, FakeOverlay] = {}
        overlays = [FakeOverlay(i, net) for i in range(n)]
        for o in overlays:
            net[o.me] = o
            o.node.table = Table([(o.me - 1) % n, (o.me + 1) % n])
        adopted: list[list[bytes]] = [[] for _ in range(n)]
        counters = Counters()
        self.floods = []
        for o in overlays:
            def offer(der: bytes, source: str, mine: list[bytes] = adopted[o.me]) -> bool:
                if der in mine or der.startswith(b"OLD"):
                    return False  # not newer / refused
                mine.append(der)
                return True
            flood = CrlFlood(o, offer, Clock(), counters,
                             lambda mine=adopted[o.me]: mine[-1] if mine else None)
            flood.startService()
            self.addCleanup(flood.stopService)
            self.floods.append(flood)
        return overlays, adopted, counters

    def test_flood_reaches_every_node_once(self) -> None:
        overlays, adopted, counters = self.ring(6)
        der = b"CRL" + bytes(range(256)) * 12  # three pieces
        adopted[0].append(der)  # node 0 fetched it
        self.floods[0].adopted(der, "fetch")
        self.assertEqual(adopted, [[der]] * 6)
        # each node sends at most to its two links: the flood ends
        self.assertLessEqual(sum(len(o.sent) for o in overlays), 12)
        self.assertTrue(all(k == CRL_KIND for o in overlays for _, k in o.sent))

    def test_refused_crl_goes_no_further(self) -> None:
        overlays, adopted, _ = self.ring(4)
        self.floods[0].push(b"OLD-CRL")
        self.assertEqual(adopted, [[], [], [], []])
        self.assertEqual([len(o.sent) for o in overlays], [2, 0, 0, 0])

    def test_overlay_source_not_refetched(self) -> None:
        """Only a CRL from this node's own fetch starts a flood."""
        overlays, _, _ = self.ring(3)
        self.floods[0].adopted(b"CRL", "overlay")
        self.floods[0].adopted(b"CRL", "disk")
        self.assertEqual(overlays[0].sent, [])

    def test_garbage_piece(self) -> None:
        overlays, adopted, counters = self.ring(3)
        overlays[1].handlers[CRL_KIND](Delivery(0, b"\x00"))
        overlays[1].handlers[CRL_KIND](Delivery(0, b"\x00\x00\x00\x01\x00\x05\x00\x02xx"))
        self.assertEqual(adopted[1], [])

    def test_new_link_gets_the_crl_in_force(self) -> None:
        """A node that joins after the flood learns the CRL from its first link."""
        overlays, adopted, _ = self.ring(3)
        adopted[0].append(b"CRL-5")
        for observer in overlays[0].observers:
            observer("up", type("Link", (), {"address": 2})())
            observer("down", type("Link", (), {"address": 1})())
        self.assertEqual(adopted[2], [b"CRL-5"])
        self.assertEqual(adopted[1], [b"CRL-5"])  # passed on by 2, which adopted it
        self.assertEqual(overlays[0].sent[0], (2, CRL_KIND))
        # nothing in force: nothing sent
        overlays[1].sent.clear()
        self.floods[1].current = lambda: None
        self.floods[1].link_changed("up", type("Link", (), {"address": 0})())
        self.assertEqual(overlays[1].sent, [])
