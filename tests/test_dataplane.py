"""
The node's data plane thread (wow/node/dataplane.py) with real descriptors
(a datagram socket pair stands for the TAP, UDP sockets on loopback for the
overlay) and fakes for the node's tables: what it sends itself, what it
leaves to the reactor, and that the thread starts, hands over and stops.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wow.metrics import Counters
from wow.node.dataplane import FLOW_FOR, FLOW_LANE, IN, OUT, PLAIN_FOR, DataPlane
from wow.overlay import address as A
from wow.overlay import wire as W

NET = IPv4Network("10.128.0.0/16")
GW = IPv4Address("10.128.0.1")
ME = 0xAA << 152
PEER = 0xBB << 152
HOST_MAC = b"\x02\x00\x00\x00\x00\x0a"
ROUTER_MAC = b"\xfe\x00\x00\x00\x00\x01"
LOCAL = IPv4Address("10.128.0.10").packed
REMOTE = IPv4Address("10.128.0.20").packed
NOW = 1000.0


def ipv4(src: bytes, dst: bytes, payload: bytes = b"x" * 56, df: bool = False) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000 if df else 0,
                       64, 1, 0, src, dst) + payload


def eth(packet: bytes, dst: bytes = ROUTER_MAC, src: bytes = HOST_MAC) -> bytes:
    return dst + src + b"\x08\x00" + packet


class FakeReactor:
    def __init__(self) -> None:
        self.now = NOW
        self.handed: list[Any] = []

    def seconds(self) -> float:
        return self.now

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802 (Twisted's name)
        self.handed.append((f, args))


class FakeCache:
    def __init__(self) -> None:
        self.owners: dict[bytes, tuple[bytes | None, float]] = {}

    def fresh(self, ip: bytes, now: float) -> bytes | None:
        entry = self.owners.get(ip)
        return entry[0] if entry is not None and entry[1] > now else None


class Harness:
    """A DataPlane wired to socket pairs and fakes, its decisions called directly."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.tap_node, self.tap_host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        for s in (self.tap_node, self.tap_host, self.sock, self.peer):
            s.setblocking(False)
            test.addCleanup(s.close)
        self.peer_ep = self.peer.getsockname()
        self.link = SimpleNamespace(address=PEER, endpoint=self.peer_ep, last_sent=0.0,
                                    last_recv=0.0, sock=0)
        self.node = SimpleNamespace(me=ME, table=SimpleNamespace(links={PEER: self.link}),
                                    by_endpoint={self.peer_ep: self.link},
                                    params=SimpleNamespace(ttl=16), ondemand={PEER: 0.0})
        self.overlay = SimpleNamespace(
            node=self.node, gso=None, plain_data_sent={LOCAL + REMOTE: NOW - 1},
            port=SimpleNamespace(socket=self.sock, stopReading=lambda: None),
            send_message=lambda *a: True, received=self._slow_udp, read_item=None)
        self.cache = FakeCache()
        self.cache.owners[REMOTE] = (A.to_bytes(PEER), NOW + 60)
        self.router = SimpleNamespace(router=SimpleNamespace(cache=self.cache), mtu=1360,
                                      _ids=itertools.count(7))
        self.local = {LOCAL: HOST_MAC}
        self.delivered: list[bytes] = []
        self.slow_udp: list[Any] = []
        self.written: list[Any] = []
        self.nic = SimpleNamespace(
            vnet_hdr_len=0, router_mac=ROUTER_MAC,
            config=SimpleNamespace(network=SimpleNamespace(gateway_address=GW)),
            mac_of=self.local.get, write_message=lambda m, p: self.written.append((m, p)),
            port=SimpleNamespace(device=SimpleNamespace(fileno=self.tap_node.fileno),
                                 deliver=self.delivered.append, stopReading=lambda: None))
        self.reactor = FakeReactor()
        self.counters = Counters()
        self.dp = DataPlane(self.nic, self.overlay, self.router, self.reactor, self.counters)
        self.dp.tap_fd, self.dp.sock = self.tap_node.fileno(), self.sock
        self.dp._vlen, self.dp._gateway = 0, GW.packed
        self.dp._router_mac, self.dp._me = ROUTER_MAC, A.to_bytes(ME)
        self.dp._eth_tail, self.dp._mtu = ROUTER_MAC + b"\x08\x00", 1360
        self.dp._ids = self.router._ids
        self.dp._bind_tables()

    def _slow_udp(self, data: bytes, addr: Any) -> None:
        self.slow_udp.append((data, addr))

    def from_peer(self, packet: bytes, index: int = 0, count: int = 1) -> bytes:
        """The datagram the peer's node sends for C{packet} on the direct link."""
        return W.pack(W.EXACT, W.DATA, 15, 1, PEER, ME,
                      W.DATA_HEADER.pack(3, index, count) + packet)

    def sent(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.peer.recv(65535))
            except BlockingIOError:
                return out


class DecisionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_out_established_route(self) -> None:
        """A local client's packet to a cached, linked, plaintext peer leaves in one datagram."""
        packet = ipv4(LOCAL, REMOTE)
        self.assertTrue(self.h.dp._out(eth(packet), NOW))
        [datagram] = self.h.sent()
        hdr, payload = W.unpack(datagram)
        self.assertEqual((hdr.mode, hdr.kind, hdr.src, hdr.dst, hdr.hops),
                         (W.EXACT, W.DATA, ME, PEER, 1))
        self.assertEqual(W.DATA_HEADER.unpack_from(payload), (7, 0, 1))
        self.assertEqual(payload[W.DATA_HEADER.size:], packet)
        self.assertEqual(self.h.link.last_sent, NOW)
        self.assertEqual(self.h.dp.counts[OUT], 1)

    def test_out_left_to_the_reactor(self) -> None:
        """Anything but an established plaintext route goes the reactor's way."""
        h = self.h
        cases = {
            "source not leased here": eth(ipv4(REMOTE, REMOTE)),
            "not cached": eth(ipv4(LOCAL, IPv4Address("10.128.0.30").packed)),
            "to the gateway": eth(ipv4(LOCAL, GW.packed)),
            "larger than the MTU": eth(ipv4(LOCAL, REMOTE, b"x" * 1400, df=True)),
            "ARP": ROUTER_MAC + HOST_MAC + b"\x08\x06" + b"\x00" * 28,
        }
        for why, frame in cases.items():
            self.assertFalse(h.dp._out(frame, NOW), why)
        h.cache.owners[REMOTE] = (A.to_bytes(PEER), NOW - 1)
        self.assertFalse(h.dp._out(eth(ipv4(LOCAL, REMOTE)), NOW), "expired")
        h.cache.owners[REMOTE] = (A.to_bytes(PEER), NOW + 60)
        h.overlay.plain_data_sent[LOCAL + REMOTE] = NOW - PLAIN_FOR - 1
        self.assertFalse(h.dp._out(eth(ipv4(LOCAL, REMOTE)), NOW), "no plaintext lately")
        h.overlay.plain_data_sent[LOCAL + REMOTE] = NOW
        h.link.sock = 3
        self.assertFalse(h.dp._out(eth(ipv4(LOCAL, REMOTE)), NOW), "link on a birthday socket")
        h.link.sock = 0
        del h.node.table.links[PEER]
        self.assertFalse(h.dp._out(eth(ipv4(LOCAL, REMOTE)), NOW), "no direct link")
        self.assertEqual(h.sent(), [])

    def test_in_verified_source(self) -> None:
        """A peer's packet from an address leased to it reaches the TAP, from the router MAC."""
        h = self.h
        packet = ipv4(REMOTE, LOCAL)
        self.assertTrue(h.dp._in(h.from_peer(packet), 0, h.peer_ep, NOW))
        self.assertEqual(h.tap_host.recv(65535), HOST_MAC + ROUTER_MAC + b"\x08\x00" + packet)
        self.assertEqual((h.link.last_recv, h.node.ondemand[PEER]), (NOW, NOW))
        self.assertEqual(h.dp.counts[IN], 1)

    def test_in_left_to_the_reactor(self) -> None:
        """Spoofed, unknown, pieced, stranger's or secured-peer datagrams: the router decides."""
        h = self.h
        third = IPv4Address("10.128.0.30").packed
        h.cache.owners[third] = (b"\xcc" * 20, NOW + 60)
        cases = {
            "source leased to another node": h.from_peer(ipv4(third, LOCAL)),
            "source unknown": h.from_peer(ipv4(IPv4Address("10.128.0.40").packed, LOCAL)),
            "destination not here": h.from_peer(ipv4(REMOTE, IPv4Address("10.128.0.50").packed)),
            "a piece": h.from_peer(ipv4(REMOTE, LOCAL), 0, 2),
            "not DATA": W.pack(W.EXACT, W.DHT, 15, 1, PEER, ME, b"{}"),
            "truncated": h.from_peer(b"")[:20],
        }
        for why, data in cases.items():
            self.assertFalse(h.dp._in(data, 0, h.peer_ep, NOW), why)
        good = h.from_peer(ipv4(REMOTE, LOCAL))
        self.assertFalse(h.dp._in(good, 0, ("127.0.0.1", 9), NOW), "not a linked endpoint")
        h.overlay.plain_data_sent[REMOTE + LOCAL] = NOW  # the flow, not its reverse
        del h.overlay.plain_data_sent[LOCAL + REMOTE]
        self.assertFalse(h.dp._in(good, 0, h.peer_ep, NOW), "flow not sent in clear")
        self.assertRaises(BlockingIOError, h.tap_host.recv, 65535)


