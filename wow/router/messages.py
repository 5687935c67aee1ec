"""
What one overlay data message carries between IP routers, and the few bytes
of it the router looks at (sans-I/O).

Why: a node whose TAP has offloads (C{[tap] offload = true}) reads ~60 KB
TCP super-frames whose checksum is partial; the virtio-net header must travel
with the packet so the receiving kernel (or, for a TAP without offloads,
L{wow.datapath.vnet.plain_frames} in Python) can finish the work.  A message
is therefore one of::

    IPv4 packet                         first byte 0x45-0x4F (version 4, IHL >= 5)
    compact vnet header + IPv4 packet   first byte anything else (see vnet.to_wire)

The compact header's first byte can never look like a valid IPv4 first
byte (its low nibble is at most 3 when its high nibble is 4), so a node
without offloads sends plain packets exactly as before and every node reads
both forms.  The router only needs the source and destination addresses: at
fixed offsets after L{ip_offset}.
"""

from __future__ import annotations

import struct

from wow.datapath import vnet
from wow.net.checksum import internet_checksum

ETH_HLEN = vnet.ETH_HLEN
ETHERTYPE_IPV4 = b"\x08\x00"
_TOTLEN = struct.Struct("!H")

ICMP_UNREACHABLE = 3
ICMP_FRAG_NEEDED = 4
IP_DF = 0x40  # in byte 6 of the IPv4 header


class MessageError(ValueError):
    """A message that is not a (headed) IPv4 packet; C{reason} is the drop label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_plain(message: bytes | memoryview) -> bool:
    """Whether C{message} is a bare IPv4 packet (no vnet header)."""
    return bool(message) and 0x45 <= message[0] <= 0x4F


def ip_offset(message: bytes | memoryview) -> int:
    """Where the IPv4 packet starts in C{message}; L{MessageError} if malformed."""
    if not message:
        raise MessageError("malformed")
    if 0x45 <= message[0] <= 0x4F:
        return 0
    try:
        _, used = vnet.from_wire(message)
    except vnet.VnetError as e:
        raise MessageError(e.reason) from None
    if len(message) < used + 20 or not 0x45 <= message[used] <= 0x4F:
        raise MessageError("malformed")
    return used


def from_tap(buf: bytes, vlen: int) -> bytes:
    """
    The message for one IPv4 frame read from an offloading TAP (C{vlen}-byte
    raw vnet header, then the Ethernet frame): a bare packet when the
    header asks for nothing, else the compact header and the packet.
    Ethernet padding is cut from frames that are not super-frames.
    """
    raw = buf[:vlen]
    wire = vnet.wire_from_raw(raw) if vlen else vnet.WIRE_PLAIN
    start = vlen + ETH_HLEN
    if wire[0] & 0x80:  # GSO: the IPv4 length field is the super-frame's
        return wire + buf[start:]
    total = _TOTLEN.unpack_from(buf, start + 2)[0] if len(buf) >= start + 4 else 0
    packet = buf[start:start + total] if total >= 20 else buf[start:]
    return packet if wire == vnet.WIRE_PLAIN else wire + packet


def tap_writes(message: bytes, eth: bytes, vnet_tap: bool) -> list[bytes]:
    """
    The buffers to write to the TAP for C{message} behind the Ethernet header
    C{eth}: one buffer (12-byte header first) for a TAP with C{IFF_VNET_HDR},
    else plain frames (super-frames segmented in software).
    @raise MessageError: a header the frame contradicts.
    """
    if is_plain(message):
        frame = eth + message
        return [vnet.PLAIN_BYTES + frame] if vnet_tap else [frame]
    try:
        h, used = vnet.from_wire(message)
        frame = eth + message[used:]
        if vnet_tap:
            if h.flags or h.gso_type:
                vnet.check(h, frame)
            return [h.pack() + frame]
        return vnet.plain_frames(h, frame)
    except vnet.VnetError as e:
        raise MessageError(e.reason) from None


def is_gso(message: bytes | memoryview) -> bool:
    return bool(message) and not is_plain(message) and bool(message[0] & 0x80)


def frag_needed(packet: bytes, gateway: bytes, mtu: int) -> bytes:
    """
    The ICMP "fragmentation needed" (type 3 code 4, RFC 1191) answering
    C{packet}, from C{gateway}, with next-hop MTU C{mtu}.
    """
    ihl = (packet[0] & 0x0F) * 4
    quoted = packet[:ihl + 8]
    body = bytearray(struct.pack("!BBHHH", ICMP_UNREACHABLE, ICMP_FRAG_NEEDED, 0, 0, mtu))
    body += quoted
    body[2:4] = internet_checksum(bytes(body)).to_bytes(2, "big")
    total = 20 + len(body)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, total, 0, 0, 64, 1, 0, gateway,
                                packet[12:16]))
    hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + bytes(body)


def needs_frag(packet: bytes | memoryview, off: int, mtu: int) -> bool:
    """A non-GSO packet longer than C{mtu} that forbids fragmentation (DF set)."""
    total = len(packet) - off
    return total > mtu and bool(packet[off + 6] & IP_DF)
