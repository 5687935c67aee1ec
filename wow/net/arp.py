"""
ARP (RFC 826) for Ethernet hardware and IPv4 protocol addresses only.

The virtual NIC answers ARP on behalf of the virtual subnet, so only the one
combination a TAP carries is accepted; any other hardware or protocol type is
refused with L{ArpError} rather than half-understood.  Bytes after the
28-byte packet (Ethernet minimum-size padding) are ignored.

L{parse_arp} raises only L{ArpError}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from wow.net.addresses import ipv4_from_bytes
from wow.net.errors import ArpError

ARP_REQUEST = 1
ARP_REPLY = 2

HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800

#: Length of an Ethernet/IPv4 ARP packet.
ARP_LEN = 28

_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """
    An Ethernet/IPv4 ARP packet.

    @ivar op: L{ARP_REQUEST}, L{ARP_REPLY}, or any other 16-bit operation
        (kept so the caller can count what it ignores).
    """

    op: int
    sender_mac: bytes
    sender_ip: IPv4Address
    target_mac: bytes
    target_ip: IPv4Address

    @property
    def is_gratuitous(self) -> bool:
        """Whether the sender announces its own address (sender IP = target IP)."""
        return self.sender_ip == self.target_ip

    @property
    def is_probe(self) -> bool:
        """
        Whether this is an RFC 5227 address probe: a request from sender IP
        0.0.0.0 asking who has the target address.
        """
        return self.op == ARP_REQUEST and int(self.sender_ip) == 0

    def reply(self, my_mac: bytes) -> ArpPacket:
        """
        The reply to this request that says C{target_ip} is at C{my_mac}.
        """
        return ArpPacket(
            op=ARP_REPLY,
            sender_mac=my_mac,
            sender_ip=self.target_ip,
            target_mac=self.sender_mac,
            target_ip=self.sender_ip,
        )

    def build(self) -> bytes:
        """Encode this packet; see L{build_arp}."""
        return build_arp(self)


def parse_arp(data: bytes | bytearray | memoryview) -> ArpPacket:
    """
    Decode an Ethernet/IPv4 ARP packet (the payload of an C{ETH_P_ARP} frame).

    @raise ArpError: too short, or not Ethernet hardware / IPv4 protocol
        addresses of lengths 6 and 4.
    """
    if len(data) < ARP_LEN:
        raise ArpError(f"ARP packet of {len(data)} bytes is shorter than 28 bytes.", "truncated")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
    if htype != HTYPE_ETHERNET or hlen != 6:
        raise ArpError(
            f"ARP hardware type {htype} with address length {hlen} is not Ethernet.",
            "unsupported-hardware",
        )
    if ptype != PTYPE_IPV4 or plen != 4:
        raise ArpError(
            f"ARP protocol type {ptype:#06x} with address length {plen} is not IPv4.",
            "unsupported-protocol",
        )
    return ArpPacket(op, sha, ipv4_from_bytes(spa), tha, ipv4_from_bytes(tpa))


def build_arp(packet: ArpPacket) -> bytes:
    """
    Encode C{packet} as 28 bytes (the caller's Ethernet frame may pad it).

    @raise ArpError: a MAC is not 6 bytes or C{op} does not fit 16 bits.
    """
    if len(packet.sender_mac) != 6 or len(packet.target_mac) != 6:
        raise ArpError("ARP MAC addresses must be 6 bytes.", "bad-mac")
    if not 0 <= packet.op <= 0xFFFF:
        raise ArpError(f"ARP operation {packet.op} does not fit 16 bits.", "bad-op")
    return _ARP.pack(
        HTYPE_ETHERNET,
        PTYPE_IPV4,
        6,
        4,
        packet.op,
        packet.sender_mac,
        packet.sender_ip.packed,
        packet.target_mac,
        packet.target_ip.packed,
    )
