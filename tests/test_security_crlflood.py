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

    def register_handler(self, kind: int, handler: Any) -> None:
        self.handlers[kind] = handler

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
            flood = CrlFlood(o, offer, Clock(), counters)
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
