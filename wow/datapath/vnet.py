"""
The virtio-net header that a TAP opened with C{IFF_VNET_HDR} puts before
every frame, and the software fallbacks for when a super-frame meets a path
without offloads.

Why: with TSO offloads the kernel hands the data path ~60 KB TCP
"super-frames" whose checksum is only partially computed; the 12-byte header
says how to finish it (C{csum_start}/C{csum_offset}) and how the frame is to
be cut into MSS-sized segments (C{gso_type}/C{gso_size}).  Carrying that
header with the frame lets the receiving kernel do the work; only when a
frame must go to a TAP or peer without offloads does Python finish the
checksum (L{finish_checksum}) or segment (L{segment}) -- slowly, but
correctly.

Sans-I/O: bytes in, bytes out.  A header that arrived from another machine
is checked against its frame with L{check} before it is given to a kernel.

Layout (C{struct virtio_net_hdr_v1}, little-endian as on x86 with
C{TUNSETVNETLE}-less legacy TAPs on little-endian hosts)::

    u8 flags, u8 gso_type, u16 hdr_len, u16 gso_size,
    u16 csum_start, u16 csum_offset, u16 num_buffers

This module also defines the compact I{wire} form of the header that travels
inside a data message (1, 5 or 10 bytes instead of 12), so that a full-MTU
plain frame still fits the MTU budget of C{docs/architecture.md}.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

VNET_HDR_LEN = 12

# flags
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
F_RSC_INFO = 4

# gso_type
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: obsolete, never accepted from the network
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO
GSO_ECN = 0x80

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17

#: Smallest segment size accepted from the network (Linux's TCP_MIN_SND_MSS).
MIN_GSO_SIZE = 48

_HDR = struct.Struct("<BBHHHHH")
_U16 = struct.Struct("!H")


class VnetError(ValueError):
    """A virtio-net header or frame that cannot be used; C{reason} is a short label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VnetHeader(NamedTuple):
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    def pack(self) -> bytes:
        return _HDR.pack(*self)

    @property
    def is_gso(self) -> bool:
        return self.gso_type != GSO_NONE


#: The header of a frame that needs nothing: checksums complete, no GSO.
PLAIN = VnetHeader()
PLAIN_BYTES = PLAIN.pack()


def parse(buf: bytes | memoryview) -> VnetHeader:
    """The header at the start of C{buf}; L{VnetError} if it is too short."""
    if len(buf) < VNET_HDR_LEN:
        raise VnetError("short-vnet-header")
    return VnetHeader._make(_HDR.unpack_from(buf))


# -- compact wire form ------------------------------------------------------
#
# byte 0: bit 7 = GSO fields follow (u8 gso_type, u16 hdr_len, u16 gso_size),
#         bit 6 = checksum fields follow (u16 csum_start, u16 csum_offset),
#         bits 0-1 = virtio flags NEEDS_CSUM / DATA_VALID, others zero.
# All fields big-endian.  num_buffers is receive-side only and not carried.

_W_GSO = 0x80
_W_CSUM = 0x40
_W_FLAGS = F_NEEDS_CSUM | F_DATA_VALID
_W_GSO_F = struct.Struct("!BHH")
_W_CSUM_F = struct.Struct("!HH")
_W_BOTH = struct.Struct("!BBHHHH")

WIRE_PLAIN = b"\x00"


def to_wire(h: VnetHeader) -> bytes:
    """The compact form of C{h} (1, 5 or 10 bytes)."""
    flags = h.flags & _W_FLAGS
    if h.gso_type:
        return _W_BOTH.pack(flags | _W_GSO | _W_CSUM, h.gso_type, h.hdr_len, h.gso_size,
                            h.csum_start, h.csum_offset)
    if flags & F_NEEDS_CSUM:
        return bytes((flags | _W_CSUM,)) + _W_CSUM_F.pack(h.csum_start, h.csum_offset)
    return bytes((flags,))


def wire_from_raw(raw: bytes | memoryview) -> bytes:
    """L{to_wire} straight from a raw 12-byte header, with a fast path for plain frames."""
    if raw[0] == 0 and raw[1] == 0:
        return WIRE_PLAIN
    return to_wire(VnetHeader._make(_HDR.unpack_from(raw)))


