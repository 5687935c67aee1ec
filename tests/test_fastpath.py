"""
The node's fast data path with fakes: router messages (packet or vnet header
+ super-frame), direct-link GSO packing and GRO burst taking, the linked
peers' data bucket, the router service's pieces and reassembly, the NIC's
offload frame split, and ICMP "fragmentation needed".
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_overlay_node import ring
from wow.datapath import pieces as P
from wow.datapath import vnet
from wow.datapath.testing import tcp_frame, udp_frame
from wow.dhcp.dhtclient import DhtEntry
from wow.metrics import Counters
from wow.net.checksum import internet_checksum
from wow.nic.offload import for_router, plain_frame
from wow.overlay import address as A
from wow.overlay import datapath as D
from wow.overlay import wire as W
from wow.router import messages as M
from wow.router.service import RouterService

NET = IPv4Network("10.128.0.0/16")
GW = IPv4Address("10.128.0.1")
ME = 0xAA << 152
PEER = 0xBB << 152
MAC = b"\x02\x00\x00\x00\x00\x0a"
LOCAL_IP = IPv4Address("10.97.0.1")  # the test frames' source
REMOTE_IP = IPv4Address("10.97.0.2")  # and destination


def packet_of(frame: bytes) -> bytes:
    return frame[vnet.ETH_HLEN:]


def super_message(size: int = 20000, mss: int = 1300) -> tuple[bytes, bytes]:
    """(message as the sender's router makes it, the raw TAP buffer)."""
    h, frame = tcp_frame(b"x" * size, mss=mss)
    buf = h.pack() + frame
    return M.from_tap(buf, vnet.VNET_HDR_LEN), buf


class MessageTests(SynchronousTestCase):
    def test_plain_frame_becomes_a_bare_packet_without_padding(self) -> None:
        h, frame = udp_frame(b"hi")
        done = vnet.finish_checksum(h, frame)
        buf = vnet.PLAIN_BYTES + done + b"\0" * 10  # Ethernet padding
        msg = M.from_tap(buf, vnet.VNET_HDR_LEN)
        self.assertEqual(msg, packet_of(done))
        self.assertTrue(M.is_plain(msg))
        self.assertEqual(M.ip_offset(msg), 0)

    def test_superframe_keeps_its_header(self) -> None:
        msg, buf = super_message()
        self.assertFalse(M.is_plain(msg))
        self.assertTrue(M.is_gso(msg))
        off = M.ip_offset(msg)
        self.assertEqual(off, 10)
        self.assertEqual(msg[off:], buf[vnet.VNET_HDR_LEN + vnet.ETH_HLEN:])
        h, used = vnet.from_wire(msg)
        self.assertEqual(h, vnet.parse(buf)._replace(num_buffers=0))

    def test_tap_writes_whole_for_vnet_tap_segmented_for_plain(self) -> None:
        msg, buf = super_message(20000, 1300)
        eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
        whole = M.tap_writes(msg, eth, True)
        self.assertEqual(len(whole), 1)
        self.assertEqual(whole[0][vnet.VNET_HDR_LEN + 14:], buf[vnet.VNET_HDR_LEN + 14:])
        segs = M.tap_writes(msg, eth, False)
        self.assertEqual(len(segs), -(-20000 // 1300))
        payload = b"".join(s[14 + 20 + 20:] for s in segs)
        self.assertEqual(payload, b"x" * 20000)
        for s in segs:  # complete checksums: TCP over the pseudo-header sums to 0xFFFF
            ip = s[14:]
            self.assertEqual(internet_checksum(ip[:20]), 0)

    def test_tap_writes_rejects_a_lying_header(self) -> None:
        msg, _ = super_message()
        bad = msg[:M.ip_offset(msg)] + b"\x45" + b"\0" * 10  # truncated packet
        with self.assertRaises(M.MessageError):
            M.tap_writes(bad + b"\0" * 30, b"\0" * 14, True)

    @given(st.binary(max_size=80))
    def test_ip_offset_fuzz(self, data: bytes) -> None:
        try:
            off = M.ip_offset(data)
        except M.MessageError:
            return
        self.assertTrue(0x45 <= data[off] <= 0x4F)

    def test_frag_needed(self) -> None:
        pkt = bytearray(packet_of(udp_frame(b"y" * 1400)[1]))
        self.assertTrue(M.needs_frag(bytes(pkt), 0, 1360))
        self.assertFalse(M.needs_frag(bytes(pkt), 0, 1500))
        pkt[6] = 0  # DF clear: the kernel may fragment, no ICMP
        self.assertFalse(M.needs_frag(bytes(pkt), 0, 1360))
        pkt[6] = 0x40
        icmp = M.frag_needed(bytes(pkt), GW.packed, 1360)
        self.assertEqual(internet_checksum(icmp[:20]), 0)
        self.assertEqual(icmp[12:16], GW.packed)
        self.assertEqual(icmp[16:20], bytes(pkt[12:16]))
        body = icmp[20:]
        self.assertEqual((body[0], body[1]), (3, 4))
        self.assertEqual(struct.unpack("!H", body[6:8])[0], 1360)
        self.assertEqual(body[8:8 + 28], bytes(pkt[:28]))
        self.assertEqual(internet_checksum(body), 0)


class LinkBurstTests(SynchronousTestCase):
    def burst(self, message: bytes, msg_id: int = 7) -> tuple[bytearray, int]:
        return D.pack_for_link(PEER, ME, 64, msg_id, message)

    def test_round_trip(self) -> None:
        message = bytes(range(256)) * 200
        buf, seg = self.burst(message)
        self.assertLessEqual(seg, W.MAX_DATAGRAM)
        b = D.take_burst(bytes(buf), seg, A.to_bytes(ME), PEER)
        assert b is not None
        self.assertEqual((b.src, b.message, b.end), (PEER, message, len(buf)))
        self.assertEqual(b.pieces, -(-len(message) // D.PIECE_PAYLOAD))
        # every datagram is a valid overlay DATA message from PEER to ME
        hdr, payload = W.unpack(bytes(buf[:seg]))
        self.assertEqual((hdr.kind, hdr.src, hdr.dst, hdr.mode), (W.DATA, PEER, ME, W.EXACT))

    def test_refused(self) -> None:
        message = b"z" * 10000
        buf, seg = self.burst(message)
        me = A.to_bytes(ME)
        self.assertIsNone(D.take_burst(bytes(buf), seg, me, None))  # not linked
        self.assertIsNone(D.take_burst(bytes(buf), seg, me, ME))  # another link's address
        self.assertIsNone(D.take_burst(bytes(buf), seg, A.to_bytes(PEER), PEER))  # not for us
        tampered = bytearray(buf)
        tampered[seg * 2 + 30] ^= 1  # a middle piece names another destination
        self.assertIsNone(D.take_burst(bytes(tampered), seg, me, PEER))
        self.assertIsNone(D.take_burst(bytes(buf[:seg * 3]), seg, me, PEER))  # incomplete

    def test_remainder_left_for_the_normal_path(self) -> None:
        # GRO ends a burst at a shorter datagram, so only a message of full
        # pieces can be followed by more in the same burst.
        first = b"a" * (3 * D.PIECE_PAYLOAD)
        a, seg = self.burst(first, 1)
        b, _ = self.burst(b"b" * 3000, 2)
        data = bytes(a + b)
        got = D.take_burst(data, seg, A.to_bytes(ME), PEER)
        assert got is not None
        self.assertEqual(got.message, first)
        self.assertEqual(data[got.end:], bytes(b))


class DataBucketTests(SynchronousTestCase):
    def test_linked_peer_data_is_not_a_flood_but_strangers_are(self) -> None:
        net = ring(2, real_crypto=False, seed=5)
        node = next(iter(net.by_address.values()))
        link = next(iter(node.table.links.values()))
        before = net.counters.get("overlay_dropped", reason="rate-limited")
        piece = W.pack(W.EXACT, W.DATA, 63, 1, link.address, node.me, b"\0" * 1400)
        for _ in range(20000):
            node.datagram_received(piece, link.endpoint, net.now)
        self.assertEqual(net.counters.get("overlay_dropped", reason="rate-limited"), before)
        stranger = ("192.0.2.9", 9)
        for _ in range(1000):
            node.datagram_received(piece, stranger, net.now)
        self.assertGreaterEqual(net.counters.get("overlay_dropped", reason="rate-limited"),
                                before + 800)


class FakeOverlay:
    def __init__(self) -> None:
        self.address = ME
        self.sent: list[tuple[int, bytes]] = []
        self.messages: list[tuple[int, int, bytes]] = []
        self.handler: Any = None
        self.fast_data: Any = None
        self.touched: list[int] = []

    def register_handler(self, kind: int, handler: Any) -> None:
        self.handler = handler

    def send_to(self, address: int, kind: int, payload: bytes) -> bool:
        self.sent.append((address, payload))
        return True

    def send_message(self, address: int, kind: int, msg_id: int, message: bytes) -> bool:
        self.messages.append((address, msg_id, message))
        return True

    def has_link(self, address: int) -> bool:
        return True

    def request_link(self, address: int) -> None:
        pass

    def touch(self, address: int) -> None:
        self.touched.append(address)


class FakeNic:
    class config:  # noqa: N801 - mirrors NodeConfig's shape
        class tap:  # noqa: N801
            mtu = 1360

        class network:  # noqa: N801
            gateway_address = GW

    def __init__(self) -> None:
        self.leases = {LOCAL_IP.packed: MAC}
        self.written: list[tuple[bytes, bytes]] = []
        self.messages: list[tuple[bytes, bytes]] = []
        self.fast_route: Any = None

    def mac_of(self, ip: bytes) -> bytes | None:
        return self.leases.get(ip)

    def write_to_host(self, mac: bytes, packet: bytes) -> None:
        self.written.append((mac, packet))

    def write_message(self, mac: bytes, message: bytes) -> None:
        self.messages.append((mac, message))


class FakeDht:
    def __init__(self, owner: int) -> None:
        self.owner = owner.to_bytes(20, "big")

    def get(self, key: bytes) -> Any:
        return succeed([DhtEntry(self.owner, self.owner, 600)])


class RouterServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = Counters()
        self.overlay, self.nic = FakeOverlay(), FakeNic()
        self.svc = RouterService(NET, self.overlay, FakeDht(PEER), self.nic, self.clock,
                                 self.counters)
        # the test frames use 10.97/16 addresses: route that network
        self.svc.network = IPv4Network("10.97.0.0/16")
        self.svc.startService()
        self.addCleanup(self.svc.stopService)

    def test_wired_to_the_fast_paths(self) -> None:
        self.assertEqual(self.overlay.fast_data, self.svc.data_message)
        self.assertEqual(self.nic.fast_route, self.svc.route)

    def test_superframe_leaves_as_one_message(self) -> None:
        msg, _ = super_message(30000)
        self.svc.route(msg)
        self.assertEqual(self.overlay.sent, [])
        self.assertEqual(len(self.overlay.messages), 1)
        address, _, sent = self.overlay.messages[0]
        self.assertEqual((address, sent), (PEER, msg))

    def test_small_packet_is_one_piece(self) -> None:
        pkt = packet_of(vnet.finish_checksum(*udp_frame(b"hello")))
        self.svc.route(pkt)
        self.assertEqual(len(self.overlay.sent), 1)
        self.assertEqual(self.overlay.sent[0][1][8:], pkt)
        self.assertEqual(W.DATA_HEADER.unpack_from(self.overlay.sent[0][1])[1:], (0, 1))

    def deliver(self, payload: bytes, src: int = PEER) -> None:
        from wow.overlay.node import Delivery

        self.overlay.handler(Delivery(src, ME, W.EXACT, W.DATA, 1, payload))

    def inbound_message(self, size: int = 20000) -> bytes:
        # A super-frame from REMOTE_IP (leased to PEER) to our LOCAL_IP client.
        h, frame = tcp_frame(b"q" * size, mss=1300)
        f = bytearray(frame)
        f[14 + 12:14 + 16], f[14 + 16:14 + 20] = REMOTE_IP.packed, LOCAL_IP.packed
        return M.from_tap(h.pack() + bytes(f), vnet.VNET_HDR_LEN)

    def test_pieces_reassembled_then_checked_and_written(self) -> None:
        msg = self.inbound_message()
        pieces = P.split(9, msg, D.PIECE_PAYLOAD)
        for p in reversed(pieces):  # any order
            self.deliver(p)
        self.assertEqual(self.nic.messages, [(MAC, msg)])
        self.assertEqual(self.svc.reassembler.in_flight(), 0)

    def test_spoofed_pieces_dropped(self) -> None:
        msg = self.inbound_message()
        for p in P.split(9, msg, D.PIECE_PAYLOAD):
            self.deliver(p, src=0xCC << 152)  # not the lease owner of REMOTE_IP
        self.assertEqual(self.nic.messages, [])
        self.assertEqual(self.counters.get("ip_dropped", reason="spoofed-source",
                                           direction="in"), 1)

    def test_fast_data_goes_through_anti_spoofing(self) -> None:
        msg = self.inbound_message()
        self.overlay.fast_data(PEER, msg)
        self.assertEqual(self.nic.messages, [(MAC, msg)])
        self.overlay.fast_data(0xCC << 152, msg)
        self.assertEqual(len(self.nic.messages), 1)

    def test_incomplete_message_times_out(self) -> None:
        pieces = P.split(3, self.inbound_message(), D.PIECE_PAYLOAD)
        for p in pieces[:-1]:
            self.deliver(p)
        self.assertEqual(self.svc.reassembler.in_flight(), 1)
        self.clock.advance(5)
        self.assertEqual(self.svc.reassembler.in_flight(), 0)
        self.assertEqual(self.counters.get("datapath_messages_evicted", reason="timeout"), 1)

    def test_too_big_with_df_answers_icmp(self) -> None:
        pkt = packet_of(vnet.finish_checksum(*udp_frame(b"y" * 1400)))
        self.svc.route(pkt)
        self.assertEqual(self.overlay.sent, [])
        self.assertEqual(len(self.nic.written), 1)
        mac, icmp = self.nic.written[0]
        self.assertEqual(mac, MAC)
        self.assertEqual((icmp[20], icmp[21]), (3, 4))
        self.assertEqual(self.counters.get("icmp_frag_needed_sent"), 1)


class NicSplitTests(SynchronousTestCase):
    def test_router_frames(self) -> None:
        gw = GW.packed
        _, tcp = tcp_frame(b"a")
        buf = vnet.PLAIN_BYTES + tcp
        self.assertTrue(for_router(buf, 12, gw))
        to_gw = bytearray(buf)
        to_gw[12 + 30:12 + 34] = gw
        self.assertFalse(for_router(bytes(to_gw), 12, gw))
        bcast = bytearray(buf)
        bcast[12 + 30:12 + 34] = b"\xff" * 4
        self.assertFalse(for_router(bytes(bcast), 12, gw))
        _, udp = udp_frame(b"d")
        dhcp = bytearray(vnet.PLAIN_BYTES + udp)
        dhcp[12 + 34 + 2:12 + 34 + 4] = b"\x00\x43"
        self.assertFalse(for_router(bytes(dhcp), 12, gw))
        arp = bytearray(buf)
        arp[12 + 12:12 + 14] = b"\x08\x06"
        self.assertFalse(for_router(bytes(arp), 12, gw))
        self.assertFalse(for_router(b"\0" * 20, 12, gw))
        # with the router MAC: only frames sent to it (a bridge floods others' too)
        self.assertTrue(for_router(buf, 12, gw, tcp[:6]))
        self.assertFalse(for_router(buf, 12, gw, b"\xfe" * 6))
        # a plain TAP: the same rule at offset 0
        self.assertTrue(for_router(tcp, 0, gw, tcp[:6]))

    def test_plain_frame_finishes_checksums(self) -> None:
        h, frame = udp_frame(b"dns?")
        out = plain_frame(h.pack() + frame, 12)
        self.assertEqual(out, vnet.finish_checksum(h, frame))
        self.assertEqual(plain_frame(vnet.PLAIN_BYTES + frame, 12), frame)
        gh, gframe = tcp_frame(b"g" * 4000, mss=1300)
        self.assertIsNone(plain_frame(gh.pack() + gframe, 12))


class FakeGso:
    def __init__(self, batches: list[tuple[bytes, int, Any]]) -> None:
        self.batches = batches

    def recv_batch(self) -> list[tuple[bytes, int, Any]]:
        out, self.batches = self.batches, []
        return out


class ReadBurstsTests(SynchronousTestCase):
    """L{OverlayService.read_bursts}: GRO bursts from links fast, the rest per datagram."""

    def setUp(self) -> None:
        from wow.overlay.service import OverlayService

        self.net = ring(2, real_crypto=False, seed=5)
        self.node = next(iter(self.net.by_address.values()))
        self.link = next(iter(self.node.table.links.values()))
        self.clock = Clock()
        self.clock.advance(self.net.now)
        self.svc = OverlayService(None, self.clock, self.net.counters)
        self.svc.node = self.node
        self.got: list[tuple[int, bytes]] = []
        self.svc.fast_data = lambda src, m: self.got.append((src, m))
        self.delivered: list[bytes] = []
        self.node.register_handler(W.DATA, lambda d: self.delivered.append(d.payload))

    def test_whole_message_from_a_link_takes_the_fast_path(self) -> None:
        message = b"m" * 30000
        buf, seg = D.pack_for_link(self.link.address, self.node.me, 64, 5, message)
        self.svc.gso = FakeGso([(bytes(buf), seg, self.link.endpoint)])  # type: ignore
        self.svc.read_bursts()
        self.assertEqual(self.got, [(self.link.address, message)])
        self.assertEqual(self.net.counters.get("overlay_fastpath_messages"), 1)
        self.assertEqual(self.delivered, [])

    def test_partial_burst_goes_piece_by_piece(self) -> None:
        message = b"m" * 30000
        buf, seg = D.pack_for_link(self.link.address, self.node.me, 64, 5, message)
        part = bytes(buf[seg:seg * 4])  # pieces 1-3 only
        self.svc.gso = FakeGso([(part, seg, self.link.endpoint)])  # type: ignore
        self.svc.read_bursts()
        self.assertEqual(self.got, [])
        self.assertEqual(len(self.delivered), 3)  # each through the overlay's routing

    def test_stranger_burst_is_not_taken(self) -> None:
        message = b"m" * 30000
        buf, seg = D.pack_for_link(self.link.address, self.node.me, 64, 5, message)
        self.svc.gso = FakeGso([(bytes(buf), seg, ("192.0.2.7", 7))])  # type: ignore
        self.svc.read_bursts()
        self.assertEqual(self.got, [])
        self.assertEqual(self.delivered, [])
        self.assertGreater(self.net.counters.get("overlay_dropped", reason="not-linked"), 0)

    @given(st.binary(max_size=3000), st.integers(min_value=0, max_value=1500))
    def test_take_burst_fuzz(self, data: bytes, seg: int) -> None:
        b = D.take_burst(data, seg, A.to_bytes(ME), PEER)
        if b is not None:
            self.assertEqual(b.src, PEER)
