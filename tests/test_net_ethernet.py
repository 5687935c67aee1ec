"""Tests for L{wow.net.ethernet}."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wow.net.errors import EthernetError
from wow.net.ethernet import (
    BROADCAST,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    EthernetFrame,
    build_ethernet,
    mac_from_str,
    mac_to_str,
    parse_ethernet,
)

macs = st.binary(min_size=6, max_size=6)
ethertypes = st.integers(0x0600, 0xFFFF).filter(lambda t: t not in (ETH_P_8021Q, ETH_P_8021AD))
frames = st.builds(
    EthernetFrame,
    dst=macs,
    src=macs,
    ethertype=ethertypes,
    payload=st.binary(max_size=1600),
    vlan=st.none() | st.integers(0, 0xFFFF),
)

# An ARP request as it appears on a TAP: broadcast, no padding.
ARP_FRAME = bytes.fromhex(
    "ffffffffffff 525400123456 0806 0001080006040001 525400123456 0a000002 000000000000 0a000001"
)


class EthernetTests(SynchronousTestCase):
    def test_parse_arp_frame(self) -> None:
        frame = parse_ethernet(ARP_FRAME)
        self.assertEqual(frame.dst, BROADCAST)
        self.assertEqual(frame.src, bytes.fromhex("525400123456"))
        self.assertEqual(frame.ethertype, ETH_P_ARP)
        self.assertEqual(frame.payload, ARP_FRAME[14:])
        self.assertIsNone(frame.vlan)
        self.assertTrue(frame.is_broadcast)
        self.assertTrue(frame.is_multicast)

    def test_parse_vlan_tagged(self) -> None:
        """An 802.1Q tag (priority 5, VLAN 100) is taken off and kept."""
        data = bytes.fromhex("020000000001020000000002 8100a064 86dd") + b"payload"
        frame = parse_ethernet(data)
        self.assertEqual(frame.ethertype, ETH_P_IPV6)
        self.assertEqual(frame.vlan, 0xA064)
        self.assertEqual(frame.vlan_id, 100)
        self.assertEqual(frame.payload, b"payload")
        self.assertFalse(frame.is_multicast)
        self.assertEqual(build_ethernet(frame), data)

    def test_refusals(self) -> None:
        cases = {
            "truncated": bytes(13),
            "not-ethernet-ii": bytes(12) + b"\x05\xdc" + bytes(40),  # 802.3 length 1500
            "stacked-vlan": bytes(12) + b"\x81\x00\x00\x01\x81\x00" + bytes(10),
        }
        for reason, data in cases.items():
            with self.assertRaises(EthernetError) as cm:
                parse_ethernet(data)
            self.assertEqual(cm.exception.reason, reason)
        with self.assertRaises(EthernetError):
            parse_ethernet(bytes(12) + b"\x88\xa8" + bytes(10))
        with self.assertRaises(EthernetError):
            parse_ethernet(bytes(12) + b"\x81\x00\x00")

    def test_build_refusals(self) -> None:
        for frame in [
            EthernetFrame(b"\x00" * 5, bytes(6), ETH_P_IP, b""),
            EthernetFrame(bytes(6), bytes(6), 0x05FF, b""),
            EthernetFrame(bytes(6), bytes(6), ETH_P_8021Q, b""),
            EthernetFrame(bytes(6), bytes(6), 0x10000, b""),
            EthernetFrame(bytes(6), bytes(6), ETH_P_IP, b"", vlan=0x10000),
        ]:
            self.assertRaises(EthernetError, build_ethernet, frame)

    def test_build_pads_to_minimum(self) -> None:
        frame = EthernetFrame(BROADCAST, bytes(6), ETH_P_ARP, b"x" * 28)
        self.assertEqual(len(frame.build()), 42)
        padded = frame.build(pad=True)
        self.assertEqual(len(padded), 60)
        self.assertEqual(padded[42:], bytes(18))

    def test_mac_strings(self) -> None:
        self.assertEqual(mac_to_str(bytes.fromhex("525400abcdef")), "52:54:00:ab:cd:ef")
        self.assertEqual(mac_from_str("52:54:00:AB:cd:ef"), bytes.fromhex("525400abcdef"))
        self.assertEqual(mac_from_str("52-54-00-ab-cd-ef"), bytes.fromhex("525400abcdef"))
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:eg", "525400abcdef", " 2:54:00:ab:cd:ef"]:
            self.assertRaises(EthernetError, mac_from_str, bad)
        self.assertRaises(EthernetError, mac_to_str, b"\x00")

    @given(macs)
    def test_mac_string_round_trip(self, mac: bytes) -> None:
        self.assertEqual(mac_from_str(mac_to_str(mac)), mac)

    @given(frames)
    def test_round_trip(self, frame: EthernetFrame) -> None:
        self.assertEqual(parse_ethernet(build_ethernet(frame)), frame)

    @given(st.binary(max_size=80))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        try:
            frame = parse_ethernet(data)
        except EthernetError:
            return
        self.assertEqual(build_ethernet(frame), data)
