"""
The Internet checksum (RFC 1071), used by the IPv4 header and UDP.

The one's-complement sum of 16-bit words is computed without a Python loop:
since M{2**16 = 1 (mod 0xFFFF)}, the whole buffer read as one big-endian
integer is congruent, modulo 0xFFFF, to the sum of its 16-bit words.  CPython
does both the conversion and the modulo in C, which makes this several times
faster than summing an C{array('H')} for frame-sized inputs.
"""

from __future__ import annotations


def ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """
    Return the folded 16-bit one's-complement sum of C{data}.

    An odd-length input is padded with one zero byte, as RFC 1071 says.
    The result is in C{range(0, 0x10000)}; it is 0 only when every word is 0
    (one's-complement "positive zero"), and 0xFFFF for any other sum that is a
    multiple of 0xFFFF.
    """
    n = int.from_bytes(data, "big")
    if len(data) % 2:
        n <<= 8
    if n == 0:
        return 0
    s = n % 0xFFFF
    return s if s else 0xFFFF


def internet_checksum_parts(*parts: bytes | bytearray | memoryview) -> int:
    """
    Return the RFC 1071 checksum of the concatenation of C{parts} without
    copying them into one buffer (the UDP pseudo-header, header and payload).

    Every part but the last must have an even length, so that word boundaries
    are the same as in the concatenation.
    """
    total = 0
    nonzero = False
    last = len(parts) - 1
    for i, part in enumerate(parts):
        n = int.from_bytes(part, "big")
        if len(part) % 2:
            if i != last:
                raise ValueError("only the last part may have an odd length")
            n <<= 8
        if n:
            nonzero = True
            total += n % 0xFFFF
    if not nonzero:
        return 0xFFFF
    s = total % 0xFFFF
    return ~(s if s else 0xFFFF) & 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """
    Return the RFC 1071 checksum of C{data}: the one's complement of the
    one's-complement sum of its 16-bit big-endian words.

    Computing it over data that already contains a correct checksum gives 0,
    which is how receivers verify it.
    """
    return ~ones_complement_sum(data) & 0xFFFF