def from_wire(buf: bytes | memoryview) -> tuple[VnetHeader, int]:
    """Decode the compact form at the start of C{buf}: (header, bytes used)."""
    if not buf:
        raise VnetError("short-wire-header")
    b0 = buf[0]
    if b0 & ~(_W_GSO | _W_CSUM | _W_FLAGS):
        raise VnetError("bad-wire-flags")
    flags = b0 & _W_FLAGS
    if b0 & _W_GSO:
        if not b0 & _W_CSUM:
            raise VnetError("bad-wire-flags")
        if len(buf) < _W_BOTH.size:
            raise VnetError("short-wire-header")
        _, gt, hl, gs, cs, co = _W_BOTH.unpack_from(buf)
        return VnetHeader(flags, gt, hl, gs, cs, co), _W_BOTH.size
    if bool(b0 & _W_CSUM) != bool(flags & F_NEEDS_CSUM):
        raise VnetError("bad-wire-flags")
    if b0 & _W_CSUM:
        if len(buf) < 1 + _W_CSUM_F.size:
            raise VnetError("short-wire-header")
        cs, co = _W_CSUM_F.unpack_from(buf, 1)
        return VnetHeader(flags, GSO_NONE, 0, 0, cs, co), 1 + _W_CSUM_F.size
    return VnetHeader(flags), 1


# -- inner frame ------------------------------------------------------------


def l3_offset(frame: bytes | memoryview) -> tuple[int, int]:
    """(ethertype, offset of the network header), looking through one VLAN tag."""
    if len(frame) < ETH_HLEN:
        raise VnetError("short-frame")
    etype = _U16.unpack_from(frame, 12)[0]
    if etype == ETH_P_8021Q:
        if len(frame) < ETH_HLEN + 4:
            raise VnetError("short-frame")
        return _U16.unpack_from(frame, 16)[0], ETH_HLEN + 4
    return etype, ETH_HLEN


def check(h: VnetHeader, frame: bytes | memoryview, length: int | None = None) -> None:
    """
    Raise L{VnetError} unless C{h} is a header this node is willing to hand a
    kernel together with C{frame}: known flags, offsets inside the frame, a
    sane segment size and a GSO type that matches the inner protocol.

    C{frame} may be only the head of a frame of C{length} bytes (a frame
    gathered from pieces is checked without joining it); the protocol
    headers must then lie inside that head.
    """
    n = len(frame) if length is None else length
    if h.flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
        raise VnetError("bad-flags")
    if n < ETH_HLEN:
        raise VnetError("short-frame")
    if h.flags & F_NEEDS_CSUM:
        if h.csum_start < ETH_HLEN or h.csum_start + h.csum_offset + 2 > n:
            raise VnetError("csum-out-of-frame")
    gt = h.gso_type
    if gt == GSO_NONE:
        if h.gso_size:
            raise VnetError("gso-size-without-gso")
        return
    base = gt & ~GSO_ECN
    if base not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise VnetError("unsupported-gso-type")
    if gt & GSO_ECN and base == GSO_UDP_L4:
        raise VnetError("ecn-on-udp")
    if not h.flags & F_NEEDS_CSUM:
        raise VnetError("gso-without-csum")
    if not MIN_GSO_SIZE <= h.gso_size <= 0xFFFF:
        raise VnetError("bad-gso-size")
    if h.hdr_len > n:
        raise VnetError("hdr-len-out-of-frame")
    if min(n, h.csum_start + 20) > len(frame):
        raise VnetError("headers-split")
    etype, l3 = l3_offset(frame)
    l4 = h.csum_start
    if base == GSO_TCPV6:
        if etype != ETH_P_IPV6 or l4 < l3 + 40:
            raise VnetError("gso-type-mismatch")
        if l4 == l3 + 40 and frame[l3 + 6] != IPPROTO_TCP:
            raise VnetError("gso-type-mismatch")
    else:
        if etype == ETH_P_IP:
            if n < l3 + 20 or l4 != l3 + (frame[l3] & 0x0F) * 4:
                raise VnetError("gso-type-mismatch")
            proto = frame[l3 + 9]
        elif etype == ETH_P_IPV6 and base == GSO_UDP_L4:
            if l4 < l3 + 40:
                raise VnetError("gso-type-mismatch")
            proto = frame[l3 + 6] if l4 == l3 + 40 else IPPROTO_UDP
        else:
            raise VnetError("gso-type-mismatch")
        if proto != (IPPROTO_UDP if base == GSO_UDP_L4 else IPPROTO_TCP):
            raise VnetError("gso-type-mismatch")
    if base == GSO_UDP_L4:
        if h.csum_offset != 6 or l4 + 8 > n:
            raise VnetError("gso-type-mismatch")
    else:
        if h.csum_offset != 16 or l4 + 20 > n or l4 + (frame[l4 + 12] >> 4) * 4 > n:
            raise VnetError("gso-type-mismatch")


