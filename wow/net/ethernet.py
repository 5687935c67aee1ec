"""
Ethernet II frames as the TAP device delivers them (no preamble, no FCS).

One IEEE 802.1Q tag is understood (bridges of VMs may tag); stacked tags and
IEEE 802.3 length-field frames are refused, because nothing in WOW speaks
LLC/SNAP and a frame WOW cannot interpret must be dropped, not misread.

L{parse_ethernet} raises only L{EthernetError}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wow.net.errors import EthernetError

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

BROADCAST = b"\xff" * 6

#: Length of the untagged header: destination, source, EtherType.
HEADER_LEN = 14
#: Smallest frame on the wire without FCS; shorter frames are padded by
#: L{build_ethernet} when asked.
MIN_FRAME_LEN = 60
#: EtherType values below this are IEEE 802.3 lengths, not types.
_MIN_ETHERTYPE = 0x0600

_HDR = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class EthernetFrame:
    """
    An Ethernet II frame.

    @ivar dst: destination MAC, 6 bytes.
    @ivar src: source MAC, 6 bytes.
    @ivar ethertype: the type of C{payload} (L{ETH_P_IP}, L{ETH_P_ARP}, ...);
        for a tagged frame, the type after the 802.1Q tag.
    @ivar payload: everything after the header, including any padding the
        sender added (the IPv4 and ARP codecs strip it).
    @ivar vlan: the full 16-bit 802.1Q tag control information (priority,
        drop-eligible bit and VLAN id) of a tagged frame, or C{None}.
    """

    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes
    vlan: int | None = None

    @property
    def vlan_id(self) -> int | None:
        """The 12-bit VLAN identifier of a tagged frame, else C{None}."""
        return None if self.vlan is None else self.vlan & 0x0FFF

    @property
    def is_broadcast(self) -> bool:
        """Whether the frame is sent to ff:ff:ff:ff:ff:ff."""
        return self.dst == BROADCAST

    @property
    def is_multicast(self) -> bool:
        """Whether the destination is a group address (broadcast included)."""
        return bool(self.dst[0] & 1)

    def build(self, pad: bool = False) -> bytes:
        """Encode this frame; see L{build_ethernet}."""
        return build_ethernet(self, pad)


def parse_ethernet(data: bytes | bytearray | memoryview) -> EthernetFrame:
    """
    Decode an Ethernet II frame (optionally 802.1Q tagged).

    @raise EthernetError: the frame is shorter than its header, carries an
        802.3 length instead of an EtherType, or has stacked VLAN tags.
    """
    if len(data) < HEADER_LEN:
        raise EthernetError(
            f"Ethernet frame of {len(data)} bytes is shorter than the 14-byte header.",
            "truncated",
        )
    dst, src, ethertype = _HDR.unpack_from(data)
    offset = HEADER_LEN
    vlan = None
    if ethertype == ETH_P_8021Q:
        if len(data) < HEADER_LEN + 4:
            raise EthernetError("802.1Q-tagged frame is truncated inside its tag.", "truncated")
        vlan, ethertype = _TAG.unpack_from(data, HEADER_LEN)
        offset += 4
        if ethertype in (ETH_P_8021Q, ETH_P_8021AD):
            raise EthernetError("Stacked VLAN tags are not supported.", "stacked-vlan")
    elif ethertype == ETH_P_8021AD:
        raise EthernetError("802.1ad (QinQ) frames are not supported.", "stacked-vlan")
    if ethertype < _MIN_ETHERTYPE:
        raise EthernetError(
            f"Frame carries an IEEE 802.3 length ({ethertype}), not an Ethernet II type.",
            "not-ethernet-ii",
        )
    return EthernetFrame(dst, src, ethertype, bytes(data[offset:]), vlan)


def build_ethernet(frame: EthernetFrame, pad: bool = False) -> bytes:
    """
    Encode C{frame}.

    @param pad: pad with zero bytes to the 60-byte Ethernet minimum.  A TAP
        device does not need it; a frame sent onto a real wire does.
    @raise EthernetError: a MAC is not 6 bytes, the EtherType is not an
        Ethernet II type (or is a VLAN tag type), or the tag is out of range.
    """
    if len(frame.dst) != 6 or len(frame.src) != 6:
        raise EthernetError("MAC addresses must be 6 bytes.", "bad-mac")
    ethertype = frame.ethertype
    if not _MIN_ETHERTYPE <= ethertype <= 0xFFFF or ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        raise EthernetError(f"EtherType {ethertype:#x} cannot be encoded.", "bad-ethertype")
    if frame.vlan is None:
        out = _HDR.pack(frame.dst, frame.src, ethertype) + frame.payload
    else:
        if not 0 <= frame.vlan <= 0xFFFF:
            raise EthernetError(f"VLAN tag {frame.vlan} does not fit 16 bits.", "bad-vlan")
        out = (
            _HDR.pack(frame.dst, frame.src, ETH_P_8021Q)
            + _TAG.pack(frame.vlan, ethertype)
            + frame.payload
        )
    if pad and len(out) < MIN_FRAME_LEN:
        out += bytes(MIN_FRAME_LEN - len(out))
    return out


def mac_to_str(mac: bytes) -> str:
    """Format a 6-byte MAC as lower-case C{aa:bb:cc:dd:ee:ff}."""
    if len(mac) != 6:
        raise EthernetError("MAC addresses must be 6 bytes.", "bad-mac")
    return mac.hex(":")


def mac_from_str(text: str) -> bytes:
    """
    Parse C{aa:bb:cc:dd:ee:ff} (or with C{-} separators, any case) into 6 bytes.

    @raise EthernetError: C{text} is not such a MAC address.
    """
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and _HEX.issuperset(p) for p in parts):
        raise EthernetError(f"{text!r} is not a MAC address like aa:bb:cc:dd:ee:ff.", "bad-mac")
    return bytes.fromhex("".join(parts))


_HEX = frozenset("0123456789abcdefABCDEF")
