"""
Where IP packets from the host go: the node's own services or the router.

The TAP's frame dispatcher hands every IPv4 packet that is not DHCP to an
L{IPacketSink}.  Packets for the virtual gateway address are the node's own
business (its DNS on port 53, ICMP echo so C{ping GATEWAY} works); every
other packet is the IP router's.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from wow.metrics import Counters
from wow.net.checksum import internet_checksum
from wow.net.ipv4 import PROTO_ICMP, PROTO_UDP, IPv4Packet, build_ipv4
from wow.nic.dispatch import IPacketSink

DNS_PORT = b"\x00\x35"
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def echo_reply(packet: IPv4Packet) -> bytes | None:
    """The ICMP echo reply to an echo request, or None if it is not one."""
    icmp = packet.payload
    if len(icmp) < 8 or icmp[0] != ICMP_ECHO_REQUEST or internet_checksum(icmp) != 0:
        return None
    body = bytes([ICMP_ECHO_REPLY, 0, 0, 0]) + icmp[4:]
    csum = internet_checksum(body)
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    return build_ipv4(IPv4Packet(src=packet.dst, dst=packet.src, proto=PROTO_ICMP, payload=body))


@implementer(IPacketSink)
class NodeSink:
    """Splits the host's packets between the gateway's services and the router."""

    log = Logger()

    def __init__(self, gateway: IPv4Address, counters: Counters,
                 mac_of: Callable[[bytes], bytes | None],
                 write_to_host: Callable[[bytes, bytes], None],
                 dns: Any | None = None,
                 route: Callable[[bytes], None] | None = None) -> None:
        self.gateway = gateway
        self.counters = counters
        self.mac_of = mac_of
        self.write_to_host = write_to_host
        self.dns = dns
        self.route = route

    def packet_from_host(self, raw: bytes, packet: IPv4Packet) -> None:
        if packet.dst == self.gateway:
            self._for_gateway(packet)
        elif self.route is not None:
            self.route(raw)
        else:
            self.counters.inc("frames_dropped", reason="not-routed")

    def _for_gateway(self, packet: IPv4Packet) -> None:
        mac = self.mac_of(packet.src.packed)
        if mac is None:
            self.counters.inc("frames_dropped", reason="gateway-from-unleased")
            return
        if packet.proto == PROTO_ICMP:
            reply = echo_reply(packet)
            if reply is None:
                self.counters.inc("frames_dropped", reason="gateway-icmp")
                return
            self.counters.inc("gateway_pings")
            self.write_to_host(mac, reply)
            return
        if packet.proto == PROTO_UDP and self.dns is not None and packet.payload[2:4] == DNS_PORT:
            answer = self.dns.answer_packet(packet)
            if isinstance(answer, Deferred):
                answer.addCallback(self._send, mac)
                answer.addErrback(lambda f: self.log.failure("DNS answer failed", f))
            else:
                self._send(answer, mac)
            return
        self.counters.inc("frames_dropped", reason="gateway-port-closed")

    def _send(self, reply: bytes | None, mac: bytes) -> None:
        if reply is not None:
            self.write_to_host(mac, reply)


class DnsLeaseObserver:
    """Publishes DNS names as the DHCP server binds and ends leases."""

    log = Logger()

    def __init__(self, dns: Any) -> None:
        self.dns = dns

    def bound(self, ip: IPv4Address, mac: bytes, lease_seconds: float, hostname: str,
              fqdn: str) -> None:
        d = self.dns.lease_added(str(ip), lease_seconds, hostname, fqdn)
        d.addErrback(lambda f: self.log.failure("publishing the name of {ip} failed", f, ip=ip))

    def ended(self, ip: IPv4Address, mac: bytes) -> None:
        self.dns.lease_removed(str(ip))