# -- checksums --------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """
    The 16-bit ones'-complement sum of C{data} (RFC 1071), in C speed: the sum
    of big-endian 16-bit words is congruent to the whole buffer read as one
    integer modulo 0xFFFF, because 2**16 == 1 (mod 0xFFFF).
    """
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    v = int.from_bytes(data, "big")
    r = v % 0xFFFF
    return 0xFFFF if (r == 0 and v) else r


def fold(total: int) -> int:
    """Fold a sum of ones'-complement sums back into 16 bits."""
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def finish_checksum(h: VnetHeader, frame: bytes | bytearray | memoryview) -> bytes:
    """
    Complete a partial checksum (C{F_NEEDS_CSUM}): the field at
    C{csum_start + csum_offset} already holds the pseudo-header sum, so the
    result is the complement of the sum from C{csum_start} to the end.
    Returns the frame with the checksum in place (the frame if nothing to do).
    """
    if not h.flags & F_NEEDS_CSUM:
        return bytes(frame)
    start, at = h.csum_start, h.csum_start + h.csum_offset
    if start < 0 or at + 2 > len(frame):
        raise VnetError("csum-out-of-frame")
    c = ~ones_sum(memoryview(frame)[start:]) & 0xFFFF
    if c == 0 and h.csum_offset == 6:  # UDP: zero means "no checksum"
        c = 0xFFFF
    out = bytearray(frame)
    _U16.pack_into(out, at, c)
    return bytes(out)


def _pseudo_sum(frame: bytes | memoryview, etype: int, l3: int, proto: int, length: int) -> int:
    if etype == ETH_P_IP:
        addrs = frame[l3 + 12:l3 + 20]
    else:
        addrs = frame[l3 + 8:l3 + 40]
    return ones_sum(bytes(addrs)) + proto + length


# -- segmentation -----------------------------------------------------------

_TCP_FIN_PSH = 0x09
_TCP_CWR = 0x80


def segment(h: VnetHeader, frame: bytes | memoryview) -> list[bytes]:
    """
    Cut a GSO super-frame into plain frames of at most C{gso_size} payload
    bytes each, as the kernel would: IPv4 ids counting up, lengths and every
    checksum recomputed, TCP sequence numbers advanced, FIN/PSH kept on the
    last segment only and CWR on the first only.  A non-GSO frame comes back
    alone with its checksum finished.
    """
    if not h.is_gso:
        return [finish_checksum(h, frame)]
    check(h, frame)
    frame = bytes(frame)
    etype, l3 = l3_offset(frame)
    l4 = h.csum_start
    base = h.gso_type & ~GSO_ECN
    tcp = base != GSO_UDP_L4
    l4hl = (frame[l4 + 12] >> 4) * 4 if tcp else 8
    data_off = l4 + l4hl
    payload = frame[data_off:]
    mss = h.gso_size
    proto = IPPROTO_TCP if tcp else IPPROTO_UDP
    v4 = etype == ETH_P_IP
    if tcp:
        seq0 = struct.unpack_from("!I", frame, l4 + 4)[0]
        tflags = frame[l4 + 13]
    ip_id0 = _U16.unpack_from(frame, l3 + 4)[0] if v4 else 0
    nseg = max(1, -(-len(payload) // mss))
    out: list[bytes] = []
    for i in range(nseg):
        chunk = payload[i * mss:(i + 1) * mss]
        hdr = bytearray(frame[:data_off])
        l4len = l4hl + len(chunk)
        if v4:
            _U16.pack_into(hdr, l3 + 2, (l4 - l3) + l4len)
            _U16.pack_into(hdr, l3 + 4, (ip_id0 + i) & 0xFFFF)
            _U16.pack_into(hdr, l3 + 10, 0)
            _U16.pack_into(hdr, l3 + 10, ~ones_sum(hdr[l3:l4]) & 0xFFFF)
        else:
            _U16.pack_into(hdr, l3 + 4, (l4 - l3 - 40) + l4len)
        if tcp:
            struct.pack_into("!I", hdr, l4 + 4, (seq0 + i * mss) & 0xFFFFFFFF)
            f = tflags
            if i != nseg - 1:
                f &= ~_TCP_FIN_PSH
            if i != 0:
                f &= ~_TCP_CWR
            hdr[l4 + 13] = f
            at = l4 + 16
        else:
            _U16.pack_into(hdr, l4 + 4, l4len)
            at = l4 + 6
        _U16.pack_into(hdr, at, 0)
        s = fold(_pseudo_sum(frame, etype, l3, proto, l4len) + ones_sum(hdr[l4:])
                 + ones_sum(chunk))
        c = ~s & 0xFFFF
        if c == 0 and not tcp:
            c = 0xFFFF
        _U16.pack_into(hdr, at, c)
        out.append(bytes(hdr) + chunk)
    return out


def plain_frames(h: VnetHeader, frame: bytes | memoryview) -> list[bytes]:
    """
    What to write to a TAP without C{IFF_VNET_HDR} (or send to a peer without
    offloads) for C{frame}: segments of a super-frame, or the frame with its
    checksum finished, or the frame itself.
    """
    if h.gso_type:
        return segment(h, frame)
    if h.flags & F_NEEDS_CSUM:
        return [finish_checksum(h, frame)]
    return [bytes(frame)]
