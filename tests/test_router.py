"""Tests for L{wow.router.router.IpRouter}: routing, queueing and anti-spoofing."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

from twisted.trial.unittest import SynchronousTestCase

from wow.metrics import Counters
from wow.router import cache
from wow.router.router import IpRouter

NET = IPv4Network("10.128.0.0/16")
ME = 0xAA << 152
PEER = 0xBB << 152
OTHER = 0xCC << 152
MAC_A = b"\x02\x00\x00\x00\x00\x0a"
MAC_B = b"\x02\x00\x00\x00\x00\x0b"


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def packet(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    total = 20 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0, ip(src), ip(dst))
    return header + payload


class Clients:
    def __init__(self, leases: dict[str, bytes]) -> None:
        self.leases = {ip(k): v for k, v in leases.items()}

    def mac_of(self, address: bytes) -> bytes | None:
        return self.leases.get(address)


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.written: list[tuple[bytes, bytes]] = []
        self.lookups: list[bytes] = []
        self.counters = Counters()
        self.router = IpRouter(
            NET, ME, Clients({"10.128.0.10": MAC_A, "10.128.0.11": MAC_B}),
            lambda a, p: self.sent.append((a, p)),
            lambda m, p: self.written.append((m, p)),
            self.lookups.append,
            self.counters,
        )

    def dropped(self, reason: str, direction: str) -> float:
        return self.counters.get("ip_dropped", reason=reason, direction=direction)

    def test_outbound_queues_until_lookup_then_sends(self) -> None:
        p1 = packet("10.128.0.10", "10.128.5.5", b"1")
        p2 = packet("10.128.0.10", "10.128.5.5", b"2")
        self.router.outbound(p1, 0)
        self.router.outbound(p2, 0)
        self.assertEqual(self.lookups, [ip("10.128.5.5")])
        self.assertEqual(self.sent, [])
        self.router.lookup_done(ip("10.128.5.5"), PEER, 60, 0.1)
        self.assertEqual(self.sent, [(PEER, p1), (PEER, p2)])
        self.router.outbound(p1, 1)
        self.assertEqual(self.sent[-1], (PEER, p1))
        self.assertEqual(len(self.lookups), 1)

    def test_outbound_to_unleased_is_negatively_cached(self) -> None:
        p = packet("10.128.0.10", "10.128.9.9")
        self.router.outbound(p, 0)
        self.router.lookup_done(ip("10.128.9.9"), None, 0, 0)
        for _ in range(100):
            self.router.outbound(p, 1)
        self.assertEqual(len(self.lookups), 1)
        self.assertEqual(self.dropped("unleased-destination", "out"), 101)

    def test_outbound_spoofed_source_dropped(self) -> None:
        self.router.outbound(packet("10.128.0.99", "10.128.5.5"), 0)
        self.assertEqual(self.lookups, [])
        self.assertEqual(self.dropped("source-not-leased-here", "out"), 1)

    def test_outbound_off_net_and_broadcast_dropped(self) -> None:
        for dst in ("192.0.2.1", "10.128.255.255", "224.0.0.251"):
            self.router.outbound(packet("10.128.0.10", dst), 0)
        self.assertEqual(self.dropped("not-routable", "out"), 3)

    def test_local_hairpin(self) -> None:
        p = packet("10.128.0.10", "10.128.0.11")
        self.router.outbound(p, 0)
        self.assertEqual(self.written, [(MAC_B, p)])

    def test_malformed(self) -> None:
        self.router.outbound(b"\x60" + b"\x00" * 39, 0)
        self.router.inbound(PEER, b"\x45\x00", 0)
        self.assertEqual(self.dropped("malformed", "out"), 1)
        self.assertEqual(self.dropped("malformed", "in"), 1)

    def test_inbound_verified_against_lease_owner(self) -> None:
        p = packet("10.128.5.5", "10.128.0.10")
        self.router.inbound(PEER, p, 0)
        self.assertEqual(self.lookups, [ip("10.128.5.5")])
        self.assertEqual(self.written, [])
        self.router.lookup_done(ip("10.128.5.5"), PEER, 60, 0)
        self.assertEqual(self.written, [(MAC_A, p)])
        self.router.inbound(PEER, p, 1)
        self.assertEqual(len(self.written), 2)
        self.assertEqual(len(self.lookups), 1)

    def test_inbound_spoofed_source_dropped(self) -> None:
        self.router.lookup_done(ip("10.128.5.5"), PEER, 60, 0)
        self.router.inbound(OTHER, packet("10.128.5.5", "10.128.0.10"), 1)
        self.assertEqual(self.written, [])
        self.assertEqual(self.dropped("spoofed-source", "in"), 1)

    def test_inbound_spoofed_source_dropped_after_lookup(self) -> None:
        self.router.inbound(OTHER, packet("10.128.5.5", "10.128.0.10"), 0)
        self.router.lookup_done(ip("10.128.5.5"), PEER, 60, 0)
        self.assertEqual(self.written, [])
        self.assertEqual(self.dropped("spoofed-source", "in"), 1)

    def test_inbound_for_unknown_destination(self) -> None:
        self.router.inbound(PEER, packet("10.128.5.5", "10.128.0.77"), 0)
        self.assertEqual(self.dropped("destination-not-leased-here", "in"), 1)
        self.assertEqual(self.lookups, [])

    def test_flood_toward_one_destination_is_bounded(self) -> None:
        p = packet("10.128.0.10", "10.128.5.5", b"x" * 1000)
        for _ in range(10_000):
            self.router.outbound(p, 0)
        self.assertEqual(len(self.lookups), 1)
        self.assertLessEqual(self.router.cache.queued_bytes, cache.MAX_QUEUED_BYTES)
        self.assertEqual(self.dropped("queue-full", "out"), 10_000 - cache.MAX_QUEUED_PACKETS)

    def test_one_lookup_shared_by_both_directions(self) -> None:
        self.router.outbound(packet("10.128.0.10", "10.128.5.5"), 0)
        self.router.inbound(PEER, packet("10.128.5.5", "10.128.0.10"), 0)
        self.assertEqual(self.lookups, [ip("10.128.5.5")])
        self.router.lookup_done(ip("10.128.5.5"), PEER, 60, 0)
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(len(self.written), 1)

    def test_lookup_failure_drops_and_allows_retry(self) -> None:
        p = packet("10.128.0.10", "10.128.5.5")
        self.router.outbound(p, 0)
        self.router.lookup_failed(ip("10.128.5.5"), 3)
        self.assertEqual(self.dropped("lookup-failed", "out"), 1)
        self.router.outbound(p, 4)
        self.assertEqual(len(self.lookups), 2)
