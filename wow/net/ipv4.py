"""
IPv4 datagrams (RFC 791): header checksum, options and fragments.

L{parse_ipv4} validates everything a router must before trusting a header:
version, header length, total length against the bytes received (trailing
Ethernet padding is allowed and stripped), the header checksum, and that the
options are well-formed type-length-value items.  Fragments are recognised
(L{IPv4Packet.is_fragment}) but not reassembled: the payload of a fragment is
just that fragment's bytes.

L{parse_ipv4} raises only L{IPv4Error}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from wow.net.addresses import ipv4_from_bytes
from wow.net.checksum import internet_checksum
from wow.net.errors import IPv4Error

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

#: Flag bits of the 3-bit flags field.
FLAG_RESERVED = 0b100
FLAG_DF = 0b010
FLAG_MF = 0b001

MIN_HEADER_LEN = 20
MAX_OPTIONS_LEN = 40
MAX_TOTAL_LEN = 0xFFFF

#: Option types with no length byte (RFC 791 section 3.1).
OPT_EOL = 0
OPT_NOP = 1

_HDR = struct.Struct("!BBHHHBBH4s4s")


@dataclass(frozen=True, slots=True)
class IPv4Packet:
    """
    An IPv4 datagram.

    @ivar flags: the 3-bit flags field (L{FLAG_DF}, L{FLAG_MF}).
    @ivar frag_offset: the 13-bit fragment offset as on the wire, in units of
        8 bytes (see L{fragment_byte_offset}).
    @ivar options: the raw options, a multiple of 4 bytes, at most 40.
    """

    src: IPv4Address
    dst: IPv4Address
    proto: int
    payload: bytes
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    flags: int = 0
    frag_offset: int = 0
    options: bytes = b""

    @property
    def dont_fragment(self) -> bool:
        """Whether the DF (don't fragment) bit is set."""
        return bool(self.flags & FLAG_DF)

    @property
    def more_fragments(self) -> bool:
        """Whether the MF (more fragments) bit is set."""
        return bool(self.flags & FLAG_MF)

    @property
    def is_fragment(self) -> bool:
        """Whether this datagram is one piece of a fragmented datagram."""
        return bool(self.flags & FLAG_MF) or self.frag_offset != 0

    @property
    def fragment_byte_offset(self) -> int:
        """The fragment's position in the original payload, in bytes."""
        return self.frag_offset * 8

    @property
    def header_len(self) -> int:
        """The encoded header length in bytes, options included."""
        return MIN_HEADER_LEN + len(self.options)

    def build(self) -> bytes:
        """Encode this datagram; see L{build_ipv4}."""
        return build_ipv4(self)


def parse_ipv4(data: bytes | bytearray | memoryview, verify_checksum: bool = True) -> IPv4Packet:
    """
    Decode an IPv4 datagram (the payload of an C{ETH_P_IP} frame).

    @param verify_checksum: check the header checksum.  Turn it off only for
        packets the kernel has already checked.
    @raise IPv4Error: the bytes are not a valid IPv4 datagram; C{reason} says
        which check failed.
    """
    n = len(data)
    if n < MIN_HEADER_LEN:
        raise IPv4Error(f"IPv4 packet of {n} bytes is shorter than 20 bytes.", "truncated")
    (ver_ihl, tos, total_len, ident, flags_frag, ttl, proto, _csum, src, dst) = _HDR.unpack_from(
        data
    )
    if ver_ihl >> 4 != 4:
        raise IPv4Error(f"IP version {ver_ihl >> 4} is not 4.", "bad-version")
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < MIN_HEADER_LEN:
        raise IPv4Error(f"IPv4 header length {header_len} is below 20 bytes.", "bad-header-length")
    if total_len < header_len:
        raise IPv4Error(
            f"IPv4 total length {total_len} is smaller than the header ({header_len}).",
            "bad-total-length",
        )
    if total_len > n:
        raise IPv4Error(
            f"IPv4 total length {total_len} exceeds the {n} bytes received.", "truncated"
        )
    if verify_checksum and internet_checksum(data[:header_len]) != 0:
        raise IPv4Error("IPv4 header checksum is wrong.", "bad-checksum")
    options = bytes(data[MIN_HEADER_LEN:header_len])
    if options:
        _check_options(options)
    return IPv4Packet(
        src=ipv4_from_bytes(src),
        dst=ipv4_from_bytes(dst),
        proto=proto,
        payload=bytes(data[header_len:total_len]),
        ttl=ttl,
        tos=tos,
        ident=ident,
        flags=flags_frag >> 13,
        frag_offset=flags_frag & 0x1FFF,
        options=options,
    )


def _check_options(options: bytes) -> None:
    """
    Check that C{options} is a sequence of well-formed RFC 791 options.

    Everything after an end-of-list option is padding and is not examined.
    """
    i = 0
    end = len(options)
    while i < end:
        kind = options[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise IPv4Error(f"IPv4 option {kind} has no length byte.", "bad-options")
        length = options[i + 1]
        if length < 2 or i + length > end:
            raise IPv4Error(
                f"IPv4 option {kind} has length {length}, which does not fit the header.",
                "bad-options",
            )
        i += length


def build_ipv4(packet: IPv4Packet) -> bytes:
    """
    Encode C{packet}, computing its header checksum.

    @raise IPv4Error: a field is out of range, the options are not a multiple
        of 4 bytes up to 40, or the datagram would exceed 65535 bytes.
    """
    options = packet.options
    if len(options) % 4 or len(options) > MAX_OPTIONS_LEN:
        raise IPv4Error(
            f"IPv4 options of {len(options)} bytes are not a multiple of 4 up to 40.",
            "bad-options",
        )
    header_len = MIN_HEADER_LEN + len(options)
    total_len = header_len + len(packet.payload)
    if total_len > MAX_TOTAL_LEN:
        raise IPv4Error(f"IPv4 datagram of {total_len} bytes exceeds 65535.", "too-long")
    if not (
        0 <= packet.flags <= 7
        and 0 <= packet.frag_offset <= 0x1FFF
        and 0 <= packet.ttl <= 0xFF
        and 0 <= packet.tos <= 0xFF
        and 0 <= packet.proto <= 0xFF
        and 0 <= packet.ident <= 0xFFFF
    ):
        raise IPv4Error("An IPv4 header field is out of range.", "bad-field")
    header = bytearray(
        _HDR.pack(
            0x40 | (header_len // 4),
            packet.tos,
            total_len,
            packet.ident,
            (packet.flags << 13) | packet.frag_offset,
            packet.ttl,
            packet.proto,
            0,
            packet.src.packed,
            packet.dst.packed,
        )
    )
    header += options
    csum = internet_checksum(header)
    header[10] = csum >> 8
    header[11] = csum & 0xFF
    header += packet.payload
    return bytes(header)
