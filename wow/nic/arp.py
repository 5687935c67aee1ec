"""
The virtual router's ARP responder (sans-I/O).

Every address of the virtual subnet is reached through the virtual router
(the overlay), so the node answers "who has X?" with its router MAC for the
gateway and every other host address of the subnet — except the addresses
leased to clients on this TAP: those belong to the host itself, and a DHCP
client probing its new address (RFC 5227) must not find it taken.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from twisted.logger import Logger

from wow.metrics import Counters
from wow.net.arp import ARP_REPLY, ARP_REQUEST, ArpPacket
from wow.net.ethernet import ETH_P_ARP, EthernetFrame, build_ethernet


class ArpResponder:
    """
    Decides the answer to one ARP packet.

    @param is_local: whether an address is leased (or offered) to a client on
        this TAP; supplied by the DHCP server, which knows.
    """

    log = Logger()

    def __init__(self, router_mac: bytes, network: IPv4Network, gateway: IPv4Address,
                 is_local: Callable[[IPv4Address], bool], counters: Counters) -> None:
        self.router_mac = router_mac
        self.network = network
        self.gateway = gateway
        self.is_local = is_local
        self.counters = counters

    def _ignore(self, reason: str, packet: ArpPacket) -> None:
        self.counters.inc("arp_ignored", reason=reason)
        self.log.debug("ARP {op} for {target} from {sender} ignored: {reason}",
                       op=packet.op, target=packet.target_ip, sender=packet.sender_ip,
                       reason=reason)

    def answer(self, packet: ArpPacket) -> ArpPacket | None:
        """The reply to send, or L{None} (the reason is counted)."""
        if packet.op == ARP_REPLY:
            # Replies and gratuitous announcements by the host: nothing to do,
            # the router learns nothing from them.
            self._ignore("reply", packet)
            return None
        if packet.op != ARP_REQUEST:
            self._ignore("unknown-op", packet)
            return None
        target = packet.target_ip
        if packet.is_gratuitous and not packet.is_probe:
            self._ignore("gratuitous", packet)
            return None
        if target not in self.network:
            self._ignore("outside-subnet", packet)
            return None
        if target in (self.network.network_address, self.network.broadcast_address):
            self._ignore("not-a-host-address", packet)
            return None
        if target != self.gateway and self.is_local(target):
            # The host's own (or about-to-be-own) address: RFC 5227 probes
            # must see silence.
            self._ignore("local-address", packet)
            return None
        self.counters.inc("arp_replies")
        return packet.reply(self.router_mac)

    def answer_frame(self, frame: EthernetFrame, packet: ArpPacket) -> bytes | None:
        """The whole Ethernet frame answering C{packet}, or L{None}."""
        reply = self.answer(packet)
        if reply is None:
            return None
        return build_ethernet(
            EthernetFrame(packet.sender_mac, self.router_mac, ETH_P_ARP, reply.build(), frame.vlan)
        )
