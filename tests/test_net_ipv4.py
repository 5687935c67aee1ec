"""Tests for L{wow.net.ipv4} (RFC 791)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.test_net_checksum import reference_checksum
from wow.net.errors import IPv4Error
from wow.net.ipv4 import (
    FLAG_DF,
    FLAG_MF,
    PROTO_UDP,
    IPv4Packet,
    build_ipv4,
    parse_ipv4,
)

addresses = st.integers(0, 2**32 - 1).map(IPv4Address)

# One well-formed option: NOP, or type/length/value.
_one_option = st.just(b"\x01") | st.tuples(st.integers(2, 255), st.binary(max_size=10)).map(
    lambda tv: bytes([tv[0], len(tv[1]) + 2]) + tv[1]
)


def _pad_options(parts: list[bytes]) -> bytes:
    raw = b"".join(parts)
    return raw + bytes(-len(raw) % 4)


well_formed_options = (
    st.lists(_one_option, max_size=5)
    .map(_pad_options)
    .filter(lambda o: len(o) <= 40 and _options_ok(o))
)


def _options_ok(options: bytes) -> bool:
    try:
        parse_ipv4(build_ipv4(IPv4Packet(IPv4Address(0), IPv4Address(0), 0, b"", options=options)))
    except IPv4Error:
        return False
    return True


packets = st.builds(
    IPv4Packet,
    src=addresses,
    dst=addresses,
    proto=st.integers(0, 255),
    payload=st.binary(max_size=1500),
    ttl=st.integers(0, 255),
    tos=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    flags=st.integers(0, 7),
    frag_offset=st.integers(0, 0x1FFF),
    options=well_formed_options,
)


def with_checksum(header: bytes) -> bytes:
    """Fill in the header checksum using the test's own RFC 1071 reference."""
    header = header[:10] + b"\x00\x00" + header[12:]
    return header[:10] + reference_checksum(header).to_bytes(2, "big") + header[12:]


# An IGMPv2 membership report with the Router Alert option (RFC 2113), as
# Linux sends it: IHL 6, TTL 1, DF, option 94 04 00 00.
IGMP = with_checksum(
    bytes.fromhex("46c00020000040000102 0000 0a000002 e00000fb 94040000")
) + bytes.fromhex("1600fa04e00000fb")


