"""
UDP datagrams (RFC 768), with the checksum over the IPv4 pseudo-header.

A checksum field of 0 means the sender did not compute one (allowed over
IPv4); such datagrams are accepted.  Bytes after the UDP length (the IPv4
layer normally removes them already) are ignored.

L{parse_udp} raises only L{UDPError}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from wow.net.checksum import internet_checksum_parts
from wow.net.errors import UDPError

HEADER_LEN = 8
_PROTO_UDP = 17
MAX_PAYLOAD = 0xFFFF - HEADER_LEN

_HDR = struct.Struct("!HHHH")
_PSEUDO = struct.Struct("!4s4sBBH")


@dataclass(frozen=True, slots=True)
class UDPDatagram:
    """A UDP datagram: ports and payload (length and checksum are derived)."""

    src_port: int
    dst_port: int
    payload: bytes

    def build(self, src: IPv4Address, dst: IPv4Address) -> bytes:
        """Encode this datagram; see L{build_udp}."""
        return build_udp(self, src, dst)


def _pseudo_header(src: IPv4Address, dst: IPv4Address, length: int) -> bytes:
    return _PSEUDO.pack(src.packed, dst.packed, 0, _PROTO_UDP, length)


def parse_udp(
    data: bytes | bytearray | memoryview,
    src: IPv4Address | None = None,
    dst: IPv4Address | None = None,
) -> UDPDatagram:
    """
    Decode a UDP datagram (the payload of an IPv4 packet with protocol 17).

    @param src: the IPv4 source address; with C{dst}, enables checksum
        verification.
    @param dst: the IPv4 destination address.
    @raise UDPError: shorter than the header, a length field that does not
        match the bytes, or (when C{src} and C{dst} are given) a wrong
        non-zero checksum.
    """
    n = len(data)
    if n < HEADER_LEN:
        raise UDPError(f"UDP datagram of {n} bytes is shorter than 8 bytes.", "truncated")
    src_port, dst_port, length, checksum = _HDR.unpack_from(data)
    if length < HEADER_LEN:
        raise UDPError(f"UDP length {length} is below the 8-byte header.", "bad-length")
    if length > n:
        raise UDPError(f"UDP length {length} exceeds the {n} bytes received.", "truncated")
    if checksum != 0 and src is not None and dst is not None:
        if internet_checksum_parts(_pseudo_header(src, dst, length), data[:length]) != 0:
            raise UDPError("UDP checksum is wrong.", "bad-checksum")
    return UDPDatagram(src_port, dst_port, bytes(data[HEADER_LEN:length]))


def build_udp(datagram: UDPDatagram, src: IPv4Address, dst: IPv4Address) -> bytes:
    """
    Encode C{datagram} with its checksum over the pseudo-header of C{src} and
    C{dst}.  A computed checksum of 0 is sent as 0xFFFF (RFC 768), because 0
    on the wire means "no checksum".

    @raise UDPError: a port does not fit 16 bits or the payload is too long.
    """
    payload = datagram.payload
    if len(payload) > MAX_PAYLOAD:
        raise UDPError(f"UDP payload of {len(payload)} bytes is too long.", "too-long")
    if not (0 <= datagram.src_port <= 0xFFFF and 0 <= datagram.dst_port <= 0xFFFF):
        raise UDPError("UDP ports must fit 16 bits.", "bad-port")
    length = HEADER_LEN + len(payload)
    header = _HDR.pack(datagram.src_port, datagram.dst_port, length, 0)
    checksum = internet_checksum_parts(_pseudo_header(src, dst, length), header, payload)
    if checksum == 0:
        checksum = 0xFFFF
    return _HDR.pack(datagram.src_port, datagram.dst_port, length, checksum) + payload
