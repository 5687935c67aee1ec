"""
The point-to-point forwarder's logic, between two fake TAPs and two fake
UDP sockets: super-frames cross in one send and come out whole with their
header, a plain TAP gets software segments, and bad input is counted.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_datapath_vnet import l4_valid
from wow.datapath import forwarder as F
from wow.datapath import pieces as P
from wow.datapath import udpgso, vnet
from wow.datapath.tapoffload import OffloadTap
from wow.datapath.testing import FakeOffloadTapSyscalls, FakeUdpSocket, tcp_frame, udp_frame
from wow.metrics import Counters

A = ("10.99.0.1", 5555)
B = ("10.99.0.2", 5555)


class Side:
    def __init__(self, peer: Any, *, vnet_hdr: bool = True, prefix: bytes = b"\0" * 44) -> None:
        self.counters = Counters()
        self.tapsys = FakeOffloadTapSyscalls()
        self.tap = OffloadTap("t", self.counters, syscalls=self.tapsys, vnet_hdr=vnet_hdr)
        self.tap.open()
        self.sock = FakeUdpSocket()
        self.udp = udpgso.GsoUdp(self.sock, self.counters)
        self.fwd = F.PointToPoint(
            self.tap, self.udp, peer, P.Reassembler(Clock(), self.counters), self.counters,
            piece_payload=F.piece_payload_for(1500, False, len(prefix)), prefix=prefix)


def carry(src: Side, dst: Side, src_addr: Any, gro: bool = True) -> None:
    """Move what C{src} sent into C{dst}'s socket, coalesced as GRO would."""
    for grams, _ in src.sock.sent:
        if gro and len(grams) > 1:
            dst.sock.incoming.append((b"".join(grams), len(grams[0]), src_addr))
        else:
            dst.sock.incoming.extend((g, 0, src_addr) for g in grams)
    src.sock.sent.clear()
    dst.fwd.from_udp()


class ForwarderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a, self.b = Side(B), Side(A)

    def test_piece_payload_budget(self) -> None:
        self.assertEqual(F.piece_payload_for(1500, False, 44), 1500 - 20 - 8 - 44 - 8)
        self.assertEqual(F.piece_payload_for(1500, True, 0), 1500 - 40 - 8 - 8)

    def test_superframe_crosses_whole(self) -> None:
        h, frame = tcp_frame(bytes(range(256)) * 225, mss=1348)
        self.a.tapsys.incoming.append(h.pack() + frame)
        self.a.fwd.from_tap()
        self.assertEqual(self.a.sock.calls, ["sendmsg"])
        [(grams, addr)] = self.a.sock.sent
        self.assertEqual(addr, B)
        self.assertEqual(len(grams), 41)
        self.assertTrue(all(len(g) <= 1500 - 28 for g in grams))
        carry(self.a, self.b, A)
        self.assertEqual(self.b.tapsys.written, [h.pack() + frame])
        self.assertEqual(self.b.fwd.reassembler.completed_multi, 1)

    def test_burst_with_a_whole_message_and_more(self) -> None:
        """A GRO burst holding one whole message then pieces of the next."""
        h, frame = tcp_frame(b"w" * (1420 * 3 - 64), mss=1000)  # exactly 3 full pieces
        h2, frame2 = tcp_frame(b"v" * 5000, mss=1000)
        self.a.tapsys.incoming.extend([h.pack() + frame, h2.pack() + frame2])
        self.a.fwd.from_tap()
        [(g1, _), (g2, _)] = self.a.sock.sent
        self.assertEqual({len(g) for g in g1}, {1500 - 28})
        burst = b"".join(g1 + g2[:2])
        self.b.sock.incoming.append((burst, len(g1[0]), A))
        self.b.sock.incoming.append((b"".join(g2[2:]), len(g1[0]), A))
        self.b.fwd.from_udp()
        self.assertEqual(self.b.tapsys.written, [h.pack() + frame, h2.pack() + frame2])
        self.assertEqual(self.b.fwd.reassembler.in_flight(), 0)

    def test_without_gro(self) -> None:
        h, frame = tcp_frame(b"q" * 20000, mss=1348)
        self.a.tapsys.incoming.append(h.pack() + frame)
        self.a.fwd.from_tap()
        carry(self.a, self.b, A, gro=False)
        self.assertEqual(self.b.tapsys.written, [h.pack() + frame])

    def test_small_frames_one_datagram_each(self) -> None:
        frames = [tcp_frame(b"x" * n) for n in (1, 100, 1360)]
        self.a.tapsys.incoming.extend(h.pack() + f for h, f in frames)
        self.a.tapsys.incoming.append(vnet.PLAIN_BYTES + b"\xff" * 60)
        self.a.fwd.from_tap()
        self.assertEqual(self.a.sock.calls, ["sendto"] * 4)
        # A full 1400-byte TAP frame (1414 with Ethernet) still fits one piece.
        self.assertEqual(len(frames[2][1]), 1414)
        carry(self.a, self.b, A)
        self.assertEqual(self.b.tapsys.written,
                         [h.pack() + f for h, f in frames] + [vnet.PLAIN_BYTES + b"\xff" * 60])

    def test_plain_tap_gets_software_segments(self) -> None:
        plain = Side(A, vnet_hdr=False)
        h, frame = tcp_frame(b"s" * 5000, mss=1000)
        self.a.tapsys.incoming.append(h.pack() + frame)
        self.a.fwd.from_tap()
        carry(self.a, plain, A)
        self.assertEqual(len(plain.tapsys.written), 5)
        self.assertTrue(all(l4_valid(f) for f in plain.tapsys.written))
        hu, fu = udp_frame(b"u" * 300)
        self.a.tapsys.incoming.append(hu.pack() + fu)
        self.a.fwd.from_tap()
        carry(self.a, plain, A)
        self.assertTrue(l4_valid(plain.tapsys.written[-1]))

    def test_from_plain_tap(self) -> None:
        plain = Side(B, vnet_hdr=False)
        plain.tapsys.incoming.append(b"\xee" * 100)
        plain.fwd.from_tap()
        carry(plain, self.b, A)
        self.assertEqual(self.b.tapsys.written, [vnet.PLAIN_BYTES + b"\xee" * 100])

    def test_bad_header_from_network(self) -> None:
        h, frame = tcp_frame(b"z" * 3000, mss=1000)
        bad = h._replace(csum_start=4000)
        message = vnet.to_wire(bad) + frame
        for p in P.split(1, message, 1420, b"\0" * 44):
            self.b.sock.incoming.append((p, 0, A))
        self.b.sock.incoming.append((b"\0" * 44 + P.PIECE_HDR.pack(2, 0, 1) + b"\x20", 0, A))
        self.b.fwd.from_udp()
        self.assertEqual(self.b.tapsys.written, [])
        self.assertEqual(self.b.counters.get(F.DROPPED, reason="csum-out-of-frame"), 1)
        self.assertEqual(self.b.counters.get(F.DROPPED, reason="bad-wire-flags"), 1)

    def test_strangers_and_runts(self) -> None:
        self.b.sock.incoming.extend([(b"\0" * 100, 0, ("10.99.0.9", 1)), (b"\0" * 10, 0, A)])
        self.b.fwd.from_udp()
        self.assertEqual(self.b.counters.get(F.DROPPED, reason="unknown-source"), 1)
        self.assertEqual(self.b.counters.get(F.DROPPED, reason="short-datagram"), 1)
        self.assertEqual(self.b.tapsys.written, [])

    def test_ipv6_peer_address_form(self) -> None:
        b6 = Side(("fd00::1", 5555))
        [p] = P.split(1, b"\x00" + b"\xab" * 60, 1420, b"\0" * 44)
        b6.sock.incoming.extend([(p, 0, ("fd00::1", 5555, 0, 0)), (p, 0, ("fd00::2", 5555, 0, 0))])
        b6.fwd.from_udp()
        self.assertEqual(b6.tapsys.written, [vnet.PLAIN_BYTES + b"\xab" * 60])
        self.assertEqual(b6.counters.get(F.DROPPED, reason="unknown-source"), 1)

    def test_stats(self) -> None:
        s = self.a.fwd.stats()
        self.assertEqual(s["vnet_hdr"], True)
        self.assertEqual(s["frames_out"], 0)