class IPv4Tests(SynchronousTestCase):
    def test_known_header(self) -> None:
        """The widely published example header with checksum 0xb861 parses."""
        data = bytes.fromhex("450000730000400040 11b861c0a80001c0a800c7")
        data += bytes(0x73 - 20)
        packet = parse_ipv4(data)
        self.assertEqual(packet.src, IPv4Address("192.168.0.1"))
        self.assertEqual(packet.dst, IPv4Address("192.168.0.199"))
        self.assertEqual(packet.proto, PROTO_UDP)
        self.assertEqual(packet.ttl, 64)
        self.assertTrue(packet.dont_fragment)
        self.assertFalse(packet.is_fragment)
        self.assertEqual(build_ipv4(packet), data)

    def test_packet_with_options(self) -> None:
        packet = parse_ipv4(IGMP)
        self.assertEqual(packet.options, bytes.fromhex("94040000"))
        self.assertEqual(packet.header_len, 24)
        self.assertEqual(packet.proto, 2)
        self.assertEqual(packet.ttl, 1)
        self.assertEqual(packet.tos, 0xC0)
        self.assertEqual(packet.payload, bytes.fromhex("1600fa04e00000fb"))
        self.assertEqual(build_ipv4(packet), IGMP)

    def test_fragments_recognised(self) -> None:
        base = IPv4Packet(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), PROTO_UDP, b"x" * 16)
        first = parse_ipv4(build_ipv4(replace(base, flags=FLAG_MF)))
        self.assertTrue(first.is_fragment)
        self.assertTrue(first.more_fragments)
        self.assertEqual(first.fragment_byte_offset, 0)
        last = parse_ipv4(build_ipv4(replace(base, frag_offset=185)))
        self.assertTrue(last.is_fragment)
        self.assertFalse(last.more_fragments)
        self.assertEqual(last.fragment_byte_offset, 1480)
        whole = parse_ipv4(build_ipv4(replace(base, flags=FLAG_DF)))
        self.assertFalse(whole.is_fragment)
        self.assertTrue(whole.dont_fragment)

    def test_trailing_padding_stripped(self) -> None:
        """A 60-byte Ethernet minimum adds padding after a short datagram."""
        packet = parse_ipv4(IGMP + bytes(14))
        self.assertEqual(packet.payload, bytes.fromhex("1600fa04e00000fb"))

    def test_refusals(self) -> None:
        cases = {
            "truncated": [IGMP[:19], IGMP[:-1]],
            "bad-version": [b"\x66" + IGMP[1:]],
            "bad-header-length": [with_checksum(b"\x44" + IGMP[1:20]) + IGMP[20:]],
            "bad-total-length": [with_checksum(IGMP[:2] + b"\x00\x14" + IGMP[4:24]) + IGMP[24:]],
            "bad-checksum": [IGMP[:10] + b"\x00\x00" + IGMP[12:]],
            "bad-options": [
                with_checksum(IGMP[:20] + bytes.fromhex("01010194")) + IGMP[24:],
                with_checksum(IGMP[:20] + bytes.fromhex("94050000")) + IGMP[24:],
                with_checksum(IGMP[:20] + bytes.fromhex("94010000")) + IGMP[24:],
            ],
        }
        for reason, datas in cases.items():
            for data in datas:
                with self.assertRaises(IPv4Error) as cm:
                    parse_ipv4(data)
                self.assertEqual(cm.exception.reason, reason, data.hex())

    def test_checksum_not_verified_on_request(self) -> None:
        broken = IGMP[:10] + b"\x00\x00" + IGMP[12:]
        self.assertEqual(parse_ipv4(broken, verify_checksum=False).options, IGMP[20:24])

    def test_options_after_end_of_list_ignored(self) -> None:
        """Bytes after EOL are padding, whatever their value."""
        data = with_checksum(IGMP[:20] + bytes.fromhex("0001ff07")) + IGMP[24:]
        self.assertEqual(parse_ipv4(data).options, bytes.fromhex("0001ff07"))

    def test_build_refusals(self) -> None:
        base = IPv4Packet(IPv4Address(0), IPv4Address(0), 0, b"")
        for change in [
            {"options": b"\x01"},
            {"options": bytes(44)},
            {"payload": bytes(65516)},
            {"ttl": 256},
            {"tos": -1},
            {"flags": 8},
            {"frag_offset": 0x2000},
            {"ident": 0x10000},
            {"proto": 256},
        ]:
            self.assertRaises(IPv4Error, build_ipv4, replace(base, **change))
        self.assertEqual(len(build_ipv4(replace(base, payload=bytes(65515)))), 65535)

    @given(packets)
    def test_round_trip(self, packet: IPv4Packet) -> None:
        data = build_ipv4(packet)
        self.assertEqual(reference_checksum(data[: packet.header_len]), 0)
        self.assertEqual(parse_ipv4(data), packet)

    @given(st.binary(max_size=80))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        self._parse_any(data)

    @given(st.binary(max_size=60), st.integers(0, 20))
    def test_arbitrary_headers_without_checksum(self, data: bytes, cut: int) -> None:
        """Skip the checksum so random bytes reach the length and option checks."""
        data = b"\x45" + data if cut % 2 else bytes([0x40 | (cut % 16)]) + data
        try:
            packet = parse_ipv4(data, verify_checksum=False)
        except IPv4Error:
            return
        again = parse_ipv4(build_ipv4(packet))
        self.assertEqual(again, packet)

    @given(st.integers(0, len(IGMP) - 1), st.integers(0, 255))
    def test_mutated_packet(self, index: int, value: int) -> None:
        self._parse_any(IGMP[:index] + bytes([value]) + IGMP[index + 1 :])

    def _parse_any(self, data: bytes) -> None:
        try:
            packet = parse_ipv4(data)
        except IPv4Error:
            return
        self.assertEqual(build_ipv4(packet), data[: 20 + len(packet.options) + len(packet.payload)])
