"""Tests for L{wow.net.checksum} (RFC 1071)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wow.net.checksum import internet_checksum, internet_checksum_parts, ones_complement_sum


def reference_checksum(data: bytes) -> int:
    """RFC 1071 section 4.1, word by word with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class InternetChecksumTests(SynchronousTestCase):
    def test_rfc1071_example(self) -> None:
        """RFC 1071 section 3's worked example sums to 0xddf2; checksum 0x220d."""
        data = bytes.fromhex("0001f203f4f5f6f7")
        self.assertEqual(ones_complement_sum(data), 0xDDF2)
        self.assertEqual(internet_checksum(data), 0x220D)

    def test_ipv4_header_vector(self) -> None:
        """The well-known header 4500 0073 ... c0a8 00c7 has checksum 0xb861."""
        header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
        self.assertEqual(internet_checksum(header), 0xB861)
        filled = header[:10] + b"\xb8\x61" + header[12:]
        self.assertEqual(internet_checksum(filled), 0)

    def test_zero_and_negative_zero(self) -> None:
        """All-zero data sums to +0 (checksum 0xffff); a 0xffff word is -0 (checksum 0)."""
        self.assertEqual(internet_checksum(b""), 0xFFFF)
        self.assertEqual(internet_checksum(bytes(10)), 0xFFFF)
        self.assertEqual(internet_checksum(b"\xff\xff"), 0)
        self.assertEqual(internet_checksum(b"\x80\x00\x7f\xff"), 0)

    def test_odd_length_padded(self) -> None:
        """An odd trailing byte is the high byte of a zero-padded word."""
        self.assertEqual(internet_checksum(b"\x12"), ~0x1200 & 0xFFFF)
        self.assertEqual(internet_checksum(b"\x12\x34\x56"), internet_checksum(b"\x12\x34\x56\x00"))

    def test_parts_odd_in_the_middle_refused(self) -> None:
        with self.assertRaises(ValueError):
            internet_checksum_parts(b"\x01", b"\x02\x03")

    @given(st.binary(max_size=2000))
    def test_matches_reference(self, data: bytes) -> None:
        self.assertEqual(internet_checksum(data), reference_checksum(data))
        self.assertEqual(internet_checksum(memoryview(data)), reference_checksum(data))

    @given(st.binary(max_size=300).filter(lambda d: len(d) % 2 == 0))
    def test_appending_checksum_verifies(self, data: bytes) -> None:
        """Data followed by its own checksum checks to 0 (how receivers verify)."""
        csum = internet_checksum(data)
        self.assertEqual(internet_checksum(data + csum.to_bytes(2, "big")), 0)

    @given(
        st.lists(st.binary(max_size=40).map(lambda d: d[: len(d) // 2 * 2]), max_size=4),
        st.binary(max_size=41),
    )
    def test_parts_equal_concatenation(self, parts: list[bytes], last: bytes) -> None:
        everything = [*parts, last]
        self.assertEqual(
            internet_checksum_parts(*everything), reference_checksum(b"".join(everything))
        )

    @given(st.binary(min_size=2, max_size=200).filter(lambda d: len(d) % 2 == 0))
    def test_word_order_irrelevant(self, data: bytes) -> None:
        """The sum is commutative over 16-bit words (RFC 1071 section 2(B))."""
        words = [data[i : i + 2] for i in range(0, len(data), 2)]
        self.assertEqual(internet_checksum(b"".join(reversed(words))), internet_checksum(data))

    @given(st.binary(max_size=200).filter(lambda d: len(d) % 2 == 0))
    def test_byte_swap_symmetry(self, data: bytes) -> None:
        """RFC 1071 section 2(B): swapping bytes of every word swaps the sum."""
        swapped = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
        s = ones_complement_sum(data)
        self.assertEqual(ones_complement_sum(swapped), ((s & 0xFF) << 8) | (s >> 8))
