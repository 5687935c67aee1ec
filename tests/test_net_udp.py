"""Tests for L{wow.net.udp} (RFC 768)."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.test_net_checksum import reference_checksum
from wow.net.errors import UDPError
from wow.net.udp import UDPDatagram, build_udp, parse_udp

addresses = st.integers(0, 2**32 - 1).map(IPv4Address)
ports = st.integers(0, 0xFFFF)
datagrams = st.builds(UDPDatagram, src_port=ports, dst_port=ports, payload=st.binary(max_size=1500))

ANY = IPv4Address("0.0.0.0")
ALL = IPv4Address("255.255.255.255")

# 68 -> 67, payload "hello", from 0.0.0.0 to 255.255.255.255.  Checksum by hand:
# pseudo-header 0000 0000 ffff ffff 0011 000d, header 0044 0043 000d 0000,
# data 6865 6c6c 6f00 sum to 0x34481; folded 0x4484; complement 0xbb7b.
HELLO = bytes.fromhex("0044 0043 000d bb7b") + b"hello"


class UDPTests(SynchronousTestCase):
    def test_checksum_vector(self) -> None:
        self.assertEqual(build_udp(UDPDatagram(68, 67, b"hello"), ANY, ALL), HELLO)
        self.assertEqual(parse_udp(HELLO, ANY, ALL), UDPDatagram(68, 67, b"hello"))

    def test_wrong_checksum_refused(self) -> None:
        corrupt = HELLO[:-1] + b"O"
        with self.assertRaises(UDPError) as cm:
            parse_udp(corrupt, ANY, ALL)
        self.assertEqual(cm.exception.reason, "bad-checksum")
        # Another destination address changes the pseudo-header.
        self.assertRaises(UDPError, parse_udp, HELLO, ANY, IPv4Address("10.0.0.1"))

    def test_checksum_not_verified_without_addresses(self) -> None:
        corrupt = HELLO[:-1] + b"O"
        self.assertEqual(parse_udp(corrupt).payload, b"hellO")
        self.assertEqual(parse_udp(corrupt, src=ANY).payload, b"hellO")

    def test_zero_checksum_means_none(self) -> None:
        """RFC 768: a transmitted checksum of 0 means the sender computed none."""
        unchecked = HELLO[:6] + b"\x00\x00" + HELLO[8:-1] + b"O"
        self.assertEqual(parse_udp(unchecked, ANY, ALL).payload, b"hellO")

    def test_computed_zero_sent_as_ffff(self) -> None:
        """A payload chosen so the checksum computes to 0 is sent as 0xffff and verifies."""
        src, dst = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
        probe = build_udp(UDPDatagram(1000, 2000, b"\x00\x00"), src, dst)
        # Putting the checksum of a zero word into that word makes the sum -0.
        payload = probe[6:8]
        data = build_udp(UDPDatagram(1000, 2000, payload), src, dst)
        self.assertEqual(data[6:8], b"\xff\xff")
        self.assertEqual(parse_udp(data, src, dst).payload, payload)

    def test_length_checks(self) -> None:
        cases = {
            "truncated": [HELLO[:7], HELLO[:-1]],
            "bad-length": [HELLO[:4] + b"\x00\x07" + HELLO[6:]],
        }
        for reason, datas in cases.items():
            for data in datas:
                with self.assertRaises(UDPError) as cm:
                    parse_udp(data)
                self.assertEqual(cm.exception.reason, reason)

    def test_bytes_after_length_ignored(self) -> None:
        self.assertEqual(parse_udp(HELLO + b"pad", ANY, ALL).payload, b"hello")

    def test_build_refusals(self) -> None:
        self.assertRaises(UDPError, build_udp, UDPDatagram(0x10000, 1, b""), ANY, ALL)
        self.assertRaises(UDPError, build_udp, UDPDatagram(1, -1, b""), ANY, ALL)
        self.assertRaises(UDPError, build_udp, UDPDatagram(1, 1, bytes(65528)), ANY, ALL)

    @given(datagrams, addresses, addresses)
    def test_round_trip(self, dgram: UDPDatagram, src: IPv4Address, dst: IPv4Address) -> None:
        data = dgram.build(src, dst)
        pseudo = src.packed + dst.packed + b"\x00\x11" + len(data).to_bytes(2, "big")
        self.assertEqual(reference_checksum(pseudo + data), 0)
        self.assertNotEqual(data[6:8], b"\x00\x00")
        self.assertEqual(parse_udp(data, src, dst), dgram)

    @given(st.binary(max_size=40), addresses, addresses)
    def test_arbitrary_bytes(self, data: bytes, src: IPv4Address, dst: IPv4Address) -> None:
        for args in [(), (src, dst)]:
            try:
                dgram = parse_udp(data, *args)
            except UDPError:
                continue
            self.assertEqual(dgram.payload, data[8 : int.from_bytes(data[4:6], "big")])