class FlowLaneTests(SynchronousTestCase):
    """A flow decided once takes the short lane for a second, never past a change."""

    def setUp(self) -> None:
        self.h = Harness(self)

    def test_out_lane(self) -> None:
        h = self.h
        frame = eth(ipv4(LOCAL, REMOTE))
        for _ in range(3):
            self.assertTrue(h.dp._out(frame, NOW))
        self.assertEqual((h.dp.counts[OUT], h.dp.counts[FLOW_LANE]), (3, 2))
        first, *rest = h.sent()
        self.assertEqual(len(rest), 2)
        for datagram in rest:  # the same headers, a new message id, the packet
            self.assertEqual(datagram[:44], first[:44])
            self.assertEqual(datagram[48:], first[48:])
        # too big for the MTU, another host MAC, a replaced link, after a
        # second: the whole decision again
        big = eth(ipv4(LOCAL, REMOTE, b"x" * 1400, df=True))
        self.assertFalse(h.dp._out(big, NOW))
        self.assertTrue(h.dp._out(eth(ipv4(LOCAL, REMOTE), src=b"\x02" * 6), NOW))
        h.node.table.links[PEER] = SimpleNamespace(**vars(h.link))
        self.assertTrue(h.dp._out(frame, NOW))
        h.cache.owners.clear()
        self.assertFalse(h.dp._out(frame, NOW + FLOW_FOR + 0.1))
        self.assertEqual(h.dp.counts[FLOW_LANE], 2)

    def test_in_lane(self) -> None:
        h = self.h
        for _ in range(3):
            self.assertTrue(h.dp._in(h.from_peer(ipv4(REMOTE, LOCAL)), 0, h.peer_ep, NOW))
        self.assertEqual((h.dp.counts[IN], h.dp.counts[FLOW_LANE]), (3, 2))
        frames = [h.tap_host.recv(65535) for _ in range(3)]
        self.assertEqual(len(set(frames)), 1)
        # a piece, another sender's header, another endpoint, later: not the lane
        self.assertFalse(h.dp._in(h.from_peer(ipv4(REMOTE, LOCAL), 0, 2), 0, h.peer_ep, NOW))
        other = W.pack(W.EXACT, W.DATA, 15, 1, 0xCC << 152, ME,
                       W.DATA_HEADER.pack(3, 0, 1) + ipv4(REMOTE, LOCAL))
        self.assertFalse(h.dp._in(other, 0, h.peer_ep, NOW))
        self.assertFalse(h.dp._in(h.from_peer(ipv4(REMOTE, LOCAL)), 0, ("127.0.0.1", 9), NOW))
        h.cache.owners.clear()
        self.assertFalse(h.dp._in(h.from_peer(ipv4(REMOTE, LOCAL)), 0, h.peer_ep,
                                  NOW + FLOW_FOR + 0.1))
        self.assertEqual(h.dp.counts[FLOW_LANE], 2)


