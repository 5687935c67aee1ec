"""Tests for L{wow.net.arp} (RFC 826)."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wow.net.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, build_arp, parse_arp
from wow.net.errors import ArpError

macs = st.binary(min_size=6, max_size=6)
addresses = st.integers(0, 2**32 - 1).map(IPv4Address)
packets = st.builds(
    ArpPacket,
    op=st.integers(0, 0xFFFF),
    sender_mac=macs,
    sender_ip=addresses,
    target_mac=macs,
    target_ip=addresses,
)

# "Who has 10.0.0.1? Tell 10.0.0.2", as Linux sends it, with the 18 bytes of
# padding a real wire adds to reach the 60-byte minimum frame.
REQUEST = bytes.fromhex("0001 0800 06 04 0001 525400123456 0a000002 000000000000 0a000001") + bytes(
    18
)


class ArpTests(SynchronousTestCase):
    def test_parse_request(self) -> None:
        packet = parse_arp(REQUEST)
        self.assertEqual(
            packet,
            ArpPacket(
                op=ARP_REQUEST,
                sender_mac=bytes.fromhex("525400123456"),
                sender_ip=IPv4Address("10.0.0.2"),
                target_mac=bytes(6),
                target_ip=IPv4Address("10.0.0.1"),
            ),
        )
        self.assertFalse(packet.is_gratuitous)
        self.assertFalse(packet.is_probe)
        self.assertEqual(build_arp(packet), REQUEST[:28])

    def test_reply(self) -> None:
        router = bytes.fromhex("fe0000000001")
        reply = parse_arp(REQUEST).reply(router)
        self.assertEqual(reply.op, ARP_REPLY)
        self.assertEqual(reply.sender_mac, router)
        self.assertEqual(reply.sender_ip, IPv4Address("10.0.0.1"))
        self.assertEqual(reply.target_mac, bytes.fromhex("525400123456"))
        self.assertEqual(reply.target_ip, IPv4Address("10.0.0.2"))
        self.assertEqual(
            reply.build(),
            bytes.fromhex("0001080006040002fe00000000010a0000015254001234560a000002"),
        )

    def test_probe_and_gratuitous(self) -> None:
        """RFC 5227: a probe has sender IP 0.0.0.0; an announcement has sender = target."""
        probe = ArpPacket(ARP_REQUEST, bytes(6), IPv4Address(0), bytes(6), IPv4Address("10.0.0.5"))
        self.assertTrue(probe.is_probe)
        announce = ArpPacket(
            ARP_REQUEST, bytes(6), IPv4Address("10.0.0.5"), bytes(6), IPv4Address("10.0.0.5")
        )
        self.assertTrue(announce.is_gratuitous)
        self.assertFalse(announce.is_probe)

    def test_refusals(self) -> None:
        cases = {
            "truncated": REQUEST[:27],
            "unsupported-hardware": b"\x00\x06" + REQUEST[2:],  # IEEE 802
            "unsupported-protocol": REQUEST[:2] + b"\x86\xdd" + REQUEST[4:],
        }
        for reason, data in cases.items():
            with self.assertRaises(ArpError) as cm:
                parse_arp(data)
            self.assertEqual(cm.exception.reason, reason)
        bad_hlen = REQUEST[:4] + b"\x08" + REQUEST[5:]
        self.assertRaises(ArpError, parse_arp, bad_hlen)
        bad_plen = REQUEST[:5] + b"\x10" + REQUEST[6:]
        self.assertRaises(ArpError, parse_arp, bad_plen)

    def test_build_refusals(self) -> None:
        ip = IPv4Address(0)
        self.assertRaises(ArpError, build_arp, ArpPacket(1, bytes(5), ip, bytes(6), ip))
        self.assertRaises(ArpError, build_arp, ArpPacket(1, bytes(6), ip, bytes(7), ip))
        self.assertRaises(ArpError, build_arp, ArpPacket(0x10000, bytes(6), ip, bytes(6), ip))

    @given(packets)
    def test_round_trip(self, packet: ArpPacket) -> None:
        self.assertEqual(parse_arp(build_arp(packet)), packet)

    @given(packets, st.binary(max_size=30))
    def test_trailing_padding_ignored(self, packet: ArpPacket, padding: bytes) -> None:
        self.assertEqual(parse_arp(build_arp(packet) + padding), packet)

    @given(st.binary(max_size=40) | st.binary(max_size=30).map(lambda b: REQUEST[:6] + b))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        try:
            packet = parse_arp(data)
        except ArpError:
            return
        self.assertEqual(build_arp(packet), data[:28])