class ThreadTests(SynchronousTestCase):
    def test_start_hand_over_stop(self) -> None:
        """The thread sends what it can, hands the rest to the reactor in order, and stops."""
        h = Harness(self)
        h.dp.startService()
        self.assertIsNotNone(h.dp._thread)
        arp = ROUTER_MAC + HOST_MAC + b"\x08\x06" + b"\x00" * 28
        h.tap_host.send(arp)
        h.tap_host.send(eth(ipv4(LOCAL, REMOTE)))
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(stranger.close)
        stranger.sendto(b"hello", h.sock.getsockname())
        # The peer's packet is written to the TAP by the thread itself.
        h.peer.sendto(h.from_peer(ipv4(REMOTE, LOCAL)), h.sock.getsockname())
        deadline = time.monotonic() + 5
        got: list[bytes] = []
        while time.monotonic() < deadline and (len(h.reactor.handed) < 2 or not got):
            got += h.sent()
            time.sleep(0.01)
        got += h.sent()
        h.dp.stopService()
        self.assertIsNone(h.dp._thread)
        self.assertEqual(len(got), 1)
        self.assertEqual(h.tap_host.recv(65535)[12:14], b"\x08\x00")
        for f, args in h.reactor.handed:
            f(*args)
        self.assertEqual(h.delivered, [arp])
        self.assertEqual([d for d, _ in h.slow_udp], [b"hello"])
        h.counters.refresh()
        self.assertEqual(h.counters.get("dataplane_packets", direction="out"), 1)
        self.assertEqual(h.counters.get("dataplane_packets", direction="in"), 1)
        self.assertEqual(h.counters.get("dataplane_to_reactor"), 2)

    def test_not_started_with_fakes(self) -> None:
        """Without real descriptors (fake TAP) the reactor keeps reading, no thread."""
        h = Harness(self)
        h.nic.port.device = SimpleNamespace(fileno=lambda: -1)
        h.dp.startService()
        self.assertIsNone(h.dp._thread)
        h.dp.stopService()


class PlainFlowStampTests(SynchronousTestCase):
    """The overlay stamps the flows the router sends in clear: the data plane's gate."""

    def test_stamps(self) -> None:
        from twisted.internet.task import Clock

        from wow.datapath import vnet
        from wow.overlay.service import OverlayService

        clock = Clock()
        clock.advance(NOW)
        svc = OverlayService(SimpleNamespace(), clock)
        svc._sent_plain(W.DATA_HEADER.pack(1, 0, 1) + ipv4(LOCAL, REMOTE), 8)
        self.assertEqual(svc.plain_data_sent, {LOCAL + REMOTE: NOW})
        # behind a compact vnet header (an offloaded frame)
        h = vnet.VnetHeader(vnet.F_NEEDS_CSUM, 0, 0, 0, 34, 16)
        svc._sent_plain(vnet.to_wire(h) + ipv4(REMOTE, LOCAL), 0)
        self.assertIn(REMOTE + LOCAL, svc.plain_data_sent)
        # anything else (a sealed record, garbage, too short) stamps nothing
        for junk in (b"\x80" + b"\x17\xfe\xfd" * 20, b"", b"\x45" * 10):
            svc._sent_plain(junk, 0)
        self.assertEqual(len(svc.plain_data_sent), 2)


class NodeWiringTests(SynchronousTestCase):
    """The node adds its data plane only for packets in clear ([security] off)."""

    def node(self, security: bool, dataplane: bool = True) -> Any:
        from twisted.internet.task import Clock

        from wow.node.config import NodeConfig, NodeSection, SecuritySection, TapSection
        from wow.node.service import NodeService

        config = NodeConfig(node=NodeSection(state_dir=self.mktemp()),
                            tap=TapSection(dataplane=dataplane),
                            security=SecuritySection(enabled=security))
        return NodeService(config, Clock())

    def test_wiring(self) -> None:
        self.assertIsInstance(getattr(self.node(False), "dataplane", None), DataPlane)
        self.assertIsNone(getattr(self.node(True), "dataplane", None))
        self.assertIsNone(getattr(self.node(False, dataplane=False), "dataplane", None))
